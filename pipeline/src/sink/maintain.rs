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
use std::time::{Duration, Instant};

use deltalake::kernel::{Add, LogicalFileView};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::DeltaTable;

use super::properties::commit_properties;
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
    /// How long a running pipeline's maintenance goes on after an epoch before it
    /// leaves the other tables to the next epochs. Every table commits every
    /// epoch, so they all cross a threshold (small files, versions since a Delta
    /// checkpoint) at about the same epoch: maintained in one go, 60 compactions
    /// stopped reading for 2.3 s.
    pub epoch_budget: Duration,
}

impl Default for MaintenancePolicy {
    fn default() -> Self {
        MaintenancePolicy {
            checkpoint_interval: 100,
            target_file_size: 128 * 1024 * 1024,
            max_small_files: 32,
            vacuum_retention: Duration::from_secs(7 * 24 * 3600),
            vacuum_interval: Duration::from_secs(3600),
            epoch_budget: Duration::from_millis(200),
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
    /// Files of days past the table's retention, removed.
    pub expired: usize,
}

impl Maintained {
    pub fn is_empty(&self) -> bool {
        *self == Maintained::default()
    }
}

/// The live files of a table by partition value (`None` for an unpartitioned table).
pub fn files_by_partition(table: &DeltaTable, partition_column: Option<&str>) -> Result<BTreeMap<Option<String>, Vec<LogicalFileView>>> {
    let snapshot = table.snapshot().map_err(|e| Error::delta(table_name(table), e))?;
    let mut files: BTreeMap<Option<String>, Vec<LogicalFileView>> = BTreeMap::new();
    for file in snapshot.log_data().iter() {
        let partition = partition_column.and_then(|c| file.partition_values_map().get(c).cloned().flatten());
        files.entry(partition).or_default().push(file);
    }
    Ok(files)
}

/// How many files smaller than the compaction target each partition holds:
/// counted from the table's files at a compaction check and kept up by the appends
/// since, so that a table none of whose partitions can be over the threshold is
/// not looked at (listing a table's files costs as much as it has files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmallFiles {
    target: u64,
    per_partition: BTreeMap<Option<String>, usize>,
}

impl SmallFiles {
    pub fn count(table: &DeltaTable, partition_column: Option<&str>, target: u64) -> Result<Self> {
        let per_partition = files_by_partition(table, partition_column)?
            .into_iter()
            .map(|(partition, files)| (partition, files.iter().filter(|f| (f.size() as u64) < target).count()))
            .collect();
        Ok(SmallFiles { target, per_partition })
    }

    /// Counts the files `adds` adds.
    pub fn appended(&mut self, adds: &[Add], partition_column: Option<&str>) {
        for add in adds.iter().filter(|a| (a.size as u64) < self.target) {
            let partition = partition_column.and_then(|c| add.partition_values.get(c).cloned().flatten());
            *self.per_partition.entry(partition).or_default() += 1;
        }
    }

    /// Whether [`compact`] under `policy` may find a partition to compact.
    pub fn may_compact(&self, policy: &MaintenancePolicy) -> bool {
        self.target != policy.target_file_size || self.per_partition.values().any(|&n| n > policy.max_small_files)
    }
}

/// The version of the table's last Delta checkpoint, from `_delta_log/_last_checkpoint`.
pub async fn last_checkpoint(table: &DeltaTable) -> Option<u64> {
    use object_store::ObjectStoreExt;
    let path = object_store::path::Path::from("_delta_log/_last_checkpoint");
    let bytes = table.object_store().get(&path).await.ok()?.bytes().await.ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("version")?.as_u64()
}

/// Whether a table at `version` is due a Delta checkpoint: `interval` versions
/// passed since `last` (the version of the last one, if there is one).
pub fn checkpoint_due(version: u64, last: Option<u64>, interval: u64) -> bool {
    version.saturating_sub(last.unwrap_or(0)) >= interval
}

/// Writes a Delta checkpoint when one is due ([`checkpoint_due`]); returns the new
/// checkpoint's version.
pub async fn checkpoint_if_due(table: &DeltaTable, last: Option<u64>, interval: u64) -> Result<Option<u64>> {
    let Some(version) = table.version() else { return Ok(None) };
    if !checkpoint_due(version, last, interval) {
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

/// Size tiers of small files: below 1 MiB, 1-8 MiB, 8-64 MiB, ... (each 8 times
/// the one before), up to the target size.
const TIER_BASE: u64 = 1 << 20;
const TIER_FACTOR: u64 = 8;

fn tier(size: u64) -> u32 {
    let (mut tier, mut bound) = (0, TIER_BASE);
    while size >= bound && bound != u64::MAX {
        bound = bound.saturating_mul(TIER_FACTOR);
        tier += 1;
    }
    tier
}

/// Where a running pipeline's compaction of a table stands between epochs: one
/// that reached the epoch's budget (`until`) stops after the files it has read,
/// and the next epoch's goes on with the rest of the same tier. A compaction of
/// the gateway's archive held one epoch for 600-660 ms at 50,000 messages/s.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// When to stop reading further files (the first two are always read).
    pub until: Option<Instant>,
    /// The partitions whose compaction stopped at the budget, and the tier it was compacting.
    unfinished: BTreeMap<Option<String>, u32>,
}

impl Progress {
    pub fn unfinished(&self) -> bool {
        !self.unfinished.is_empty()
    }

    fn past_budget(&self) -> bool {
        self.until.is_some_and(|until| Instant::now() >= until)
    }
}

/// Compacts every partition holding more than `policy.max_small_files` files
/// smaller than `policy.target_file_size` (every partition with two or more, with
/// `force`): the tier holding most of them is rewritten into files of at most the
/// target size, or, for a partition `progress` has unfinished, the rest of its
/// tier. Rows are unchanged; only files are.
///
/// Size tiers, not all small files at once: merging everything would rewrite the
/// partition's one growing file at every compaction (a cost that grows with the
/// partition, up to the target size per compaction); merging files of about the
/// same size rewrites each byte once per tier, and a compaction costs at most the
/// size of its tier.
pub async fn compact(
    table: &mut DeltaTable,
    partition_column: Option<&str>,
    policy: &MaintenancePolicy,
    writer_properties: &WriterProperties,
    force: bool,
    dry_run: bool,
    progress: &mut Progress,
) -> Result<BTreeMap<Option<String>, (u64, u64)>> {
    let threshold = if force { 1 } else { policy.max_small_files };
    let mut small = files_by_partition(table, partition_column)?;
    small.values_mut().for_each(|files| files.retain(|f| (f.size() as u64) < policy.target_file_size));
    progress.unfinished.retain(|partition, _| small.contains_key(partition));
    let mut done = BTreeMap::new();
    for (partition, files) in small {
        let resumed = progress.unfinished.get(&partition).copied();
        if (files.len() <= threshold && resumed.is_none()) || (!done.is_empty() && progress.past_budget()) {
            continue;
        }
        progress.unfinished.remove(&partition);
        let mut tiers: BTreeMap<u32, Vec<_>> = BTreeMap::new();
        for file in files {
            tiers.entry(tier(file.size() as u64)).or_default().push(file);
        }
        // The tier left unfinished, or the fullest, the lowest of equals; with `force`, everything.
        let most = tiers.values().map(Vec::len).max().unwrap_or(0);
        let (chosen_tier, mut chosen): (u32, Vec<_>) = match (force, resumed) {
            (true, _) => (0, tiers.into_values().flatten().collect()),
            (false, Some(t)) => (t, tiers.remove(&t).unwrap_or_default()),
            (false, None) => tiers.into_iter().find(|(_, files)| files.len() == most).unwrap_or_default(),
        };
        if chosen.len() < 2 {
            continue;
        }
        // The smallest first: a compaction cut short leaves its output for last
        // when it goes on, rather than rewriting it at every turn.
        chosen.sort_by_key(LogicalFileView::size);
        if dry_run {
            done.insert(partition, (chosen.len() as u64, 0));
            continue;
        }
        let (read, added) = rewrite(table, &chosen, partition_column.zip(partition.as_deref()), policy.target_file_size, writer_properties, progress).await?;
        if read < chosen.len() {
            progress.unfinished.insert(partition.clone(), chosen_tier);
        }
        done.insert(partition, (read as u64, added));
    }
    Ok(done)
}

/// Rewrites `files` (of one partition, `partition` = (column, value)) into files
/// of at most `target` bytes in one commit that changes no data
/// (`dataChange: false`, operation OPTIMIZE), or the first of them, two at least,
/// when `progress`'s budget runs out; returns how many files it read and added.
async fn rewrite(
    table: &mut DeltaTable,
    files: &[LogicalFileView],
    partition: Option<(&str, &str)>,
    target: u64,
    writer_properties: &WriterProperties,
    progress: &Progress,
) -> Result<(usize, u64)> {
    use deltalake::kernel::{Action, Transaction};
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use deltalake::protocol::DeltaOperation;
    use deltalake::writer::{DeltaWriter, RecordBatchWriter};
    use object_store::ObjectStoreExt;

    let name = table_name(table);
    let err = |e: deltalake::DeltaTableError| Error::delta(name.clone(), e);
    let schema = table.snapshot().map_err(err)?.snapshot().arrow_schema();
    let store = table.object_store();
    let mut writer = RecordBatchWriter::for_table(table).map_err(err)?.with_writer_properties(writer_properties.clone());
    let mut added = Vec::new();
    let mut written = 0u64;
    let mut read = 0;
    for file in files {
        if read >= 2 && progress.past_budget() {
            break;
        }
        read += 1;
        let bytes = async { store.get(&file.object_store_path()).await?.bytes().await }.await.map_err(|e| err(e.into()))?;
        written += bytes.len() as u64;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).and_then(|b| b.build()).map_err(|e| err(e.into()))?;
        for batch in reader {
            writer.write(with_table_columns(&batch?, &schema, partition)?).await.map_err(err)?;
        }
        // About the target: a new file (a part of a bin) begins.
        if written >= target {
            added.extend(writer.flush().await.map_err(err)?);
            written = 0;
        }
    }
    added.extend(writer.flush().await.map_err(err)?);
    let mut actions: Vec<Action> = files[..read].iter().map(|f| Action::Remove(f.remove_action(false))).collect();
    actions.extend(added.iter().cloned().map(|mut add| {
        add.data_change = false;
        Action::Add(add)
    }));
    // The table's next compaction, so that of two compactions side by side (a
    // writer that stalled, lost its tables and woke mid-compaction, beside the
    // one that took them over) the later fails, rather than both removing the
    // same files and each adding their rows again (delta-rs checks removals
    // that change no data against nothing).
    let compactions = table.snapshot().map_err(err)?.transaction_version(table.log_store().as_ref(), COMPACTIONS).await.map_err(err)?;
    actions.push(Action::Txn(Transaction::new(COMPACTIONS, compactions.unwrap_or(0) + 1)));
    let operation = DeltaOperation::Optimize { predicate: None, target_size: target as i64 };
    commit_actions(table, actions, operation).await?;
    Ok((read, added.len() as u64))
}

/// The `txn` app id every compaction of a table commits the next version of.
const COMPACTIONS: &str = "sluice:compactions";

/// One commit of `actions` outside the epochs (no epoch's `txn`), the table then at its new version.
async fn commit_actions(table: &mut DeltaTable, actions: Vec<deltalake::kernel::Action>, operation: deltalake::protocol::DeltaOperation) -> Result<()> {
    let name = table_name(table);
    let err = |e: deltalake::DeltaTableError| Error::delta(name.clone(), e);
    let finalized = deltalake::kernel::transaction::CommitBuilder::from(commit_properties())
        .with_actions(actions)
        .build(Some(table.snapshot().map_err(err)?), table.log_store(), operation)
        .await
        .map_err(err)?;
    table.state = Some(finalized.snapshot());
    Ok(())
}

/// Drops the days of a table partitioned by `date` that are older than `before`:
/// whole partitions' files, removed in one commit (operation DELETE) and left
/// for vacuum to delete. Returns the files removed (or, dry, that would be).
pub async fn expire(table: &mut DeltaTable, before: chrono::NaiveDate, dry_run: bool) -> Result<usize> {
    use deltalake::kernel::Action;
    use deltalake::protocol::DeltaOperation;

    let old = |date: &Option<String>| date.as_deref().and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()).is_some_and(|d| d < before);
    let expired: Vec<LogicalFileView> = files_by_partition(table, Some(super::DATE))?.into_iter().filter(|(date, _)| old(date)).flat_map(|(_, files)| files).collect();
    if expired.is_empty() || dry_run {
        return Ok(expired.len());
    }
    let actions: Vec<Action> = expired.iter().map(|f| Action::Remove(f.remove_action(true))).collect();
    let operation = DeltaOperation::Delete { predicate: Some(format!("{} < '{before}'", super::DATE)) };
    commit_actions(table, actions, operation).await?;
    Ok(expired.len())
}

/// Rows read back from a data file (which leaves the partition column out) with
/// every column of the table, in its order: the partition column is `partition`'s
/// value throughout.
fn with_table_columns(stored: &arrow::array::RecordBatch, schema: &arrow::datatypes::SchemaRef, partition: Option<(&str, &str)>) -> Result<arrow::array::RecordBatch> {
    let n = stored.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|f| match stored.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => Ok(arrow::compute::cast(c, f.data_type())?),
            None => match partition {
                Some((column, value)) if column == f.name() => {
                    let values: arrow::array::ArrayRef = std::sync::Arc::new(arrow::array::StringArray::from(vec![value; n]));
                    Ok(arrow::compute::cast(&values, f.data_type())?)
                }
                _ => Ok(arrow::array::new_null_array(f.data_type(), n)),
            },
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(arrow::array::RecordBatch::try_new(schema.clone(), columns)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_tiers_grow_by_eight_from_one_mebibyte() {
        let mib = 1 << 20;
        assert_eq!([tier(0), tier(mib - 1), tier(mib), tier(8 * mib - 1), tier(8 * mib), tier(64 * mib)], [0, 0, 1, 1, 2, 3]);
        assert_eq!(tier(u64::MAX), 15, "no overflow at the top");
    }

    async fn rows_of(table: &DeltaTable) -> usize {
        let store = table.object_store();
        let mut rows = 0;
        for file in table.snapshot().unwrap().log_data().iter() {
            use object_store::ObjectStoreExt;
            let bytes = store.get(&file.object_store_path()).await.unwrap().bytes().await.unwrap();
            let reader = deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
            rows += reader.map(|b| b.unwrap().num_rows()).sum::<usize>();
        }
        rows
    }

    /// A table at `dir` of `files` commits of ten rows each (`n`: 0, 1, ... ), a file each.
    async fn table_of_files(dir: &std::path::Path, files: i64) -> (DeltaTable, url::Url) {
        use arrow::array::{Int64Array, RecordBatch};
        let url = url::Url::from_directory_path(dir).unwrap();
        let mut table = DeltaTable::try_from_url(url.clone()).await.unwrap();
        for commit in 0..files {
            let batch = RecordBatch::try_from_iter([("n", std::sync::Arc::new(Int64Array::from_iter_values(commit * 10..commit * 10 + 10)) as _)]).unwrap();
            table = table.write(vec![batch]).with_save_mode(deltalake::protocol::SaveMode::Append).await.unwrap();
        }
        (table, url)
    }

    /// A compaction past its budget rewrites two files and leaves the rest of the
    /// tier to the next call, which goes on with it though the partition is no
    /// longer over the threshold; every row stays, once.
    #[tokio::test]
    async fn a_compaction_past_its_budget_goes_on_at_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let (mut table, _) = table_of_files(dir.path(), 6).await;
        let policy = MaintenancePolicy { max_small_files: 5, ..MaintenancePolicy::default() };
        let properties = WriterProperties::default();
        let files = |t: &DeltaTable| t.snapshot().unwrap().log_data().num_files();
        let mut progress = Progress { until: Some(Instant::now()), ..Progress::default() };

        let done = compact(&mut table, None, &policy, &properties, false, false, &mut progress).await.unwrap();
        assert_eq!(done.get(&None), Some(&(2, 1)), "two files read, one written");
        assert!(progress.unfinished());
        assert_eq!((files(&table), rows_of(&table).await), (5, 60));
        // Five files: not over the threshold, but the tier is unfinished.
        let done = compact(&mut table, None, &policy, &properties, false, false, &mut progress).await.unwrap();
        assert_eq!(done.get(&None), Some(&(2, 1)));
        assert_eq!((files(&table), rows_of(&table).await), (4, 60));
        progress.until = None;
        let done = compact(&mut table, None, &policy, &properties, false, false, &mut progress).await.unwrap();
        assert_eq!(done.get(&None), Some(&(4, 1)), "the rest of the tier, the files written before included");
        assert!(!progress.unfinished());
        assert_eq!((files(&table), rows_of(&table).await), (1, 60));
        let done = compact(&mut table, None, &policy, &properties, false, false, &mut progress).await.unwrap();
        assert!(done.is_empty(), "nothing left to do");
    }

    /// A writer that stalled mid-compaction wakes after another compacted the same
    /// files: its compaction fails, and every row stays in the table once.
    #[tokio::test]
    async fn of_two_compactions_of_the_same_files_the_later_fails() {
        use arrow::array::{Int64Array, RecordBatch};
        let dir = tempfile::tempdir().unwrap();
        let (mut table, url) = table_of_files(dir.path(), 5).await;
        let mut stalled = deltalake::open_table(url.clone()).await.unwrap();
        let (policy, properties) = (MaintenancePolicy::default(), WriterProperties::default());

        let done = compact(&mut table, None, &policy, &properties, true, false, &mut Progress::default()).await.unwrap();
        assert_eq!(done.get(&None), Some(&(5, 1)), "five files into one");
        let late = compact(&mut stalled, None, &policy, &properties, true, false, &mut Progress::default()).await;
        assert!(late.is_err(), "the stalled writer's compaction of the same files commits: {late:?}");

        let table = deltalake::open_table(url).await.unwrap();
        assert_eq!((table.snapshot().unwrap().log_data().num_files(), rows_of(&table).await), (1, 50));
        // Compactions that do not overlap follow each other.
        let mut table = table;
        let batch = RecordBatch::try_from_iter([("n", std::sync::Arc::new(Int64Array::from_iter_values(50..60)) as _)]).unwrap();
        table = table.write(vec![batch]).with_save_mode(deltalake::protocol::SaveMode::Append).await.unwrap();
        compact(&mut table, None, &policy, &properties, true, false, &mut Progress::default()).await.unwrap();
        assert_eq!(rows_of(&table).await, 60);
    }
}
