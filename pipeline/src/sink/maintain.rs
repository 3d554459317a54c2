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

/// What a table's writer knows of its compaction between calls of [`compact`]:
/// the small files per partition, so that a table none of whose partitions can be
/// over the threshold is not listed every epoch (listing a table's files costs as
/// much as it has files), and the compactions an epoch's budget cut short, to go
/// on with. A compaction of the gateway's archive held one epoch for 600-660 ms
/// at 50,000 messages/s before it could stop at the budget.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// Files smaller than the target (`.0`) per partition: counted by the last
    /// [`compact`] and kept up by the appends since. `None`: not known.
    small_files: Option<(u64, BTreeMap<Option<String>, usize>)>,
    /// The partitions whose compaction stopped at the budget, and the tier it was compacting.
    unfinished: BTreeMap<Option<String>, u32>,
}

impl Compaction {
    /// Counts the small files `adds` adds (to a partition of `partition_column`).
    pub fn appended(&mut self, adds: &[Add], partition_column: Option<&str>) {
        let Some((target, counts)) = &mut self.small_files else { return };
        for add in adds.iter().filter(|a| (a.size as u64) < *target) {
            let partition = partition_column.and_then(|c| add.partition_values.get(c).cloned().flatten());
            *counts.entry(partition).or_default() += 1;
        }
    }

    /// Forgets the counts (files were removed): the next [`compact`] lists the table.
    pub fn forget_small_files(&mut self) {
        self.small_files = None;
    }

    /// Whether [`compact`] under `policy` may find something to do.
    pub fn due(&self, policy: &MaintenancePolicy) -> bool {
        match &self.small_files {
            _ if self.unfinished() => true,
            Some((target, counts)) => *target != policy.target_file_size || counts.values().any(|&n| n > policy.max_small_files),
            None => true,
        }
    }

    /// Whether a compaction was cut short by a budget.
    pub fn unfinished(&self) -> bool {
        !self.unfinished.is_empty()
    }
}

/// Which partitions [`compact`] takes, and how far it goes.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// Those over the policy's threshold, and those a budget left unfinished,
    /// stopping at `until` after the files read by then (two at least): a running
    /// pipeline's, every epoch.
    Due { until: Option<Instant> },
    /// Every partition with two small files or more, all of them (`sluice
    /// maintain`); with `dry_run`, only said.
    All { dry_run: bool },
}

/// Compacts the partitions `scope` takes: the tier holding most of a partition's
/// files smaller than `policy.target_file_size` is rewritten into files of at
/// most the target size, or, for a partition `state` has unfinished, the rest of
/// its tier (with [`Scope::All`], every small file). Rows are unchanged; only
/// files are. `state` then holds the table's small files as this listing found
/// them and the compactions changed them.
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
    scope: Scope,
    state: &mut Compaction,
) -> Result<BTreeMap<Option<String>, (u64, u64)>> {
    let (threshold, until, force, dry_run) = match scope {
        Scope::Due { until } => (policy.max_small_files, until, false, false),
        Scope::All { dry_run } => (1, None, true, dry_run),
    };
    let past_budget = || until.is_some_and(|until| Instant::now() >= until);
    let target = policy.target_file_size;
    let mut small = files_by_partition(table, partition_column)?;
    small.values_mut().for_each(|files| files.retain(|f| (f.size() as u64) < target));
    let mut counts: BTreeMap<Option<String>, usize> = small.iter().map(|(partition, files)| (partition.clone(), files.len())).collect();
    state.unfinished.retain(|partition, _| small.contains_key(partition));
    let mut done = BTreeMap::new();
    for (partition, files) in small {
        let resumed = state.unfinished.get(&partition).copied();
        if (files.len() <= threshold && resumed.is_none()) || (!done.is_empty() && past_budget()) {
            continue;
        }
        state.unfinished.remove(&partition);
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
        let rewritten = rewrite(table, &chosen, partition_column.zip(partition.as_deref()), target, writer_properties, &past_budget).await?;
        if rewritten.read < chosen.len() {
            state.unfinished.insert(partition.clone(), chosen_tier);
        }
        if let Some(count) = counts.get_mut(&partition) {
            *count = count.saturating_sub(rewritten.read) + rewritten.sizes.iter().filter(|&&size| size < target).count();
        }
        done.insert(partition, (rewritten.read as u64, rewritten.sizes.len() as u64));
    }
    state.small_files = Some((target, counts));
    Ok(done)
}

/// What [`rewrite`] did: how many of its files it read, and the sizes of those it wrote.
struct Rewritten {
    read: usize,
    sizes: Vec<u64>,
}

/// Rewrites `files` (of one partition, `partition` = (column, value)) into files
/// of at most `target` bytes in one commit that changes no data
/// (`dataChange: false`, operation OPTIMIZE), or the first of them, two at least,
/// once `past_budget`.
async fn rewrite(
    table: &mut DeltaTable,
    files: &[LogicalFileView],
    partition: Option<(&str, &str)>,
    target: u64,
    writer_properties: &WriterProperties,
    past_budget: &dyn Fn() -> bool,
) -> Result<Rewritten> {
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
        if read >= 2 && past_budget() {
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
    Ok(Rewritten { read, sizes: added.iter().map(|add| add.size as u64).collect() })
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

    /// The small files of an unpartitioned table as a new listing counts them.
    fn small_files_of(table: &DeltaTable, target: u64) -> Option<(u64, BTreeMap<Option<String>, usize>)> {
        let small = table.snapshot().unwrap().log_data().iter().filter(|f| (f.size() as u64) < target).count();
        Some((target, BTreeMap::from([(None, small)])))
    }

    /// A compaction past its budget rewrites two files and leaves the rest of the
    /// tier to the next call, which goes on with it though the partition is no
    /// longer over the threshold; every row stays, once. After each call the
    /// state's small files are those the table has.
    #[tokio::test]
    async fn a_compaction_past_its_budget_goes_on_at_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let (mut table, _) = table_of_files(dir.path(), 6).await;
        let policy = MaintenancePolicy { max_small_files: 5, ..MaintenancePolicy::default() };
        let target = policy.target_file_size;
        let properties = WriterProperties::default();
        let files = |t: &DeltaTable| t.snapshot().unwrap().log_data().num_files();
        let mut state = Compaction::default();
        assert!(state.due(&policy), "nothing counted yet");
        let past = Scope::Due { until: Some(Instant::now()) };

        let done = compact(&mut table, None, &policy, &properties, past, &mut state).await.unwrap();
        assert_eq!(done.get(&None), Some(&(2, 1)), "two files read, one written");
        assert!(state.unfinished() && state.due(&policy));
        assert_eq!((files(&table), rows_of(&table).await), (5, 60));
        assert_eq!(state.small_files, small_files_of(&table, target));
        // Five files: not over the threshold, but the tier is unfinished.
        let done = compact(&mut table, None, &policy, &properties, past, &mut state).await.unwrap();
        assert_eq!(done.get(&None), Some(&(2, 1)));
        assert_eq!((files(&table), rows_of(&table).await), (4, 60));
        assert_eq!(state.small_files, small_files_of(&table, target));
        let done = compact(&mut table, None, &policy, &properties, Scope::Due { until: None }, &mut state).await.unwrap();
        assert_eq!(done.get(&None), Some(&(4, 1)), "the rest of the tier, the files written before included");
        assert!(!state.unfinished());
        assert_eq!((files(&table), rows_of(&table).await), (1, 60));
        assert_eq!(state.small_files, small_files_of(&table, target));
        assert!(!state.due(&policy), "one small file: nothing to look at until appends add five");

        // Appends counted along, from the commits' adds, up to the threshold.
        for n in 0..5 {
            use deltalake::writer::{DeltaWriter, RecordBatchWriter};
            let batch = arrow::array::RecordBatch::try_from_iter([("n", std::sync::Arc::new(arrow::array::Int64Array::from(vec![100 + n])) as _)]).unwrap();
            let mut writer = RecordBatchWriter::for_table(&table).unwrap();
            writer.write(batch).await.unwrap();
            let adds = writer.flush().await.unwrap();
            state.appended(&adds, None);
            let operation = deltalake::protocol::DeltaOperation::Write { mode: deltalake::protocol::SaveMode::Append, partition_by: None, predicate: None };
            commit_actions(&mut table, adds.into_iter().map(deltalake::kernel::Action::Add).collect(), operation).await.unwrap();
        }
        assert_eq!(state.small_files, small_files_of(&table, target));
        assert!(state.due(&policy), "six small files, over five");
        let done = compact(&mut table, None, &policy, &properties, Scope::Due { until: None }, &mut state).await.unwrap();
        assert_eq!(done.get(&None), Some(&(6, 1)));
        assert_eq!(state.small_files, small_files_of(&table, target));
        let done = compact(&mut table, None, &policy, &properties, Scope::Due { until: None }, &mut state).await.unwrap();
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

        let done = compact(&mut table, None, &policy, &properties, Scope::All { dry_run: false }, &mut Compaction::default()).await.unwrap();
        assert_eq!(done.get(&None), Some(&(5, 1)), "five files into one");
        let late = compact(&mut stalled, None, &policy, &properties, Scope::All { dry_run: false }, &mut Compaction::default()).await;
        assert!(late.is_err(), "the stalled writer's compaction of the same files commits: {late:?}");

        let table = deltalake::open_table(url).await.unwrap();
        assert_eq!((table.snapshot().unwrap().log_data().num_files(), rows_of(&table).await), (1, 50));
        // Compactions that do not overlap follow each other.
        let mut table = table;
        let batch = RecordBatch::try_from_iter([("n", std::sync::Arc::new(Int64Array::from_iter_values(50..60)) as _)]).unwrap();
        table = table.write(vec![batch]).with_save_mode(deltalake::protocol::SaveMode::Append).await.unwrap();
        compact(&mut table, None, &policy, &properties, Scope::All { dry_run: false }, &mut Compaction::default()).await.unwrap();
        assert_eq!(rows_of(&table).await, 60);
    }
}
