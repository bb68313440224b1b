//! Turns the parsed global options and environment into a ready backend and identity
//! (SPEC §2 defaults: backend choice, token fallbacks, worker and node ids, data directory).

use std::path::PathBuf;
use std::time::Duration;

use crate::backend::Backend;
use crate::cli::{BackendKind, GlobalArgs, TaskArgs};
use crate::error::{Error, Result};
use crate::github::client::ClientOptions;
use crate::github::{GithubBackend, GithubOptions, RepoName};
use crate::local::LocalBackend;
use crate::lock::{Claimant, TaskInfo};
use crate::secret::Secret;

/// Read-your-write pause after writing a lock comment; GitHub's lists lag by a few hundred ms.
const DEFAULT_SETTLE: Duration = Duration::from_millis(1000);

pub struct Context {
    pub backend: Backend,
    pub claimant: Claimant,
    pub json: bool,
    /// Where the metrics of this host's lock operations are counted.
    pub data_dir: PathBuf,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The token from `--token` / SENTINEL_TOKEN (clap reads both), then GITHUB_TOKEN, GH_TOKEN, then
/// the GitHub CLI's login to the API's host. Says where it came from, never what it is.
pub fn token(flag: Option<&Secret>, api_url: &str) -> Option<Secret> {
    let given = flag
        .map(|t| t.expose().trim().to_string())
        .filter(|t| !t.is_empty());
    let (source, token) = [
        ("--token or SENTINEL_TOKEN", given),
        ("GITHUB_TOKEN", env("GITHUB_TOKEN")),
        ("GH_TOKEN", env("GH_TOKEN")),
    ]
    .into_iter()
    .find_map(|(source, t)| Some((source, Secret::new(t?.trim()))))
    .or_else(|| Some(("`gh auth token`", crate::gh_cli::token(api_url)?)))?;
    tracing::info!("GitHub token from {source}");
    Some(token)
}

pub fn in_actions() -> bool {
    env("GITHUB_ACTIONS").as_deref() == Some("true")
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

pub fn hostname() -> String {
    gethostname::gethostname()
        .to_string_lossy()
        .into_owned()
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

pub fn data_dir(flag: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(d) = flag {
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
        Some(v) => crate::duration::parse(&v),
        None => Ok(DEFAULT_SETTLE),
    }
}

fn id(value: Option<String>, what: &str, default: impl FnOnce() -> String) -> Result<String> {
    let v = value.unwrap_or_else(default);
    let v = v.trim().to_string();
    if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
        return Err(Error::usage(format!(
            "invalid {what} {v:?}: 1 to 256 printable characters"
        )));
    }
    Ok(v)
}

impl Context {
    pub fn from_args(g: &GlobalArgs) -> Result<Context> {
        let claimant = Claimant {
            worker_id: id(g.worker_id.clone(), "worker id", default_worker_id)?,
            node_id: id(g.node_id.clone(), "node id", hostname)?,
        };
        let kind = match g.backend {
            BackendKind::Auto if g.server.is_some() => BackendKind::Server,
            BackendKind::Auto if g.repo.is_some() => BackendKind::Github,
            BackendKind::Auto => BackendKind::Local,
            k => k,
        };
        let data_dir = data_dir(g.data_dir.as_ref())?;
        let backend = match kind {
            BackendKind::Local => Backend::Local(LocalBackend::open(data_dir.join("local"))?),
            BackendKind::Github => {
                let repo: RepoName = g
                    .repo
                    .as_deref()
                    .ok_or_else(|| {
                        Error::usage(
                            "the github backend needs --repo OWNER/REPO (or GITHUB_REPOSITORY)",
                        )
                    })?
                    .parse()?;
                if !(g.api_url.starts_with("https://") || g.api_url.starts_with("http://")) {
                    return Err(Error::usage(format!(
                        "invalid --api-url {:?}: expected an http(s) URL",
                        g.api_url
                    )));
                }
                Backend::Github(Box::new(GithubBackend::new(GithubOptions {
                    repo,
                    client: ClientOptions::new(&g.api_url, token(g.token.as_ref(), &g.api_url)),
                    data_dir: data_dir.clone(),
                    trusted: g
                        .trusted
                        .iter()
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty())
                        .collect(),
                    settle: settle()?,
                    in_actions: in_actions(),
                })?))
            }
            BackendKind::Server => {
                return Err(Error::usage(
                    "the server backend (sentinel serve) is not available in this version; use --backend local or github",
                ));
            }
            BackendKind::Auto => unreachable!("resolved above"),
        };
        Ok(Context {
            backend,
            claimant,
            json: g.json,
            data_dir,
        })
    }
}

/// `--task-info JSON` merged with the single-field flags (flags win).
pub fn task_info(t: &TaskArgs) -> Result<TaskInfo> {
    let mut info = match &t.task_info {
        Some(raw) => serde_json::from_str::<TaskInfo>(raw).map_err(|e| {
            Error::usage(format!(
                "invalid --task-info JSON: {e}; expected e.g. {{\"complexity\":5,\"estimated_duration\":\"45min\",\"task_type\":\"bug-fix\",\"priority\":\"high\"}}"
            ))
        })?,
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
    Ok(info)
}
