//! What `sentinel doctor` reports: one [`Check`] per thing a backend depends on (a server that
//! answers, a policy, a grant, a writable directory), found by each backend's own `diagnose`.
//!
//! It lives here, beside the error type, because every backend crate produces checks and none
//! may depend on another; a failed check keeps its [`Error`], so the CLI exits with the error's
//! own code and never guesses one from the text.

use crate::error::Error;

/// How one check came out.
#[derive(Debug)]
pub enum Verdict {
    /// As it should be.
    Ok,
    /// Works, but worth knowing (a rate limit running low, a policy that cannot be read).
    Warn,
    /// The backend cannot be used until this is fixed; the error says why and carries the code.
    Fail(Error),
}

/// One thing `doctor` looked at.
#[derive(Debug)]
pub struct Check {
    /// What was checked, short and stable (`maxmemory-policy`, `health http://HOST:PORT`).
    pub name: String,
    /// What was found, for people; never a token or a password.
    pub detail: String,
    /// Whether it is usable.
    pub verdict: Verdict,
}

impl Check {
    /// A check that passed.
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            detail: detail.into(),
            verdict: Verdict::Ok,
        }
    }

    /// A check that passed with a caveat.
    pub fn warn(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            detail: detail.into(),
            verdict: Verdict::Warn,
        }
    }

    /// A check that failed with `error`, whose message is the detail.
    pub fn fail(name: impl Into<String>, error: Error) -> Check {
        Check {
            name: name.into(),
            detail: error.to_string(),
            verdict: Verdict::Fail(error),
        }
    }

    /// `ok` with the detail `result` carries, or `fail` with its error.
    pub fn of(name: impl Into<String>, result: Result<String, Error>) -> Check {
        match result {
            Ok(detail) => Check::ok(name, detail),
            Err(e) => Check::fail(name, e),
        }
    }

    /// `ok`, `warn` or `fail`, as `doctor --json` spells it.
    pub fn status(&self) -> &'static str {
        match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail(_) => "fail",
        }
    }

    /// The error of a failed check.
    pub fn error(&self) -> Option<&Error> {
        match &self.verdict {
            Verdict::Fail(e) => Some(e),
            _ => None,
        }
    }
}

/// The checks of the endpoints of a backend that fails over between them (etcd's, the
/// coordinator's nodes): one that answers is enough, so while one does, the others' failures are
/// warnings; when none does, each is a failure.
pub fn endpoints(results: Vec<(String, Result<String, Error>)>) -> Vec<Check> {
    let one_answers = results.iter().any(|(_, r)| r.is_ok());
    results
        .into_iter()
        .map(|(name, result)| match result {
            Err(e) if one_answers => Check::warn(name, e.to_string()),
            result => Check::of(name, result),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_keeps_its_error_and_message() {
        let c = Check::of("x", Err(Error::Auth("bad token".into())));
        assert_eq!(c.status(), "fail");
        assert_eq!(c.detail, "bad token");
        assert!(matches!(c.error(), Some(Error::Auth(_))));
        let c = Check::of("x", Ok("fine".into()));
        assert_eq!((c.status(), c.detail.as_str()), ("ok", "fine"));
        assert!(c.error().is_none());
        assert_eq!(Check::warn("x", "low").status(), "warn");
    }

    #[test]
    fn a_down_endpoint_fails_only_when_none_answers() {
        let down = || Err(Error::Unavailable("refused".into()));
        let some = endpoints(vec![("a".into(), down()), ("b".into(), Ok("up".into()))]);
        assert_eq!(
            some.iter().map(Check::status).collect::<Vec<_>>(),
            ["warn", "ok"]
        );
        let none = endpoints(vec![("a".into(), down()), ("b".into(), down())]);
        assert!(none.iter().all(|c| c.status() == "fail"));
    }
}
