//! TLS for the connections sentinel opens to its servers (a coordinator, Redis, PostgreSQL,
//! etcd): which certificate authorities to trust and which certificate, if any, to present.
//!
//! One place, so that every backend reads `--ca-cert` (or `SENTINEL_CA_CERT`) and
//! `--client-cert`/`--client-key` the same way: the files are read and checked before the first
//! connection, and a missing, unreadable or malformed file is a usage error naming the file,
//! never a handshake failure later. Without `--ca-cert` the system's roots are trusted, as a
//! browser or `curl` would. The crypto provider is named explicitly (ring, the one octocrab
//! already brings) so that no process-wide default has to be installed first.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::error::{Error, Result};

/// What a client trusts and presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM file of the certificate authorities to trust instead of the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM file of the certificate (chain) to present, for servers that require client
    /// certificates; needs [`ClientTls::client_key`].
    pub client_cert: Option<PathBuf>,
    /// PEM file of the private key of [`ClientTls::client_cert`].
    pub client_key: Option<PathBuf>,
}

impl ClientTls {
    /// The rustls configuration these files describe.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for a file that cannot be read or holds no certificate or key, a client
    /// certificate without its key (or the other way round), or no trusted roots at all.
    pub fn config(&self) -> Result<Arc<ClientConfig>> {
        let identity = match (&self.client_cert, &self.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert, certified_key(cert, key)?)),
            (Some(_), None) => return Err(Error::usage("--client-cert needs --client-key")),
            (None, Some(_)) => return Err(Error::usage("--client-key needs --client-cert")),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Unexpected(format!("TLS setup failed: {e}")))?
            .with_root_certificates(roots(self.ca_cert.as_deref())?);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, (chain, key))) => {
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    Error::usage(format!(
                        "the client certificate {} does not go with its key: {e}",
                        cert.display()
                    ))
                })?
            }
        };
        Ok(Arc::new(config))
    }
}

/// The crypto provider every TLS configuration of sentinel uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate authorities in the PEM file `ca`, or the system's roots without one.
///
/// # Errors
///
/// [`Error::Usage`] if the file cannot be read or holds no certificate, or if the system has no
/// roots.
pub fn roots(ca: Option<&Path>) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificates(path)? {
                store.add(cert).map_err(|e| {
                    Error::usage(format!(
                        "{}: not a usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(String::new, |e| format!(" ({e})"));
                return Err(Error::usage(format!(
                    "no trusted certificate authorities on this system{why}: give --ca-cert FILE \
                     (or SENTINEL_CA_CERT)"
                )));
            }
        }
    }
    Ok(store)
}

/// The certificates in a PEM file, in order (a chain: the leaf first).
///
/// # Errors
///
/// [`Error::Usage`] if the file cannot be read, is not PEM, or holds no certificate.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<std::result::Result<Vec<_>, _>>)
        .map_err(|e| {
            Error::usage(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::usage(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// A certificate chain and its private key, each from a PEM file.
///
/// # Errors
///
/// [`Error::Usage`] if either file cannot be read or holds no certificate or key.
pub fn certified_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        Error::usage(format!(
            "cannot read a private key from {}: {e}",
            key.display()
        ))
    })?;
    Ok((chain, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_usage_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");
        for path in [&empty, &missing] {
            let tls = ClientTls {
                ca_cert: Some(path.clone()),
                ..ClientTls::default()
            };
            let err = tls.config().unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{err:?}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
        let half = ClientTls {
            client_cert: Some(empty.clone()),
            ..ClientTls::default()
        };
        assert!(
            half.config()
                .unwrap_err()
                .to_string()
                .contains("--client-key")
        );
    }
}
