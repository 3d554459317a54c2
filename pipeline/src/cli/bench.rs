//! `sluice bench`: end-to-end throughput, freshness and peak memory on generated input.
//!
//! From files: generates traffic into a temporary directory, runs the pipeline over
//! it into a temporary lake, and reports messages per second (decode, windows, Delta
//! commits included; generation excluded) and the process's peak resident memory.
//!
//! From Kafka (`--kafka`, best on an empty broker): without `--rate`, preloads the
//! traffic, then times the pipeline from start until every message is committed;
//! with `--rate N`, starts the pipeline, produces N messages a second, and reports
//! freshness (Kafka timestamp to the commit that made the rows visible).

use super::generate::TrafficArgs;
use super::run::RunArgs;
use super::Definitions;
use crate::error::{Error, Result};

pub async fn bench(traffic: &TrafficArgs, batch_size: u64, definitions: &Definitions) -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let input = dir.path().join("input");
    let lake = dir.path().join("lake");
    super::generate::generate(super::generate::Destination::Dir(&input), traffic, definitions).await?;
    let rss_before = peak_rss_kib();
    let args = RunArgs { batch_size, ..RunArgs::files(&input, &lake.display().to_string(), definitions) };
    let stats = super::run::run(&args).await?;
    let secs = stats.elapsed.as_secs_f64().max(1e-9);
    super::emit(&format!(
        "bench: users={} hours={} batch_size={batch_size}: {} messages in {:.2}s = {:.0} messages/s ({:.1} MB/s); peak RSS {} MiB (after generation {} MiB)\n",
        traffic.users,
        traffic.hours,
        stats.messages,
        secs,
        stats.messages as f64 / secs,
        stats.bytes as f64 / 1e6 / secs,
        peak_rss_kib().unwrap_or(0) / 1024,
        rss_before.unwrap_or(0) / 1024,
    ))
}

/// The Kafka benchmark; see the module comment.
pub async fn bench_kafka(
    brokers: &str,
    rate: Option<u32>,
    traffic: &TrafficArgs,
    batch_size: u64,
    definitions: &Definitions,
) -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let registry = crate::schema::SchemaRegistry::load(&definitions.schemas_dir()?)?;
    let args = RunArgs {
        input: None,
        kafka: Some(brokers.to_string()),
        stop_when_idle: Some(IDLE),
        batch_size,
        ..RunArgs::files(dir.path(), &dir.path().join("lake").display().to_string(), definitions)
    };
    let options = traffic.options();
    let stats = match rate {
        None => {
            let started = std::time::Instant::now();
            let summary = crate::source::produce_generated(brokers, &registry, &options, None).await?;
            eprintln!("preloaded {} messages in {:.1}s", summary.total_messages(), started.elapsed().as_secs_f64());
            super::run::run(&args).await?
        }
        Some(rate) => {
            crate::source::create_topics(brokers, &registry).await?;
            // The producer gets a thread of its own, so its pacing never waits on the pipeline.
            let producer = {
                let brokers = brokers.to_string();
                std::thread::spawn(move || -> Result<u64> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| Error::Internal(format!("producer runtime: {e}")))?;
                    let summary = runtime.block_on(crate::source::produce_generated(&brokers, &registry, &options, Some(rate)))?;
                    Ok(summary.total_messages())
                })
            };
            let stats = super::run::run(&args).await?;
            let produced = producer.join().map_err(|_| Error::Internal("the producer thread panicked".into()))??;
            eprintln!("produced {produced} messages at {rate}/s");
            stats
        }
    };
    let secs = stats.caught_up.as_secs_f64().max(1e-9);
    let quantile = |q| stats.freshness.quantile(q).map_or("-".to_string(), |s| format!("{s:.2}s"));
    super::emit(&format!(
        "bench kafka: users={} hours={} batch_size={batch_size} rate={}: {} messages visible after {secs:.2}s = {:.0} messages/s; \
         freshness p50 {} p99 {} max {}; peak RSS {} MiB\n",
        traffic.users,
        traffic.hours,
        rate.map_or("preloaded".to_string(), |r| r.to_string()),
        stats.messages,
        stats.messages as f64 / secs,
        quantile(0.5),
        quantile(0.99),
        quantile(1.0),
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
