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

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

/// How long a client may take to send a request head (and how long a keep-alive connection may
/// stay idle).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write of an answer may wait for the client to take bytes.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 4_096;
/// File descriptors kept free for the log, snapshots and connections to peers.
const RESERVED_FILES: u64 = 64;

/// Serves `app` on `listener` until accepting fails for good.
pub async fn serve_connections(listener: TcpListener, app: Router) -> io::Error {
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
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let stream = Box::pin(stream);
        // The client's address, for the audit log (`api`).
        let app = app.clone().layer(Extension(ConnectInfo(remote)));
        let service = TowerToHyperService::new(app);
        tokio::spawn(async move {
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("connection ended: {e}");
            }
            drop(slot);
        });
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
