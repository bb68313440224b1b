//! A node's TLS (`serve --tls-cert FILE --tls-key FILE [--tls-client-ca FILE]`): the server side
//! it offers clients and peers, and the client side it reaches its peers with.
//!
//! Both are built, and their files read and checked (a key that does not go with its
//! certificate included), before the node opens its storage, so a mistake is a usage error at
//! start and never a failed handshake later. With TLS on, every member serves HTTPS, so a node
//! speaks HTTPS to its peers: it trusts the cluster's CA (`--ca-cert` if given, else
//! `--tls-client-ca`, else the system's roots) and, when client certificates are required,
//! presents its own certificate, which must then also be valid for client authentication.
//!
//! Peer certificates do not replace the peer token: a client certificate signed by the client
//! CA proves a client, not a member, so the Raft routes still require `--peer-token`, and TLS
//! adds confidentiality and, with `--tls-client-ca`, keeps clients without a certificate out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use sentinel_core::error::{Error, Result};
use sentinel_core::tls::{ClientTls, certified_key, provider, roots};

/// What `serve` was given for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain the node presents (`--tls-cert`), the leaf first.
    pub cert: PathBuf,
    /// PEM private key of [`TlsFiles::cert`] (`--tls-key`).
    pub key: PathBuf,
    /// PEM certificate authorities whose client certificates are accepted (`--tls-client-ca`);
    /// with it, a client without such a certificate is refused at the handshake.
    pub client_ca: Option<PathBuf>,
    /// PEM certificate authorities the node trusts when it calls its peers (`--ca-cert`).
    pub ca_cert: Option<PathBuf>,
}

/// A node's TLS configurations, ready.
#[derive(Debug, Clone)]
pub struct NodeTls {
    /// What the listener offers clients and peers.
    pub server: Arc<ServerConfig>,
    /// What the node's own client uses towards its peers.
    pub peers: Arc<ClientConfig>,
}

impl NodeTls {
    /// Reads and checks the files.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] naming the file for one that cannot be read or holds no certificate or
    /// key, and for a key that does not go with the certificate.
    pub fn new(files: &TlsFiles) -> Result<NodeTls> {
        let (chain, key) = certified_key(&files.cert, &files.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Unexpected(format!("TLS setup failed: {e}")))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(Some(ca))?),
                    provider(),
                )
                .build()
                .map_err(|e| usage(ca, "--tls-client-ca", &e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder
            .with_single_cert(chain, key)
            .map_err(|e| usage(&files.key, "--tls-key (for --tls-cert)", &e))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let peers = ClientTls {
            ca_cert: files.ca_cert.clone().or_else(|| files.client_ca.clone()),
            client_cert: files.client_ca.as_ref().map(|_| files.cert.clone()),
            client_key: files.client_ca.as_ref().map(|_| files.key.clone()),
        }
        .config()?;
        Ok(NodeTls {
            server: Arc::new(server),
            peers,
        })
    }
}

fn usage(path: &Path, option: &str, e: &dyn std::fmt::Display) -> Error {
    Error::usage(format!("{option} {}: {e}", path.display()))
}
