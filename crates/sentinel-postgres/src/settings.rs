//! The connection URL, read before anything connects: what the driver gets, the schema the lock
//! table lives in, and how the connection is secured.
//!
//! The driver (tokio-postgres) knows `sslmode=disable|prefer|require` only, and knows neither
//! libpq's `verify-ca`/`verify-full` nor `sslrootcert`/`sslcert`/`sslkey`, so those, and
//! sentinel's own `sentinel_schema`, are taken out of the query string here and the rest is left
//! to the driver. A URL with credentials is never repeated in a message.

use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use tokio_postgres::config::SslMode;

use sentinel_core::error::{Error, Result};
use sentinel_core::tls::ClientTls;

/// How long one connection attempt may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The schema the table and sequence live in unless the URL names another.
const DEFAULT_SCHEMA: &str = "public";

/// How the server's certificate is checked (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// No TLS at all (`disable`).
    Plain,
    /// Encrypted, the certificate not checked (`prefer`, `require` without a CA).
    Nothing,
    /// The chain to a trusted CA, not the host name (`verify-ca`, or `prefer`/`require` with a
    /// CA).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// What the URL (and the global TLS options) say about TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tls {
    pub verify: Verify,
    /// The CA file; `None` means the system's roots (`sslrootcert=system`, or no CA anywhere).
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Everything the URL says.
pub(crate) struct Settings {
    pub config: tokio_postgres::Config,
    /// The schema of the table and sequence, exactly as named (default `public`).
    pub schema: String,
    pub tls: Tls,
}

/// The options sentinel reads itself, taken out of the query string.
#[derive(Default)]
struct Own {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
    schema: Option<String>,
}

/// Splits sentinel's own options out of the URL's query string; the rest stays as written. The
/// query starts at the first `?` after the credentials, as the driver reads it.
fn split_own(raw: &str) -> std::result::Result<(String, Own), String> {
    let after_at = raw.find('@').map_or(0, |i| i + 1);
    let Some(q) = raw[after_at..].find('?').map(|i| after_at + i) else {
        return Ok((raw.to_string(), Own::default()));
    };
    let mut own = Own::default();
    let mut kept = Vec::new();
    for part in raw[q + 1..].split('&').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| format!("the option {key:?} is not valid UTF-8"))
        };
        let slot = match decode(key)?.as_str() {
            "sslmode" => &mut own.sslmode,
            "sslrootcert" => &mut own.sslrootcert,
            "sslcert" => &mut own.sslcert,
            "sslkey" => &mut own.sslkey,
            "sentinel_schema" => &mut own.schema,
            _ => {
                kept.push(part);
                continue;
            }
        };
        *slot = Some(decode(value)?);
    }
    let base = &raw[..q];
    Ok(if kept.is_empty() {
        (base.to_string(), own)
    } else {
        (format!("{base}?{}", kept.join("&")), own)
    })
}

/// A schema name sentinel can put in SQL without doubt: letters, digits and `_`, at most
/// PostgreSQL's 63 bytes. It is used exactly as written (quoted, so case is kept).
fn schema(name: &str) -> std::result::Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!(
            "sentinel_schema={name:?} is not a schema name sentinel accepts (letters, digits and _, \
             at most 63)"
        ))
    }
}

/// Checks a PostgreSQL URL and builds the driver's configuration, without connecting. `global` is
/// `--ca-cert`, `--client-cert` and `--client-key`, which the URL's `sslrootcert`, `sslcert` and
/// `sslkey` override.
pub(crate) fn parse(raw: &str, global: &ClientTls) -> Result<Settings> {
    let raw = raw.trim();
    let bad = |why: &str| {
        let shown = if raw.contains('@') || raw.contains("password") {
            "(not shown: it may contain credentials)".to_string()
        } else {
            format!("{raw:?}")
        };
        Error::usage(format!(
            "invalid --database-url {shown}: {why}; expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        ))
    };
    if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
        return Err(bad("the scheme must be postgres:// or postgresql://"));
    }
    let (rest, own) = split_own(raw).map_err(|why| bad(&why))?;
    // The driver's parse errors name the option, never its value.
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| bad(&crate::describe(&e)))?;
    if config.get_hosts().is_empty() {
        return Err(bad("no host"));
    }
    let has_ca = own.sslrootcert.is_some() || global.ca_cert.is_some();
    let (mode, verify) = match own.sslmode.as_deref().unwrap_or("prefer") {
        "disable" => (SslMode::Disable, Verify::Plain),
        "prefer" if has_ca => (SslMode::Prefer, Verify::Chain),
        "prefer" => (SslMode::Prefer, Verify::Nothing),
        "require" if has_ca => (SslMode::Require, Verify::Chain),
        "require" => (SslMode::Require, Verify::Nothing),
        "verify-ca" => (SslMode::Require, Verify::Chain),
        "verify-full" => (SslMode::Require, Verify::Full),
        "allow" => {
            return Err(bad(
                "sslmode=allow (plain first, TLS only if the server insists) is not supported; \
                 use prefer, require, verify-ca or verify-full (or disable)",
            ));
        }
        other => {
            return Err(bad(&format!(
                "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    config.ssl_mode(mode);
    let root_cert = match own.sslrootcert {
        Some(s) if s == "system" => None,
        Some(s) => Some(PathBuf::from(s)),
        None => global.ca_cert.clone(),
    };
    let client_cert = own
        .sslcert
        .map(PathBuf::from)
        .or(global.client_cert.clone());
    let client_key = own.sslkey.map(PathBuf::from).or(global.client_key.clone());
    let schema =
        schema(own.schema.as_deref().unwrap_or(DEFAULT_SCHEMA)).map_err(|why| bad(&why))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // A waiting lock or a client that stalls inside a transaction must not hold everyone up:
    // the per-name lock is given up after 5 s (and retried), a transaction idle for 10 s ends.
    let options = format!(
        "{} -c lock_timeout=5000 -c idle_in_transaction_session_timeout=10000",
        config.get_options().unwrap_or_default()
    );
    config.options(options.trim());
    if config.get_application_name().is_none() {
        config.application_name("sentinel");
    }
    Ok(Settings {
        config,
        schema,
        tls: Tls {
            verify,
            root_cert,
            client_cert,
            client_key,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(raw: &str) -> Settings {
        parse(raw, &ClientTls::default()).unwrap()
    }

    #[test]
    fn own_options_are_taken_out_and_the_rest_left_to_the_driver() {
        let s = url(
            "postgres://u:p%3Fq@h/db?application_name=app&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&sentinel_schema=locks",
        );
        assert_eq!(s.config.get_application_name(), Some("app"));
        assert_eq!(s.config.get_password(), Some(&b"p?q"[..]));
        assert_eq!(s.schema, "locks");
        assert_eq!(s.tls.verify, Verify::Full);
        assert_eq!(s.tls.root_cert, Some(PathBuf::from("/tmp/ca.pem")));
        let s = url("postgres://h/db");
        assert_eq!(s.config.get_application_name(), Some("sentinel"));
        assert_eq!(s.schema, "public");
        assert_eq!(s.tls.verify, Verify::Nothing);
        assert_eq!(
            url("postgres://h/db?sslmode=disable").tls.verify,
            Verify::Plain
        );
    }

    #[test]
    fn a_global_ca_makes_require_verify_the_chain_and_the_url_wins() {
        let global = ClientTls {
            ca_cert: Some(PathBuf::from("/global.pem")),
            ..ClientTls::default()
        };
        let s = parse("postgres://h/db?sslmode=require", &global).unwrap();
        assert_eq!(s.tls.verify, Verify::Chain);
        assert_eq!(s.tls.root_cert, Some(PathBuf::from("/global.pem")));
        let s = parse(
            "postgres://h/db?sslmode=verify-ca&sslrootcert=system",
            &global,
        )
        .unwrap();
        assert_eq!(s.tls.root_cert, None);
    }

    #[test]
    fn bad_options_are_usage_errors() {
        for bad in [
            "postgres://u:hunter2@h/db?sslmode=allow",
            "postgres://u:hunter2@h/db?sslmode=maybe",
            "postgres://u:hunter2@h/db?sentinel_schema=a;drop",
            "postgres://u:hunter2@h/db?sentinel_schema=",
            "postgres://u:hunter2@h/db?no_such_option=1",
        ] {
            let e = parse(bad, &ClientTls::default()).err().unwrap();
            assert!(matches!(e, Error::Usage(_)), "{bad}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }
}
