//! The command-line contract (README, "Commands"): global options with their environment fallbacks,
//! which of them each subcommand takes ([`inherited`]), and one argument struct per subcommand.
//! Parsing only; nothing here talks to a backend.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::Resettable;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{
    ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum,
};

use sentinel::duration;
use sentinel::kv::Merge;
use sentinel::secret::Secret;
use sentinel::strategy::Strategy;

#[derive(Debug, Parser)]
#[command(
    name = "sentinel",
    version,
    about = "Distributed task locks on GitHub issues, on this host, in Redis, PostgreSQL or etcd",
    after_help = "Exit codes: 0 ok, 1 unexpected, 2 usage, 3 conflict, 4 not owner / lost, \
                  5 auth, 6 not found, 7 rate limited, 8 backend unavailable.",
    mut_subcommands = show_inherited_options
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
    /// named locks in etcd (--etcd-endpoints)
    Etcd,
}

/// The global options, as given before the subcommand (`sentinel --worker-id demo claim x`) or,
/// for those it takes ([`inherited`]), after it; clap merges the two places (the later wins).
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// GitHub repository OWNER/REPO whose issues are the locks
    #[arg(long, env = "GITHUB_REPOSITORY", value_name = "OWNER/REPO")]
    pub repo: Option<String>,
    /// GitHub token (falls back to GITHUB_TOKEN, GH_TOKEN, then `gh auth token`); never printed
    #[arg(
        long,
        env = "SENTINEL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = secret
    )]
    pub token: Option<Secret>,
    /// GitHub API URL (GitHub Enterprise: https://HOST/api/v3)
    #[arg(long, env = "GITHUB_API_URL", default_value = "https://api.github.com")]
    pub api_url: String,
    /// `sentinel serve` nodes to use, comma-separated (http://HOST:PORT,...; a bare HOST:PORT is
    /// http); requests fail over between them
    #[arg(long, env = "SENTINEL_SERVER", value_name = "URL[,URL...]")]
    pub server: Option<String>,
    /// Bearer token of the sentinel server cluster: `serve` requires it on every client request
    /// (give every node the same one), the other commands send it; never printed
    #[arg(
        long,
        env = "SENTINEL_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = secret
    )]
    pub auth_token: Option<Secret>,
    /// Read the bearer token of the sentinel server cluster from FILE (one trailing newline is
    /// ignored), so that it is on no command line; instead of --auth-token
    #[arg(long, env = "SENTINEL_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// PEM file of the certificate authorities to trust for https:// servers instead of the
    /// system's roots (`serve`: for its peers)
    #[arg(long, env = "SENTINEL_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// PEM certificate to present to servers that require client certificates (with
    /// --client-key)
    #[arg(long, env = "SENTINEL_CLIENT_CERT", value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert
    #[arg(long, env = "SENTINEL_CLIENT_KEY", value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// Redis server of the redis backend, e.g. redis://:PASSWORD@HOST:6379/0; never printed
    #[arg(
        long,
        env = "SENTINEL_REDIS_URL",
        hide_env_values = true,
        value_name = "URL",
        value_parser = secret
    )]
    pub redis_url: Option<Secret>,
    /// Database of the postgres backend, e.g. postgres://USER:PASSWORD@HOST:5432/DB; never printed
    #[arg(
        long,
        env = "SENTINEL_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL",
        value_parser = secret
    )]
    pub database_url: Option<Secret>,
    /// Client URLs of the etcd cluster of the etcd backend, comma-separated
    /// (http://HOST:2379,...); requests fail over between them
    #[arg(long, env = "SENTINEL_ETCD_ENDPOINTS", value_name = "URL[,URL...]")]
    pub etcd_endpoints: Option<String>,
    /// Which backend holds the locks
    #[arg(long, env = "SENTINEL_BACKEND", value_enum, default_value = "auto")]
    pub backend: BackendKind,
    /// Who holds the lock [default: distinct per worker; in GitHub Actions derived from run, attempt, job and runner]
    #[arg(long, env = "SENTINEL_WORKER_ID", value_name = "ID")]
    pub worker_id: Option<String>,
    /// Which machine the worker runs on [default: host name]
    #[arg(long, env = "SENTINEL_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Where local locks and caches live [default: the user's data directory]
    #[arg(long, env = "SENTINEL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// GitHub logins whose lock comments are trusted besides owners, members and collaborators
    #[arg(
        long = "trust",
        env = "SENTINEL_TRUSTED_AUTHORS",
        value_delimiter = ',',
        value_name = "LOGIN"
    )]
    pub trusted: Vec<String>,
    /// Print exactly one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    /// More logs on stderr (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// The heading under which a subcommand's help lists the global options it takes, after its own.
pub const INHERITED_HEADING: &str = "Inherited options";

/// The global options of the commands that take or inspect locks: they build a backend and a
/// worker identity from them (`config::Context`). `metrics` takes the same: `--backend` picks
/// the counters shown and `--repo-wide` builds the same backend (README: "take the same
/// options"), and scripts pass one set of options to all of these commands.
const LOCK_CLIENT: &[&str] = &[
    "repo",
    "token",
    "api_url",
    "server",
    "auth_token",
    "auth_token_file",
    "ca_cert",
    "client_cert",
    "client_key",
    "redis_url",
    "database_url",
    "etcd_endpoints",
    "backend",
    "worker_id",
    "node_id",
    "data_dir",
    "trusted",
    "json",
    "verbose",
    "quiet",
];

/// The global options of `kv get` and `kv list`: a client of the coordinator's nodes.
const KV_CLIENT: &[&str] = &[
    "server",
    "auth_token",
    "auth_token_file",
    "ca_cert",
    "client_cert",
    "client_key",
    "backend",
    "json",
    "verbose",
    "quiet",
];

/// The global options of `kv put` and `kv del`: [`KV_CLIENT`]'s and the worker id, sent as the
/// writer that the key's watch events show.
const KV_WRITER: &[&str] = &[
    "server",
    "auth_token",
    "auth_token_file",
    "ca_cert",
    "client_cert",
    "client_key",
    "backend",
    "worker_id",
    "json",
    "verbose",
    "quiet",
];

/// Which global options (by their ids in [`GlobalArgs`]) each subcommand takes, by its path.
///
/// Its help lists them under [`INHERITED_HEADING`] after its own options, and they are accepted
/// before the subcommand (`sentinel --json status`) as well as after it; where both are given,
/// the later wins. Any other global option given on the command line is refused, exit 2
/// ([`try_parse_from`]); one set in the environment is ignored, since the command does not read it.
pub fn inherited(command: &str) -> &'static [&'static str] {
    match command {
        "claim" | "release" | "status" | "heartbeat" | "run" | "steal-stale" | "elect"
        | "leader" | "barrier" | "metrics" | "doctor" => LOCK_CLIENT,
        // A coordinator node: its log under the data directory, the token it requires.
        // --ca-cert: what it trusts when it calls its peers over TLS.
        "serve" => &[
            "data_dir",
            "auth_token",
            "auth_token_file",
            "ca_cert",
            "json",
            "verbose",
            "quiet",
        ],
        // A client of the nodes given with --server; options between `cluster` and `status` are
        // status's.
        // `watch` follows the coordinator's or the local backend's events: no worker identity.
        "watch" => &[
            "server",
            "auth_token",
            "auth_token_file",
            "ca_cert",
            "client_cert",
            "client_key",
            "backend",
            "data_dir",
            "json",
            "verbose",
            "quiet",
        ],
        // The coordinator's key-value store; a write names its writer by the worker id.
        // `--backend` is taken so that another backend is refused with a message, not ignored.
        // Options between `kv` and its subcommand are the subcommand's: `kv` takes only those
        // all of them take.
        "kv" | "kv get" | "kv list" | "kv watch" => KV_CLIENT,
        "kv put" | "kv del" => KV_WRITER,
        "cluster" | "cluster status" => &[
            "server",
            "auth_token",
            "auth_token_file",
            "ca_cert",
            "client_cert",
            "client_key",
            "json",
            "verbose",
            "quiet",
        ],
        // Prints the script (as JSON with --json); logs like every command.
        "completions" => &["json", "verbose", "quiet"],
        _ => &[],
    }
}

/// Gives each subcommand (`Cli`'s `mut_subcommands`) the global options it takes, and `run` its
/// command line without `--`.
fn show_inherited_options(sub: clap::Command) -> clap::Command {
    let sub = match sub.get_name() {
        "run" => command_after_lock(sub),
        _ => sub,
    };
    with_global_options(sub, "", true)
}

/// `run`'s positionals are LOCK then CMD ARGS…, so `run L echo hi` needs no `--` (as flock and
/// `etcdctl lock`). With `--next` there is no LOCK: the first word clap puts there is the
/// command's ([`RunArgs::command_from_lock`]), so `--next` and `--label` may not refuse it.
fn command_after_lock(run: clap::Command) -> clap::Command {
    run.mut_arg("next", |a| {
        a.conflicts_with(Resettable::Reset).conflicts_with_all([
            "strategy",
            "max_retries",
            "initial_backoff",
            "max_backoff",
            "wait",
            "nonblock",
        ])
    })
    .mut_arg("labels", |a| a.conflicts_with(Resettable::Reset))
    .mut_arg("exclude_labels", |a| a.conflicts_with(Resettable::Reset))
}

/// Adds to `command` and its subcommands copies of the global options: with `inherited`, those it
/// takes, shown under [`INHERITED_HEADING`]; without, the others, hidden.
///
/// The shown copies are `global` in the subcommand, so that clap merges a value given there with
/// one given before the subcommand (the later wins) into the top level's [`GlobalArgs`].
fn with_global_options(command: clap::Command, parent: &str, inherited: bool) -> clap::Command {
    let path = format!("{parent} {}", command.get_name())
        .trim()
        .to_string();
    let takes = self::inherited(&path);
    let globals = GlobalArgs::augment_args(clap::Command::new("sentinel"));
    let copies: Vec<clap::Arg> = globals
        .get_arguments()
        .filter(|a| takes.contains(&a.get_id().as_str()) == inherited)
        .map(|a| match inherited {
            true => a.clone().global(true).help_heading(INHERITED_HEADING),
            false => a.clone().hide(true),
        })
        .collect();
    command
        .args(copies)
        .mut_subcommands(|sub| with_global_options(sub, &path, inherited))
}

/// Parses the command line like [`Parser::try_parse_from`] and refuses a global option given on
/// it, before or after the subcommand, that the subcommand does not take ([`inherited`]).
///
/// # Errors
///
/// clap's errors, and for such an option one that names it, the command and those that take it
/// (both exit 2 in `main`).
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    // Each subcommand also accepts, hidden, the global options it does not take, so that one
    // given after it is refused here in the same words as one given before it.
    let mut cmd = without_blank_env(
        Cli::command().mut_subcommands(|sub| with_global_options(sub, "", false)),
    );
    let matches = cmd.try_get_matches_from_mut(args)?;
    if let Some((option, path)) = inapplicable(&matches) {
        let takers = leaves(&cmd, "")
            .into_iter()
            .filter(|p| inherited(p).contains(&option.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let long = GlobalArgs::augment_args(clap::Command::new("sentinel"))
            .get_arguments()
            .find(|a| a.get_id() == option.as_str())
            .and_then(|a| a.get_long().map(str::to_string))
            .unwrap_or(option);
        let mut leaf = &mut cmd;
        for name in path.split(' ') {
            leaf = leaf
                .find_subcommand_mut(name)
                .expect("the parsed subcommand");
        }
        return Err(leaf.error(
            ErrorKind::ArgumentConflict,
            format!("--{long} does not apply to `sentinel {path}`; it is taken by: {takers}"),
        ));
    }
    let mut cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
    if let Command::Run(run) = &mut cli.command {
        run.command_from_lock();
        if run.command.is_empty() {
            let run_cmd = cmd.find_subcommand_mut("run").expect("the run subcommand");
            return Err(run_cmd.error(
                ErrorKind::MissingRequiredArgument,
                "run needs a command: `sentinel run LOCK CMD ARGS…` or `sentinel run --next -- CMD ARGS…`",
            ));
        }
    }
    Ok(cli)
}

/// `command` with the environment fallback of every option whose variable is set but blank
/// dropped: CI systems set variables to "" for unset inputs (GitHub Actions' `${{ vars.X }}`), and
/// an empty `SENTINEL_BACKEND` or `SENTINEL_SNAPSHOT_EVERY` would otherwise be refused as a value.
fn without_blank_env(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| {
            let blank = arg
                .get_env()
                .and_then(std::env::var_os)
                .is_some_and(|v| v.to_string_lossy().trim().is_empty());
            match blank {
                true => arg.env(None),
                false => arg,
            }
        })
        .mut_subcommands(without_blank_env)
}

/// The first global option (its id) given on the command line that the parsed subcommand does
/// not take, and that subcommand's path.
fn inapplicable(matches: &ArgMatches) -> Option<(String, String)> {
    let mut levels = vec![matches];
    let mut path = Vec::new();
    while let Some((name, sub)) = levels[levels.len() - 1].subcommand() {
        path.push(name);
        levels.push(sub);
    }
    let path = path.join(" ");
    let takes = inherited(&path);
    let globals = GlobalArgs::augment_args(clap::Command::new("sentinel"));
    let option = globals
        .get_arguments()
        .map(|a| a.get_id().as_str())
        .find(|id| {
            !takes.contains(id)
                && levels
                    .iter()
                    .any(|m| m.value_source(id) == Some(ValueSource::CommandLine))
        })?;
    Some((option.to_string(), path))
}

/// The paths of the subcommands that have none (`claim`, …, `cluster status`).
fn leaves(cmd: &clap::Command, parent: &str) -> Vec<String> {
    cmd.get_subcommands()
        .filter(|sub| sub.get_name() != "help")
        .flat_map(|sub| {
            let path = format!("{parent} {}", sub.get_name()).trim().to_string();
            match sub.has_subcommands() {
                true => leaves(sub, &path),
                false => vec![path],
            }
        })
        .collect()
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
    /// Campaign in an election and run a command while leader: the leader is the holder of
    /// the election's lock
    Elect(ElectArgs),
    /// Show an election's leader, or every change of leader (--watch)
    Leader(LeaderArgs),
    /// Wait until --count participants have arrived at a barrier, then all go on
    Barrier(BarrierArgs),
    /// Print one JSON line per event of the locks (acquired, released, expired, queued), on the
    /// coordinator or the local backend, until stopped
    Watch(WatchArgs),
    /// Read and write the coordinator's key-value store (--server): JSON values under keys,
    /// each write numbered by the store's revision
    #[command(subcommand)]
    Kv(KvCommand),
    /// Print a shell completion script
    Completions(CompletionsArgs),
    /// Show lock metrics: this host's counters, or with --repo-wide the repository's history
    Metrics(MetricsArgs),
    /// Run a coordinator node: named locks replicated with Raft, served over HTTP
    Serve(ServeArgs),
    /// Inspect the coordinator cluster given with --server
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Check the options and the backend they choose: which one and why, where the GitHub token
    /// comes from, and whether it can be used (exit 0 usable, else the failure's exit code)
    Doctor,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the leader, term, members, commit and applied index and each follower's lag
    Status,
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value: a string as it is, any other JSON value on one line; exit 6 when the
    /// key does not exist
    Get(KvGetArgs),
    /// Write a key's value (JSON, or else text) and print the revision of the write
    #[command(after_help = KV_PUT_HELP)]
    Put(KvPutArgs),
    /// Delete a key; exit 0 whether or not it existed
    Del(KvDelArgs),
    /// Print every key that starts with PREFIX and its value, one per line (KEY, a tab, VALUE)
    List(KvListArgs),
    /// Print one JSON line per write, delete or expiry of a key that starts with PREFIX, until
    /// SIGINT or SIGTERM (exit 0); events name the key and revision, read the value with get
    Watch(KvWatchArgs),
}

/// `kv put --help`'s rule for VALUE, with examples.
const KV_PUT_HELP: &str = "VALUE is stored as JSON when it is valid JSON, and as a JSON string \
                           otherwise: `kv put k 5` stores the number 5, `kv put k hello` the \
                           string \"hello\", `kv put k '\"5\"'` the string \"5\", `kv put k \
                           '{\"a\":1}'` an object. @FILE and - (stdin) follow the same rule.";

#[derive(Debug, Args)]
pub struct KvGetArgs {
    /// The key
    pub key: String,
}

#[derive(Debug, Args)]
pub struct KvPutArgs {
    /// The key: up to 1 KiB of UTF-8 without control characters (`/` and spaces are fine)
    pub key: String,
    /// The value: JSON if it parses as JSON, else the text as a JSON string; @FILE reads FILE,
    /// - reads stdin
    #[arg(value_name = "VALUE|@FILE|-", allow_hyphen_values = true)]
    pub value: String,
    /// Write only if the key's revision (its mod_revision) is N; 0: only if the key does not
    /// exist (exit 3 otherwise)
    #[arg(long, value_name = "N")]
    pub if_revision: Option<u64>,
    /// How VALUE combines with the stored value
    #[arg(long, value_enum, default_value = "replace")]
    pub merge: MergeArg,
    /// The key ends this long after the write unless written again (1s to 365d); without it,
    /// the key stays until deleted
    #[arg(long, value_parser = duration::arg, value_name = "DURATION")]
    pub ttl: Option<std::time::Duration>,
}

/// `--merge`'s values: the core's [`Merge`] as clap parses it (the core does not depend on
/// clap), with the help text each value shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MergeArg {
    /// VALUE replaces the stored value
    Replace,
    /// Arrays as sets: the stored array gains VALUE's elements it lacks
    Union,
    /// Objects merged field by field, recursively; VALUE's fields win
    Deep,
    /// The larger number
    Max,
    /// The smaller number
    Min,
    /// The sum: a counter
    Add,
}

impl From<MergeArg> for Merge {
    fn from(arg: MergeArg) -> Merge {
        match arg {
            MergeArg::Replace => Merge::Replace,
            MergeArg::Union => Merge::Union,
            MergeArg::Deep => Merge::Deep,
            MergeArg::Max => Merge::Max,
            MergeArg::Min => Merge::Min,
            MergeArg::Add => Merge::Add,
        }
    }
}

#[derive(Debug, Args)]
pub struct KvDelArgs {
    /// The key
    pub key: String,
    /// Delete only if the key's revision (its mod_revision) is N (exit 3 otherwise)
    #[arg(long, value_name = "N")]
    pub if_revision: Option<u64>,
}

#[derive(Debug, Args)]
pub struct KvListArgs {
    /// List the keys that start with PREFIX ("" for every key)
    pub prefix: String,
}

#[derive(Debug, Args)]
pub struct KvWatchArgs {
    /// Watch the keys that start with PREFIX ("" for every key)
    pub prefix: String,
    /// Start after this revision (the last one a previous watch printed) instead of now
    #[arg(long, value_name = "N")]
    pub since_revision: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for clients and peers: an IP address or a host name, with the port
    #[arg(long, default_value = sentinel::coordinator::server::DEFAULT_LISTEN, value_name = "HOST:PORT")]
    pub listen: String,
    /// This node's id in the cluster (1 or more)
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub id: u64,
    /// A member of the cluster and the address peers reach it at; repeat for each member, this
    /// node included, with the same list on every node (the lowest id forms the cluster)
    #[arg(long = "peer", value_name = "ID=HOST:PORT")]
    pub peers: Vec<String>,
    /// Token the cluster's nodes authenticate each other's Raft messages with: required with
    /// other --peers, the same on every node, unlike the client token; never printed
    #[arg(
        long,
        env = "SENTINEL_PEER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = secret
    )]
    pub peer_token: Option<Secret>,
    /// Read the peer token from FILE (one trailing newline is ignored), so that it is on no
    /// command line
    #[arg(long, value_name = "FILE")]
    pub peer_token_file: Option<PathBuf>,
    /// Snapshot the lock state every N log entries (and keep up to N entries after it), as
    /// etcd's --snapshot-count: fewer keep less log in memory and replay less at start, more
    /// write the (up to tens of MB) snapshot less often
    #[arg(
        long,
        env = "SENTINEL_SNAPSHOT_EVERY",
        default_value_t = sentinel::coordinator::server::DEFAULT_SNAPSHOT_EVERY,
        value_parser = clap::value_parser!(u64).range(100..=10_000_000),
        value_name = "N"
    )]
    pub snapshot_every: u64,
    /// The key-value store's size quota in bytes: its keys, values (as JSON) and 128 bytes a
    /// key count against it, and a write past it is refused (429 kv_quota); at most 2 GiB;
    /// give every node the same
    #[arg(
        long,
        env = "SENTINEL_KV_QUOTA",
        default_value_t = sentinel::kv::DEFAULT_QUOTA,
        value_parser = clap::value_parser!(u64).range(1..=sentinel::kv::MAX_QUOTA),
        value_name = "BYTES"
    )]
    pub kv_quota: u64,
    /// Client tokens and the lock-name prefixes each may act on, as JSON:
    /// {"tokens":[{"name":"ci","token":"…" or "sha256":"…","prefixes":["ci/"]}]}; the client
    /// token, if also given, is one more, named "default", allowed every lock
    #[arg(long, value_name = "FILE")]
    pub acl: Option<PathBuf>,
    /// Append one JSON line per write a client asks of this node (time, token name, client
    /// address, operation, lock, result, fencing token) to FILE; writes are refused while it
    /// cannot be written
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Serve GET /metrics without a client token (it shows no lock names)
    #[arg(long)]
    pub public_metrics: bool,
    /// Serve HTTPS to clients and peers with this PEM certificate chain (with --tls-key); the
    /// --peer addresses are then reached with https
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by the CAs in this PEM file (mTLS); peers present
    /// --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl Command {
    /// Whether the command handles SIGINT/SIGTERM itself. The others are raced against them by
    /// `main`, which undoes half-made work and exits 130/143; a heartbeat sidecar and `serve`
    /// instead stop cleanly (exit 0) and `run` passes them on to its command.
    pub fn owns_signals(&self) -> bool {
        match self {
            Command::Heartbeat(a) => !a.once,
            Command::Run(_) => true,
            Command::Claim(_) | Command::Release(_) | Command::Status(_) => false,
            Command::StealStale(_) => false,
            // Like run: the command gets the signal. Watching ends cleanly (exit 0).
            Command::Elect(_) => true,
            Command::Leader(a) => a.watch,
            Command::Barrier(_) => false,
            // Stopping is how a watch ends: exit 0.
            Command::Watch(_) => true,
            Command::Serve(_) => true,
            Command::Completions(_) | Command::Metrics(_) => false,
            // As `watch`: stopping is how `kv watch` ends (exit 0).
            Command::Kv(KvCommand::Watch(_)) => true,
            Command::Cluster(_) | Command::Kv(_) | Command::Doctor => false,
        }
    }

    /// `--conflict-exit-code` of the commands that take it (`claim`, `run`).
    pub fn conflict_exit_code(&self) -> Option<u8> {
        match self {
            Command::Claim(a) => Some(a.claim.conflict_exit_code),
            Command::Run(a) => Some(a.claim.conflict_exit_code),
            _ => None,
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
    #[arg(long, conflicts_with_all = ["lock", "strategy", "max_retries", "initial_backoff", "max_backoff", "wait", "nonblock"])]
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
    /// With --next: the label that marks an issue whose work failed: `run --next` puts it on
    /// when CMD exits non-zero, and --next skips issues that carry it; '' for none [default:
    /// sentinel:failed]
    // Refused without --next by `claim_target`, not by clap: `requires = "next"` is always met
    // (the flag's default, false, counts as given), and conflicting with LOCK would refuse
    // `run --next --fail-label L CMD`, whose CMD clap first takes for LOCK.
    #[arg(long, value_name = "LABEL")]
    pub fail_label: Option<String>,
    /// With --next: take issues that carry --fail-label too
    #[arg(long)]
    pub retry_failed: bool,
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
    /// The whole time to wait for a held lock (as flock -w), retrying with the backoff until
    /// then instead of --max-retries; 0 tries once
    #[arg(long, value_parser = duration::arg, value_name = "DURATION", conflicts_with = "max_retries")]
    pub wait: Option<Duration>,
    /// Give up at once when the lock is held (exit 3), as flock -n: --strategy fail-fast
    #[arg(
        short = 'n',
        long,
        conflicts_with_all = ["strategy", "wait", "max_retries", "initial_backoff", "max_backoff"]
    )]
    pub nonblock: bool,
    /// Retries of the retry and steal-stale strategies
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// Exit code when the lock is held or the queue is empty (as flock -E), to tell it from the
    /// failures of `run`'s command; 1 to 255
    #[arg(
        long,
        default_value_t = 3,
        value_parser = clap::value_parser!(u8).range(1..),
        value_name = "N"
    )]
    pub conflict_exit_code: u8,
    /// First pause between retries (doubles each time)
    #[arg(long, value_parser = duration::arg, default_value = "1s")]
    pub initial_backoff: Duration,
    /// Longest pause between retries
    #[arg(long, value_parser = duration::arg, default_value = "16s")]
    pub max_backoff: Duration,
    /// Lease: the lock is stale when its last heartbeat is older than this
    #[arg(long, value_parser = duration::arg, default_value = "5m")]
    pub ttl: Duration,
    /// A semaphore: at most N permits held at once; every claim of the name gives the same N
    /// (coordinator, local, Redis, PostgreSQL)
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..),
        conflicts_with = "shared"
    )]
    pub limit: Option<u32>,
    /// With --limit: the permits this claim takes [default: 1]
    #[arg(
        long,
        value_name = "K",
        value_parser = clap::value_parser!(u32).range(1..),
        requires = "limit"
    )]
    pub permits: Option<u32>,
    /// A shared (read) hold: held with other shared holds, never with an exclusive one; it
    /// waits behind a waiting exclusive claim (coordinator, local, Redis, PostgreSQL)
    #[arg(long)]
    pub shared: bool,
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
    /// Task info recorded with the lock, as JSON or @FILE (a file holding the JSON):
    /// {"complexity":5,"estimated_duration":"45min","task_type":"bug-fix","priority":"high"}
    #[arg(long, value_name = "JSON|@FILE")]
    pub task_info: Option<String>,
    /// Task complexity, e.g. 5 (wins over --task-info's)
    #[arg(long, value_name = "N")]
    pub complexity: Option<u32>,
    /// Estimated duration, e.g. 45min (wins over --task-info's)
    #[arg(long)]
    pub estimate: Option<String>,
    /// Task type, e.g. bug-fix (wins over --task-info's)
    #[arg(long)]
    pub task_type: Option<String>,
    /// Task priority, e.g. high (wins over --task-info's)
    #[arg(long)]
    pub priority: Option<String>,
    /// What the holder publishes with its hold: `elect --value`'s, not an option of its own
    #[arg(skip)]
    pub value: Option<String>,
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
    /// Issue numbers or lock names: one sidecar keeps them all (on the coordinator, in one
    /// session that one renewal keeps alive)
    #[arg(required = true, value_name = "LOCK")]
    pub locks: Vec<String>,
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
    /// Hold this lock too while CMD runs (repeatable): all are claimed in name order, so runs
    /// that share locks never deadlock, and kept together (on the coordinator by one session)
    #[arg(long, value_name = "LOCK", conflicts_with_all = ["next", "limit", "shared"])]
    pub also: Vec<String>,
    /// The command to run and its arguments, after LOCK (`run LOCK CMD ARGS…`, as flock) or
    /// after `--` (`run --next -- CMD ARGS…`); sentinel's options come before CMD
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

impl RunArgs {
    /// With `--next` there is no LOCK: a word parsed as one starts the command.
    fn command_from_lock(&mut self) {
        if self.target.next
            && let Some(word) = self.target.lock.take()
        {
            self.command.insert(0, word.into());
        }
    }
}

#[derive(Debug, Args)]
pub struct ElectArgs {
    /// The election's name: a lock name, whose holder is the leader
    pub name: String,
    /// What the leader publishes while it leads (its address, say): `sentinel leader` shows it
    #[arg(long)]
    pub value: Option<String>,
    /// The leader's lease: a leader that stops renewing (killed, cut off) is replaced this long
    /// after its last renewal
    #[arg(long, value_parser = duration::arg, default_value = "15s")]
    pub ttl: Duration,
    /// Give up the campaign after this long (exit 3) [default: campaign until elected]
    #[arg(long, value_parser = duration::arg, value_name = "DURATION")]
    pub wait: Option<Duration>,
    /// Renew every this long [default: a third of --ttl]
    #[arg(long, value_parser = duration::arg)]
    pub interval: Option<Duration>,
    /// If leadership is lost: how long after SIGTERM the command gets before SIGKILL
    #[arg(long, value_parser = duration::arg, default_value = "5s")]
    pub kill_grace: Duration,
    /// The command to run while leader, and its arguments (after NAME, or after `--`)
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct LeaderArgs {
    /// The election's name
    pub name: String,
    /// Print one JSON line per change of leader (the current one first), until stopped
    #[arg(long)]
    pub watch: bool,
    /// With --watch: how often to look
    #[arg(long, value_parser = duration::arg, default_value = "500ms", requires = "watch")]
    pub every: Duration,
}

#[derive(Debug, Args)]
pub struct BarrierArgs {
    /// The barrier's name (barriers have names of their own, apart from the locks')
    pub name: String,
    /// How many participants open it; every participant gives the same
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(sentinel::barrier::MAX_COUNT)), value_name = "N")]
    pub count: u32,
    /// Give up after this long (exit 3), leaving the barrier [default: wait until it opens]
    #[arg(long, value_parser = duration::arg, value_name = "DURATION")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["name", "prefix"])))]
pub struct WatchArgs {
    /// The lock to watch
    pub name: Option<String>,
    /// Watch every lock whose name starts with P ("" for all)
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Start after this revision (the last one a previous watch printed) instead of now
    #[arg(long, value_name = "N")]
    pub since_revision: Option<u64>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
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
