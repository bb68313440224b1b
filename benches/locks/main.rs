//! `cargo bench --bench locks`: sentinel against etcd, Redis and PostgreSQL on the same machine in
//! one run (its locks, and its semaphores and elections next to etcd's elections), plus sentinel's
//! library API on its Redis and PostgreSQL backends next to each one's raw lock pattern, its
//! key-value store next to etcd's (puts, batched puts, linearizable and stale reads), a leader
//! failover and the memory of 100,000 held locks (docs/benchmarks.md).
//!
//! Every row starts its own servers on 127.0.0.1 (free ports, temporary directories) and stops
//! them before the next row, so rows never share a machine with each other's servers. A row
//! whose server is not installed is skipped, with the reason, instead of failing the run.

mod clients;
mod failover;
mod http;
mod load;
mod memory;
mod procs;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::{Parser, ValueEnum};
use sentinel::backend::LockBackend;
use sentinel::distributed::LockClient;
use sentinel::postgres::PostgresBackend;
use sentinel::redis::RedisBackend;
use sentinel::server::{ServerBackend, server_urls};
use tabled::settings::Style;
use tabled::{Table, Tabled};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::clients::{
    Client, EtcdKv, KvOp, Library, PostgresRaw, Primitive, RedisRaw, SentinelHttp, SentinelKv,
};
use crate::http::Http;
use crate::load::{Load, Measured};
use crate::procs::{Etcd, Postgres, Redis, Sentinel, find, postgres_bin, version};

/// How long one request of a benchmark client may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "locks",
    about = "Lock throughput and latency of sentinel, etcd, Redis and PostgreSQL on this machine",
    long_about = "Lock throughput and latency of sentinel, etcd, Redis and PostgreSQL on this \
                  machine. Run it as `cargo bench --bench locks -- [OPTIONS]`: every server is \
                  started on 127.0.0.1 in a temporary directory and stopped at the end; a row \
                  whose server is not installed is skipped (apt-get install etcd-server \
                  redis-server postgresql)."
)]
struct Args {
    /// Concurrent clients per row
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    clients: u64,
    /// Measured seconds per row
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Warm-up seconds per row, before measuring
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup: u64,
    /// Lock names to pick from at random; the default keeps contention rare
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    names: u64,
    /// Run only these parts (comma-separated)
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PART,...")]
    only: Vec<Part>,
    /// Leader failovers to measure (0: none)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100))]
    failover_runs: u32,
    /// Do not measure the memory of held locks
    #[arg(long)]
    skip_memory: bool,
    /// Locks held for the memory measurement (a node holds at most 100,000)
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    memory_locks: u64,
    /// Bytes of task info (as JSON) each lock of the memory measurement carries (at most 4096,
    /// the coordinator's limit)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=4096))]
    memory_task_info: u64,
    /// Run the benchmark. `cargo bench` passes it; without it (`cargo test --benches`, which
    /// builds benchmarks as a check) the binary only says how to run it
    #[arg(long)]
    bench: bool,
}

/// The parts of a run: the rows of the table in their order, then the failover and memory.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// sentinel's HTTP API, one node
    #[value(name = "sentinel-1")]
    Sentinel1,
    /// sentinel's HTTP API, one node: one permit of a semaphore of limit 2, acquired and released
    #[value(name = "sentinel-1-semaphore")]
    Sentinel1Semaphore,
    /// sentinel's HTTP API, one node: an election's campaign and resignation
    #[value(name = "sentinel-1-election")]
    Sentinel1Election,
    /// sentinel's HTTP API, three nodes, every client to the leader
    #[value(name = "sentinel-3-leader")]
    Sentinel3Leader,
    /// sentinel's HTTP API, three nodes, clients spread over the nodes (followers forward)
    #[value(name = "sentinel-3-spread")]
    Sentinel3Spread,
    /// etcd's v3 lock API through its JSON gateway, one member
    Etcd,
    /// etcd's v3 election API (campaign, resign) through its JSON gateway, one member
    #[value(name = "etcd-election")]
    EtcdElection,
    /// Redis SET NX PX and a token-checked Lua release, appendfsync always
    #[value(name = "redis-always")]
    RedisAlways,
    /// Redis SET NX PX and a token-checked Lua release, no persistence
    #[value(name = "redis-none")]
    RedisNone,
    /// PostgreSQL's single-row lock: an upsert taking a free or expired row, a delete by token
    #[value(name = "postgres-raw")]
    PostgresRaw,
    /// sentinel's library API (LockClient) on ServerBackend, one node
    #[value(name = "lib-server")]
    LibServer,
    /// sentinel's library API on RedisBackend, Redis appendfsync always
    #[value(name = "lib-redis")]
    LibRedis,
    /// sentinel's library API on PostgresBackend
    #[value(name = "lib-postgres")]
    LibPostgres,
    /// sentinel's key-value store, one node: one durable PUT of one key
    #[value(name = "kv-put")]
    KvPut,
    /// sentinel's key-value store, one node: one transaction of 100 puts
    #[value(name = "kv-batch")]
    KvBatch,
    /// sentinel's key-value store, one node: one linearizable GET
    #[value(name = "kv-get")]
    KvGet,
    /// sentinel's key-value store, one node: one GET with stale=true
    #[value(name = "kv-get-stale")]
    KvGetStale,
    /// etcd's key-value store, one member: /v3/kv/put
    #[value(name = "etcd-put")]
    EtcdPut,
    /// etcd's key-value store, one member: /v3/kv/txn of 100 puts
    #[value(name = "etcd-batch")]
    EtcdBatch,
    /// etcd's key-value store, one member: /v3/kv/range, linearizable
    #[value(name = "etcd-range")]
    EtcdRange,
    /// etcd's key-value store, one member: /v3/kv/range, serializable
    #[value(name = "etcd-range-serializable")]
    EtcdRangeSerializable,
    /// Leader failover of a three-node cluster
    Failover,
    /// Memory of a node holding --memory-locks locks
    Memory,
}

const ROWS: [Part; 21] = [
    Part::Sentinel1,
    Part::Sentinel1Semaphore,
    Part::Sentinel1Election,
    Part::Sentinel3Leader,
    Part::Sentinel3Spread,
    Part::Etcd,
    Part::EtcdElection,
    Part::RedisAlways,
    Part::RedisNone,
    Part::PostgresRaw,
    Part::LibServer,
    Part::LibRedis,
    Part::LibPostgres,
    Part::KvPut,
    Part::EtcdPut,
    Part::KvBatch,
    Part::EtcdBatch,
    Part::KvGet,
    Part::EtcdRange,
    Part::KvGetStale,
    Part::EtcdRangeSerializable,
];

impl Part {
    fn label(self) -> &'static str {
        match self {
            Part::Sentinel1 => "sentinel, 1 node",
            // The limit is clients::SEMAPHORE_LIMIT.
            Part::Sentinel1Semaphore => "sentinel, 1 node, semaphore (limit 2)",
            Part::Sentinel1Election => "sentinel, 1 node, election",
            Part::Sentinel3Leader => "sentinel, 3 nodes, clients → leader",
            Part::Sentinel3Spread => "sentinel, 3 nodes, clients spread",
            Part::Etcd => "etcd, 1 node (v3 lock API)",
            Part::EtcdElection => "etcd, 1 node (v3 election API)",
            Part::RedisAlways => "Redis, appendfsync always",
            Part::RedisNone => "Redis, no persistence",
            Part::PostgresRaw => "PostgreSQL, upsert + delete",
            Part::LibServer => "library → sentinel, 1 node",
            Part::LibRedis => "library → Redis, appendfsync always",
            Part::LibPostgres => "library → PostgreSQL",
            Part::KvPut => "sentinel kv, 1 node: put",
            Part::KvBatch => "sentinel kv, 1 node: 100 puts in a txn",
            Part::KvGet => "sentinel kv, 1 node: get (linearizable)",
            Part::KvGetStale => "sentinel kv, 1 node: get (stale)",
            Part::EtcdPut => "etcd kv, 1 node: put",
            Part::EtcdBatch => "etcd kv, 1 node: 100 puts in a txn",
            Part::EtcdRange => "etcd kv, 1 node: range (linearizable)",
            Part::EtcdRangeSerializable => "etcd kv, 1 node: range (serializable)",
            Part::Failover => "failover",
            Part::Memory => "memory",
        }
    }

    /// What a client of a key-value row does per operation.
    fn kv_op(self) -> KvOp {
        match self {
            Part::KvBatch | Part::EtcdBatch => KvOp::Batch,
            Part::KvGet | Part::EtcdRange => KvOp::Get,
            Part::KvGetStale | Part::EtcdRangeSerializable => KvOp::StaleGet,
            _ => KvOp::Put,
        }
    }

    /// Whether the row reads keys (which are written first).
    fn reads(self) -> bool {
        matches!(
            self,
            Part::KvGet | Part::KvGetStale | Part::EtcdRange | Part::EtcdRangeSerializable
        )
    }

    /// What a client of the row takes and gives back per operation.
    fn primitive(self) -> Primitive {
        match self {
            Part::Sentinel1Semaphore => Primitive::Semaphore,
            Part::Sentinel1Election | Part::EtcdElection => Primitive::Election,
            _ => Primitive::Lock,
        }
    }
}

/// Why a row has no numbers.
enum RowError {
    /// Its server is not installed.
    Skipped(String),
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for RowError {
    fn from(e: E) -> Self {
        RowError::Failed(e.into())
    }
}

/// The installed server binary, or why the row is skipped.
fn need(bin: Option<PathBuf>, what: &str, package: &str) -> Result<PathBuf, RowError> {
    bin.ok_or_else(|| {
        RowError::Skipped(format!(
            "{what} is not installed (apt-get install {package})"
        ))
    })
}

struct Run {
    sentinel: PathBuf,
    clients: u64,
    load: Load,
    etcd_lease_secs: u64,
}

impl Run {
    /// One benchmark client per `make()`.
    async fn clients<C, F, Fut>(&self, make: F) -> Result<Vec<C>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<C>>,
    {
        let mut clients = Vec::new();
        for _ in 0..self.clients {
            clients.push(make().await?);
        }
        Ok(clients)
    }

    /// One library client per benchmark client, each on a backend of its own.
    fn library<B: LockBackend + 'static>(
        &self,
        backend: impl Fn() -> sentinel::Result<B>,
    ) -> Result<Vec<Library<B>>> {
        (0..self.clients)
            .map(|i| {
                Ok(Library {
                    locks: LockClient::new(backend()?, format!("bench-{i}"))?,
                })
            })
            .collect()
    }

    /// Writes every name of the pool once (64 writers at a time, each with its own
    /// connection), so that the read rows read keys that exist.
    async fn fill<F, Fut>(&self, write: F) -> Result<()>
    where
        F: Fn(Http, u64) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<http::Answer, String>> + Send,
    {
        const WRITERS: u64 = 64;
        let names = self.load.names;
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let write = write.clone();
                tokio::spawn(async move {
                    for n in (w..names).step_by(WRITERS as usize) {
                        match write(Http::new(REQUEST_TIMEOUT), n).await {
                            Ok((200, _)) => {}
                            Ok((status, body)) => {
                                return Err(anyhow!("filling {n}: {status} {body}"));
                            }
                            Err(e) => return Err(anyhow!("filling {n}: {e}")),
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in writers {
            w.await??;
        }
        Ok(())
    }

    /// A row of clients of sentinel's HTTP API, client `i` sending to `url(i)`.
    async fn sentinel_row(
        &self,
        cluster: &Sentinel,
        primitive: Primitive,
        url: impl Fn(u64) -> String,
    ) -> Result<(Measured, Option<String>), RowError> {
        let clients = (0..self.clients)
            .map(|i| SentinelHttp {
                http: Http::new(REQUEST_TIMEOUT),
                url: url(i),
                holder: format!("bench-{i}"),
                primitive,
            })
            .collect();
        let setup = Http::new(REQUEST_TIMEOUT);
        let term = cluster.term(&setup).await?;
        let measured = load::run(clients, self.load).await;
        let said = server_side(&setup, cluster, term, measured.all_ops).await;
        Ok((measured, said))
    }

    /// A row of clients of etcd's JSON gateway, each with a lease of its own, and what etcd's
    /// counters say it did per operation.
    async fn etcd_row(&self, primitive: Primitive) -> Result<(Measured, Option<String>), RowError> {
        let setup = Http::new(REQUEST_TIMEOUT);
        let bin = need(find("etcd", &[]), "etcd", "etcd-server")?;
        let etcd = Etcd::start(&bin, &setup).await?;
        let election = matches!(primitive, Primitive::Election);
        let clients = self
            .clients(|| async {
                let http = Http::new(REQUEST_TIMEOUT);
                clients::Etcd::new(http, &etcd.url, self.etcd_lease_secs, election)
                    .await
                    .map_err(anyhow::Error::msg)
            })
            .await?;
        Ok(self.etcd_measured(&setup, &etcd.url, clients).await)
    }

    /// Runs `clients` against etcd at `url`, and what etcd's counters say it did per operation.
    async fn etcd_measured<C: Client>(
        &self,
        setup: &Http,
        url: &str,
        clients: Vec<C>,
    ) -> (Measured, Option<String>) {
        let before = etcd_counters(setup, url).await;
        let measured = load::run(clients, self.load).await;
        let after = etcd_counters(setup, url).await;
        let said = etcd_side(before, after, measured.all_ops);
        (measured, said)
    }

    /// The row's numbers, and for sentinel and etcd rows what the server did for them.
    async fn row(&self, part: Part) -> Result<(Measured, Option<String>), RowError> {
        let setup = Http::new(REQUEST_TIMEOUT);
        match part {
            Part::Sentinel1 | Part::Sentinel1Semaphore | Part::Sentinel1Election => {
                let node = Sentinel::start(&self.sentinel, 1, &setup).await?;
                let url = node.nodes[0].url.clone();
                self.sentinel_row(&node, part.primitive(), |_| url.clone())
                    .await
            }
            Part::Sentinel3Leader => {
                let cluster = Sentinel::start(&self.sentinel, 3, &setup).await?;
                let url = cluster.leader_url(&setup).await?;
                self.sentinel_row(&cluster, Primitive::Lock, |_| url.clone())
                    .await
            }
            Part::Sentinel3Spread => {
                let cluster = Sentinel::start(&self.sentinel, 3, &setup).await?;
                let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
                self.sentinel_row(&cluster, Primitive::Lock, |i| {
                    urls[i as usize % urls.len()].clone()
                })
                .await
            }
            Part::Etcd | Part::EtcdElection => self.etcd_row(part.primitive()).await,
            Part::RedisAlways | Part::RedisNone => {
                let bin = need(find("redis-server", &[]), "redis-server", "redis-server")?;
                let redis = Redis::start(&bin, part == Part::RedisAlways).await?;
                let clients = self
                    .clients(|| async {
                        RedisRaw::new(&redis.url).await.map_err(anyhow::Error::msg)
                    })
                    .await?;
                Ok((load::run(clients, self.load).await, None))
            }
            Part::PostgresRaw => {
                let bin = need(postgres_bin(), "PostgreSQL", "postgresql")?;
                let pg = Postgres::start(&bin, self.clients as usize + 20).await?;
                let clients = self
                    .clients(|| async {
                        PostgresRaw::new(&pg.url).await.map_err(anyhow::Error::msg)
                    })
                    .await?;
                Ok((load::run(clients, self.load).await, None))
            }
            Part::LibServer => {
                let node = Sentinel::start(&self.sentinel, 1, &setup).await?;
                let url = &node.nodes[0].url;
                let clients = self.library(|| ServerBackend::new(server_urls(url)?, None))?;
                let term = node.term(&setup).await?;
                let measured = load::run(clients, self.load).await;
                let said = server_side(&setup, &node, term, measured.all_ops).await;
                Ok((measured, said))
            }
            Part::LibRedis => {
                let bin = need(find("redis-server", &[]), "redis-server", "redis-server")?;
                let redis = Redis::start(&bin, true).await?;
                let clients = self.library(|| RedisBackend::new(&redis.url))?;
                Ok((load::run(clients, self.load).await, None))
            }
            Part::LibPostgres => {
                let bin = need(postgres_bin(), "PostgreSQL", "postgresql")?;
                // Each client's pool opens one connection at a time; room for them all, and
                // for the schema check of the first use.
                let pg = Postgres::start(&bin, self.clients as usize + 20).await?;
                let clients = self.library(|| PostgresBackend::new(&pg.url))?;
                Ok((load::run(clients, self.load).await, None))
            }
            Part::KvPut | Part::KvBatch | Part::KvGet | Part::KvGetStale => {
                let node = Sentinel::start(&self.sentinel, 1, &setup).await?;
                let url = node.nodes[0].url.clone();
                let op = part.kv_op();
                let clients = (0..self.clients)
                    .map(|_| SentinelKv {
                        http: Http::new(REQUEST_TIMEOUT),
                        url: url.clone(),
                        op,
                    })
                    .collect();
                if part.reads() {
                    let url = url.clone();
                    self.fill(move |http, n| {
                        let url = url.clone();
                        async move {
                            let body = serde_json::json!({"value": {"n": n}});
                            http.put(&format!("{url}/kv/bench/{n}"), &body).await
                        }
                    })
                    .await?;
                }
                let term = node.term(&setup).await?;
                let measured = load::run(clients, self.load).await;
                let said = server_side(&setup, &node, term, measured.all_ops).await;
                Ok((measured, said))
            }
            Part::EtcdPut | Part::EtcdBatch | Part::EtcdRange | Part::EtcdRangeSerializable => {
                let bin = need(find("etcd", &[]), "etcd", "etcd-server")?;
                let etcd = Etcd::start(&bin, &setup).await?;
                let op = part.kv_op();
                let clients = (0..self.clients)
                    .map(|_| EtcdKv {
                        http: Http::new(REQUEST_TIMEOUT),
                        url: etcd.url.clone(),
                        op,
                    })
                    .collect();
                if part.reads() {
                    let url = etcd.url.clone();
                    self.fill(move |http, n| {
                        let url = url.clone();
                        async move {
                            let key = BASE64.encode(format!("bench/{n}"));
                            let value = BASE64.encode(serde_json::json!({"n": n}).to_string());
                            let body = serde_json::json!({"key": key, "value": value});
                            http.post(&format!("{url}/v3/kv/put"), &body).await
                        }
                    })
                    .await?;
                }
                Ok(self.etcd_measured(&setup, &etcd.url, clients).await)
            }
            Part::Failover | Part::Memory => Err(RowError::Failed(anyhow!(
                "{} is not a row of the table",
                part.label()
            ))),
        }
    }
}

/// A value of a Prometheus text exposition: the sample of the metric `name` without labels.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

/// What the cluster says about a row that started in `term` and completed `ops` operations,
/// warm-up included: the leader's mean time from proposing a command to its answer (from its
/// metrics, warm-up included), which is how much of the latency the commit itself is; how many
/// log entries (each one commit) and commands an operation took; and elections during the row,
/// which stall every client.
async fn server_side(http: &Http, cluster: &Sentinel, term: u64, ops: u64) -> Option<String> {
    let mut said = Vec::new();
    if let Ok(leader) = cluster.leader_url(http).await
        && let Ok((200, text)) = http.get(&format!("{leader}/metrics")).await
        && let Some(text) = text.as_str()
    {
        let value = |name| metric(text, name);
        if let (Some(sum), Some(count)) = (
            value("consensus_commit_latency_seconds_sum"),
            value("consensus_commit_latency_seconds_count"),
        ) && count > 0.0
        {
            said.push(format!(
                "the leader's commits (proposal to answer) took {:.2} ms on average over {count} \
                 commits, warm-up included",
                sum / count * 1000.0
            ));
        }
        if let (Some(commands), Some(entries)) = (
            value("consensus_commands_per_entry_sum"),
            value("consensus_commands_per_entry_count"),
        ) && ops > 0
        {
            said.push(format!(
                "per operation (over {ops}, warm-up included): {:.3} log entries, {:.2} commands",
                entries / ops as f64,
                commands / ops as f64
            ));
        }
    }
    if let Ok(now) = cluster.term(http).await
        && now != term
    {
        said.push(format!(
            "the cluster held elections during the row (term {term} → {now})"
        ));
    }
    (!said.is_empty()).then(|| said.join("; "))
}

/// etcd's counters of the work behind an operation, and what they count.
const ETCD_COUNTERS: [(&str, &str); 6] = [
    ("etcd_server_proposals_committed_total", "Raft proposals"),
    ("etcd_disk_wal_fsync_duration_seconds_count", "WAL fsyncs"),
    (
        "etcd_disk_backend_commit_duration_seconds_count",
        "bbolt commits",
    ),
    ("etcd_mvcc_put_total", "puts"),
    ("etcd_mvcc_delete_total", "deletes"),
    ("etcd_mvcc_range_total", "range reads"),
];

/// The values of [`ETCD_COUNTERS`] now, if etcd answers with all of them.
async fn etcd_counters(http: &Http, url: &str) -> Option<Vec<f64>> {
    match http.get(&format!("{url}/metrics")).await {
        Ok((200, text)) => {
            let text = text.as_str()?;
            ETCD_COUNTERS
                .iter()
                .map(|(name, _)| metric(text, name))
                .collect()
        }
        _ => None,
    }
}

/// How much of each of [`ETCD_COUNTERS`] an operation took, between two readings around a row
/// that completed `ops` operations (warm-up included).
fn etcd_side(before: Option<Vec<f64>>, after: Option<Vec<f64>>, ops: u64) -> Option<String> {
    let (before, after) = (before?, after?);
    if ops == 0 {
        return None;
    }
    let per_op: Vec<String> = ETCD_COUNTERS
        .iter()
        .zip(before.iter().zip(&after))
        .map(|((_, what), (b, a))| format!("{:.3} {what}", (a - b) / ops as f64))
        .collect();
    Some(format!(
        "per operation (over {ops}, warm-up included): {}",
        per_op.join(", ")
    ))
}

/// A line of the table.
#[derive(Tabled)]
struct Line {
    system: &'static str,
    #[tabled(rename = "ops/s")]
    ops: String,
    #[tabled(rename = "p50 ms")]
    p50: String,
    #[tabled(rename = "p95 ms")]
    p95: String,
    #[tabled(rename = "p99 ms")]
    p99: String,
    #[tabled(rename = "busy / errors")]
    refused: String,
}

impl Line {
    fn measured(part: Part, m: &Measured) -> Line {
        let ms = |q| m.quantile_ms(q).map_or("-".into(), |v| format!("{v:.2}"));
        Line {
            system: part.label(),
            ops: thousands(m.ops_per_sec().round() as u64),
            p50: ms(0.50),
            p95: ms(0.95),
            p99: ms(0.99),
            refused: format!("{} / {}", m.busy, m.errors),
        }
    }

    fn without(part: Part, what: &str) -> Line {
        Line {
            system: part.label(),
            ops: what.to_string(),
            p50: "-".into(),
            p95: "-".into(),
            p99: "-".into(),
            refused: "-".into(),
        }
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The machine, for the record: CPU model, cores, load.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores, load average {}", load_average())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The median time to make a small append durable: what every durable row waits for, at least
/// once per operation unless the server groups its clients' writes.
fn fsync_latency() -> Result<Duration> {
    let dir = tempfile::tempdir()?;
    let mut file = std::fs::File::create(dir.path().join("probe"))?;
    let mut times = Vec::new();
    for _ in 0..50 {
        file.write_all(&[0u8; 4096])?;
        let started = Instant::now();
        file.sync_data()?;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

/// The versions of the servers found, for the record.
fn versions() -> String {
    let mut found = Vec::new();
    let mut add = |name: &str, bin: Option<PathBuf>| {
        if let Some(v) = bin.as_deref().and_then(version) {
            found.push(format!("{name} {v}"));
        }
    };
    add("etcd", find("etcd", &[]));
    add("Redis", find("redis-server", &[]));
    add("PostgreSQL", postgres_bin().map(|d| d.join("postgres")));
    found.join(", ")
}

async fn run(args: Args) -> Result<bool> {
    let selected = |part: Part| args.only.is_empty() || args.only.contains(&part);
    let sentinel = PathBuf::from(env!("CARGO_BIN_EXE_sentinel"));
    check_binary(&sentinel)?;
    let run = Run {
        sentinel,
        clients: args.clients,
        load: Load {
            warmup: Duration::from_secs(args.warmup),
            measure: Duration::from_secs(args.seconds),
            names: args.names,
        },
        etcd_lease_secs: args.warmup + args.seconds + 60,
    };
    println!("sentinel {} lock benchmark", env!("CARGO_PKG_VERSION"));
    println!("machine: {}", machine());
    println!("servers: sentinel (this build), {}", versions());
    match fsync_latency() {
        Ok(t) => println!(
            "disk: a 4 KiB append + fdatasync takes {:.2} ms (median) in the temporary directory",
            t.as_secs_f64() * 1000.0
        ),
        Err(e) => println!("disk: cannot measure fdatasync: {e:#}"),
    }
    println!(
        "load: {} clients, {} s warm-up + {} s measured per row, {} names; one op = take + give \
         back of a random name (acquire + release; campaign + resign)\n",
        args.clients, args.warmup, args.seconds, args.names
    );
    let mut ok = true;
    let mut lines = Vec::new();
    let mut notes = Vec::new();
    for part in ROWS.into_iter().filter(|p| selected(*p)) {
        eprintln!(
            "running {}: {} s warm-up + {} s…",
            part.label(),
            args.warmup,
            args.seconds
        );
        match run.row(part).await {
            Ok((m, server)) => {
                if let Some(server) = server {
                    notes.push(format!("{}: {server}", part.label()));
                }
                if let Some(e) = &m.first_error {
                    notes.push(format!(
                        "{}: first error (warm-up included): {e}",
                        part.label()
                    ));
                }
                lines.push(Line::measured(part, &m));
            }
            Err(RowError::Skipped(why)) => {
                notes.push(format!("{}: skipped: {why}", part.label()));
                lines.push(Line::without(part, "skipped"));
            }
            Err(RowError::Failed(e)) => {
                ok = false;
                notes.push(format!("{}: failed: {e:#}", part.label()));
                lines.push(Line::without(part, "failed"));
            }
        }
    }
    if !lines.is_empty() {
        println!("{}", Table::new(&lines).with(Style::markdown()));
        for note in &notes {
            println!("\n{note}");
        }
        println!();
    }
    if selected(Part::Failover) && args.failover_runs > 0 {
        ok &= report_failover(&run.sentinel, args.failover_runs).await;
    }
    if selected(Part::Memory) && !args.skip_memory {
        ok &= report_memory(
            &run.sentinel,
            args.clients,
            args.memory_locks,
            args.memory_task_info,
        )
        .await;
    }
    println!("load average at the end: {}", load_average());
    Ok(ok)
}

/// Fails early, with the reason, if the sentinel binary cannot run at all.
fn check_binary(bin: &Path) -> Result<()> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        return Err(anyhow!(
            "{} --version failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

async fn report_failover(bin: &Path, runs: u32) -> bool {
    let (mut served, mut elected, mut claimed) = (Vec::new(), Vec::new(), Vec::new());
    for n in 1..=runs {
        eprintln!("running failover {n} of {runs}…");
        match failover::once(bin).await {
            Ok(f) => {
                served.push(f.served);
                elected.push(f.elected);
                claimed.push(f.claimed);
            }
            Err(e) => {
                println!("failover: run {n} failed: {e:#}\n");
                return false;
            }
        }
    }
    println!(
        "failover (3 nodes, kill -9 of the leader): first write acknowledged by a survivor after \
         {}; a survivor named the new leader after {}; a `sentinel claim` started at the kill \
         (every node in --server, the dead leader first) exited 0 after {}\n",
        median_and_runs(served),
        median_and_runs(elected),
        median_and_runs(claimed)
    );
    true
}

/// `median X ms (runs: A, B, … ms)`, the runs in their order.
fn median_and_runs(mut times: Vec<Duration>) -> String {
    let runs: Vec<String> = times.iter().map(|t| t.as_millis().to_string()).collect();
    times.sort_unstable();
    format!(
        "median {} ms (runs: {} ms)",
        times[times.len() / 2].as_millis(),
        runs.join(", ")
    )
}

async fn report_memory(bin: &Path, clients: u64, locks: u64, task_info: u64) -> bool {
    eprintln!("running memory: {locks} locks with {task_info} bytes of task info…");
    match memory::run(bin, clients, locks, task_info).await {
        Ok(m) => {
            println!(
                "memory (1 node): idle RSS {}; holding {} locks with {task_info} bytes of task \
                 info RSS {} (peak {}), data directory {}; acquired by {clients} clients in \
                 {:.1} s\n",
                mib(m.idle_rss),
                thousands(m.locks),
                mib(m.held_rss),
                mib(m.peak_rss),
                mib(m.disk),
                m.acquire_time.as_secs_f64()
            );
            true
        }
        Err(e) => {
            println!("memory: failed: {e:#}\n");
            false
        }
    }
}

/// The first of SIGINT and SIGTERM to arrive.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        // Without handlers the signals keep their default effect.
        _ => std::future::pending().await,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.bench {
        println!(
            "the lock benchmark runs only under `cargo bench --bench locks -- [OPTIONS]` (or with \
             --bench); --help lists the options"
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the Tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Stopping on SIGINT or SIGTERM through here drops the run, and with it every server it
    // started; dying of the signal would leave them running.
    let stoppable = async {
        tokio::select! {
            done = run(args) => done,
            signal = stop_signal() => Err(anyhow!("stopped by {signal}")),
        }
    };
    match runtime.block_on(stoppable) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
