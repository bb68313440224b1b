//! The one error type of the library and its mapping to the CLI's documented exit codes (README,
//! "Exit codes").
//!
//! Every failure a user can cause or meet is a variant here, so `main` turns any of them into the
//! right exit code in one place, the way cargo's `CliError` does.

use std::time::Duration;

/// Exit codes of the CLI contract. Scripts depend on these numbers: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Success = 0,
    Unexpected = 1,
    Usage = 2,
    Conflict = 3,
    NotOwner = 4,
    Auth = 5,
    NotFound = 6,
    RateLimited = 7,
    Unavailable = 8,
    /// Stopped by SIGINT (128 + 2).
    Interrupted = 130,
    /// Stopped by SIGTERM (128 + 15).
    Terminated = 143,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

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
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    NotFound(String),
    /// The rate limit would not reset within the wait budget.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Network errors and 5xx that outlived our retries.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unexpected(String),
    /// A signal stopped the command; carries the exit code (130 SIGINT, 143 SIGTERM).
    #[error("interrupted by {}", if *.0 == 143 { "SIGTERM" } else { "SIGINT" })]
    Interrupted(i32),
}

impl Error {
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
