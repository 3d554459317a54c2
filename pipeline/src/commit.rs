//! One epoch's commit to the lake, in the order that makes it exactly once
//! (see [`checkpoint`](crate::checkpoint)):
//!
//! 1. **stage**: every table with new rows writes them as Parquet files, not yet
//!    part of the table; the window and mirror state is written beside them;
//! 2. **checkpoint**: the manifest (the commit point), naming the state and the
//!    staged files;
//! 3. **commit**: every table commits its files in one Delta version carrying the
//!    epoch as its `txn`;
//!
//! then older checkpoints are pruned and the tables maintained (Delta checkpoints,
//! compaction, vacuum: [`sink::maintain`](crate::sink::maintain)), by this same
//! writer, so maintenance never races a commit.
//!
//! Every step can be tried again: when the store is unreachable (an outage, not a
//! refusal) the step waits with backoff, logs, counts the retry and carries on;
//! what was staged or committed before the outage is not done twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use futures::{StreamExt, TryStreamExt};

use crate::catalog::storage::{is_transient, redact};
use crate::catalog::TablePath;
use crate::checkpoint::{BackfillProgress, Checkpoint, CheckpointStore, Committer, MergeCheckpoint, MergeProgress, Position, QueryCheckpoint};
use crate::error::{Error, Result};
use crate::sink::{Maintained, MaintenancePolicy, Staged, TableSink};
use crate::time::PartitionMark;

/// The store's health as the commits saw it, for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// Requests tried again after the store failed to answer.
    pub retries: AtomicU64,
    /// A step is waiting for the store right now.
    pub unavailable: AtomicBool,
}

/// What the run loop hands over for an epoch besides the rows already in the sinks.
#[derive(Debug, Default)]
pub struct EpochState {
    /// Per partition, the offset to read next.
    pub positions: Vec<Position>,
    pub watermarks: Vec<PartitionMark>,
    pub queries: Vec<QueryState>,
    /// Per mirror table: its retained changes.
    pub mirrors: Vec<(TablePath, RecordBatch)>,
    /// Per repartitioned table this pipeline merges: each partition's merge, in order.
    pub merges: Vec<(TablePath, Vec<MergeState>)>,
}

/// One repartition partition's merge in an epoch: its open windows' state and progress.
#[derive(Debug)]
pub struct MergeState {
    pub windows: Option<RecordBatch>,
    pub progress: MergeProgress,
}

/// A query's table in an epoch: its plan's fingerprint, watermark, open windows'
/// state if any, and how far its backfill got if it is backfilled.
#[derive(Debug)]
pub struct QueryState {
    pub table: TablePath,
    pub fingerprint: String,
    pub parts: BTreeMap<String, String>,
    pub watermark: i64,
    pub windows: Option<RecordBatch>,
    pub backfill: Option<BackfillProgress>,
}

/// What an epoch's commit did.
#[derive(Debug, Default)]
pub struct Committed {
    pub epoch: i64,
    pub rows: usize,
    /// Tables committed to.
    pub tables: usize,
    /// Milliseconds to stage the files (the state written beside them), and then
    /// to write the manifest.
    pub write_ms: u64,
    pub state_ms: u64,
    /// Milliseconds of the Delta commits themselves.
    pub delta_ms: u64,
    /// When the last table's commit ended (Unix milliseconds): the epoch's rows
    /// are visible from then on, maintenance or not.
    pub visible_at_ms: i64,
    /// Milliseconds to delete the checkpoints before this epoch's.
    pub prune_ms: u64,
    /// Milliseconds of maintenance after the commits.
    pub maintain_ms: u64,
    /// Tables whose maintenance did something.
    pub maintained: BTreeMap<TablePath, Maintained>,
}

/// State files written at once at a checkpoint: enough to hide an object store's
/// latency, few enough not to open a connection per table of a large lake.
const PARALLEL_STATE_WRITES: usize = 16;

/// Stages every table with pending rows, side by side, into `staged`; if a
/// table failed, the last failure (those staged stay staged).
async fn stage(sinks: &mut BTreeMap<TablePath, TableSink>, staged: &mut BTreeMap<String, Staged>) -> Result<()> {
    let stages = sinks.iter_mut().filter(|(_, s)| s.has_pending()).map(|(path, s)| async move { (path.as_str().to_string(), s.stage().await) });
    let mut outcome = Ok(());
    for (path, result) in futures::future::join_all(stages).await {
        match result {
            Ok(files) => {
                staged.insert(path, files);
            }
            Err(e) => outcome = Err(e),
        }
    }
    outcome
}

/// The state files of an epoch's checkpoint, by the order of its queries,
/// mirrors and merges.
struct StateFiles {
    /// Per query, its open windows' file, if it keeps windows.
    windows: Vec<Option<String>>,
    mirrors: Vec<String>,
    /// Per merged table, per partition, its open windows' file.
    merges: Vec<Vec<Option<String>>>,
}

/// Writes an epoch's window and mirror state, the files side by side: one after
/// another, an object store's round trips added up (40 windowed tables, 40 PUTs).
async fn put_states(checkpoints: &CheckpointStore, epoch: i64, state: &EpochState) -> Result<StateFiles> {
    let put = |stem: String, rows| async move {
        match rows {
            Some(rows) => checkpoints.put_state(epoch, &stem, rows).await.map(Some),
            None => Ok(None),
        }
    };
    let windows = futures::stream::iter(&state.queries).map(|q| put(q.table.sql_name(), q.windows.as_ref())).buffered(PARALLEL_STATE_WRITES).try_collect::<Vec<_>>();
    let mirrors = futures::stream::iter(&state.mirrors).map(|(table, rows)| put(table.sql_name(), Some(rows))).buffered(PARALLEL_STATE_WRITES).try_collect::<Vec<_>>();
    let merges = futures::stream::iter(state.merges.iter().flat_map(|(table, merges)| merges.iter().enumerate().map(move |(p, m)| (table, p, m))))
        .map(|(table, partition, merge)| put(format!("{}.merge-{partition}", table.sql_name()), merge.windows.as_ref()))
        .buffered(PARALLEL_STATE_WRITES)
        .try_collect::<Vec<_>>();
    let (windows, mirrors, merges) = futures::try_join!(windows, mirrors, merges)?;
    let mirrors = mirrors.into_iter().flatten().collect();
    // Back into one list per table.
    let mut files = merges.into_iter();
    let merges = state.merges.iter().map(|(_, merges)| files.by_ref().take(merges.len()).collect()).collect();
    Ok(StateFiles { windows, mirrors, merges })
}

/// The lake's writer: every table's sink, the checkpoints, and the epoch count.
pub struct LakeWriter {
    sinks: BTreeMap<TablePath, TableSink>,
    checkpoints: CheckpointStore,
    /// The last epoch checkpointed and committed.
    epoch: i64,
    /// The runs that committed the last epochs, this one last once it has.
    committers: Vec<Committer>,
    policy: MaintenancePolicy,
    last_vacuum: Instant,
    /// Tables not vacuumed since the vacuum interval last came round.
    vacuum_owed: BTreeSet<TablePath>,
    /// The table to maintain first in the next epoch: the one the budget ran out at.
    maintain_from: Option<TablePath>,
    outage: OutagePolicy,
}

/// How long an epoch waits for an unreachable store, and where it reports that.
#[derive(Debug, Clone)]
pub struct OutagePolicy {
    /// The lake, for messages.
    pub lake: String,
    /// Give up (and stop the run) after the store was unreachable this long.
    pub limit: Duration,
    pub health: Arc<StoreHealth>,
}

impl LakeWriter {
    pub fn new(sinks: BTreeMap<TablePath, TableSink>, checkpoints: CheckpointStore, policy: MaintenancePolicy, outage: OutagePolicy) -> Self {
        LakeWriter {
            sinks,
            checkpoints,
            epoch: 0,
            committers: Vec::new(),
            policy,
            last_vacuum: Instant::now(),
            vacuum_owed: BTreeSet::new(),
            maintain_from: None,
            outage,
        }
    }

    /// The sink of `table` (one is opened for every table at start).
    pub fn sink(&mut self, table: &TablePath) -> Result<&mut TableSink> {
        self.sinks.get_mut(table).ok_or_else(|| Error::Internal(format!("no sink for {table}")))
    }

    /// The sinks of `tables`, in their order, borrowed apart so that the queries
    /// writing them can run side by side.
    pub fn sinks_of(&mut self, tables: &[&TablePath]) -> Result<Vec<&mut TableSink>> {
        let mut by_table: HashMap<&TablePath, &mut TableSink> = self.sinks.iter_mut().collect();
        tables
            .iter()
            .map(|table| by_table.remove(*table).ok_or_else(|| Error::Internal(format!("no sink for {table}, or two queries write it"))))
            .collect()
    }

    /// Whether this pipeline writes `table` (a group's shards write only their own).
    pub fn has_sink(&self, table: &TablePath) -> bool {
        self.sinks.contains_key(table)
    }

    /// A table a reloaded SQL file added.
    pub fn add_sink(&mut self, sink: TableSink) {
        self.sinks.insert(sink.path().clone(), sink);
    }

    /// A table whose SQL file was removed: no longer committed to.
    pub fn remove_sink(&mut self, table: &TablePath) {
        self.sinks.remove(table);
    }

    pub fn sinks(&self) -> &BTreeMap<TablePath, TableSink> {
        &self.sinks
    }

    pub fn checkpoints(&self) -> &CheckpointStore {
        &self.checkpoints
    }

    pub fn pending_rows(&self) -> usize {
        self.sinks.values().map(TableSink::pending_rows).sum()
    }

    pub fn has_pending(&self) -> bool {
        self.sinks.values().any(TableSink::has_pending)
    }

    /// Finishes the commits the checkpoint's epoch did not get to (a kill during
    /// step 3) and carries on counting from it.
    pub async fn recover(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let epoch = checkpoint.epoch;
        for (table, files) in &checkpoint.staged {
            let path = TablePath::new(table).map_err(Error::Checkpoint)?;
            let Some(sink) = self.sinks.get_mut(&path) else {
                tracing::warn!(%table, epoch, "the checkpoint has rows for a table no SQL file writes any more; left out");
                continue;
            };
            if sink.committed_epoch().await? < Some(epoch) {
                sink.commit(epoch, files.clone()).await?;
                tracing::info!(%table, epoch, "finished an interrupted commit");
            }
        }
        self.epoch = epoch;
        self.committers = checkpoint.committers.clone();
        Ok(())
    }

    /// Without a checkpoint, the tables must not hold epochs of `pipeline`:
    /// reading from the beginning again would write their rows twice.
    pub async fn check_fresh_lake(&mut self, pipeline: &str) -> Result<()> {
        for (path, sink) in &mut self.sinks {
            if let Some(epoch) = sink.committed_epoch().await? {
                return Err(Error::Checkpoint(format!(
                    "table {path} holds epoch {epoch} of pipeline `{pipeline}`, but the lake has no checkpoint for it \
                     (under _sluice/{pipeline}/): restore the checkpoints or write to a new lake"
                )));
            }
        }
        Ok(())
    }

    /// The epoch the next [`commit`](Self::commit) commits: what a repartitioned
    /// query's partials sent before it are sent for.
    pub fn next_epoch(&self) -> i64 {
        self.epoch + 1
    }

    /// Commits every table with buffered rows, and `state`, as the next epoch.
    pub async fn commit(&mut self, state: EpochState) -> Result<Committed> {
        let epoch = self.epoch + 1;
        let started = Instant::now();
        let outage_policy = self.outage.clone();
        let mut outage = Outage::new(&outage_policy);

        // 1. Stage, and write the window and mirror state beside it: neither needs
        // the other, and only the manifest needs both. A table staged before an
        // outage has nothing pending any more, and is not staged again.
        let mut staged: BTreeMap<String, Staged> = BTreeMap::new();
        let (mut staging, mut states) = futures::join!(stage(&mut self.sinks, &mut staged), put_states(&self.checkpoints, epoch, &state));
        while let Err(e) = staging {
            outage.wait("staging new files", e).await?;
            staging = stage(&mut self.sinks, &mut staged).await;
        }
        let write_ms = started.elapsed().as_millis() as u64;

        // 2. Checkpoint: the manifest; after a failure, the state files again first.
        let checkpoint = loop {
            let saved = match states {
                Ok(files) => self.save_checkpoint(epoch, &state, files, &staged).await,
                Err(e) => Err(e),
            };
            match saved {
                Ok(checkpoint) => break checkpoint,
                Err(e) => outage.wait("writing the checkpoint", e).await?,
            }
            states = put_states(&self.checkpoints, epoch, &state).await;
        };
        let state_ms = (started.elapsed().as_millis() as u64).saturating_sub(write_ms);
        self.epoch = epoch;
        self.committers = checkpoint.committers.clone();

        // 3. Commit every table; one committed before an outage is not committed again.
        let committing = Instant::now();
        let mut rows = 0;
        let mut pending: BTreeSet<String> = checkpoint.staged.keys().cloned().collect();
        let tables = pending.len();
        loop {
            let commits = self.sinks.iter_mut().filter(|(path, _)| pending.contains(path.as_str())).map(|(path, s)| {
                let files = checkpoint.staged.get(path.as_str()).cloned().unwrap_or_default();
                async move { (path.as_str().to_string(), s.commit(epoch, files).await) }
            });
            let mut failed = None;
            let mut done = Vec::new();
            for (path, result) in futures::future::join_all(commits).await {
                match result {
                    Ok(n) => {
                        rows += n;
                        done.push(path);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            pending.retain(|p| !done.contains(p));
            match failed {
                None => break,
                Some(e) => outage.wait("committing to the tables", e).await?,
            }
        }

        let delta_ms = committing.elapsed().as_millis() as u64;
        let visible_at_ms = crate::time::now_micros() / 1000;
        let pruning = Instant::now();
        loop {
            match self.checkpoints.prune_before(epoch).await {
                Ok(()) => break,
                Err(e) => outage.wait("pruning old checkpoints", e).await?,
            }
        }
        let prune_ms = pruning.elapsed().as_millis() as u64;
        let maintaining = Instant::now();
        let maintained = self.maintain(&mut outage, Some(self.policy.epoch_budget)).await?;
        let maintain_ms = maintaining.elapsed().as_millis() as u64;
        Ok(Committed { epoch, rows, tables, write_ms, state_ms, delta_ms, visible_at_ms, prune_ms, maintain_ms, maintained })
    }

    /// The maintenance the last epochs' budget left over, all of it: a bounded
    /// run that ends leaves every table maintained.
    pub async fn finish_maintenance(&mut self) -> Result<BTreeMap<TablePath, Maintained>> {
        if self.maintain_from.is_none() && !self.sinks.values().any(TableSink::compaction_unfinished) {
            return Ok(BTreeMap::new());
        }
        let policy = self.outage.clone();
        let mut outage = Outage::new(&policy);
        self.maintain(&mut outage, None).await
    }

    /// Creates the epoch's manifest, naming its state `files` and the `staged` files.
    async fn save_checkpoint(&self, epoch: i64, state: &EpochState, files: StateFiles, staged: &BTreeMap<String, Staged>) -> Result<Checkpoint> {
        let StateFiles { windows, mirrors: mirror_files, merges: merge_files } = files;
        let mut queries = BTreeMap::new();
        for (q, windows) in state.queries.iter().zip(windows) {
            let (fingerprint, parts, backfill) = (Some(q.fingerprint.clone()), q.parts.clone(), q.backfill.clone());
            queries.insert(q.table.as_str().to_string(), QueryCheckpoint { watermark: q.watermark, windows, fingerprint, parts, backfill });
        }
        let mirrors = state.mirrors.iter().zip(mirror_files).map(|((table, _), file)| (table.as_str().to_string(), file)).collect();
        let merges = state
            .merges
            .iter()
            .zip(merge_files)
            .map(|((table, merges), files)| {
                let merges = merges.iter().zip(files).map(|(m, windows)| MergeCheckpoint { progress: m.progress.clone(), windows }).collect();
                (table.as_str().to_string(), merges)
            })
            .collect();
        let mut committers = self.committers.clone();
        Committer::record(&mut committers, epoch, self.checkpoints.writer());
        let checkpoint = Checkpoint {
            epoch,
            positions: state.positions.clone(),
            watermarks: state.watermarks.clone(),
            queries,
            mirrors,
            staged: staged.clone(),
            committers,
            merges,
        };
        self.checkpoints.save(&checkpoint).await?;
        Ok(checkpoint)
    }

    /// The tables' maintenance, one table after another, from where the last
    /// epoch's left off until `budget` is spent (the table running then stops its
    /// compaction, to go on at its next turn).
    /// A failure other than an outage is logged and left for the next epoch: the
    /// rows are committed, and a table that is merely slower to read must not
    /// stop the stream.
    async fn maintain(&mut self, outage: &mut Outage<'_>, budget: Option<Duration>) -> Result<BTreeMap<TablePath, Maintained>> {
        let started = Instant::now();
        if self.last_vacuum.elapsed() >= self.policy.vacuum_interval {
            self.last_vacuum = Instant::now();
            self.vacuum_owed = self.sinks.keys().cloned().collect();
        }
        let order = in_turn(self.sinks.keys(), self.maintain_from.take().as_ref());
        let mut maintained = BTreeMap::new();
        for (i, path) in order.into_iter().enumerate() {
            if i > 0 && budget.is_some_and(|b| started.elapsed() >= b) {
                tracing::debug!(next = %path, "maintenance budget spent; the tables from this one on wait for the next epoch");
                self.maintain_from = Some(path);
                break;
            }
            let vacuum = self.vacuum_owed.remove(&path);
            let Some(sink) = self.sinks.get_mut(&path) else { continue };
            loop {
                match sink.maintain(&self.policy, vacuum, budget.map(|b| started + b)).await {
                    Ok(done) => {
                        if !done.is_empty() {
                            maintained.insert(path.clone(), done);
                        }
                        break;
                    }
                    Err(e) if is_transient(&e) => outage.wait("maintaining the tables", e).await?,
                    Err(e) => {
                        tracing::warn!(table = %path, error = %redact(&e.to_string()), "maintenance failed; trying again after the next epoch");
                        break;
                    }
                }
            }
        }
        Ok(maintained)
    }
}

/// The tables in their turn for maintenance: from `from` (or the first after
/// it, if it is gone) to the last, then the ones before.
fn in_turn<'t>(tables: impl Iterator<Item = &'t TablePath>, from: Option<&TablePath>) -> Vec<TablePath> {
    let (before, after): (Vec<TablePath>, Vec<TablePath>) = tables.cloned().partition(|t| from.is_some_and(|f| t < f));
    after.into_iter().chain(before).collect()
}

/// Waiting out an unreachable store within one epoch: exponential backoff from
/// 250 ms to 8 s, given up after the outage limit.
struct Outage<'a> {
    since: Option<Instant>,
    backoff: Duration,
    policy: &'a OutagePolicy,
}

impl<'a> Outage<'a> {
    fn new(policy: &'a OutagePolicy) -> Self {
        Outage { since: None, backoff: Duration::from_millis(250), policy }
    }

    /// Returns after the backoff when `error` is an outage still within the limit;
    /// otherwise returns the error.
    async fn wait(&mut self, step: &str, error: Error) -> Result<()> {
        if !is_transient(&error) {
            self.since = None;
            return Err(error);
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.policy.limit {
            self.since = None;
            return Err(Error::Storage {
                url: self.policy.lake.clone(),
                problem: format!("unreachable for {:.0?} while {step}, giving up: {}", since.elapsed(), redact(&error.to_string())),
            });
        }
        self.policy.health.retries.fetch_add(1, Ordering::Relaxed);
        self.policy.health.unavailable.store(true, Ordering::Relaxed);
        tracing::warn!(
            step,
            waited_s = since.elapsed().as_secs(),
            retry_in_ms = self.backoff.as_millis() as u64,
            error = %redact(&error.to_string()),
            "the lake's store is unreachable; retrying"
        );
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(8));
        Ok(())
    }
}

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        self.policy.health.unavailable.store(false, Ordering::Relaxed);
        if let Some(since) = self.since {
            tracing::info!(waited_s = since.elapsed().as_secs(), "the lake's store answers again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Lake;

    /// Each run's manifests name it from its first epoch on, after the runs before
    /// it: what the merging side of a repartitioned query folds by.
    #[tokio::test]
    async fn manifests_name_every_run_that_committed_from_its_first_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::connect(dir.path().to_str().unwrap(), true, Default::default()).await.unwrap();
        let outage = OutagePolicy { lake: "test".into(), limit: Duration::from_secs(1), health: Default::default() };
        let mut runs = Vec::new();
        for commits in [2, 3] {
            let checkpoints = CheckpointStore::open(&lake, "p").unwrap();
            let latest = checkpoints.latest().await.unwrap();
            runs.push(checkpoints.writer().to_string());
            let mut writer = LakeWriter::new(BTreeMap::new(), checkpoints, MaintenancePolicy::default(), outage.clone());
            if let Some(checkpoint) = &latest {
                writer.recover(checkpoint).await.unwrap();
            }
            for _ in 0..commits {
                writer.commit(EpochState::default()).await.unwrap();
            }
            // The same process opens the next run's store: another microsecond, another name.
            std::thread::sleep(Duration::from_millis(2));
        }
        let manifest = CheckpointStore::open(&lake, "p").unwrap().latest().await.unwrap().unwrap();
        assert_eq!(manifest.epoch, 5);
        let committers: Vec<_> = (1..=5).map(|e| manifest.committer_of(e).unwrap()).collect();
        assert_eq!(committers, [&runs[0], &runs[0], &runs[1], &runs[1], &runs[1]].map(String::as_str));
        assert_ne!(runs[0], runs[1]);
    }

    #[test]
    fn maintenance_takes_the_tables_in_turn_from_where_the_budget_ran_out() {
        let tables: Vec<TablePath> = ["a/s/t", "b/s/t", "c/s/t", "d/s/t"].iter().map(|t| TablePath::new(t).unwrap()).collect();
        let names = |order: Vec<TablePath>| order.iter().map(|t| t.as_str().to_string()).collect::<Vec<_>>();
        assert_eq!(names(in_turn(tables.iter(), None)), ["a/s/t", "b/s/t", "c/s/t", "d/s/t"]);
        assert_eq!(names(in_turn(tables.iter(), Some(&tables[2]))), ["c/s/t", "d/s/t", "a/s/t", "b/s/t"]);
        // A table dropped (its SQL file removed) since: the next one takes its turn.
        let gone = TablePath::new("bb/s/t").unwrap();
        assert_eq!(names(in_turn(tables.iter(), Some(&gone))), ["c/s/t", "d/s/t", "a/s/t", "b/s/t"]);
    }
}
