//! Keeping a Delta table fast to commit to and to read after months of commits:
//! Delta checkpoints, expired-log cleanup, compaction of small files and vacuum.
//!
//! Every operation here commits (or deletes) on its own and changes no rows, so it
//! leaves the epochs' exactly-once bookkeeping (`txn`) as it was. They must still
//! never run beside another writer of the table: delta-rs's conflict checker does
//! not stop a compaction and a correction from both removing the same file. The
//! pipeline runs them in its own commit cycle, after an epoch's commits; `sluice
//! maintain` is for a lake whose pipeline is stopped.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::Duration;

use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::{DeltaTable, FilterOp, FilterValue};

use super::delta::commit_properties;
use crate::error::{Error, Result};

/// When and how tables are maintained.
#[derive(Debug, Clone)]
pub struct MaintenancePolicy {
    /// A Delta checkpoint every this many table versions.
    pub checkpoint_interval: u64,
    /// Compaction writes files of about this size (bytes)...
    pub target_file_size: u64,
    /// ...once a partition holds more than this many files smaller than that.
    pub max_small_files: usize,
    /// Removed files, and files no commit references (staged by killed epochs),
    /// are deleted once older than this.
    pub vacuum_retention: Duration,
    /// How often a running pipeline vacuums and cleans expired logs.
    pub vacuum_interval: Duration,
}

impl Default for MaintenancePolicy {
    fn default() -> Self {
        MaintenancePolicy {
            checkpoint_interval: 100,
            target_file_size: 128 * 1024 * 1024,
            max_small_files: 32,
            vacuum_retention: Duration::from_secs(7 * 24 * 3600),
            vacuum_interval: Duration::from_secs(3600),
        }
    }
}

/// What one table's maintenance did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintained {
    pub checkpoint: Option<u64>,
    pub logs_cleaned: usize,
    /// Per compacted partition (`None`: an unpartitioned table): files in, files out.
    pub compacted: BTreeMap<Option<String>, (u64, u64)>,
    pub vacuumed: usize,
}

impl Maintained {
    pub fn is_empty(&self) -> bool {
        *self == Maintained::default()
    }
}

/// Live files per partition value (`None` for an unpartitioned table): count and
/// how many are smaller than `target` bytes.
pub fn files_by_partition(table: &DeltaTable, partition_column: Option<&str>, target: u64) -> Result<BTreeMap<Option<String>, (usize, usize)>> {
    let snapshot = table.snapshot().map_err(|e| Error::delta(table_name(table), e))?;
    let mut counts: BTreeMap<Option<String>, (usize, usize)> = BTreeMap::new();
    for file in snapshot.log_data().iter() {
        let partition = partition_column.and_then(|c| file.partition_values_map().get(c).cloned().flatten());
        let entry = counts.entry(partition).or_default();
        entry.0 += 1;
        if (file.size() as u64) < target {
            entry.1 += 1;
        }
    }
    Ok(counts)
}

/// Writes a Delta checkpoint when `interval` versions passed since `last` (the
/// version of the last one); returns the new checkpoint's version.
pub async fn checkpoint_if_due(table: &DeltaTable, last: u64, interval: u64) -> Result<Option<u64>> {
    let Some(version) = table.version() else { return Ok(None) };
    if version.saturating_sub(last) < interval {
        return Ok(None);
    }
    deltalake::checkpoints::create_checkpoint(table, None).await.map_err(|e| Error::delta(table_name(table), e))?;
    Ok(Some(version))
}

/// Deletes log files older than the table's `delta.logRetentionDuration` that a
/// checkpoint has made unnecessary; returns how many.
pub async fn clean_expired_logs(table: &DeltaTable) -> Result<usize> {
    deltalake::checkpoints::cleanup_metadata(table, None).await.map_err(|e| Error::delta(table_name(table), e))
}

/// Rewrites the small files of every partition holding more than
/// `policy.max_small_files` of them (every partition, with `force`) into files near
/// `policy.target_file_size`. Rows are unchanged; only files are.
pub async fn compact(
    table: &mut DeltaTable,
    partition_column: Option<&str>,
    policy: &MaintenancePolicy,
    writer_properties: &WriterProperties,
    force: bool,
    dry_run: bool,
) -> Result<BTreeMap<Option<String>, (u64, u64)>> {
    let name = table_name(table);
    let threshold = if force { 1 } else { policy.max_small_files };
    let due: Vec<Option<String>> = files_by_partition(table, partition_column, policy.target_file_size)?
        .into_iter()
        .filter(|(_, (_, small))| *small > threshold)
        .map(|(partition, _)| partition)
        .collect();
    let target = NonZeroU64::new(policy.target_file_size).ok_or_else(|| Error::Config("the compaction target size must not be 0".into()))?;
    let mut done = BTreeMap::new();
    for partition in due {
        let filters = match (&partition, partition_column) {
            (Some(value), Some(column)) => vec![(column, FilterOp::Eq, FilterValue::Scalar(value.as_str()))],
            _ => Vec::new(),
        };
        if dry_run {
            let small = files_by_partition(table, partition_column, policy.target_file_size)?.get(&partition).map_or(0, |c| c.1);
            done.insert(partition, (small as u64, 0));
            continue;
        }
        let (compacted, metrics) = table
            .clone()
            .optimize()
            .with_type(OptimizeType::Compact)
            .with_filters(&filters)
            .with_target_size(target)
            .with_writer_properties(writer_properties.clone())
            .with_commit_properties(commit_properties())
            .await
            .map_err(|e| Error::delta(name.clone(), e))?;
        *table = compacted;
        if metrics.num_files_removed > 0 {
            done.insert(partition, (metrics.num_files_removed, metrics.num_files_added));
        }
    }
    Ok(done)
}

/// Deletes the files removed from the table longer than `retention` ago, and the
/// files no commit ever referenced (an epoch killed before its checkpoint) once
/// as old; returns how many (with `dry_run`, how many it would).
pub async fn vacuum(table: &mut DeltaTable, retention: Duration, dry_run: bool) -> Result<usize> {
    let name = table_name(table);
    let retention = chrono::Duration::from_std(retention).map_err(|e| Error::Config(format!("vacuum retention: {e}")))?;
    let (vacuumed, metrics) = table
        .clone()
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_retention_period(retention)
        // The retention is Sluice's own setting (default 7 days), checked where it is given.
        .with_enforce_retention_duration(false)
        .with_dry_run(dry_run)
        .with_commit_properties(commit_properties())
        .await
        .map_err(|e| Error::delta(name, e))?;
    *table = vacuumed;
    Ok(metrics.files_deleted.len())
}

fn table_name(table: &DeltaTable) -> String {
    table.table_url().to_string()
}
