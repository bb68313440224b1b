//! `sentinel serve`: runs a coordinator node until it is stopped.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use crate::cli::{GlobalArgs, ServeArgs};
use crate::config;
use crate::output::{self, Report};
use sentinel::coordinator::NodeId;
use sentinel::coordinator::acl::Acl;
use sentinel::coordinator::server::{self, MAX_MEMBERS, ServeOptions};
use sentinel::coordinator::tls::{NodeTls, TlsFiles};
use sentinel::error::{Error, Result};
use sentinel::interrupt::Signals;
use sentinel::secret::Secret;

pub async fn exec(global: &GlobalArgs, args: &ServeArgs) -> Result<Report> {
    let opts = options(global, args)?;
    let (id, json) = (opts.id, global.json);
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    // SIGINT and SIGTERM are a daemon's normal stop: Raft shuts down, and the exit is 0.
    let mut signals = Signals::listen()?;
    let (signalled, stopped_by) = tokio::sync::oneshot::channel();
    let stop = async move {
        let _ = signalled.send(signals.recv().await);
    };
    let listening = AtomicBool::new(false);
    let served = server::serve(
        opts,
        |addr| {
            // The line a supervisor or a test waits for, and with --json the one JSON object
            // this command prints; a closed stdout must not stop the node.
            let line = if json {
                json!({"listening": format!("{scheme}://{addr}"), "id": id}).to_string()
            } else {
                format!("sentinel serve: node {id} listening on {scheme}://{addr}")
            };
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            listening.store(true, Ordering::SeqCst);
        },
        stop,
    )
    .await;
    let printed = listening.load(Ordering::SeqCst);
    match served {
        // Stopped by a signal.
        Ok(()) => {
            let signal = stopped_by.await.map(|s| s.name()).unwrap_or("a signal");
            tracing::info!("node {id} stopped by {signal}");
            Ok(Report::silent())
        }
        // After its JSON object, an error goes to stderr only: one object in the node's life.
        Err(e) if printed && json => {
            output::print_error(&e, false);
            let mut report = Report::silent();
            report.exit_code = e.exit_code().code();
            Ok(report)
        }
        Err(e) => Err(e),
    }
}

/// `--listen`'s address: an IP address and port, or a host name and port resolved once at start
/// (`localhost:7473`); of a name's addresses the first IPv4 one, as `localhost` means 127.0.0.1
/// to most clients, else the first.
fn listen_addr(raw: &str) -> Result<SocketAddr> {
    let bad = |why: String| {
        Error::usage(format!(
            "invalid --listen {raw:?}: {why}; expected HOST:PORT, such as {} or localhost:7473",
            server::DEFAULT_LISTEN
        ))
    };
    let raw = raw.trim();
    if let Ok(addr) = raw.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = raw
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| bad("the name has no address".into()))
}

/// Checks the options and builds the member list: the `--peer`s (this node among them), or
/// without any, this node alone at its `--listen` address.
pub fn options(global: &GlobalArgs, args: &ServeArgs) -> Result<ServeOptions> {
    let listen = listen_addr(&args.listen)?;
    if args.id == 0 {
        return Err(Error::usage("--id must be 1 or more"));
    }
    let mut members: BTreeMap<NodeId, String> = BTreeMap::new();
    for raw in &args.peers {
        let (id, addr) = peer(raw)?;
        if let Some(other) = members.insert(id, addr.clone())
            && other != addr
        {
            return Err(Error::usage(format!(
                "--peer lists node {id} twice, at {other} and at {addr}"
            )));
        }
    }
    if !members.is_empty() && !members.contains_key(&args.id) {
        // A mistyped --id would make a node that no member ever contacts.
        return Err(Error::usage(format!(
            "--id {} is not in the --peer list ({}): list this node too, with the same list \
             on every node",
            args.id,
            members
                .keys()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if members.is_empty() {
        members.insert(args.id, listen.to_string());
    }
    if members.len() > MAX_MEMBERS {
        return Err(Error::usage(format!(
            "a cluster has at most {MAX_MEMBERS} members, --peer lists {}",
            members.len()
        )));
    }
    let auth_token = config::auth_token(global)?;
    let peer_token = peer_token(args)?;
    if members.len() > 1 && peer_token.is_none() {
        return Err(Error::usage(
            "a node with other --peers needs the cluster's peer token: --peer-token-file FILE, \
             SENTINEL_PEER_TOKEN or --peer-token TOKEN, the same on every node",
        ));
    }
    let acl = Acl::from_options(auth_token.as_ref(), args.acl.as_deref())?;
    if let (Some(p), Some(acl)) = (&peer_token, &acl)
        && acl.holds(p)
    {
        return Err(Error::usage(
            "the peer token must differ from --auth-token and from every --acl token: clients \
             hold those",
        ));
    }
    Ok(ServeOptions {
        id: args.id,
        listen,
        members,
        data_dir: config::data_dir(global.data_dir.as_ref())?.join("coordinator"),
        acl,
        audit_log: args.audit_log.clone(),
        public_metrics: args.public_metrics,
        peer_token,
        snapshot_every: args.snapshot_every,
        kv_quota: args.kv_quota,
        tls: tls(global, args)?,
    })
}

/// HTTPS from `--tls-cert`, `--tls-key` and `--tls-client-ca` (peers: `--ca-cert` too), its
/// files read and checked now.
fn tls(global: &GlobalArgs, args: &ServeArgs) -> Result<Option<NodeTls>> {
    let (cert, key) = match (&args.tls_cert, &args.tls_key) {
        (None, None) if args.tls_client_ca.is_none() => return Ok(None),
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => {
            return Err(Error::usage(
                "TLS needs both --tls-cert FILE and --tls-key FILE (--tls-client-ca needs them too)",
            ));
        }
    };
    NodeTls::new(&TlsFiles {
        cert,
        key,
        client_ca: args.tls_client_ca.clone(),
        ca_cert: config::client_tls(global).ca_cert,
    })
    .map(Some)
}

/// The peer token from `--peer-token` (`SENTINEL_PEER_TOKEN`) or `--peer-token-file`, checked;
/// never echoed.
fn peer_token(args: &ServeArgs) -> Result<Option<Secret>> {
    let token = match (&args.peer_token, &args.peer_token_file) {
        (Some(_), Some(_)) => {
            return Err(Error::usage(
                "give the peer token once: --peer-token (SENTINEL_PEER_TOKEN) or \
                 --peer-token-file",
            ));
        }
        (Some(t), None) => t.expose().to_string(),
        (None, Some(file)) => config::token_file("--peer-token-file", file)?,
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        return Err(Error::usage(
            "the peer token (--peer-token, SENTINEL_PEER_TOKEN or --peer-token-file) is empty",
        ));
    }
    if token.len() > 1024 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::usage(
            "invalid peer token (--peer-token, SENTINEL_PEER_TOKEN or --peer-token-file): use 1 \
             to 1024 printable ASCII characters without spaces",
        ));
    }
    Ok(Some(Secret::new(token)))
}

/// Parses `ID=HOST:PORT`.
fn peer(raw: &str) -> Result<(NodeId, String)> {
    let bad = |why: &str| {
        Error::usage(format!(
            "invalid --peer {raw:?}: {why}; expected ID=HOST:PORT, such as 2=10.0.0.2:7464"
        ))
    };
    let (id, addr) = raw.trim().split_once('=').ok_or_else(|| bad("no ="))?;
    let id: NodeId = id
        .trim()
        .parse()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| bad("the id must be a number, 1 or more"))?;
    let authority: http::uri::Authority = addr.trim().parse().map_err(|_| bad("not HOST:PORT"))?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(bad("not HOST:PORT"));
    }
    if authority.port_u16().is_none_or(|p| p == 0) {
        return Err(bad("the port must be 1 to 65535"));
    }
    Ok((id, authority.as_str().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel::secret::Secret;

    fn opts(args: &[&str]) -> Result<ServeOptions> {
        let mut argv = vec!["sentinel", "--data-dir", "/tmp/x", "serve"];
        argv.extend_from_slice(args);
        let cli = crate::cli::try_parse_from(argv).unwrap();
        match &cli.command {
            crate::cli::Command::Serve(a) => options(&cli.global, a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_lone_node_is_its_own_cluster() {
        let o = opts(&[]).unwrap();
        assert_eq!(o.id, 1);
        assert_eq!(o.listen.to_string(), server::DEFAULT_LISTEN);
        assert_eq!(
            o.members,
            BTreeMap::from([(1, server::DEFAULT_LISTEN.to_string())])
        );
        assert!(o.data_dir.ends_with("coordinator"));
        assert!(o.acl.is_none() && o.audit_log.is_none() && !o.public_metrics);
    }

    #[test]
    fn the_auth_token_is_checked_and_never_echoed() {
        let o = opts(&["--auth-token", " s3cret "]).unwrap();
        assert!(o.acl.unwrap().holds(&Secret::new("s3cret")));
        assert!(opts(&["--auth-token", ""]).unwrap().acl.is_none());
        let e = opts(&["--auth-token", "has space-in-it"]).unwrap_err();
        assert_eq!(e.exit_code(), sentinel::error::ExitCode::Usage);
        assert!(!e.to_string().contains("space-in-it"), "{e}");
    }

    #[test]
    fn members_come_from_the_peer_list() {
        let o = opts(&[
            "--id",
            "2",
            "--listen",
            "0.0.0.0:9002",
            "--peer-token",
            "p33r",
            "--peer",
            "1=a.example:9001",
            "--peer",
            "2=b.example:9002",
            "--peer",
            "3=10.0.0.3:9003",
            "--peer",
            "1=a.example:9001",
        ])
        .unwrap();
        assert_eq!(o.members.len(), 3);
        assert_eq!(o.members[&2], "b.example:9002");
        assert_eq!(o.peer_token.as_ref().map(Secret::expose), Some("p33r"));
        // Listed alone, a node needs no peer token.
        let o = opts(&["--id", "3", "--peer", "3=127.0.0.1:9003"]).unwrap();
        assert_eq!(o.members.len(), 1);
        assert_eq!(o.peer_token, None);
    }

    #[test]
    fn a_node_missing_from_its_peer_list_refuses_to_start() {
        let e = opts(&[
            "--id",
            "3",
            "--listen",
            "127.0.0.1:9003",
            "--peer-token",
            "p33r",
            "--peer",
            "1=127.0.0.1:9001",
            "--peer",
            "2=127.0.0.1:9002",
        ])
        .unwrap_err();
        assert_eq!(e.exit_code(), sentinel::error::ExitCode::Usage);
        assert!(
            e.to_string()
                .contains("--id 3 is not in the --peer list (1, 2)"),
            "{e}"
        );
    }

    #[test]
    fn the_peer_token_is_required_with_peers_checked_and_never_echoed() {
        let two = ["--peer", "1=h:1", "--peer", "2=h:2"];
        let with = |extra: &[&str]| {
            let mut a = two.to_vec();
            a.extend_from_slice(extra);
            opts(&a)
        };
        for (extra, says) in [
            (vec![], "needs the cluster's peer token"),
            (vec!["--peer-token", ""], "is empty"),
            (vec!["--peer-token", "has space-in-it"], "printable ASCII"),
            (
                vec!["--peer-token", "same-s3cret", "--auth-token", "same-s3cret"],
                "must differ from --auth-token and from every --acl token",
            ),
            (
                vec!["--peer-token", "p33r", "--peer-token-file", "/nonexistent"],
                "once",
            ),
            (
                vec!["--peer-token-file", "/nonexistent/peer"],
                "cannot read",
            ),
        ] {
            let e = with(&extra).unwrap_err();
            assert_eq!(e.exit_code(), sentinel::error::ExitCode::Usage, "{extra:?}");
            assert!(e.to_string().contains(says), "{extra:?}: {e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
            assert!(!e.to_string().contains("space-in-it"), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peer-token");
        std::fs::write(&file, "fr0m-f1le\n").unwrap();
        let o = with(&["--peer-token-file", file.to_str().unwrap()]).unwrap();
        assert_eq!(o.peer_token.as_ref().map(Secret::expose), Some("fr0m-f1le"));
        std::fs::write(&file, "\n").unwrap();
        let e = with(&["--peer-token-file", file.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
    }

    #[test]
    fn bad_options_are_usage_errors() {
        for (args, says) in [
            (vec!["--listen", "localhost"], "invalid --listen"),
            (
                vec!["--listen", "no-such-host.invalid:7473"],
                "invalid --listen",
            ),
            (vec!["--id", "0"], "--id"),
            (vec!["--peer", "x"], "no ="),
            (vec!["--peer", "0=h:1"], "the id"),
            (vec!["--peer", "2=h"], "port"),
            (vec!["--peer", "2=h:0"], "port"),
            (vec!["--peer", "2=user@h:1"], "HOST:PORT"),
            (vec!["--peer", "2=h:1", "--peer", "2=h:2"], "twice"),
            (
                vec!["--listen", "0.0.0.0:1", "--peer", "2=h:1"],
                "not in the --peer list",
            ),
            (
                vec![
                    "--peer", "1=h:1", "--peer", "2=h:2", "--peer", "3=h:3", "--peer", "4=h:4",
                    "--peer", "5=h:5", "--peer", "6=h:6",
                ],
                "at most 5",
            ),
        ] {
            let e = opts(&args).unwrap_err();
            assert_eq!(e.exit_code(), sentinel::error::ExitCode::Usage, "{args:?}");
            assert!(e.to_string().contains(says), "{args:?}: {e}");
        }
    }

    /// A self-signed certificate for 127.0.0.1 and its key, and another key, as PEM files.
    fn tls_files(dir: &std::path::Path) -> [String; 3] {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let files = [
            ("cert.pem", cert.pem()),
            ("key.pem", key.serialize_pem()),
            (
                "other-key.pem",
                rcgen::KeyPair::generate().unwrap().serialize_pem(),
            ),
        ];
        files.map(|(name, pem)| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path.display().to_string()
        })
    }

    #[test]
    fn tls_files_are_read_and_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let [cert, key, other] = tls_files(dir.path());
        assert!(opts(&[]).unwrap().tls.is_none());
        assert!(
            opts(&["--tls-cert", &cert, "--tls-key", &key])
                .unwrap()
                .tls
                .is_some()
        );
        assert!(
            opts(&[
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &cert
            ])
            .unwrap()
            .tls
            .is_some()
        );
        for (args, says) in [
            (vec!["--tls-cert", &cert, "--tls-key", &other], "--tls-key"),
            (
                vec!["--tls-cert", "/nonexistent/c.pem", "--tls-key", &key],
                "/nonexistent/c.pem",
            ),
            (
                vec!["--tls-cert", &cert, "--tls-key", "/nonexistent/k.pem"],
                "/nonexistent/k.pem",
            ),
            (
                vec!["--tls-cert", &key, "--tls-key", &key],
                "no PEM certificate",
            ),
            (
                vec![
                    "--tls-cert",
                    &cert,
                    "--tls-key",
                    &key,
                    "--tls-client-ca",
                    &key,
                ],
                "no PEM certificate",
            ),
        ] {
            let e = opts(&args).unwrap_err();
            assert_eq!(e.exit_code(), sentinel::error::ExitCode::Usage, "{args:?}");
            assert!(e.to_string().contains(says), "{args:?}: {e}");
        }
        // Half a pair is refused by the parser (exit 2 as well).
        for half in [
            vec!["--tls-cert", cert.as_str()],
            vec!["--tls-key", key.as_str()],
            vec!["--tls-client-ca", cert.as_str()],
        ] {
            let mut argv = vec!["sentinel", "serve"];
            argv.extend_from_slice(&half);
            assert!(crate::cli::try_parse_from(argv).is_err(), "{half:?}");
        }
    }
}
