//! `sluice bench`: end-to-end throughput and peak memory on generated input.
//!
//! Generates traffic into a temporary directory, runs the pipeline over it into a
//! temporary lake, and reports messages per second (decode, windows, Delta commits
//! included; generation excluded) and the process's peak resident memory.

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

/// Peak resident set size of this process (Linux `VmHWM`), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
