//! `sentinel serve` with TLS, as real processes on loopback with certificates each test makes
//! (rcgen): HTTPS for clients that trust the cluster's CA and a clear refusal for those that do
//! not, client certificates (mTLS), a three-node cluster whose nodes speak HTTPS to each other
//! (Raft and forwarding to the leader), and a client that never handshakes.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use crate::serve::{PEER_TOKEN, free_addr, peers_of};
use crate::support::{code, sentinel, stdout_json, text};

/// A test's certificates: the cluster's CA, a node certificate for 127.0.0.1 and localhost
/// (valid for servers and clients, as nodes are both to each other), a client certificate, and
/// the same again from a CA nobody trusts.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        for prefix in ["", "rogue-"] {
            let ca_key = KeyPair::generate().unwrap();
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.distinguished_name
                .push(DnType::CommonName, format!("{prefix}sentinel test CA"));
            pki.write(
                &format!("{prefix}ca.pem"),
                &ca.self_signed(&ca_key).unwrap().pem(),
            );
            let issuer = Issuer::new(ca, ca_key);
            for (name, sans, usages) in [
                (
                    "node",
                    vec!["127.0.0.1".to_string(), "localhost".to_string()],
                    vec![
                        ExtendedKeyUsagePurpose::ServerAuth,
                        ExtendedKeyUsagePurpose::ClientAuth,
                    ],
                ),
                (
                    "client",
                    vec!["worker.example".to_string()],
                    vec![ExtendedKeyUsagePurpose::ClientAuth],
                ),
            ] {
                let key = KeyPair::generate().unwrap();
                let mut params = CertificateParams::new(sans).unwrap();
                params.extended_key_usages = usages;
                let cert = params.signed_by(&key, &issuer).unwrap();
                pki.write(&format!("{prefix}{name}.pem"), &cert.pem());
                pki.write(&format!("{prefix}{name}-key.pem"), &key.serialize_pem());
            }
        }
        pki
    }

    fn write(&self, name: &str, pem: &str) {
        std::fs::write(self.dir.path().join(name), pem).unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A TLS `sentinel serve` process, killed when dropped.
struct TlsNode {
    addr: String,
    data: PathBuf,
    child: Child,
}

impl TlsNode {
    /// Starts node `id` at `addr` with `--tls-cert`/`--tls-key` of `pki`, `extra` options, and
    /// waits for the line that says it listens on https.
    fn start(
        pki: &Pki,
        id: u64,
        addr: &str,
        peers: &[String],
        data: &Path,
        extra: &[&str],
    ) -> TlsNode {
        let log = std::fs::File::create(data.join(format!("node-{id}.log"))).unwrap();
        let mut cmd = sentinel(data);
        cmd.args(["serve", "--id", &id.to_string(), "--listen", addr])
            .args(["--tls-cert", &pki.path("node.pem")])
            .args(["--tls-key", &pki.path("node-key.pem")])
            .args(extra);
        for p in peers {
            cmd.args(["--peer", p]);
        }
        if peers.len() > 1 {
            cmd.env("SENTINEL_PEER_TOKEN", PEER_TOKEN);
        }
        let mut child = cmd
            .env("RUST_LOG", "sentinel=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            let _ = tx.send(line);
        });
        let node = TlsNode {
            addr: addr.to_string(),
            data: data.to_path_buf(),
            child,
        };
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        assert!(
            line.contains(&format!("node {id} listening on https://{addr}")),
            "{line:?}: {}",
            node.log(id)
        );
        node
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.data.join(format!("node-{id}.log"))).unwrap_or_default()
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sentinel --server SERVER --worker-id w ARGS...`.
fn client(data: &Path, server: &str, args: &[&str]) -> Output {
    sentinel(data)
        .args(["--server", server, "--worker-id", "w"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_tls_node_serves_clients_that_trust_its_ca_and_refuses_the_others_clearly() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let node = TlsNode::start(&pki, 1, &free_addr(), &[], data.path(), &[]);
    let url = node.url();
    let ca = pki.path("ca.pem");

    let out = client(data.path(), &url, &["--ca-cert", &ca, "claim", "x"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    // SENTINEL_CA_CERT does the same.
    let out = sentinel(data.path())
        .env("SENTINEL_CA_CERT", &ca)
        .args(["--server", &url, "--worker-id", "w", "release", "x"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));

    // A certificate the client does not trust: exit 5 at once, naming the URL and the fix.
    let started = Instant::now();
    let out = client(
        data.path(),
        &url,
        &["--ca-cert", &pki.path("rogue-ca.pem"), "claim", "x"],
    );
    assert_eq!(code(&out), 5, "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(&url), "{said}");
    assert!(
        said.contains("does not trust the server's certificate"),
        "{said}"
    );
    assert!(said.contains("--ca-cert"), "{said}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "retried: {said}"
    );

    // Plain HTTP to a TLS node: told to use https.
    let out = client(
        data.path(),
        &format!("http://{}", node.addr),
        &["claim", "x"],
    );
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("serves HTTPS only"), "{}", text(&out));

    // A bad --ca-cert file is a usage error naming it.
    let out = client(
        data.path(),
        &url,
        &["--ca-cert", "/nonexistent/ca.pem", "claim", "x"],
    );
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("/nonexistent/ca.pem"), "{}", text(&out));
}

#[test]
fn https_to_a_plain_node_says_it_does_not_speak_tls() {
    let data = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let node = crate::serve::Node::start(1, &free_addr(), &[], data.path(), None);
    let out = client(
        data.path(),
        &format!("https://{}", node.addr),
        &["--ca-cert", &pki.path("ca.pem"), "claim", "x"],
    );
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(text(&out).contains("does not speak TLS"), "{}", text(&out));
}

#[test]
fn with_a_client_ca_only_clients_with_its_certificates_get_in() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let client_ca = pki.path("ca.pem");
    let node = TlsNode::start(
        &pki,
        1,
        &free_addr(),
        &[],
        data.path(),
        &["--tls-client-ca", &client_ca],
    );
    let url = node.url();
    let ca = pki.path("ca.pem");
    for (cert, key) in [
        (None, None),
        (Some("rogue-client.pem"), Some("rogue-client-key.pem")),
    ] {
        let mut args = vec!["--ca-cert".to_string(), ca.clone()];
        if let (Some(cert), Some(key)) = (cert, key) {
            args.extend(["--client-cert".into(), pki.path(cert)]);
            args.extend(["--client-key".into(), pki.path(key)]);
        }
        args.extend(["claim".into(), "x".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = client(data.path(), &url, &args);
        assert_eq!(code(&out), 5, "{cert:?}: {}", text(&out));
        assert!(
            text(&out).contains("--client-cert"),
            "{cert:?}: {}",
            text(&out)
        );
    }
    let out = sentinel(data.path())
        .env("SENTINEL_CA_CERT", &ca)
        .env("SENTINEL_CLIENT_CERT", pki.path("client.pem"))
        .env("SENTINEL_CLIENT_KEY", pki.path("client-key.pem"))
        .args(["--server", &url, "--worker-id", "w", "claim", "x"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn a_tls_cluster_elects_a_leader_and_forwards_over_tls() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    let ca = pki.path("ca.pem");
    // Client certificates required: peers present their own node certificate to each other.
    let nodes: Vec<TlsNode> = (0..3)
        .map(|i| {
            let dir = data.path().join(format!("n{}", i + 1));
            std::fs::create_dir_all(&dir).unwrap();
            TlsNode::start(
                &pki,
                i as u64 + 1,
                &addrs[i],
                &peers,
                &dir,
                &["--tls-client-ca", &ca],
            )
        })
        .collect();
    let with_cert = |server: &str, args: &[&str]| {
        sentinel(data.path())
            .args(["--server", server, "--ca-cert", &ca])
            .args(["--client-cert", &pki.path("client.pem")])
            .args(["--client-key", &pki.path("client-key.pem")])
            .args(args)
            .output()
            .unwrap()
    };
    let logs = || {
        (1..=3)
            .map(|i| nodes[i - 1].log(i as u64))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let out = with_cert(&nodes[0].url(), &["--json", "cluster", "status"]);
        if code(&out) == 0
            && let Some(leader) = stdout_json(&out)["cluster"]["leader"].as_u64()
        {
            break leader;
        }
        assert!(
            Instant::now() < deadline,
            "no leader: {}\n{}",
            text(&out),
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let follower = nodes
        .iter()
        .enumerate()
        .find(|(i, _)| *i as u64 + 1 != leader)
        .map(|(_, n)| n)
        .unwrap();
    let out = with_cert(&follower.url(), &["--worker-id", "w", "claim", "x"]);
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), logs());
    let out = with_cert(&follower.url(), &["--json", "status", "x"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("\"w\""), "{}", text(&out));
}

#[test]
fn a_client_that_never_handshakes_holds_up_nobody_and_is_let_go() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let node = TlsNode::start(&pki, 1, &free_addr(), &[], data.path(), &[]);
    let mut silent = TcpStream::connect(&node.addr).unwrap();
    let out = client(
        data.path(),
        &node.url(),
        &["--ca-cert", &pki.path("ca.pem"), "claim", "x"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    // The node closes it after its handshake deadline (10 s).
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    match silent.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the silent connection is still open: {other:?}"),
    }
}

#[test]
fn serve_checks_its_tls_files_at_start() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let serve = |args: &[&str]| {
        sentinel(data.path())
            .args(["serve", "--listen", &free_addr()])
            .args(args)
            .output()
            .unwrap()
    };
    let out = serve(&[
        "--tls-cert",
        &pki.path("node.pem"),
        "--tls-key",
        &pki.path("client-key.pem"),
    ]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("--tls-key"), "{}", text(&out));
    let out = serve(&["--tls-key", &pki.path("node-key.pem")]);
    assert_eq!(code(&out), 2, "{}", text(&out));
}
