//! `sluice bench`: end-to-end throughput, freshness and peak memory on generated input.
//!
//! From files: generates traffic into a temporary directory, runs the pipeline over
//! it into a temporary lake, and reports messages per second (decode, windows, Delta
//! commits included; generation excluded) and the process's peak resident memory.
//!
//! From Kafka (`--kafka`, best on an empty broker): without `--rate`, preloads the
//! traffic, then times the pipeline from start until every message is committed;
//! with `--rate N`, generates the traffic into a file first, then starts the
//! pipeline, produces N messages a second from the file, and reports freshness
//! (Kafka timestamp to the commit that made the rows visible). With
//! `--lake` over a lake that has history and an SQL directory with a new file, it
//! measures the other tables' freshness while the new table is backfilled.

use std::time::Duration;

use super::generate::TrafficArgs;
use super::run::RunArgs;
use super::Definitions;
use crate::catalog::StorageOptions;
use crate::error::{Error, Result};
use crate::runtime::RunStats;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// Through Kafka: preload the traffic into these brokers, then time the run.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// With --kafka: produce this many messages a second while the pipeline runs,
    /// and report freshness.
    #[arg(long, requires = "kafka")]
    pub rate: Option<u32>,
    /// With --kafka: a librdkafka setting for the pipeline's consumer, as `run -X`.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = super::run::setting, requires = "kafka")]
    pub kafka_settings: Vec<(String, String)>,
    /// Lines read from one partition file at a time.
    #[arg(long, default_value_t = 8192)]
    pub batch_size: u64,
    /// How often to commit (default as `run`'s: 500ms through Kafka, 1s from
    /// files): with a small batch and a short interval, every batch is an epoch,
    /// and the run shows how commits age (`--commit-interval 1ms`).
    #[arg(long, value_parser = super::run::duration)]
    pub commit_interval: Option<Duration>,
    /// The lake to write (default: a temporary directory); an empty prefix of an
    /// object store to compare with the local disk.
    #[arg(long)]
    pub lake: Option<String>,
    /// The raw archive, as `run --archive-retention` (`off` measures without it).
    #[arg(long, default_value = "forever", value_parser = crate::sink::ArchiveRetention::parse)]
    pub archive_retention: crate::sink::ArchiveRetention,
    #[command(flatten)]
    pub maintenance: super::run::MaintenanceArgs,
    #[command(flatten)]
    pub definitions: Definitions,
}

pub async fn bench(bench: &BenchArgs, storage: &StorageOptions) -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let input = dir.path().join("input");
    let lake = bench.lake.clone().unwrap_or_else(|| dir.path().join("lake").display().to_string());
    let (traffic, batch_size) = (&bench.traffic, bench.batch_size);
    super::generate::generate(super::generate::Destination::Dir(&input), traffic, &bench.definitions).await?;
    let rss_before = peak_rss_kib();
    let args = RunArgs {
        batch_size,
        commit_interval: bench.commit_interval,
        maintenance: bench.maintenance.clone(),
        archive_retention: bench.archive_retention,
        ..RunArgs::files(&input, &lake, &bench.definitions)
    };
    let stats = super::run::run(&args, storage).await?;
    let secs = stats.elapsed.as_secs_f64().max(1e-9);
    super::emit(&format!(
        "bench: users={} hours={} batch_size={batch_size}: {} messages in {:.2}s = {:.0} messages/s ({:.1} MB/s); {} commits; peak RSS {} MiB (after generation {} MiB)\n",
        traffic.users,
        traffic.hours,
        stats.messages,
        secs,
        stats.messages as f64 / secs,
        stats.bytes as f64 / 1e6 / secs,
        stats.commits,
        peak_rss_kib().unwrap_or(0) / 1024,
        rss_before.unwrap_or(0) / 1024,
    ))?;
    let archive = std::path::Path::new(&lake).join(crate::sink::ARCHIVE);
    if archive.is_dir() {
        let bytes = directory_bytes(&archive);
        super::emit(&format!("archive: {:.1} MB on disk, {:.0} bytes per message\n", bytes as f64 / 1e6, bytes as f64 / stats.messages.max(1) as f64))?;
    }
    if stats.commit_ms.len() >= 200 {
        super::emit(&aging_report(&stats, &lake, storage).await?)?;
    }
    Ok(())
}

/// The bytes of every file under `dir` (a local lake's part).
fn directory_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => directory_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// How commits aged over a long run: commit time by hundred commits, the live
/// files of the most fragmented partition, and a query over the aged table.
async fn aging_report(stats: &RunStats, lake: &str, storage: &StorageOptions) -> Result<String> {
    let percentile = |ms: &[f64], q: f64| {
        let mut sorted = ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
    };
    let n = stats.commit_ms.len();
    // Traffic changes over the hours, and with it how many tables an epoch commits
    // to: the time per table committed is how the commit itself ages.
    let per_table: Vec<f64> = stats.commit_ms.iter().zip(&stats.commit_tables).map(|(ms, n)| ms / (*n).max(1) as f64).collect();
    let mut out = String::from("commit time (ms) by commits, and per table committed:\n");
    let mut windows: Vec<usize> = vec![0, 100];
    windows.extend((1..=4).map(|i| i * n / 5).filter(|s| *s > 200 && *s + 100 <= n - 100));
    windows.push(n - 100);
    windows.dedup();
    for start in windows {
        let (slice, tables) = (&stats.commit_ms[start..(start + 100).min(n)], &per_table[start..(start + 100).min(n)]);
        out.push_str(&format!(
            "  {:>5}-{:<5} p50 {:>7.1} p99 {:>7.1}   per table p50 {:>5.1} p99 {:>6.1}\n",
            start + 1,
            start + slice.len(),
            percentile(slice, 0.5),
            percentile(slice, 0.99),
            percentile(tables, 0.5),
            percentile(tables, 0.99)
        ));
    }
    let lake = crate::catalog::Lake::connect(lake, false, storage.clone()).await?;
    let mut worst = (String::new(), 0usize, 0usize);
    for table in lake.tables().await? {
        let delta = lake.load_table(&table).await?;
        let snapshot = delta.snapshot().map_err(|e| Error::delta(table.as_str(), e))?;
        let partition = snapshot.metadata().partition_columns().first().cloned();
        let total = snapshot.log_data().num_files();
        for (value, files) in crate::sink::maintain::files_by_partition(&delta, partition.as_deref())? {
            if files.len() > worst.1 {
                worst = (format!("{table} {}", value.unwrap_or_default()), files.len(), total);
            }
        }
    }
    out.push_str(&format!("most live files in one partition: {} ({}; {} in the table)\n", worst.1, worst.0.trim(), worst.2));
    let query = "SELECT service, count(*) AS requests, avg(duration_ms) FROM integration.api_gateway.request_logs GROUP BY service";
    let ctx = lake.session().await?;
    let started = std::time::Instant::now();
    let rows: usize = ctx.sql(query).await?.collect().await?.iter().map(|b| b.num_rows()).sum();
    out.push_str(&format!("GROUP BY over request_logs: {rows} groups in {:.0} ms\n", started.elapsed().as_secs_f64() * 1e3));
    Ok(out)
}

/// The Kafka benchmark; see the module comment.
pub async fn bench_kafka(brokers: &str, bench: &BenchArgs, storage: &StorageOptions) -> Result<()> {
    let (rate, traffic, batch_size, definitions) = (bench.rate, &bench.traffic, bench.batch_size, &bench.definitions);
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let registry = crate::schema::SchemaRegistry::load(&definitions.schemas_dir()?)?;
    let args = RunArgs {
        input: None,
        kafka: Some(brokers.to_string()),
        kafka_settings: bench.kafka_settings.clone(),
        stop_when_idle: Some(IDLE),
        batch_size,
        commit_interval: bench.commit_interval,
        archive_retention: bench.archive_retention,
        ..RunArgs::files(dir.path(), &bench.lake.clone().unwrap_or_else(|| dir.path().join("lake").display().to_string()), definitions)
    };
    let options = traffic.options();
    let stats = match rate {
        None => {
            let started = std::time::Instant::now();
            let summary = crate::source::produce_generated(brokers, &registry, &options, None).await?;
            eprintln!("preloaded {} messages in {:.1}s", summary.total_messages(), started.elapsed().as_secs_f64());
            super::run::run(&args, storage).await?
        }
        Some(rate) => {
            // Generated before the clock starts: a platform's services, not the
            // pipeline's machine, make its traffic.
            let started = std::time::Instant::now();
            let spool = crate::source::Spool::record(&registry, &options, &dir.path().join("traffic.spool"))?;
            eprintln!("generated {} messages in {:.1}s, to produce at {rate}/s", spool.summary.total_messages(), started.elapsed().as_secs_f64());
            crate::source::create_topics(brokers, &registry).await?;
            // The producer gets a thread of its own, so its pacing never waits on
            // the pipeline. It starts once the pipeline reads: freshness is the
            // steady state's, creating 60 tables in an empty lake left out.
            let reading = std::sync::Arc::new(tokio::sync::Notify::new());
            let producer = {
                let (brokers, reading) = (brokers.to_string(), reading.clone());
                std::thread::spawn(move || {
                    futures::executor::block_on(reading.notified());
                    spool.produce(&brokers, Some(rate))
                })
            };
            let stats = super::run::run(&RunArgs { reading: Some(reading), ..args }, storage).await?;
            let produced = producer.join().map_err(|_| Error::Internal("the producer thread panicked".into()))??;
            eprintln!("produced {produced} messages at {rate}/s");
            stats
        }
    };
    let secs = stats.caught_up.as_secs_f64().max(1e-9);
    let seconds = |latencies: &crate::runtime::Latencies, q| latencies.quantile(q).map_or("-".to_string(), |s| format!("{s:.2}s"));
    super::emit(&format!(
        "bench kafka: users={} hours={} batch_size={batch_size} rate={}: {} messages visible after {secs:.2}s = {:.0} messages/s; \
         freshness p50 {} p99 {} max {} (of which until received from Kafka p50 {} p99 {}, until the run loop took the message p50 {} p99 {}); peak RSS {} MiB\n",
        traffic.users,
        traffic.hours,
        rate.map_or("preloaded".to_string(), |r| r.to_string()),
        stats.messages,
        stats.messages as f64 / secs,
        seconds(&stats.freshness, 0.5),
        seconds(&stats.freshness, 0.99),
        seconds(&stats.freshness, 1.0),
        seconds(&stats.received, 0.5),
        seconds(&stats.received, 0.99),
        seconds(&stats.taken, 0.5),
        seconds(&stats.taken, 0.99),
        peak_rss_kib().unwrap_or(0) / 1024,
    ))
}

/// How long the Kafka benchmark's run waits for more messages before it ends.
const IDLE: std::time::Duration = std::time::Duration::from_secs(3);

/// Peak resident set size of this process (Linux `VmHWM`), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
