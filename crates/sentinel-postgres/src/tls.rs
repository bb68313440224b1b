//! TLS to PostgreSQL with libpq's meaning of `sslmode`: what is checked of the server's
//! certificate (nothing, the chain, or the chain and the host name) and which client certificate
//! is presented.
//!
//! rustls checks the chain and the host name together; libpq's `require` (encryption only) and
//! `verify-ca` (the chain, any name) need a verifier of their own, here. Handshake signatures are
//! always checked, so even `require` talks to the holder of the certificate's key. The files are
//! read before the first connection, so a missing or malformed one is a usage error at once.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use sentinel_core::error::{Error, Result};
use sentinel_core::tls;

use crate::settings::{Tls, Verify};

/// The connector for `settings`; `None` for `sslmode=disable`.
pub(crate) fn connector(settings: &Tls) -> Result<Option<MakeRustlsConnect>> {
    let provider = tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Unexpected(format!("TLS setup failed: {e}")))?;
    let roots = || tls::roots(settings.root_cert.as_deref()).map(Arc::new);
    let builder = match settings.verify {
        Verify::Plain => return Ok(None),
        Verify::Full => builder.with_root_certificates(roots()?),
        Verify::Chain => {
            let chain = WebPkiServerVerifier::builder_with_provider(roots()?, provider)
                .build()
                .map_err(|e| Error::usage(format!("the CA certificates cannot be used: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
        }
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptionOnly(provider))),
    };
    let config = match (&settings.client_cert, &settings.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let (chain, key) = tls::certified_key(cert, key)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::usage(format!(
                    "the client certificate {} does not go with its key: {e}",
                    cert.display()
                ))
            })?
        }
        (Some(_), None) => return Err(Error::usage("sslcert (--client-cert) needs sslkey")),
        (None, Some(_)) => return Err(Error::usage("sslkey (--client-key) needs sslcert")),
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in the certificate is not looked at.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // The web PKI verifier checks the chain first and the name last, so a name mismatch
        // means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` (and `prefer`) without a CA: encrypted, whoever the certificate names.
#[derive(Debug)]
struct EncryptionOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptionOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
