//! The last token fallback: the login of the GitHub CLI (`gh auth token`), so a developer who ran
//! `gh auth login` needs no token in the environment.
//!
//! `gh` is another program that may wait on a keyring, prompt, or be a broken shim, so it runs
//! without stdin and against a deadline after which it is killed; whatever goes wrong just means
//! there is no token from it. Its stdout is read on a thread so that a descendant that keeps the
//! pipe open cannot hold sentinel past the deadline either.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

use sentinel::secret::Secret;

/// Longer than `gh` takes to read its config or a keyring, short enough not to stall a claim.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// The host name `gh` files the login under for an API URL: `github.com` for
/// `https://api.github.com`, `HOST` for Enterprise Server's `https://HOST/api/v3`, and
/// `TENANT.ghe.com` for Enterprise Cloud's `https://api.TENANT.ghe.com`.
pub fn hostname(api_url: &str) -> Option<String> {
    let uri: http::Uri = api_url.parse().ok()?;
    let host = uri.host().filter(|h| !h.is_empty())?;
    let host = match host {
        "api.github.com" => "github.com",
        h => h
            .strip_prefix("api.")
            .filter(|rest| rest.ends_with(".ghe.com"))
            .unwrap_or(h),
    };
    Some(match uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    })
}

/// `gh auth token --hostname HOST`, or `None` if `gh` is missing, fails, prints nothing usable or
/// misses the deadline.
pub fn token(api_url: &str) -> Option<Secret> {
    let host = hostname(api_url)?;
    let started = Instant::now();
    let mut child = match Command::new("gh")
        .args(["auth", "token", "--hostname", &host])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            tracing::debug!(error = %e, "no GitHub CLI (gh) to ask for a token");
            return None;
        }
    };
    let mut stdout = child.stdout.take()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = tx.send(stdout.read_to_string(&mut text).map(|_| text));
    });
    let printed = rx.recv_timeout(DEADLINE).ok().and_then(|r| r.ok());
    let left = DEADLINE.saturating_sub(started.elapsed());
    let status = match child.wait_timeout(left) {
        Ok(Some(status)) => status,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            tracing::warn!(
                "`gh auth token` did not finish within {} s; going on without its token",
                DEADLINE.as_secs()
            );
            return None;
        }
    };
    if !status.success() {
        tracing::debug!(%status, %host, "`gh auth token` failed (not logged in to this host?)");
        return None;
    }
    let token = printed?.trim().to_string();
    if token.is_empty() || token.contains(char::is_whitespace) {
        tracing::debug!("`gh auth token` printed no token");
        return None;
    }
    Some(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_map_to_the_hosts_gh_knows() {
        for (url, host) in [
            ("https://api.github.com", Some("github.com")),
            ("https://api.github.com/", Some("github.com")),
            ("https://ghe.example.com/api/v3", Some("ghe.example.com")),
            ("https://api.acme.ghe.com", Some("acme.ghe.com")),
            ("https://api.example.com", Some("api.example.com")),
            ("http://127.0.0.1:8080", Some("127.0.0.1:8080")),
            ("not a url", None),
            ("", None),
        ] {
            assert_eq!(hostname(url).as_deref(), host, "{url}");
        }
    }
}
