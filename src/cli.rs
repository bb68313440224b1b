//! The command-line contract (README, "Commands"): global options with their environment fallbacks, and one
//! argument struct per subcommand. Parsing only; nothing here talks to a backend.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::duration;
use crate::secret::Secret;
use crate::strategy::Strategy;

#[derive(Debug, Parser)]
#[command(
    name = "sentinel",
    version,
    about = "Distributed task locks on GitHub issues, on this host, or on a sentinel server",
    after_help = "Exit codes: 0 ok, 1 unexpected, 2 usage, 3 conflict, 4 not owner / lost, \
                  5 auth, 6 not found, 7 rate limited, 8 backend unavailable."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// server if --server is set, else github if --repo is set, else local
    Auto,
    Github,
    Local,
    Server,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// GitHub repository OWNER/REPO whose issues are the locks
    #[arg(
        long,
        env = "GITHUB_REPOSITORY",
        global = true,
        value_name = "OWNER/REPO"
    )]
    pub repo: Option<String>,
    /// GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed
    #[arg(
        long,
        env = "SENTINEL_TOKEN",
        global = true,
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = secret
    )]
    pub token: Option<Secret>,
    /// GitHub API URL (GitHub Enterprise: https://HOST/api/v3)
    #[arg(
        long,
        env = "GITHUB_API_URL",
        global = true,
        default_value = "https://api.github.com"
    )]
    pub api_url: String,
    /// URL of a `sentinel serve` coordinator
    #[arg(long, env = "SENTINEL_SERVER", global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Which backend holds the locks
    #[arg(
        long,
        env = "SENTINEL_BACKEND",
        global = true,
        value_enum,
        default_value = "auto"
    )]
    pub backend: BackendKind,
    /// Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]
    #[arg(long, env = "SENTINEL_WORKER_ID", global = true, value_name = "ID")]
    pub worker_id: Option<String>,
    /// Which machine the worker runs on [default: host name]
    #[arg(long, env = "SENTINEL_NODE_ID", global = true, value_name = "ID")]
    pub node_id: Option<String>,
    /// Where local locks and caches live [default: the user's data directory]
    #[arg(long, env = "SENTINEL_DATA_DIR", global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// GitHub logins whose lock comments are trusted besides owners, members and collaborators
    #[arg(
        long = "trust",
        env = "SENTINEL_TRUSTED_AUTHORS",
        global = true,
        value_delimiter = ',',
        value_name = "LOGIN"
    )]
    pub trusted: Vec<String>,
    /// Print exactly one JSON object on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// More logs on stderr (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Claim a lock: a GitHub issue number, or a name on the local backend
    Claim(ClaimArgs),
    /// Release a lock held by this worker
    Release(ReleaseArgs),
    /// Show who holds a lock, or every held lock
    Status(StatusArgs),
    /// Renew a held lock
    Heartbeat(HeartbeatArgs),
    /// Print a shell completion script
    Completions(CompletionsArgs),
    /// Show lock metrics: this host's counters, or with --repo-wide the repository's history
    Metrics(MetricsArgs),
    /// Run a coordinator node: named locks replicated with Raft, served over HTTP
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for clients and peers
    #[arg(long, default_value = crate::coordinator::server::DEFAULT_LISTEN, value_name = "HOST:PORT")]
    pub listen: String,
    /// This node's id in the cluster (1 or more)
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub id: u64,
    /// A member of the cluster and the address peers reach it at; repeat for each member, this
    /// node included, with the same list on every node (the lowest id forms the cluster)
    #[arg(long = "peer", value_name = "ID=HOST:PORT")]
    pub peers: Vec<String>,
    /// Require `Authorization: Bearer TOKEN` on every client and peer request (give every node the
    /// same token); never printed or logged
    #[arg(
        long,
        env = "SENTINEL_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = secret
    )]
    pub auth_token: Option<Secret>,
}

#[derive(Debug, Args)]
pub struct ClaimArgs {
    /// Issue number (github backend) or lock name (local backend)
    pub lock: String,
    /// What to do when the lock is held
    #[arg(long, value_enum, default_value = "retry")]
    pub strategy: Strategy,
    /// Retries of the retry and steal-stale strategies
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// First pause between retries (doubles each time)
    #[arg(long, value_parser = duration::arg, default_value = "1s")]
    pub initial_backoff: Duration,
    /// Longest pause between retries
    #[arg(long, value_parser = duration::arg, default_value = "16s")]
    pub max_backoff: Duration,
    /// Lease: the lock is stale when its last heartbeat is older than this
    #[arg(long, value_parser = duration::arg, default_value = "5m")]
    pub ttl: Duration,
    #[command(flatten)]
    pub task: TaskArgs,
}

#[derive(Debug, Args)]
pub struct TaskArgs {
    /// Task info as JSON: {"complexity":5,"estimated_duration":"45min","task_type":"bug-fix","priority":"high"}
    #[arg(long, value_name = "JSON")]
    pub task_info: Option<String>,
    #[arg(long)]
    pub complexity: Option<u32>,
    /// Estimated duration, e.g. 45min
    #[arg(long)]
    pub estimate: Option<String>,
    #[arg(long)]
    pub task_type: Option<String>,
    #[arg(long)]
    pub priority: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Issue number or lock name
    pub lock: String,
    /// Release even if another worker holds it
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Issue number or lock name; without it, every held lock
    pub lock: Option<String>,
    /// GitHub: how far back to look for lock activity when listing every lock
    #[arg(long, value_parser = duration::arg, default_value = "30d")]
    pub since: Duration,
}

#[derive(Debug, Args)]
pub struct HeartbeatArgs {
    /// Issue number or lock name
    pub lock: String,
    /// Renew once and exit (0 renewed, 4 lost)
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsFormat {
    /// A table for humans
    Table,
    /// Prometheus text exposition format, for node_exporter's textfile collector
    Prometheus,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Output format; --json prints one JSON object instead
    #[arg(long, value_enum, default_value = "table", conflicts_with = "json")]
    pub format: MetricsFormat,
    /// GitHub: count the whole repository's grants, releases and take-overs from its lock comments
    #[arg(long)]
    pub repo_wide: bool,
    /// With --repo-wide: the window of lock activity to count
    #[arg(long, value_parser = duration::arg, default_value = "30d", requires = "repo_wide")]
    pub since: Duration,
}

fn secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}
