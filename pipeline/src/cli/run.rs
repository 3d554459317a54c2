//! `sluice run`: the pipeline over a directory of JSON-lines files.

use std::path::PathBuf;
use std::sync::Arc;

use super::Definitions;
use crate::catalog::{Lake, StorageOptions};
use crate::error::{Error, Result};
use crate::plan::load_sql_dir;
use crate::runtime::{Observed, Pipeline, RunOptions, RunStats};
use crate::schema::{parse_duration, SchemaRegistry};
use crate::sink::MaintenancePolicy;
use crate::source::{FileSource, KafkaSource, ReadAhead, Source};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Input directory: <topic>/<partition>.jsonl (or <topic>.jsonl for partition 0).
    #[arg(long, value_name = "DIR", required_unless_present = "kafka", conflicts_with = "kafka")]
    pub input: Option<PathBuf>,
    /// Kafka bootstrap servers: consume every topic of the schemas from its beginning.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// A librdkafka setting passed through (security and the like), repeatable: -X key=value.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = setting)]
    pub kafka_settings: Vec<(String, String)>,
    /// With --kafka: stop as a bounded run once no message came for this long
    /// (every window is then emitted); without it the run goes on until stopped.
    #[arg(long, value_parser = duration, requires = "kafka")]
    pub stop_when_idle: Option<std::time::Duration>,
    /// With --kafka: run as one instance of the consumer group NAME. The group's
    /// instances share the tables (in shards) and take over from each other; every
    /// instance runs with the same SQL and lake. With --stop-when-idle an instance
    /// ends once the shards it holds have run to their end and no other came for
    /// that long (to drain a lake with the last one).
    #[arg(long, value_name = "NAME", requires = "kafka")]
    pub group: Option<String>,
    /// With --group: this instance's stable id in the group (Kafka's
    /// group.instance.id), so that a restart gets its shards back. Default: the host name.
    #[arg(long, value_name = "ID", requires = "group")]
    pub instance: Option<String>,
    /// With --group, when the group is new: how many shards its tables are split
    /// into (the most instances that can share the work). An existing group keeps its own.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=256), requires = "group")]
    pub shards: u32,
    /// The lake to write (a directory or URL).
    #[arg(long)]
    pub lake: String,
    /// Lines read from one partition file at a time.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch_size: u64,
    /// How often buffered rows are committed to the lake (e.g. 500ms, 1s, 1m):
    /// a row is visible about this long plus one commit after its message is
    /// read. Default: 500ms reading Kafka, 1s replaying files (nobody waits on
    /// their rows, and fewer, larger commits replay faster).
    #[arg(long, value_parser = duration)]
    pub commit_interval: Option<std::time::Duration>,
    /// How long an epoch's table maintenance (compaction, Delta checkpoints,
    /// vacuum) may run before the tables left wait for the next epochs; a
    /// compaction running when it runs out commits what it has rewritten and
    /// goes on at the table's next turn. Default: a fifth of --commit-interval
    /// (100ms reading Kafka, 200ms replaying files), since nothing is read meanwhile.
    #[arg(long, value_parser = duration)]
    pub maintenance_budget: Option<std::time::Duration>,
    /// A partition silent for this long no longer holds back the watermark of the
    /// queries reading it (contract §2).
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub idle_timeout: std::time::Duration,
    /// Serve /healthz and Prometheus /metrics on this address (e.g. 127.0.0.1:9898).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How long a commit waits for an unreachable lake store (retrying with
    /// backoff) before the run stops with an error.
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub outage_limit: std::time::Duration,
    /// How long the raw archive (archive/raw/<topic>: every message as read, bad
    /// ones included) keeps a day: `forever`, a duration such as `30d`, or `off`.
    #[arg(long, default_value = "forever", value_parser = crate::sink::ArchiveRetention::parse)]
    pub archive_retention: crate::sink::ArchiveRetention,
    #[command(flatten)]
    pub maintenance: MaintenanceArgs,
    #[command(flatten)]
    pub definitions: Definitions,
    /// Told when the pipeline starts reading (see `RunOptions::reading`).
    #[arg(skip)]
    pub reading: Option<std::sync::Arc<tokio::sync::Notify>>,
}

/// How tables are kept healthy (`run` in its commit cycle, and `maintain`).
#[derive(Debug, Clone, clap::Args)]
pub struct MaintenanceArgs {
    /// A Delta checkpoint every N versions of a table.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,
    /// Compaction writes files of about this size (e.g. 128MiB, 16MiB).
    #[arg(long, default_value = "128MiB", value_parser = size)]
    pub target_file_size: u64,
    /// Compact a partition once it holds more than this many files smaller than the target.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_small_files: u64,
    /// Vacuum deletes removed files, and files no commit references, once older than this.
    #[arg(long, default_value = "7d", value_parser = duration)]
    pub vacuum_retention: std::time::Duration,
    /// How often a running pipeline vacuums its tables and cleans expired Delta logs.
    #[arg(long, default_value = "1h", value_parser = duration)]
    pub vacuum_every: std::time::Duration,
}

impl MaintenanceArgs {
    pub fn policy(&self) -> Result<MaintenancePolicy> {
        Ok(MaintenancePolicy {
            checkpoint_interval: self.checkpoint_every,
            target_file_size: self.target_file_size,
            max_small_files: self.max_small_files as usize,
            vacuum_retention: self.vacuum_retention,
            vacuum_interval: self.vacuum_every,
            ..MaintenancePolicy::default()
        })
    }
}

impl Default for MaintenanceArgs {
    fn default() -> Self {
        let policy = MaintenancePolicy::default();
        MaintenanceArgs {
            checkpoint_every: policy.checkpoint_interval,
            target_file_size: policy.target_file_size,
            max_small_files: policy.max_small_files as u64,
            vacuum_retention: policy.vacuum_retention,
            vacuum_every: policy.vacuum_interval,
        }
    }
}

/// A size in bytes: `134217728`, `512KiB`, `128MiB`, `1GiB` (also KB, MB, GB as powers of 1024).
pub(super) fn size(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a size like 128MiB, 512KiB or 1GiB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{text}` is not a size like 128MiB, 512KiB or 1GiB")),
    };
    match n.checked_mul(factor) {
        Some(0) | None => Err(format!("`{text}`: a size must be above 0 and below 16 EiB")),
        Some(bytes) => Ok(bytes),
    }
}

impl RunArgs {
    /// `--commit-interval`, or the default for the input read.
    pub fn commit_interval(&self) -> std::time::Duration {
        let default = match self.kafka {
            Some(_) => crate::runtime::LIVE_COMMIT_INTERVAL,
            None => crate::runtime::REPLAY_COMMIT_INTERVAL,
        };
        self.commit_interval.unwrap_or(default)
    }

    /// The maintenance flags as a policy. Maintenance stops reading: by default
    /// an epoch's may take a fifth of the commit interval.
    fn maintenance_policy(&self) -> Result<MaintenancePolicy> {
        let epoch_budget = self.maintenance_budget.unwrap_or(self.commit_interval() / 5);
        Ok(MaintenancePolicy { epoch_budget, ..self.maintenance.policy()? })
    }

    /// A run over files with every default, as `demo` and `bench` make.
    pub fn files(input: &std::path::Path, lake: &str, definitions: &Definitions) -> Self {
        RunArgs {
            input: Some(input.to_path_buf()),
            kafka: None,
            kafka_settings: Vec::new(),
            stop_when_idle: None,
            group: None,
            instance: None,
            shards: 6,
            lake: lake.to_string(),
            batch_size: 8192,
            commit_interval: None,
            maintenance_budget: None,
            idle_timeout: crate::time::DEFAULT_IDLE_TIMEOUT,
            metrics_addr: None,
            outage_limit: RunOptions::default().outage_limit,
            archive_retention: Default::default(),
            maintenance: MaintenanceArgs::default(),
            definitions: definitions.clone(),
            reading: None,
        }
    }
}

pub(super) fn setting(text: &str) -> std::result::Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

pub(super) fn duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    parse_duration(text)
}

pub async fn run(args: &RunArgs, storage: &StorageOptions) -> Result<RunStats> {
    let registry = SchemaRegistry::load(&args.definitions.schemas_dir()?)?;
    let sql = load_sql_dir(&args.definitions.sql_dir()?)?;
    let udfs = args.definitions.udfs()?;
    let observed = Arc::new(Observed::default());
    // Served before the lake is opened, so a store that is down at start shows in /metrics.
    if let Some(addr) = args.metrics_addr {
        let bound = crate::runtime::serve(addr, observed.clone()).await?;
        eprintln!("serving http://{bound}/healthz and /metrics");
    }
    let lake = Lake::connect(&args.lake, true, storage.clone()).await?;
    let batch_size = args.batch_size as usize;
    if let (Some(group), Some(brokers)) = (&args.group, &args.kafka) {
        return run_in_group(args, group, brokers, lake, registry, sql, udfs, observed).await;
    }
    let (mut source, progress): (Box<dyn Source>, _) = match (&args.input, &args.kafka) {
        (Some(input), _) => {
            if !input.is_dir() {
                return Err(Error::Config(format!("--input {}: no such directory", input.display())));
            }
            let source = FileSource::open(input, batch_size, |t| registry.get(t).is_some())?;
            let progress = indicatif::ProgressBar::new(source.total_bytes()).with_style(
                indicatif::ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {wide_bar} {bytes_per_sec} eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            (Box::new(source), progress)
        }
        (None, Some(brokers)) => {
            let topics: Vec<String> = registry.topics().map(|t| t.topic.clone()).collect();
            let source = KafkaSource::open(brokers, &topics, &args.kafka_settings, batch_size, args.stop_when_idle, observed.clone())?;
            let budget = source.queue_bytes();
            (Box::new(ReadAhead::new(Box::new(source), batch_size, budget)), indicatif::ProgressBar::hidden())
        }
        (None, None) => return Err(Error::Config("run needs --input DIR or --kafka BROKERS".into())),
    };
    let options = RunOptions {
        commit_interval: args.commit_interval(),
        idle_timeout: args.idle_timeout,
        progress,
        observed,
        maintenance: args.maintenance_policy()?,
        outage_limit: args.outage_limit,
        archive: args.archive_retention,
        reading: args.reading.clone(),
        live: Some(crate::runtime::LiveDefinitions {
            sql_dir: args.definitions.sql_dir()?,
            registry: registry.clone(),
            udfs: udfs.clone(),
            udfs_dir: args.definitions.udfs_dir(),
            lake: lake.clone(),
            told: None,
        }),
        ..RunOptions::default()
    };
    let mut pipeline = Pipeline::new(&lake, &registry, &sql, &udfs, options).await?;
    // In the background: listing a lake on an object store takes a while.
    let defined = crate::runtime::definitions(&registry, &sql)?.into_keys().collect();
    let undefined = tokio::spawn(crate::runtime::say_undefined_tables(lake.clone(), defined));
    let stats = pipeline.run(source.as_mut()).await?;
    // A short run still says it before its summary.
    let _ = undefined.await;
    print_summary(&stats);
    Ok(stats)
}

/// `run --group`: this instance runs the shards its consumer group gives it.
#[allow(clippy::too_many_arguments)]
async fn run_in_group(
    args: &RunArgs,
    group: &str,
    brokers: &str,
    lake: Lake,
    registry: SchemaRegistry,
    sql: Vec<crate::plan::SqlFile>,
    udfs: crate::udf::Udfs,
    observed: Arc<Observed>,
) -> Result<RunStats> {
    let instance = match &args.instance {
        Some(id) => id.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).map_err(|e| {
            Error::Config(format!("--group without --instance names the instance after the host, which could not be read: {e}"))
        })?,
    };
    let membership = crate::group::Membership::join(brokers, &args.kafka_settings, group, &instance, args.shards).await?;
    eprintln!("instance `{instance}` of group `{group}`: {} shards; waiting for the group to assign some", membership.shards);
    let options = RunOptions {
        commit_interval: args.commit_interval(),
        idle_timeout: args.idle_timeout,
        observed,
        maintenance: args.maintenance_policy()?,
        outage_limit: args.outage_limit,
        archive: args.archive_retention,
        ..RunOptions::default()
    };
    let instance = crate::runtime::group::Instance {
        group: group.to_string(),
        lake,
        registry,
        sql_dir: args.definitions.sql_dir()?,
        sql: std::sync::Mutex::new(sql),
        udfs,
        options,
        brokers: brokers.to_string(),
        kafka_settings: args.kafka_settings.clone(),
        batch_size: args.batch_size as usize,
        stop_when_idle: args.stop_when_idle,
        reloads: tokio::sync::watch::channel(0).0,
    };
    let stats = crate::runtime::group::run(instance, membership).await?;
    eprintln!("this instance's shards, summed (a message read by two shards counts twice):");
    print_summary(&stats);
    Ok(stats)
}

pub fn print_summary(stats: &RunStats) {
    if let Some(epoch) = stats.resumed_after {
        eprintln!("carried on from the lake's checkpoint (epoch {epoch}): input earlier runs read was not read again");
    }
    let secs = stats.elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "read {} messages ({:.1} MB) in {:.2}s: {:.0} messages/s; {} bad (dead_letters), {} late, {} tombstones; {} commits",
        stats.messages,
        stats.bytes as f64 / 1e6,
        secs,
        stats.messages as f64 / secs,
        stats.bad,
        stats.late,
        stats.tombstones,
        stats.commits
    );
    eprintln!(
        "window state at its peak: {} open windows, {:.1} MB",
        stats.peak_open_windows,
        stats.peak_state_bytes as f64 / 1e6
    );
    for (table, rows) in &stats.rows {
        eprintln!("  {:>9} rows written  {}", rows, table.sql_name());
    }
}
