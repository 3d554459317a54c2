//! One Delta table: create it if missing, check its schema, append a commit per epoch.
//!
//! Three kinds of commit also remove rows: a mirror's (or a query over mirrors)
//! replaces the whole table; a corrected window's replaces that window's rows, by
//! rewriting the files of the window's `date` that hold them without them; a
//! rebuild's replaces every row, and may change the columns in the same commit.

use std::collections::BTreeSet;

use arrow::array::{AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampMicrosecondType;
use arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::{Action, Add, Metadata, Remove, Transaction};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::append;
use super::encoder::Encoder;
use super::maintain::{self, Maintained, MaintenancePolicy};
use super::properties::{commit_properties, writer_properties, MAX_COMMIT_ATTEMPTS};
use super::{TableLayout, DATE};
use crate::catalog::{Lake, TablePath};
use crate::error::{Error, Result};

pub struct TableSink {
    path: TablePath,
    layout: TableLayout,
    /// The table, whose snapshot may be older than `version`: appends do not
    /// bring it up to date ([`append`](super::append)); [`catch_up`](Self::catch_up)
    /// does, before anything reads its files.
    table: DeltaTable,
    /// The table version this sink last committed, or found when it opened the table.
    version: u64,
    /// A commit through delta-rs has checked that the table's protocol lets this
    /// writer commit; appends written directly come after one.
    protocol_checked: bool,
    /// Small files per partition, kept up by commits (forgotten by a commit that
    /// removes files), and a compaction an epoch's budget cut short.
    compaction: maintain::Compaction,
    app_id: String,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    /// The pending rows' files, encoded as the rows come: `None` until rows come,
    /// and when the rows may still change before the commit (then the stage writes them).
    encoder: Option<Encoder>,
    /// Rows in files staged but not yet committed.
    staged_rows: usize,
    rows_written: u64,
    writer_properties: WriterProperties,
    /// Each commit replaces the table's rows (mirrors) instead of appending.
    overwrite: bool,
    /// A replacement is buffered, possibly of no rows.
    replacing: bool,
    /// Windows (by start, µs) whose committed rows the next commit replaces.
    replaced_windows: BTreeSet<i64>,
    /// The last commit failed: it may have landed all the same.
    commit_failed: bool,
    /// The table version of the last Delta checkpoint, if it has one.
    last_checkpoint: Option<u64>,
    /// Days older than this are dropped at vacuum time (a table partitioned by `date`).
    retention: Option<std::time::Duration>,
    /// Another writer of the table maintains it (a group's shards share
    /// `late_events`; two compacting one table would each rewrite the same rows).
    maintained_elsewhere: bool,
    /// The next commit takes out every row the table had (a rebuild from the archive).
    rebuilding: bool,
    /// The table's metadata with the columns its SQL now produces, which differ from
    /// those it has: the rebuild's commit changes them.
    new_columns: Option<Metadata>,
    /// The store's options, for a writer in new columns.
    storage_options: std::collections::HashMap<String, String>,
}

/// What one epoch writes to a table before committing it: new files, and the files
/// it takes out (those holding rows of corrected windows).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Staged {
    pub adds: Vec<Add>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removes: Vec<Remove>,
    /// A rebuild that changes the columns: the table's new metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

impl TableSink {
    /// Opens the table, creating it (empty, with its schema) if it does not exist.
    pub async fn open(lake: &Lake, path: TablePath, layout: TableLayout, pipeline: &str) -> Result<Self> {
        Self::open_with(lake, path, layout, pipeline, false).await
    }

    /// Opens a table to rebuild ([`rebuild`](Self::rebuild)): if its columns differ
    /// from `layout`'s, the rebuild's commit changes them.
    pub async fn open_to_rebuild(lake: &Lake, path: TablePath, layout: TableLayout, pipeline: &str) -> Result<Self> {
        Self::open_with(lake, path, layout, pipeline, true).await
    }

    async fn open_with(lake: &Lake, path: TablePath, layout: TableLayout, pipeline: &str, rebuilt: bool) -> Result<Self> {
        let err = |e| Error::delta(path.as_str(), e);
        let layout_schema = layout.schema.clone();
        let url = lake.table_url(&path)?;
        if let Ok(dir) = url.to_file_path() {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let mut table = DeltaTable::try_from_url_with_storage_options(url, lake.options().map().clone()).await.map_err(err)?;
        if table.version().is_none() {
            let empty = RecordBatch::new_empty(layout.schema.clone());
            table = table
                .write(vec![empty])
                .with_save_mode(SaveMode::Append)
                .with_partition_columns(layout.partition_columns.clone())
                .await
                .map_err(err)?;
        }
        let new_columns = match check_schema(&path, &table, &layout) {
            Ok(()) => None,
            Err(_) if rebuilt => Some(metadata_with(&path, &table, &layout)?),
            Err(e) => return Err(e),
        };
        let last_checkpoint = maintain::last_checkpoint(&table).await;
        Ok(TableSink {
            app_id: format!("{pipeline}:{path}"),
            path,
            layout,
            version: table.version().unwrap_or(0),
            table,
            protocol_checked: false,
            compaction: maintain::Compaction::default(),
            pending: Vec::new(),
            pending_rows: 0,
            encoder: None,
            staged_rows: 0,
            rows_written: 0,
            writer_properties: writer_properties(&layout_schema),
            overwrite: false,
            replacing: false,
            replaced_windows: BTreeSet::new(),
            commit_failed: false,
            last_checkpoint,
            retention: None,
            maintained_elsewhere: false,
            rebuilding: false,
            new_columns,
            storage_options: lake.options().map().clone(),
        })
    }

    /// Whether the rebuild changes the table's columns.
    pub fn changes_columns(&self) -> bool {
        self.new_columns.is_some()
    }

    /// Makes every commit replace the table's rows: for mirrors, rewritten whole
    /// when they change, so the table is always one row per live key.
    pub fn overwriting(mut self) -> Self {
        self.overwrite = true;
        self
    }

    /// Drops the table's days older than `keep` (the archive's retention), at vacuum time.
    pub fn keeping_for(mut self, keep: Option<std::time::Duration>) -> Self {
        self.retention = keep;
        self
    }

    /// Leaves the table's maintenance to another writer, who shares the table.
    pub fn maintained_elsewhere(mut self) -> Self {
        self.maintained_elsewhere = true;
        self
    }

    /// Starts buffering the table's next full contents (an overwriting sink only):
    /// the rows pushed from now on, possibly none.
    pub fn begin_replacement(&mut self) {
        self.encoder = None;
        self.pending.clear();
        self.pending_rows = 0;
        self.replacing = true;
    }

    /// Makes the next commit replace every row the table had with the rows pushed
    /// from now on: a rebuild, swapped in by one Delta commit (readers see the old
    /// rows until then).
    pub fn rebuild(&mut self) {
        self.encoder = None;
        self.pending.clear();
        self.pending_rows = 0;
        self.rebuilding = true;
    }

    /// Makes the windows starting at `starts` (µs) be emitted again: their rows
    /// buffered so far are dropped, and the next commit takes their committed rows
    /// out of the table. Push their new rows after this.
    pub fn replace_windows(&mut self, starts: &[i64]) -> Result<()> {
        if starts.is_empty() {
            return Ok(());
        }
        self.encoder = None;
        let starts: BTreeSet<i64> = starts.iter().copied().collect();
        let mut kept = Vec::with_capacity(self.pending.len());
        for batch in std::mem::take(&mut self.pending) {
            let batch = without_windows(&batch, &starts)?;
            if batch.num_rows() > 0 {
                kept.push(batch);
            }
        }
        self.pending_rows = kept.iter().map(RecordBatch::num_rows).sum();
        self.pending = kept;
        self.replaced_windows.extend(starts);
        Ok(())
    }

    pub fn path(&self) -> &TablePath {
        &self.path
    }

    /// Runs the table's maintenance after an epoch: a Delta checkpoint when due,
    /// compaction of partitions with too many small files (stopping at `until`, to
    /// go on at the next call), and with `vacuum` the vacuum and expired-log
    /// cleanup (on the policy's interval).
    pub async fn maintain(&mut self, policy: &MaintenancePolicy, vacuum: bool, until: Option<std::time::Instant>) -> Result<Maintained> {
        if self.maintained_elsewhere {
            return Ok(Maintained::default());
        }
        let partition = self.layout.partition_columns.first().cloned();
        let compact = self.compaction.due(policy);
        let checkpoint = maintain::checkpoint_due(self.version, self.last_checkpoint, policy.checkpoint_interval);
        let mut done = Maintained::default();
        if !(compact || checkpoint || vacuum) {
            return Ok(done);
        }
        self.catch_up().await?;
        if compact {
            let scope = maintain::Scope::Due { until };
            done.compacted = maintain::compact(&mut self.table, partition.as_deref(), policy, &self.writer_properties, scope, &mut self.compaction).await?;
        }
        if let (true, Some(keep)) = (vacuum, self.retention) {
            let before = (chrono::Utc::now() - keep).date_naive();
            done.expired = maintain::expire(&mut self.table, before, false).await?;
            if done.expired > 0 {
                self.compaction.forget_small_files();
            }
        }
        if vacuum {
            done.vacuumed = maintain::vacuum(&mut self.table, policy.vacuum_retention, false).await?;
        }
        // Maintenance commits through delta-rs, the snapshot following.
        self.version = self.version.max(self.table.version().unwrap_or(0));
        if let Some(version) = maintain::checkpoint_if_due(&self.table, self.last_checkpoint, policy.checkpoint_interval).await? {
            self.last_checkpoint = Some(version);
            done.checkpoint = Some(version);
        }
        if vacuum {
            done.logs_cleaned = maintain::clean_expired_logs(&self.table).await?;
        }
        Ok(done)
    }

    /// Whether a compaction was cut short by the last epoch's budget.
    pub fn compaction_unfinished(&self) -> bool {
        self.compaction.unfinished()
    }

    /// Brings the table's snapshot up to the version this sink last committed.
    async fn catch_up(&mut self) -> Result<()> {
        if self.table.version().is_some_and(|v| v < self.version) {
            self.table.update_incremental(Some(self.version)).await.map_err(|e| Error::delta(self.path.as_str(), e))?;
        }
        Ok(())
    }

    /// Buffers result rows (in the query's result layout) for the next commit.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.push_table_rows(self.layout.to_table(batch)?);
        Ok(())
    }

    /// Buffers rows already in the table's layout.
    pub fn push_table_rows(&mut self, batch: RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        let appends = !(self.overwrite || self.replacing || self.rebuilding || self.new_columns.is_some()) && self.replaced_windows.is_empty();
        if appends && self.pending_rows == 0 && self.encoder.is_none() {
            let writer = RecordBatchWriter::for_table(&self.table).map(|w| w.with_writer_properties(self.writer_properties.clone()));
            self.encoder = writer.ok().and_then(Encoder::start);
        }
        if let Some(encoder) = &mut self.encoder {
            encoder.push(batch.clone());
        }
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
    }

    pub fn pending_rows(&self) -> usize {
        self.pending_rows
    }

    /// Whether the next epoch has anything to commit to this table.
    pub fn has_pending(&self) -> bool {
        self.pending_rows > 0 || self.replacing || self.rebuilding || !self.replaced_windows.is_empty()
    }

    pub fn rows_written(&self) -> u64 {
        self.rows_written
    }

    /// The last epoch this table committed, from its `txn`.
    pub async fn committed_epoch(&mut self) -> Result<Option<i64>> {
        self.catch_up().await?;
        committed_epoch(&self.table, &self.app_id).await
    }

    /// Writes the buffered rows as Parquet files in the table's directory without
    /// adding them to the table: the epoch's snapshot records them first, then
    /// [`commit`](Self::commit) adds them. Files of an epoch that never reached its
    /// snapshot are orphans no reader sees (vacuum deletes them).
    ///
    /// An append's rows were encoded as they came ([`Encoder`]); the stage
    /// finishes their files. Otherwise (or if that failed) the encoding runs now,
    /// as a task of its own, so the tables of an epoch are written in parallel.
    /// Nothing is taken out of the buffer until every file is written, so a stage
    /// that fails (the store away) can be tried again.
    pub async fn stage(&mut self) -> Result<Staged> {
        if self.rebuilding || !self.replaced_windows.is_empty() {
            self.catch_up().await?;
        }
        let (removes, rewritten) = match self.rebuilding && !self.overwrite {
            // Every file goes: the corrected windows' old rows with the rest (an
            // overwriting sink's commit takes them out anyway).
            true => {
                let snapshot = self.table.snapshot().map_err(|e| Error::delta(self.path.as_str(), e))?;
                (snapshot.log_data().iter().map(|f| f.remove_action(true)).collect(), Vec::new())
            }
            false => self.take_out_replaced_windows().await?,
        };
        let metadata = if self.rebuilding { self.new_columns.clone() } else { None };
        // Whatever changes the buffered rows drops the encoder, so one left holds them all.
        let encoded = match self.encoder.take() {
            Some(encoder) => encoder.finish().await.inspect_err(|e| tracing::debug!(table = %self.path, "the files encoded ahead failed, written again: {e}")).ok(),
            None => None,
        };
        let adds = match encoded {
            Some(adds) => adds,
            None => {
                let batches: Vec<RecordBatch> = self.pending.iter().chain(&rewritten).filter(|b| b.num_rows() > 0).cloned().collect();
                if batches.is_empty() { Vec::new() } else { self.write_files(batches, metadata.is_some()).await? }
            }
        };
        self.pending.clear();
        self.replacing = false;
        self.rebuilding = false;
        self.replaced_windows.clear();
        self.staged_rows += std::mem::take(&mut self.pending_rows);
        Ok(Staged { adds, removes, metadata })
    }

    /// Writes `batches` as files of the table, in its columns or, with
    /// `new_columns`, in those of its layout (a rebuild that changes them).
    async fn write_files(&self, batches: Vec<RecordBatch>, new_columns: bool) -> Result<Vec<Add>> {
        let table = self.path.to_string();
        let err = move |e| Error::delta(table.clone(), e);
        let writer = match new_columns {
            false => RecordBatchWriter::for_table(&self.table),
            true => RecordBatchWriter::try_new(
                self.table.table_url().as_str(),
                self.layout.schema.clone(),
                Some(self.layout.partition_columns.clone()),
                Some(self.storage_options.clone()),
            ),
        };
        let mut writer = writer.map_err(&err)?.with_writer_properties(self.writer_properties.clone());
        let task = tokio::spawn(async move {
            for batch in batches {
                writer.write(batch).await.map_err(&err)?;
            }
            writer.flush().await.map_err(&err)
        });
        task.await.map_err(|e| Error::Internal(format!("writing {}: {e}", self.path)))?
    }

    /// The committed rows of the replaced windows, to take out: the files whose
    /// `window_start` statistics can hold one of them are read, and one that does
    /// hold rows of them is returned to be removed, with its other rows to be
    /// written again.
    async fn take_out_replaced_windows(&self) -> Result<(Vec<Remove>, Vec<RecordBatch>)> {
        if self.replaced_windows.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let replaced = &self.replaced_windows;
        let dates: BTreeSet<String> = replaced.iter().map(|&start| date_of(start)).collect();
        let table = self.path.to_string();
        let err = |e: DeltaTableError| Error::delta(table.clone(), e);
        let files: Vec<_> = self
            .table
            .snapshot()
            .map_err(err)?
            .log_data()
            .iter()
            .filter(|f| f.partition_values_map().get(DATE).and_then(|d| d.as_deref()).is_some_and(|d| dates.contains(d)))
            .filter(|f| may_hold_windows(f.stats().as_deref(), replaced))
            .collect();
        let store = self.table.object_store();
        let (mut removes, mut rewritten) = (Vec::new(), Vec::new());
        for file in files {
            let bytes = async { store.get(&file.object_store_path()).await?.bytes().await }.await.map_err(|e| err(e.into()))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).and_then(|b| b.build()).map_err(|e| err(e.into()))?;
            let (mut kept, mut read) = (Vec::new(), 0);
            for batch in reader {
                let batch = batch?;
                read += batch.num_rows();
                kept.push(without_windows(&self.layout.with_partition_column(&batch)?, replaced)?);
            }
            // A file without rows of those windows stays as it is.
            if kept.iter().map(RecordBatch::num_rows).sum::<usize>() < read {
                rewritten.extend(kept);
                removes.push(file.remove_action(true));
            }
        }
        Ok((removes, rewritten))
    }

    /// Adds staged files to the table as one commit for `epoch`, recorded as the
    /// table's `txn` version so a restart knows the table holds the epoch.
    ///
    /// An overwriting sink's commit also removes every file the table had, and is
    /// made even without files: the table then has no rows.
    ///
    /// Safe to call again after a failure: a commit that reached the store before
    /// the answer was lost is found by its `txn` and not made twice.
    pub async fn commit(&mut self, epoch: i64, staged: Staged) -> Result<usize> {
        if staged.adds.is_empty() && staged.removes.is_empty() && staged.metadata.is_none() && !self.overwrite {
            return Ok(0);
        }
        let path = self.path.clone();
        let err = |e| Error::delta(path.as_str(), e);
        if self.commit_failed {
            // Decide on the table as the store has it now, never on a stale copy.
            self.table.update_state().await.map_err(err)?;
            self.version = self.version.max(self.table.version().unwrap_or(0));
            self.compaction.forget_small_files();
            self.commit_failed = false;
            if self.committed_epoch().await? >= Some(epoch) {
                return Ok(self.committed_rows());
            }
        }
        let txn = Transaction::new(&self.app_id, epoch);
        let appends = staged.removes.is_empty() && staged.metadata.is_none() && !self.overwrite;
        let partition = self.layout.partition_columns.first().cloned();
        let operation = DeltaOperation::Write {
            mode: if appends { SaveMode::Append } else { SaveMode::Overwrite },
            partition_by: Some(self.layout.partition_columns.clone()).filter(|p| !p.is_empty()),
            predicate: None,
        };
        if appends && self.protocol_checked && append::writes_directly(self.table.log_store().as_ref()) {
            let log_store = self.table.log_store();
            // Other writers' appends (a group's shards, to a shared table) are
            // stepped over, as many as delta-rs would retry.
            for _ in 0..MAX_COMMIT_ATTEMPTS {
                let actions = staged.adds.iter().cloned().map(Action::Add).collect();
                match append::append(log_store.as_ref(), self.version + 1, actions, operation.clone(), txn.clone()).await {
                    Ok(true) => {
                        self.version += 1;
                        self.compaction.appended(&staged.adds, partition.as_deref());
                        return Ok(self.committed_rows());
                    }
                    Ok(false) => match append::step_over(log_store.as_ref(), self.version + 1, &self.app_id).await {
                        Ok(Some((adds, removed))) => {
                            self.version += 1;
                            match removed {
                                false => self.compaction.appended(&adds, partition.as_deref()),
                                true => self.compaction.forget_small_files(),
                            }
                        }
                        // For delta-rs's conflict checker, below.
                        Ok(None) | Err(_) => break,
                    },
                    Err(e) => {
                        // The commit may have landed without its answer: a retry looks first.
                        self.commit_failed = true;
                        return Err(err(e));
                    }
                }
            }
        }
        self.catch_up().await?;
        let read_version = self.version;
        let mut actions: Vec<Action> = Vec::new();
        let new_columns = staged.metadata.is_some();
        actions.extend(staged.metadata.map(Action::Metadata));
        if self.overwrite {
            let snapshot = self.table.snapshot().map_err(err)?;
            actions.extend(snapshot.log_data().iter().map(|f| Action::Remove(f.remove_action(true))));
        }
        actions.extend(staged.removes.into_iter().map(Action::Remove));
        actions.extend(staged.adds.iter().cloned().map(Action::Add));
        let finalized = CommitBuilder::from(commit_properties().with_application_transaction(txn))
            .with_actions(actions)
            .build(Some(self.table.snapshot().map_err(err)?), self.table.log_store(), operation)
            .await;
        let finalized = match finalized {
            Ok(finalized) => finalized,
            Err(e) => {
                self.commit_failed = true;
                return Err(err(e));
            }
        };
        self.table.state = Some(finalized.snapshot());
        self.version = finalized.version();
        self.protocol_checked = true;
        // Past other writers' commits, their files are not counted: listed again.
        match appends && self.version == read_version + 1 {
            true => self.compaction.appended(&staged.adds, partition.as_deref()),
            false => self.compaction.forget_small_files(),
        }
        if new_columns {
            self.new_columns = None;
        }
        Ok(self.committed_rows())
    }

    /// The rows staged since the last commit, now committed.
    fn committed_rows(&mut self) -> usize {
        let rows = std::mem::take(&mut self.staged_rows);
        self.rows_written += rows as u64;
        rows
    }
}

/// The last epoch of the pipeline table `app_id` (`<pipeline>:<table>`) that
/// `table` holds, from its `txn`.
pub async fn committed_epoch(table: &DeltaTable, app_id: &str) -> Result<Option<i64>> {
    let name = || table.table_url().to_string();
    let state = table.snapshot().map_err(|e| Error::delta(name(), e))?;
    state.transaction_version(table.log_store().as_ref(), app_id).await.map_err(|e| Error::delta(name(), e))
}

/// Whether a file whose statistics are `stats` (Delta's JSON) may hold rows of
/// the windows starting at `starts` (µs): its `window_start` range overlaps one.
/// Without statistics it may.
fn may_hold_windows(stats: Option<&str>, starts: &BTreeSet<i64>) -> bool {
    let Some(stats) = stats.and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok()) else { return true };
    let bound = |which: &str| {
        let text = stats.get(which)?.get("window_start")?.as_str()?;
        chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros())
    };
    match (bound("minValues"), bound("maxValues")) {
        // Statistics keep milliseconds: widen the range by one.
        (Some(min), Some(max)) => starts.range(min - 1000..=max + 1000).next().is_some(),
        _ => true,
    }
}

/// The rows of `batch` (in a windowed table's layout) outside the windows starting at `starts`.
fn without_windows(batch: &RecordBatch, starts: &BTreeSet<i64>) -> Result<RecordBatch> {
    let window_start = batch
        .column_by_name("window_start")
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| Error::Internal("corrected rows without a µs window_start".into()))?;
    let keep: BooleanArray = window_start.iter().map(|s| Some(!s.is_some_and(|s| starts.contains(&s)))).collect();
    Ok(filter_record_batch(batch, &keep)?)
}

/// The `date` partition value (`YYYY-MM-DD`) of a window starting at `start` µs.
fn date_of(start: i64) -> String {
    chrono::DateTime::from_timestamp_micros(start).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

/// The table's metadata with `layout`'s columns and partition columns instead of its own.
fn metadata_with(path: &TablePath, table: &DeltaTable, layout: &TableLayout) -> Result<Metadata> {
    let err = |e| Error::delta(path.as_str(), e);
    let old = table.snapshot().map_err(err)?.metadata().clone();
    let schema: deltalake::kernel::StructType = layout.schema.as_ref().try_into_kernel().map_err(|e| err(e.into()))?;
    let value = serde_json::json!({
        "id": old.id(),
        "name": old.name(),
        "description": old.description(),
        "format": { "provider": "parquet", "options": {} },
        "schemaString": serde_json::to_string(&schema).map_err(|e| Error::Internal(format!("the schema of {path}: {e}")))?,
        "partitionColumns": layout.partition_columns,
        "configuration": old.configuration(),
        "createdTime": old.created_time(),
    });
    serde_json::from_value(value).map_err(|e| Error::Internal(format!("the new metadata of {path}: {e}")))
}

/// An existing table must have the columns the SQL file now produces.
fn check_schema(path: &TablePath, table: &DeltaTable, layout: &TableLayout) -> Result<()> {
    let state = table.snapshot().map_err(|e| Error::delta(path.as_str(), e))?;
    let existing = state.snapshot().arrow_schema();
    let describe = |s: &arrow::datatypes::Schema| {
        s.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ")
    };
    let same = existing.fields().len() == layout.schema.fields().len()
        && existing
            .fields()
            .iter()
            .zip(layout.schema.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    if !same {
        return Err(Error::Config(format!(
            "table {path} exists with columns ({}) but its SQL now produces ({}): write to a new lake or drop the table",
            describe(&existing),
            describe(&layout.schema)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `_offset`s of every row the table at `dir`/`table` holds, as a new
    /// reader of the log sees it, sorted; and the table's version.
    async fn offsets_in(dir: &std::path::Path, table: &TablePath) -> (Vec<i64>, u64) {
        let url = deltalake::ensure_table_uri(format!("{}/{}", dir.display(), table.as_str())).unwrap();
        let reopened = deltalake::open_table(url).await.unwrap();
        let store = reopened.object_store();
        let mut offsets = Vec::new();
        for file in reopened.snapshot().unwrap().log_data().iter() {
            let bytes = store.get(&file.object_store_path()).await.unwrap().bytes().await.unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap() {
                let batch = batch.unwrap();
                let column = batch.column_by_name("_offset").unwrap().as_primitive::<arrow::datatypes::Int64Type>();
                offsets.extend(column.values().iter().copied());
            }
        }
        offsets.sort_unstable();
        (offsets, reopened.version().unwrap())
    }

    /// Appends after the first are written to the log directly (`sink/append.rs`):
    /// a new reader finds every row once and the last epoch's `txn`, another
    /// writer's commit in between is stepped over, and the small files the sink
    /// counted along are those the table has.
    #[tokio::test]
    async fn appends_written_directly_are_read_back_as_delta_rs_writes_them() {
        use crate::catalog::StorageOptions;
        use crate::source::{PartitionId, RawBatch, RawMessage};
        const DAY: i64 = 86_400_000_000;

        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::connect(dir.path().to_str().unwrap(), true, StorageOptions::default()).await.unwrap();
        let table = super::super::archive_table("t").unwrap();
        let mut sink = TableSink::open(&lake, table.clone(), super::super::archive_layout(), "test").await.unwrap();
        let policy = MaintenancePolicy { max_small_files: 1000, ..MaintenancePolicy::default() };
        let start = sink.version;
        let now = crate::time::now_micros();
        for epoch in 1..=12i64 {
            let raw = RawBatch {
                partition: PartitionId { topic: std::sync::Arc::from("t"), partition: 0 },
                // Three days, so that the files fall in three partitions.
                ingested_at: now - (epoch % 3) * DAY,
                data: b"{}{}".to_vec(),
                messages: vec![
                    RawMessage { offset: 2 * epoch, payload: Some(0..2), timestamp: None },
                    RawMessage { offset: 2 * epoch + 1, payload: Some(2..4), timestamp: None },
                ],
                next_offset: 2 * epoch + 2,
                end_of_partition: false,
            };
            sink.push_table_rows(super::super::archive_batch(&raw).unwrap());
            assert!(sink.encoder.is_some(), "an append's rows are encoded as they come");
            let staged = sink.stage().await.unwrap();
            assert_eq!(sink.commit(epoch, staged).await.unwrap(), 2);
            if epoch == 1 {
                assert!(sink.protocol_checked, "the first commit goes through delta-rs");
                // Counts the small files, from here on kept up by the commits.
                assert!(sink.maintain(&policy, false, None).await.unwrap().is_empty());
            }
            if epoch == 6 {
                // Another writer appends a row at the version the sink would write next.
                let url = lake.table_url(&table).unwrap();
                let mut other = DeltaTable::try_from_url(url).await.unwrap();
                other.load().await.unwrap();
                let raw = RawBatch {
                    partition: PartitionId { topic: std::sync::Arc::from("t"), partition: 1 },
                    ingested_at: now,
                    data: b"{}".to_vec(),
                    messages: vec![RawMessage { offset: 100, payload: Some(0..2), timestamp: None }],
                    next_offset: 101,
                    end_of_partition: false,
                };
                let other = other.write(vec![super::super::archive_batch(&raw).unwrap()]).with_save_mode(SaveMode::Append).await.unwrap();
                assert_eq!(other.version(), Some(sink.version + 1));
            }
        }
        assert_eq!(sink.table.version(), Some(start + 1), "the snapshot is the first commit's: the other writer's append was stepped over");

        let (offsets, version) = offsets_in(dir.path(), &table).await;
        assert_eq!(offsets, (2..26).chain([100]).collect::<Vec<i64>>(), "every row once");
        assert_eq!(version, start + 13, "twelve epochs and the other writer's commit");
        assert_eq!(sink.version, version);
        // Another writer's commit of this sink's app id (a zombie's) is for delta-rs's conflict checker.
        let log_store = sink.table.log_store();
        assert!(append::step_over(log_store.as_ref(), start + 7, &sink.app_id).await.unwrap().is_some_and(|(adds, removed)| adds.len() == 1 && !removed));
        assert!(append::step_over(log_store.as_ref(), start + 8, &sink.app_id).await.unwrap().is_none());
        assert!(append::step_over(log_store.as_ref(), start + 8, "another:app").await.unwrap().is_some());
        assert_eq!(sink.committed_epoch().await.unwrap(), Some(12));

        let url = lake.table_url(&table).unwrap();
        let mut reopened = DeltaTable::try_from_url(url).await.unwrap();
        reopened.load().await.unwrap();
        let mut counted = maintain::Compaction::default();
        let scope = maintain::Scope::Due { until: None };
        let done = maintain::compact(&mut reopened, Some(DATE), &policy, &sink.writer_properties, scope, &mut counted).await.unwrap();
        assert!(done.is_empty(), "under the threshold");
        assert_eq!(sink.compaction, counted, "the small files counted along are those a listing counts");
        assert_eq!(maintain::files_by_partition(&reopened, Some(DATE)).unwrap().len(), 3, "three days");
    }

    fn micros(t: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_micros()
    }

    #[test]
    fn a_correction_reads_only_files_whose_statistics_can_hold_its_window() {
        let stats = r#"{"numRecords":3,"minValues":{"window_start":"2026-03-01T10:00:00.000Z"},"maxValues":{"window_start":"2026-03-01T10:05:00.000Z"}}"#;
        let windows = |ts: &[&str]| ts.iter().map(|t| micros(t)).collect::<BTreeSet<i64>>();
        assert!(may_hold_windows(Some(stats), &windows(&["2026-03-01T10:00:00Z"])), "the first window of the file");
        assert!(may_hold_windows(Some(stats), &windows(&["2026-03-01T10:05:00Z"])), "the last window of the file");
        assert!(may_hold_windows(Some(stats), &windows(&["2026-03-01T09:00:00Z", "2026-03-01T10:03:00Z"])), "one of two");
        assert!(!may_hold_windows(Some(stats), &windows(&["2026-03-01T10:06:00Z"])), "after the file's range");
        assert!(!may_hold_windows(Some(stats), &windows(&["2026-03-01T09:59:00Z"])), "before the file's range");
        assert!(may_hold_windows(None, &windows(&["2026-03-01T12:00:00Z"])), "no statistics: read the file");
        assert!(may_hold_windows(Some(r#"{"numRecords":3}"#), &windows(&["2026-03-01T12:00:00Z"])), "no window_start bounds");
    }
}
