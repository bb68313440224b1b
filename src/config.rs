//! Turns the parsed global options and environment into a ready backend and identity: the backend
//! choice, token fallbacks, worker and node ids and the data directory, as README's "Global
//! options" documents them. Every value from the command line or the environment is validated
//! here, before anything touches a backend.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;

use crate::cli::{BackendKind, GlobalArgs, TaskArgs};
use crate::metrics::Metered;
use sentinel::backend::Backend;
use sentinel::endpoint::{http_url, shown_url};
use sentinel::error::{Error, Result};
use sentinel::etcd::EtcdBackend;
use sentinel::github::client::ClientOptions;
use sentinel::github::{ActionsJob, GithubBackend, GithubOptions, RepoName};
use sentinel::interrupt::Interruptible;
use sentinel::local::LocalBackend;
use sentinel::lock::hostname;
use sentinel::lock::{Claimant, MAX_TASK_INFO_BYTES, TaskInfo, validate_label};
use sentinel::postgres::PostgresBackend;
use sentinel::redis::RedisBackend;
use sentinel::secret::Secret;
use sentinel::server::{ServerBackend, server_urls};
use sentinel::tls::ClientTls;

/// Read-your-write pause after writing a lock comment; GitHub's lists lag by a few hundred ms.
const DEFAULT_SETTLE: Duration = Duration::from_millis(1000);
/// GitHub's REST API, the `--api-url` default; GitHub Enterprise Server is `https://HOST/api/v3`.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// The backend as commands see it: the chosen one, counted, and undone on interruption.
pub type CliBackend = Interruptible<Metered<Backend>>;

/// What a lock command runs with, built from the global options and the environment by
/// [`Context::from_args`].
pub struct Context {
    /// The backend the options chose, ready to use (connections are made on first use), wrapped
    /// once in the cross-cutting concerns every command gets by construction: this host's metrics
    /// count what passes through, and an interrupted acquisition is taken back. Commands never
    /// record metrics or undo anything themselves.
    pub backend: CliBackend,
    /// Who claims: the worker id and node id, validated.
    pub claimant: Claimant,
    /// The worker id was chosen by the user (flag or environment), so a claim by it may take up
    /// its own live lock again; a default id is shared by every process a shell fans out.
    pub explicit_worker: bool,
    /// `--json`: print one JSON object instead of text.
    pub json: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A value from a flag or the environment, with set-but-empty treated as unset.
fn given(v: Option<&String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The token from `--token` / SENTINEL_TOKEN (clap reads both), then GITHUB_TOKEN, GH_TOKEN, then
/// the GitHub CLI's login to the API's host. Says where it came from, never what it is.
pub fn token(flag: Option<&Secret>, api_url: &str) -> Option<Secret> {
    let (source, token) = token_source(flag, api_url)?;
    tracing::info!("GitHub token from {source}");
    Some(token)
}

/// [`token`] and where it came from (`--token or SENTINEL_TOKEN`, `GITHUB_TOKEN`, `GH_TOKEN`,
/// `` `gh auth token` ``), for `doctor` to say.
pub fn token_source(flag: Option<&Secret>, api_url: &str) -> Option<(&'static str, Secret)> {
    let given = flag
        .map(|t| t.expose().trim().to_string())
        .filter(|t| !t.is_empty());
    [
        ("--token or SENTINEL_TOKEN", given),
        ("GITHUB_TOKEN", env("GITHUB_TOKEN")),
        ("GH_TOKEN", env("GH_TOKEN")),
    ]
    .into_iter()
    .find_map(|(source, t)| Some((source, Secret::new(t?.trim()))))
    .or_else(|| Some(("`gh auth token`", crate::gh_cli::token(api_url)?)))
}

/// Whether this process runs as a GitHub Actions step (`GITHUB_ACTIONS=true`).
pub fn in_actions() -> bool {
    env("GITHUB_ACTIONS").as_deref() == Some("true")
}

/// The Actions job this process runs in, recorded with its GitHub locks so that a reader can free
/// them the moment the job completes; `None` outside Actions or when a variable is missing or not
/// what Actions sets (`GITHUB_RUN_ID= sentinel claim …` claims without one).
fn actions_job() -> Option<ActionsJob> {
    if !in_actions() {
        return None;
    }
    ActionsJob::new(
        &env("GITHUB_RUN_ID")?,
        &env("GITHUB_RUN_ATTEMPT")?,
        &env("GITHUB_JOB")?,
        &env("RUNNER_NAME")?,
    )
}

/// Distinct per concurrent worker, stable across the claim/heartbeat/release of one worker.
pub fn default_worker_id() -> String {
    if in_actions() {
        // Matrix jobs share the job id but never a runner; re-runs get a new attempt number.
        let part = |k: &str| env(k).unwrap_or_else(|| "unknown".into());
        return format!(
            "gha-{}-{}-{}-{}",
            part("GITHUB_RUN_ID"),
            part("GITHUB_RUN_ATTEMPT"),
            part("GITHUB_JOB"),
            part("RUNNER_NAME")
        );
    }
    // The parent is the shell or agent driving sentinel: the same for its claim and release,
    // different for two scripts running side by side.
    let user = env("USER")
        .or_else(|| env("USERNAME"))
        .unwrap_or_else(|| "user".into());
    format!(
        "{user}@{}:{}",
        hostname(),
        std::os::unix::process::parent_id()
    )
}

/// `--data-dir` / `SENTINEL_DATA_DIR` if given and non-empty, else the platform's data directory
/// for sentinel (`~/.local/share/sentinel` on Linux). Not created here.
///
/// # Errors
///
/// [`Error::Usage`] when no flag is given and there is no home directory to derive one from.
pub fn data_dir(flag: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(d) = flag.filter(|d| !d.as_os_str().is_empty()) {
        return Ok(d.clone());
    }
    directories::ProjectDirs::from("dev", "sentinel", "sentinel")
        .map(|p| p.data_dir().to_path_buf())
        .ok_or_else(|| {
            Error::usage("cannot find a data directory (no home directory): pass --data-dir or set SENTINEL_DATA_DIR")
        })
}

fn settle() -> Result<Duration> {
    match env("SENTINEL_SETTLE") {
        Some(v) => sentinel::duration::parse(&v),
        None => Ok(DEFAULT_SETTLE),
    }
}

/// `SENTINEL_HTTP_TIMEOUT`: how long one GitHub response may take.
fn http_timeout() -> Result<Duration> {
    let Some(v) = env("SENTINEL_HTTP_TIMEOUT") else {
        return Ok(sentinel::github::client::DEFAULT_TIMEOUT);
    };
    let d = sentinel::duration::parse(&v)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
        return Err(Error::usage(format!(
            "invalid SENTINEL_HTTP_TIMEOUT {v:?}: use 100ms to 10m"
        )));
    }
    Ok(d)
}

fn id(value: Option<String>, what: &str, default: impl FnOnce() -> String) -> Result<String> {
    let v = value.unwrap_or_else(default);
    validate_label(what, &v)?;
    Ok(v)
}

/// `--worker-id` / `SENTINEL_WORKER_ID`, or [`default_worker_id`], validated.
pub fn worker_id(g: &GlobalArgs) -> Result<String> {
    id(given(g.worker_id.as_ref()), "worker id", default_worker_id)
}

/// Checks `--api-url`: an http(s) URL with a host and a valid port, and no credentials in it (they
/// would end up in messages; the token has its own option). The message never repeats the URL
/// when it carries credentials.
pub fn api_url(raw: &str) -> Result<String> {
    http_url(raw).map(|(url, _)| url).map_err(|why| {
        let hint = if why.starts_with("credentials") {
            "; pass the token with --token or SENTINEL_TOKEN"
        } else {
            ""
        };
        Error::usage(format!(
            "invalid --api-url {}: {why}{hint}; expected e.g. https://api.github.com or https://HOST/api/v3",
            shown_url(raw)
        ))
    })
}

/// The client token of the coordinator: `--auth-token` (`SENTINEL_AUTH_TOKEN`), where
/// set-but-empty counts as unset, or `--auth-token-file` (`SENTINEL_AUTH_TOKEN_FILE`); it must fit
/// in an HTTP header. Never echoed.
pub fn auth_token(g: &GlobalArgs) -> Result<Option<Secret>> {
    let flag = g
        .auth_token
        .as_ref()
        .map(|t| t.expose().trim())
        .filter(|t| !t.is_empty());
    let file = g
        .auth_token_file
        .as_ref()
        .filter(|f| !f.as_os_str().is_empty());
    let (token, what) = match (flag, file) {
        (Some(_), Some(_)) => {
            return Err(Error::usage(
                "give the client token once: --auth-token (SENTINEL_AUTH_TOKEN) or \
                 --auth-token-file (SENTINEL_AUTH_TOKEN_FILE)",
            ));
        }
        (Some(t), None) => (t.to_string(), "--auth-token (SENTINEL_AUTH_TOKEN)"),
        (None, Some(f)) => (
            token_file("--auth-token-file", f)?,
            "--auth-token-file (SENTINEL_AUTH_TOKEN_FILE)",
        ),
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        return Err(Error::usage(format!("the client token of {what} is empty")));
    }
    if token.len() > 1024 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::usage(format!(
            "invalid {what}: use 1 to 1024 printable ASCII characters without spaces"
        )));
    }
    Ok(Some(Secret::new(token)))
}

/// The secret in a token file (`--auth-token-file`, `--peer-token-file`): its text less one
/// trailing newline. A file others may read is taken, with a warning: the token is theirs too.
pub fn token_file(option: &str, file: &Path) -> Result<String> {
    let mut text = std::fs::read_to_string(file)
        .map_err(|e| Error::usage(format!("cannot read {option} {}: {e}", file.display())))?;
    if let Ok(meta) = std::fs::metadata(file) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "{option} {} can be read by other users: chmod 600 it",
                file.display()
            );
        }
    }
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// What a client trusts and presents over TLS (`--ca-cert`, `--client-cert`, `--client-key`, or
/// their `SENTINEL_*` variables), for every backend that speaks TLS; set-but-empty is unset.
pub fn client_tls(g: &GlobalArgs) -> ClientTls {
    let path = |p: Option<&PathBuf>| p.filter(|p| !p.as_os_str().is_empty()).cloned();
    ClientTls {
        ca_cert: path(g.ca_cert.as_ref()),
        client_cert: path(g.client_cert.as_ref()),
        client_key: path(g.client_key.as_ref()),
    }
}

/// The coordinator client from `--server`, `--auth-token` and the TLS options (also
/// `sentinel cluster`'s).
pub fn server_backend(g: &GlobalArgs) -> Result<ServerBackend> {
    let raw = given(g.server.as_ref()).ok_or_else(|| {
        Error::usage(
            "the server backend needs --server URL[,URL...] (or SENTINEL_SERVER): the sentinel serve nodes",
        )
    })?;
    let token = auth_token(g)?;
    ServerBackend::with_tls(server_urls(&raw)?, token.as_ref(), &client_tls(g))
}

/// The backend the options choose, and what chose it.
pub struct Selection {
    /// Resolved: never `Auto`.
    pub kind: BackendKind,
    /// The option or variable that chose it, for people (`doctor`).
    pub reason: String,
}

/// Which backend the options choose: `--backend` / SENTINEL_BACKEND, or with `auto` the server
/// backend if `--server` is given, else GitHub if `--repo` is, else local.
pub fn select_backend(g: &GlobalArgs) -> Selection {
    let repo = given(g.repo.as_ref());
    let server = given(g.server.as_ref());
    let (kind, reason) = match g.backend {
        BackendKind::Auto if server.is_some() => (
            BackendKind::Server,
            format!("{} is set", source("--server", "SENTINEL_SERVER", server)),
        ),
        BackendKind::Auto if repo.is_some() => (
            BackendKind::Github,
            format!(
                "{} is set, --server is not",
                source("--repo", "GITHUB_REPOSITORY", repo)
            ),
        ),
        BackendKind::Auto => (
            BackendKind::Local,
            "the default: neither --server (SENTINEL_SERVER) nor --repo (GITHUB_REPOSITORY) is set"
                .to_string(),
        ),
        k => {
            let named = env("SENTINEL_BACKEND")
                .is_some_and(|v| BackendKind::from_str(v.trim(), true).is_ok_and(|v| v == k));
            let by = if named {
                "SENTINEL_BACKEND"
            } else {
                "--backend"
            };
            let name = k.to_possible_value().map(|v| v.get_name().to_string());
            (k, format!("{by} {}", name.unwrap_or_default()))
        }
    };
    Selection { kind, reason }
}

/// Which of an option and its variable gave `value`: the variable when it holds it (an option
/// given with the same value changes nothing).
fn source(option: &str, var: &str, value: Option<String>) -> String {
    match env(var) {
        Some(v) if Some(v.trim().to_string()) == value => var.to_string(),
        _ => option.to_string(),
    }
}

impl Context {
    /// Chooses ([`select_backend`]) and builds the backend and the claimant, validating each
    /// value before use.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for a missing or invalid option (repository, URL, id, timeout); errors
    /// of opening the backend (the local store's directory, a malformed Redis or database URL or
    /// etcd endpoint).
    pub fn from_args(g: &GlobalArgs) -> Result<Context> {
        let explicit_worker = given(g.worker_id.as_ref()).is_some();
        let claimant = Claimant {
            worker_id: worker_id(g)?,
            node_id: id(given(g.node_id.as_ref()), "node id", hostname)?,
        };
        let repo = given(g.repo.as_ref());
        let kind = select_backend(g).kind;
        let data_dir = data_dir(g.data_dir.as_ref())?;
        let backend = Interruptible::new(Metered::new(
            open_backend(g, kind, repo, &data_dir)?,
            &data_dir,
        ));
        Ok(Context {
            backend,
            claimant,
            explicit_worker,
            json: g.json,
        })
    }
}

/// Why the GitHub backend was chosen, when nothing but `GITHUB_REPOSITORY` (set in every Actions
/// job, where nobody typed it) chose it: said beside a lock name it refuses, or the user is left
/// wondering why a name is not an issue number. `None` when the user asked for GitHub.
pub fn github_chosen_by_environment(g: &GlobalArgs) -> Option<&'static str> {
    let repo_flag = std::env::args_os()
        .take_while(|a| a != "--")
        .any(|a| a == "--repo" || a.to_string_lossy().starts_with("--repo="));
    let by_env = g.backend == BackendKind::Auto
        && given(g.server.as_ref()).is_none()
        && !repo_flag
        && given(g.repo.as_ref()).is_some_and(|r| env("GITHUB_REPOSITORY").as_deref() == Some(&r));
    by_env.then_some(
        "the github backend was picked because GITHUB_REPOSITORY is set; lock names on github \
         are issue numbers; use --backend local (or redis, postgres, etcd, server) for named locks",
    )
}

/// The backend of `kind` (resolved: never `Auto`), from the options it needs.
fn open_backend(
    g: &GlobalArgs,
    kind: BackendKind,
    repo: Option<String>,
    data_dir: &Path,
) -> Result<Backend> {
    Ok(match kind {
        BackendKind::Local => Backend::Local(LocalBackend::open(data_dir.join("local"))?),
        BackendKind::Github => Backend::Github(Box::new(github_backend(g, repo, data_dir)?)),
        BackendKind::Server => Backend::Server(server_backend(g)?),
        BackendKind::Redis => {
            let url = secret_url(g.redis_url.as_ref()).ok_or_else(|| {
                Error::usage(
                    "the redis backend needs --redis-url redis://HOST[:PORT] (or SENTINEL_REDIS_URL)",
                )
            })?;
            Backend::Redis(RedisBackend::with_options(
                url,
                sentinel::redis::DEFAULT_PREFIX,
                &client_tls(g),
            )?)
        }
        BackendKind::Postgres => {
            let url = secret_url(g.database_url.as_ref()).ok_or_else(|| {
                Error::usage(
                    "the postgres backend needs --database-url postgres://USER@HOST/DB (or SENTINEL_DATABASE_URL)",
                )
            })?;
            Backend::Postgres(PostgresBackend::with_tls(url, &client_tls(g))?)
        }
        BackendKind::Etcd => {
            let endpoints = given(g.etcd_endpoints.as_ref()).ok_or_else(|| {
                Error::usage(
                    "the etcd backend needs --etcd-endpoints http://HOST:2379[,...] (or SENTINEL_ETCD_ENDPOINTS)",
                )
            })?;
            Backend::Etcd(EtcdBackend::new(&endpoints)?)
        }
        BackendKind::Auto => unreachable!("resolved by the caller"),
    })
}

/// A URL that may carry a password, trimmed; `None` when not set or empty.
fn secret_url(url: Option<&Secret>) -> Option<&str> {
    url.map(|u| u.expose().trim()).filter(|u| !u.is_empty())
}

/// The GitHub backend of `--repo` on `--api-url`.
fn github_backend(g: &GlobalArgs, repo: Option<String>, data_dir: &Path) -> Result<GithubBackend> {
    let repo: RepoName = repo
        .as_deref()
        .ok_or_else(|| {
            Error::usage("the github backend needs --repo OWNER/REPO (or GITHUB_REPOSITORY)")
        })?
        .parse()?;
    let api = api_url(&given(Some(&g.api_url)).unwrap_or_else(|| DEFAULT_API_URL.to_string()))?;
    GithubBackend::new(GithubOptions {
        repo,
        client: ClientOptions {
            timeout: http_timeout()?,
            ..ClientOptions::new(&api, token(g.token.as_ref(), &api))
        },
        data_dir: data_dir.to_path_buf(),
        trusted: g
            .trusted
            .iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        settle: settle()?,
        in_actions: in_actions(),
        actions_job: actions_job(),
    })
}

/// The fields `--task-info` accepts. Strict on purpose: a typo such as `"priorty"` is an error
/// here, while the lock comments readers parse stay lenient (other versions may add fields).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskInfoArg {
    complexity: Option<u32>,
    estimated_duration: Option<String>,
    task_type: Option<String>,
    priority: Option<String>,
}

/// Longest text field of the task info, in characters (GitHub comments are limited to 65,536).
const MAX_TASK_FIELD: usize = 1024;

/// `--task-info JSON` (or `@FILE`) merged with the single-field flags (flags win).
pub fn task_info(t: &TaskArgs) -> Result<TaskInfo> {
    let example =
        r#"{"complexity":5,"estimated_duration":"45min","task_type":"bug-fix","priority":"high"}"#;
    let mut info = match &t.task_info {
        Some(raw) => {
            let text = match raw.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path).map_err(|e| {
                    Error::usage(format!("cannot read --task-info file {path:?}: {e}"))
                })?,
                None => raw.clone(),
            };
            let arg: TaskInfoArg = serde_json::from_str(&text).map_err(|e| {
                Error::usage(format!(
                    "invalid --task-info: {e}; expected a JSON object like {example} (or @FILE)"
                ))
            })?;
            TaskInfo {
                complexity: arg.complexity,
                estimated_duration: arg.estimated_duration,
                task_type: arg.task_type,
                priority: arg.priority,
                value: None,
            }
        }
        None => TaskInfo::default(),
    };
    if t.complexity.is_some() {
        info.complexity = t.complexity;
    }
    if t.estimate.is_some() {
        info.estimated_duration = t.estimate.clone();
    }
    if t.task_type.is_some() {
        info.task_type = t.task_type.clone();
    }
    if t.priority.is_some() {
        info.priority = t.priority.clone();
    }
    info.value = t.value.clone();
    for (what, v) in [
        ("estimated_duration", &info.estimated_duration),
        ("task_type", &info.task_type),
        ("priority", &info.priority),
        ("value", &info.value),
    ] {
        if let Some(v) = v
            && (v.chars().count() > MAX_TASK_FIELD || v.chars().any(char::is_control))
        {
            return Err(Error::usage(format!(
                "invalid task info {what}: at most {MAX_TASK_FIELD} characters, no control characters"
            )));
        }
    }
    let len = info.json_len();
    if len > MAX_TASK_INFO_BYTES {
        return Err(Error::usage(format!(
            "invalid task info: at most {MAX_TASK_INFO_BYTES} bytes as JSON, {len} given"
        )));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn args(json: &str) -> TaskArgs {
        TaskArgs {
            task_info: Some(json.into()),
            complexity: None,
            estimate: None,
            task_type: None,
            priority: None,
            value: None,
        }
    }

    #[test]
    fn task_info_is_strict() {
        let ok = task_info(&args(r#"{"complexity":5,"priority":"high"}"#)).unwrap();
        assert_eq!(ok.complexity, Some(5));
        for bad in [
            "[1,2]",
            r#"{"priorty":"high"}"#,
            r#"{"complexity":-1}"#,
            "null",
            "\"x\"",
        ] {
            let e = task_info(&args(bad)).unwrap_err();
            assert!(e.to_string().contains("invalid --task-info"), "{bad}: {e}");
        }
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), r#"{"task_type":"bug-fix"}"#).unwrap();
        let from_file = task_info(&args(&format!("@{}", tmp.path().display()))).unwrap();
        assert_eq!(from_file.task_type.as_deref(), Some("bug-fix"));
        assert!(task_info(&args("@/nonexistent/x.json")).is_err());
        // Each field within its 1,024 characters, but four-byte ones: too large as a whole.
        let wide = "\u{1F512}".repeat(1000);
        let big = format!(r#"{{"task_type":"{wide}","priority":"{wide}"}}"#);
        let e = task_info(&args(&big)).unwrap_err();
        assert!(e.to_string().contains("at most 4096 bytes"), "{e}");
    }

    #[test]
    fn api_urls_are_checked_without_echoing_credentials() {
        assert_eq!(
            api_url("https://api.github.com/").unwrap(),
            "https://api.github.com"
        );
        assert!(api_url("http://127.0.0.1:8080").is_ok());
        assert!(api_url("https://ghe.example.com/api/v3").is_ok());
        for bad in [
            "http://",
            "ftp://x",
            "api.github.com",
            "http://127.0.0.1:99999",
            "http://h:0",
            "http://h:x",
            "",
        ] {
            assert!(api_url(bad).is_err(), "{bad}");
        }
        let e = api_url("https://user:hunter2@api.github.com")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2") && !e.contains("user:"), "{e}");
    }

    proptest! {
        #[test]
        fn task_info_never_panics(s in ".*") {
            let _ = task_info(&args(&s));
        }

        #[test]
        fn api_url_never_panics(s in ".*") {
            let _ = api_url(&s);
        }
    }
}
