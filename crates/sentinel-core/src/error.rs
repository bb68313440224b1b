//! The one error type of the library and its mapping to the CLI's documented exit codes (README,
//! "Exit codes"; docs/commands.md has the details).
//!
//! Every failure a user can cause or meet is a variant here, so `main` turns any of them into the
//! right exit code in one place, the way cargo's `CliError` does.

use std::time::Duration;

/// Exit codes of the CLI contract. Scripts depend on these numbers: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// The command did what it was asked (acquired, released, renewed, status shown).
    Success = 0,
    /// Any failure without a code of its own ([`Error::Unexpected`]).
    Unexpected = 1,
    /// Invalid input ([`Error::Usage`]).
    Usage = 2,
    /// The lock is held by someone else ([`Error::Conflict`]).
    Conflict = 3,
    /// Not the holder, or the lock was lost ([`Error::NotOwner`]).
    NotOwner = 4,
    /// Authentication or permission denied ([`Error::Auth`]).
    Auth = 5,
    /// What the command names does not exist ([`Error::NotFound`]).
    NotFound = 6,
    /// Rate limited past the wait budget ([`Error::RateLimited`]).
    RateLimited = 7,
    /// The backend could not be reached after retries ([`Error::Unavailable`]).
    Unavailable = 8,
    /// Stopped by SIGINT (128 + 2).
    Interrupted = 130,
    /// Stopped by SIGTERM (128 + 15).
    Terminated = 143,
}

impl ExitCode {
    /// The number the process exits with.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Every failure of the library; each variant has its [`ExitCode`]. The message is for people and
/// is built without tokens or URL credentials; decide what to do by the variant (or
/// [`Error::kind`], [`Error::exit_code`]), never by the text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: an issue number, repo, duration, lock name or JSON that cannot be used.
    #[error("{0}")]
    Usage(String),
    /// The lock is held by someone else and the strategy gave up.
    #[error("{0}")]
    Conflict(String),
    /// The caller does not hold the lock (never did, or lost it: stolen, released, expired).
    #[error("{0}")]
    NotOwner(String),
    /// The backend refused the credentials or the permission: a bad or missing token, a wrong
    /// Redis or PostgreSQL password, a GitHub issue the token may not write to. Retrying does not
    /// help.
    #[error("{0}")]
    Auth(String),
    /// What was named does not exist: a repository or issue (deleted, transferred), a database.
    #[error("{0}")]
    NotFound(String),
    /// The rate limit would not reset within the wait budget.
    #[error("{message}")]
    RateLimited {
        /// What the backend said, and how long the wait would have been.
        message: String,
        /// How long the backend asked to wait before the next request, when it said.
        retry_after: Option<Duration>,
    },
    /// Network errors and 5xx that outlived our retries.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: local I/O errors, a corrupt state file, an error or answer of the backend
    /// that fits no other variant. Usually not worth retrying.
    #[error("{0}")]
    Unexpected(String),
    /// A signal stopped the command; carries the exit code (130 SIGINT, 143 SIGTERM).
    #[error("interrupted by {}", if *.0 == 143 { "SIGTERM" } else { "SIGINT" })]
    Interrupted(i32),
}

impl Error {
    /// The CLI's exit code for this error; `Interrupted(143)` is SIGTERM, any other code SIGINT.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::Usage,
            Error::Conflict(_) => ExitCode::Conflict,
            Error::NotOwner(_) => ExitCode::NotOwner,
            Error::Auth(_) => ExitCode::Auth,
            Error::NotFound(_) => ExitCode::NotFound,
            Error::RateLimited { .. } => ExitCode::RateLimited,
            Error::Unavailable(_) => ExitCode::Unavailable,
            Error::Unexpected(_) => ExitCode::Unexpected,
            Error::Interrupted(143) => ExitCode::Terminated,
            Error::Interrupted(_) => ExitCode::Interrupted,
        }
    }

    /// The process's exit status for this error: [`Error::exit_code`], except that a conflict
    /// exits `conflict` (`claim`/`run --conflict-exit-code`, as flock -E), so that a script can
    /// tell "held" from its own failures.
    pub fn status(&self, conflict: Option<u8>) -> i32 {
        match (self.exit_code(), conflict) {
            (ExitCode::Conflict, Some(code)) => i32::from(code),
            (code, _) => code.code(),
        }
    }

    /// A short machine-readable kind for `--json` error objects.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Usage(_) => "usage",
            Error::Conflict(_) => "conflict",
            Error::NotOwner(_) => "not_owner",
            Error::Auth(_) => "auth",
            Error::NotFound(_) => "not_found",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable(_) => "unavailable",
            Error::Unexpected(_) => "unexpected",
            Error::Interrupted(_) => "interrupted",
        }
    }

    /// Shorthand for [`Error::Usage`].
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    /// The same kind of error (same exit code) saying `message` instead.
    pub fn with_message(self, message: String) -> Self {
        match self {
            Error::Usage(_) => Error::Usage(message),
            Error::Conflict(_) => Error::Conflict(message),
            Error::NotOwner(_) => Error::NotOwner(message),
            Error::Auth(_) => Error::Auth(message),
            Error::NotFound(_) => Error::NotFound(message),
            Error::RateLimited { retry_after, .. } => Error::RateLimited {
                message,
                retry_after,
            },
            Error::Unavailable(_) => Error::Unavailable(message),
            Error::Unexpected(_) => Error::Unexpected(message),
            Error::Interrupted(code) => Error::Interrupted(code),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Unexpected(format!("I/O error: {e}"))
    }
}

/// The library's result type; the error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
