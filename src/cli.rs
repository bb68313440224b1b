//! The command-line contract (README, "Commands"): global options with their environment fallbacks, and one
//! argument struct per subcommand. Parsing only; nothing here talks to a backend.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use sentinel::duration;
use sentinel::secret::Secret;
use sentinel::strategy::Strategy;

#[derive(Debug, Parser)]
#[command(
    name = "sentinel",
    version,
    about = "Distributed task locks on GitHub issues, on this host, in Redis or PostgreSQL",
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
    /// named locks in Redis (--redis-url)
    Redis,
    /// named locks in PostgreSQL (--database-url)
    Postgres,
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
    /// `sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...); requests fail over
    /// between them
    #[arg(
        long,
        env = "SENTINEL_SERVER",
        global = true,
        value_name = "URL[,URL...]"
    )]
    pub server: Option<String>,
    /// Bearer token of the sentinel server cluster: `serve` requires it on every client and peer
    /// request (give every node the same one), the other commands send it; never printed
    #[arg(
        long,
        env = "SENTINEL_AUTH_TOKEN",
        global = true,
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = secret
    )]
    pub auth_token: Option<Secret>,
    /// Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed
    #[arg(
        long,
        env = "SENTINEL_REDIS_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL",
        value_parser = secret
    )]
    pub redis_url: Option<Secret>,
    /// Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed
    #[arg(
        long,
        env = "SENTINEL_DATABASE_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL",
        value_parser = secret
    )]
    pub database_url: Option<Secret>,
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
    /// Claim a lock: a GitHub issue number, or a name on the other backends
    Claim(ClaimArgs),
    /// Release a lock held by this worker
    Release(ReleaseArgs),
    /// Show who holds a lock, or every held lock
    Status(StatusArgs),
    /// Renew a held lock: once, or as a sidecar until stopped
    Heartbeat(HeartbeatArgs),
    /// Claim a lock, run a command while renewing it, release it when the command ends
    Run(RunArgs),
    /// Take over a stale lock, or release every stale lock (--all)
    StealStale(StealStaleArgs),
    /// Print a shell completion script
    Completions(CompletionsArgs),
    /// Show lock metrics: this host's counters, or with --repo-wide the repository's history
    Metrics(MetricsArgs),
    /// Run a coordinator node: named locks replicated with Raft, served over HTTP
    Serve(ServeArgs),
    /// Inspect the coordinator cluster given with --server
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the leader, term, members, commit and applied index and each follower's lag
    Status,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for clients and peers
    #[arg(long, default_value = sentinel::coordinator::server::DEFAULT_LISTEN, value_name = "HOST:PORT")]
    pub listen: String,
    /// This node's id in the cluster (1 or more)
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub id: u64,
    /// A member of the cluster and the address peers reach it at; repeat for each member, this
    /// node included, with the same list on every node (the lowest id forms the cluster)
    #[arg(long = "peer", value_name = "ID=HOST:PORT")]
    pub peers: Vec<String>,
}

impl Command {
    /// Whether the command handles SIGINT/SIGTERM itself. The others are raced against them by
    /// `main`, which undoes half-made work and exits 130/143; a heartbeat sidecar instead stops
    /// cleanly (exit 0) and `run` passes them on to its command.
    pub fn owns_signals(&self) -> bool {
        match self {
            Command::Heartbeat(a) => !a.once,
            Command::Run(_) => true,
            Command::Claim(_) | Command::Release(_) | Command::Status(_) => false,
            Command::StealStale(_) => false,
            Command::Completions(_) | Command::Metrics(_) | Command::Serve(_) => false,
            Command::Cluster(_) => false,
        }
    }
}

#[derive(Debug, Args)]
pub struct ClaimArgs {
    #[command(flatten)]
    pub target: ClaimTarget,
    #[command(flatten)]
    pub claim: ClaimOptions,
}

/// Which lock to claim: a named one, or the work queue's next free issue. Shared by `claim` and
/// `run`.
#[derive(Debug, Args)]
pub struct ClaimTarget {
    /// Issue number (github backend) or lock name (other backends)
    #[arg(required_unless_present = "next")]
    pub lock: Option<String>,
    /// Claim the oldest open issue with no lock (github backend); exit 3 when none is free
    #[arg(long, conflicts_with_all = ["lock", "strategy", "max_retries", "initial_backoff", "max_backoff"])]
    pub next: bool,
    /// With --next: the issue must have this label (repeatable: all of them)
    #[arg(
        long = "label",
        value_name = "LABEL",
        requires = "next",
        conflicts_with = "lock"
    )]
    pub labels: Vec<String>,
    /// With --next: the issue must not have this label (repeatable: none of them)
    #[arg(
        long = "exclude-label",
        value_name = "LABEL",
        requires = "next",
        conflicts_with = "lock"
    )]
    pub exclude_labels: Vec<String>,
}

/// `--strategy`'s values: the core's [`Strategy`] as clap parses it (the core does not depend on
/// clap), with the help text each value shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Wait and retry with exponential backoff while the lock is held (default).
    Retry,
    /// Give up at once when the lock is held (exit 3).
    FailFast,
    /// Take over a lock whose heartbeat is older than its TTL; otherwise retry.
    StealStale,
    /// Take over unconditionally, even a live lock. Loud, for humans fixing a mess.
    Force,
}

impl From<StrategyArg> for Strategy {
    fn from(arg: StrategyArg) -> Strategy {
        match arg {
            StrategyArg::Retry => Strategy::Retry,
            StrategyArg::FailFast => Strategy::FailFast,
            StrategyArg::StealStale => Strategy::StealStale,
            StrategyArg::Force => Strategy::Force,
        }
    }
}

/// How to claim: shared by `claim` and `run`.
#[derive(Debug, Args)]
pub struct ClaimOptions {
    /// What to do when the lock is held
    #[arg(long, value_enum, default_value = "retry")]
    pub strategy: StrategyArg,
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
pub struct StealStaleArgs {
    /// Issue number or lock name to take over if its holder is stale
    #[arg(required_unless_present = "all")]
    pub lock: Option<String>,
    /// Release every stale lock instead (a janitor for a scheduled job); live locks are kept
    #[arg(long, conflicts_with = "lock")]
    pub all: bool,
    /// With --all: list what would be released and change nothing
    #[arg(long, requires = "all", conflicts_with = "lock")]
    pub dry_run: bool,
    /// With --all on GitHub: how far back to look for lock activity (older locks are not found)
    #[arg(
        long,
        value_parser = duration::arg,
        default_value = "30d",
        requires = "all",
        conflicts_with = "lock"
    )]
    pub since: Duration,
    /// Lease of the lock taken over
    #[arg(long, value_parser = duration::arg, default_value = "5m", conflicts_with = "all")]
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
    /// Renew every this long [default: 30s, or a third of the lock's TTL if shorter]
    #[arg(long, value_parser = duration::arg, conflicts_with = "once")]
    pub interval: Option<Duration>,
    /// Release the lock when stopped by SIGINT or SIGTERM
    #[arg(long, conflicts_with = "once")]
    pub release_on_exit: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: ClaimTarget,
    #[command(flatten)]
    pub claim: ClaimOptions,
    /// Renew every this long [default: 30s, or a third of --ttl if shorter]
    #[arg(long, value_parser = duration::arg)]
    pub interval: Option<Duration>,
    /// If the lock is lost: how long after SIGTERM the command gets before SIGKILL
    #[arg(long, value_parser = duration::arg, default_value = "5s")]
    pub kill_grace: Duration,
    /// The command to run and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
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
