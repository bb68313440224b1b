//! A node's HTTP listener: the API router served by hyper with the limits a server on a shared
//! network needs and `axum::serve` does not set.
//!
//! - **Header deadline.** A connection that does not send a complete request head within
//!   [`HEADER_TIMEOUT`] is closed. hyper runs that clock from the moment it waits for a head, so it
//!   also closes keep-alive connections idle for that long; clients reconnect (ours keep idle
//!   connections for 5 s). Bodies have their own deadline where they are read (`api::read_body`).
//! - **Connection cap.** At most [`MAX_CONNECTIONS`] connections are served at once (fewer if the
//!   process may open fewer files); further ones wait in the kernel's backlog instead of failing
//!   the node with "too many open files". Requests that wait take only part of them
//!   ([`super::node::Node::waits`]), so the rest stay free for `/health`, peers and short requests.
//! - **Write deadline.** An answer whose bytes the client stops taking for [`WRITE_TIMEOUT`]
//!   (a client that never reads, with the socket buffers full) ends the connection, which would
//!   otherwise hold its slot for ever.
//! - **No Nagle delay.** Answers are small and latency matters: `TCP_NODELAY` on every socket.
//! - **TLS** (`serve --tls-cert`, [`super::tls`]). The handshake runs in the connection's own
//!   task, so a slow one delays no other client, and must end within [`HANDSHAKE_TIMEOUT`]: a
//!   client that connects and never handshakes gives its slot back then. A client that speaks
//!   plain HTTP to a TLS node gets a plain `400` saying to use `https://`, instead of a closed
//!   connection it could only guess about.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper::rt::{Read, Write};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to send a request head (and how long a keep-alive connection may
/// stay idle).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write of an answer may wait for the client to take bytes.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to complete the TLS handshake (TLS nodes only).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 4_096;
/// File descriptors kept free for the log, snapshots and connections to peers.
const RESERVED_FILES: u64 = 64;

/// The first byte of a TLS handshake record; a plain HTTP request starts with a letter.
const TLS_HANDSHAKE: u8 = 0x16;
/// Most bytes of a plain HTTP request read before it is refused on a TLS node.
const PLAIN_HEAD_BYTES: usize = 16 << 10;

/// A socket with the write deadline.
type Timed = Pin<Box<TimeoutStream<TcpStream>>>;

/// Serves `app` on `listener` (HTTPS with `tls`) until accepting fails for good.
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<ServerConfig>>,
) -> io::Error {
    let slots = Arc::new(Semaphore::new(connection_cap()));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return io::Error::other("the connection limit was closed");
        };
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors or a connection reset before it was accepted: the listener
            // itself is fine, so wait a little and go on.
            Err(e) if is_transient(&e) => {
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return e,
        };
        let _ = stream.set_nodelay(true);
        // The client's address, for the audit log (`api`).
        let app = app.clone().layer(Extension(ConnectInfo(remote)));
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_http(TokioIo::new(timed(stream)), app).await,
                Some(tls) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, tls)).await {
                        Ok(Ok(Opened::Tls(stream))) => serve_http(TokioIo::new(stream), app).await,
                        Ok(Ok(Opened::Plain(stream))) => refuse_plain(stream).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
                    }
                }
            }
            drop(slot);
        });
    }
}

fn timed(stream: TcpStream) -> Timed {
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(WRITE_TIMEOUT));
    Box::pin(stream)
}

async fn serve_http<I: Read + Write + Unpin + Send + 'static>(io: I, app: Router) {
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, TowerToHyperService::new(app))
        .await;
    if let Err(e) = served {
        tracing::debug!("connection ended: {e}");
    }
}

/// A connection to a TLS node after its first bytes.
enum Opened {
    Tls(Box<tokio_rustls::server::TlsStream<Timed>>),
    /// It spoke plain HTTP.
    Plain(Timed),
}

async fn handshake(stream: TcpStream, tls: Arc<ServerConfig>) -> io::Result<Opened> {
    let mut first = [0u8; 1];
    let plain = stream.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE;
    let stream = timed(stream);
    if plain {
        return Ok(Opened::Plain(stream));
    }
    let stream = TlsAcceptor::from(tls).accept(stream).await?;
    Ok(Opened::Tls(Box::new(stream)))
}

/// Answers a plain HTTP request on a TLS node with a `400` that says what to do, within
/// [`HANDSHAKE_TIMEOUT`]. The request head is read first and the rest drained after the answer,
/// so that the kernel does not reset the connection over unread bytes before the client has
/// read the answer.
async fn refuse_plain(mut stream: Timed) {
    let body = r#"{"code":"https_required","message":"this sentinel node serves HTTPS only: use https:// in --server (and --ca-cert FILE if its certificate is not signed by a system root)"}"#;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let refuse = async {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < PLAIN_HEAD_BYTES {
            match stream.read(&mut buf).await? {
                0 => return Ok(()),
                n => head.extend_from_slice(&buf[..n]),
            }
        }
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut buf).await? > 0 {}
        io::Result::Ok(())
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, refuse).await {
        Ok(Ok(())) => tracing::debug!("refused a plain HTTP request on a TLS node"),
        Ok(Err(e)) => tracing::debug!("refusing a plain HTTP request failed: {e}"),
        Err(_) => {
            tracing::debug!("a plain HTTP request was not refused within {HANDSHAKE_TIMEOUT:?}")
        }
    }
}

/// [`MAX_CONNECTIONS`], or fewer if the process may not open that many files.
pub fn connection_cap() -> usize {
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let cap = files.saturating_sub(RESERVED_FILES).max(16);
    usize::try_from(cap).map_or(MAX_CONNECTIONS, |cap| cap.min(MAX_CONNECTIONS))
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || [rustix::io::Errno::MFILE, rustix::io::Errno::NFILE]
        .iter()
        .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
}
