//! Backfill: a SQL file whose table is new to a lake that already has history is
//! computed from the raw archive while the other tables keep streaming, then
//! joins the live stream, so it holds what it would hold had it been there from
//! the start.
//!
//! - The messages are replayed in the order they were first read (by `_ingested_at`,
//!   then topic, partition and offset), through watermarks of their own that never
//!   count a partition idle, so the same events are late as were late then.
//! - What was replayed is, per partition, every offset below a position, as the
//!   live stream's positions are. A phase replays from there up to the positions of
//!   the last commit (the archive is committed in the same epochs); a task of its
//!   own reads and orders the archive, a day at a time, while the run loop replays
//!   [`SLICE`]s between live batches (the live tables keep at least half the loop).
//! - Once a phase ends and less than [`TAIL`] messages are left, the rest is
//!   replayed right after a commit, before the next live message: then the replayed
//!   positions are the live ones and the table joins the live stream. No message is
//!   missed or counted twice.
//! - Where the replay reaches the positions at which the backfill began, its
//!   watermarks take up the live ones of that moment (which a bounded run that
//!   ended, or idle partitions, may have moved on): from there the table judges
//!   lateness as the live tables did.
//! - Its rows and its progress (positions, watermarks, state) are committed in the
//!   epochs like any table's: a killed run resumes the backfill where the last
//!   commit left it.
//! - A query that joins mirrors is not backfilled (the mirrors' past is not kept that
//!   far), nor one over `sluice.metrics` (not archived): they start from the next
//!   message on, and the run says so.
//! - Progress (events per second, share done, time left): in the log every few
//!   seconds, in `/metrics` (`sluice_backfill_messages` of
//!   `sluice_backfill_messages_to_replay`) and on the run's live dashboard.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMicrosecondType};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::reach::ArchiveReach;
use super::{event_times, Pipeline, RunningQuery};
use crate::catalog::{Lake, TablePath};
use crate::checkpoint::{BackfillProgress, Position};
use crate::error::{Error, Result};
use crate::plan::{Shape, StreamingQuery};
use crate::sink::LateEvents;
use crate::source::{PartitionId, RawBatch, RawMessage};
use crate::time::{PartitionMark, Watermarks};

/// Messages per replayed batch, at most.
const BATCH: usize = 8192;
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Replay time per turn of the run loop: live batches wait no longer than this.
pub(super) const SLICE: Duration = Duration::from_millis(50);
/// Messages left that are replayed at once, right after a commit, to join.
const TAIL: u64 = 20_000;
/// Ordered archive batches a phase's reader keeps ready.
const READ_AHEAD: usize = 4;
/// How long a shard stops reading, at most, for shard 0's archive to reach it
/// before a backfill joins (it tries again after the next commit).
const REACH_WAIT: Duration = Duration::from_secs(10);
/// The same once the input ended: then the run fails, naming the wait.
const REACH_WAIT_AT_END: Duration = Duration::from_secs(300);

/// A new table being computed from the archive.
pub(super) struct Backfill {
    pub(super) query: RunningQuery,
    /// Over every partition of its topics; a partition is never idle here.
    marks: Watermarks,
    /// Per partition, the next offset to replay.
    replayed: BTreeMap<PartitionId, i64>,
    /// Until the replay reaches them, the live positions and watermarks when it began.
    began: Option<(BTreeMap<PartitionId, i64>, Vec<PartitionMark>)>,
    /// Each topic it reads, with its archive.
    sources: Vec<(Arc<str>, TablePath)>,
    lake: Lake,
    phase: Option<Phase>,
    done: u64,
    total: u64,
    started: Instant,
    logged: Instant,
}

/// One pass over the archive, up to `until`.
struct Phase {
    until: BTreeMap<PartitionId, i64>,
    rows: mpsc::Receiver<Result<Read>>,
    reader: tokio::task::JoinHandle<()>,
}

enum Read {
    /// The messages this phase replays, counted before the first rows.
    Total(u64),
    Rows(RecordBatch),
    /// All of them were sent (a reader that stops without saying so failed).
    Done,
}

impl Drop for Phase {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Whether `query` can be computed from the archive: it reads only archived topics
/// and joins no mirror.
pub(super) fn can_backfill(query: &StreamingQuery, archives: &HashMap<Arc<str>, TablePath>) -> bool {
    !matches!(query.shape, Shape::OverMirrors { .. }) && query.mirrors.is_empty() && query.topics().all(|t| archives.contains_key(t))
}

impl Backfill {
    fn new(
        query: RunningQuery,
        marks: Watermarks,
        replayed: BTreeMap<PartitionId, i64>,
        began: Option<(BTreeMap<PartitionId, i64>, Vec<PartitionMark>)>,
        sources: Vec<(Arc<str>, TablePath)>,
        lake: Lake,
    ) -> Self {
        let now = Instant::now();
        Backfill { query, marks, replayed, began, sources, lake, phase: None, done: 0, total: 0, started: now, logged: now }
    }

    pub(super) fn table(&self) -> &TablePath {
        &self.query.query.table
    }

    /// What a checkpoint records of it.
    pub(super) fn progress(&self) -> BackfillProgress {
        let began = self.began.as_ref().map(|(positions, marks)| (listed(positions), marks.clone()));
        BackfillProgress { positions: listed(&self.replayed), watermarks: self.marks.marks(), began }
    }

    /// Messages between what it replayed and `positions`, over its topics.
    fn behind(&self, positions: &BTreeMap<PartitionId, i64>) -> u64 {
        self.mine(positions).map(|(id, &next)| (next - self.replayed.get(id).copied().unwrap_or(0)).max(0) as u64).sum()
    }

    fn mine<'a>(&'a self, positions: &'a BTreeMap<PartitionId, i64>) -> impl Iterator<Item = (&'a PartitionId, &'a i64)> + 'a {
        positions.iter().filter(|(id, _)| self.sources.iter().any(|(topic, _)| *topic == id.topic))
    }

    /// Whether it has replayed everything below `positions`.
    fn caught_up(&self, positions: &BTreeMap<PartitionId, i64>) -> bool {
        self.mine(positions).all(|(id, next)| self.replayed.get(id).is_some_and(|r| r >= next))
    }

    /// Starts a phase up to `positions` (the last commit's), or up to where the
    /// backfill began if it has not got there (its watermarks change there), and
    /// no further than the archive `reach`es: a task reads the archive's messages
    /// in between, ordered, a day at a time.
    fn start_phase(&mut self, positions: &BTreeMap<PartitionId, i64>, reach: Option<&ArchiveReach>) {
        let positions = match &self.began {
            Some((began, _)) if !self.caught_up(began) => began,
            _ => positions,
        };
        let mut until: BTreeMap<PartitionId, i64> = self.mine(positions).map(|(id, &next)| (id.clone(), next)).collect();
        if let Some(reach) = reach {
            until = reach.bound(&until);
        }
        let branches: Vec<String> = self
            .sources
            .iter()
            .map(|(topic, archive)| {
                let within: Vec<String> = until
                    .iter()
                    .filter(|(id, _)| id.topic == *topic)
                    .map(|(id, next)| {
                        let from = self.replayed.get(id).copied().unwrap_or(i64::MIN);
                        format!("(_partition = {} AND _offset >= {from} AND _offset < {next})", id.partition)
                    })
                    .collect();
                let within = if within.is_empty() { "false".to_string() } else { within.join(" OR ") };
                format!("SELECT _topic, _partition, _offset, _ingested_at, value, date FROM {} WHERE {within}", archive.sql_name())
            })
            .collect();
        let (tx, rows) = mpsc::channel(READ_AHEAD);
        let archives: Vec<TablePath> = self.sources.iter().map(|(_, a)| a.clone()).collect();
        let (lake, table) = (self.lake.clone(), self.table().sql_name());
        let reader = tokio::spawn(async move {
            if let Err(e) = read_ordered(&lake, &archives, &branches.join(" UNION ALL "), &tx).await {
                let _ = tx.send(Err(Error::Query(format!("backfill of {table}: {e}")))).await;
            }
        });
        self.phase = Some(Phase { until, rows, reader });
    }

    /// The phase's reader finished: everything below its bounds was replayed
    /// (where the archive lacks messages, as after a retention, there is nothing
    /// more to replay). Returns whether the watermarks took up the live ones.
    fn end_phase(&mut self, delay: impl Fn(&str) -> i64) -> bool {
        if let Some(phase) = self.phase.take() {
            for (id, next) in &phase.until {
                let replayed = self.replayed.entry(id.clone()).or_insert(*next);
                *replayed = (*replayed).max(*next);
            }
        }
        if let Some((positions, marks)) = self.began.take() {
            if self.caught_up(&positions) {
                self.marks.restore(&marks, delay);
                return true;
            }
            self.began = Some((positions, marks));
        }
        false
    }

    fn log_progress(&mut self, observed: &super::Observed) {
        let table = self.table().sql_name();
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        observed.backfill(&table, self.done, self.total, rate);
        if self.logged.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.logged = Instant::now();
        let left = self.total.saturating_sub(self.done) as f64 / rate.max(1.0);
        let share = format!("{:.0}%", 100.0 * self.done as f64 / self.total.max(1) as f64);
        tracing::info!(table, done = self.done, total = self.total, share, events_per_second = rate as u64, seconds_left = left as u64, "backfilling");
    }
}

/// Streams the rows of `union` over `archives`, ordered as first read, into `tx`:
/// first their count, then one day of the archive after another.
async fn read_ordered(lake: &Lake, archives: &[TablePath], union: &str, tx: &mpsc::Sender<Result<Read>>) -> std::result::Result<(), String> {
    let ctx = lake.session_of(archives).await.map_err(|e| e.to_string())?;
    let df = |e: datafusion::error::DataFusionError| e.strip_backtrace().to_string();
    let days = ctx
        .sql(&format!("SELECT CAST(date AS VARCHAR) AS day, count(*) AS n FROM ({union}) GROUP BY day ORDER BY day"))
        .await
        .map_err(df)?
        .collect()
        .await
        .map_err(df)?;
    let mut dates = Vec::new();
    let mut total = 0u64;
    for batch in &days {
        let names = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).map_err(|e| e.to_string())?;
        let (names, counts) = (names.as_string::<i32>(), batch.column(1).as_primitive::<Int64Type>());
        for i in 0..batch.num_rows() {
            dates.push(names.value(i).to_string());
            total += counts.value(i) as u64;
        }
    }
    if tx.send(Ok(Read::Total(total))).await.is_err() {
        return Ok(());
    }
    for date in dates {
        let ordered = format!(
            "SELECT _topic, _partition, _offset, _ingested_at, value FROM ({union}) WHERE date = DATE '{date}' ORDER BY _ingested_at, _topic, _partition, _offset"
        );
        let mut rows = ctx.sql(&ordered).await.map_err(df)?.execute_stream().await.map_err(df)?;
        while let Some(batch) = rows.next().await {
            if tx.send(Ok(Read::Rows(batch.map_err(df)?))).await.is_err() {
                return Ok(());
            }
        }
    }
    let _ = tx.send(Ok(Read::Done)).await;
    Ok(())
}

impl Pipeline {
    /// Starts computing the `i`th query's table from the archive beside the live
    /// stream; a query that cannot be backfilled stays live from the next message.
    pub(super) async fn start_backfill(&mut self, i: usize, lake: &Lake) -> Result<()> {
        let query = &self.queries[i].query;
        let table = query.table.sql_name();
        if matches!(query.shape, Shape::OverMirrors { .. }) {
            return Ok(());
        }
        if !query.mirrors.is_empty() {
            tracing::warn!(table, "a new table that joins mirrors is not backfilled: it is computed from the next message on");
            return Ok(());
        }
        let mut sources = Vec::new();
        for topic in query.topics() {
            match self.archives.get(topic) {
                Some(archive) => sources.push((topic.clone(), archive.clone())),
                None => {
                    tracing::warn!(table, topic = %topic, "a new table over a topic without an archive is not backfilled: it is computed from the next message on");
                    return Ok(());
                }
            }
        }
        let names: Vec<String> = lake.tables().await?.iter().map(TablePath::sql_name).collect();
        if sources.iter().any(|(_, a)| !names.contains(&a.sql_name())) {
            tracing::warn!(table, "the lake has no archive of its topics yet (it was written without one): the new table is computed from the next message on");
            return Ok(());
        }
        if !self.take_up_new_topics(&table, &sources, lake).await? {
            return Ok(());
        }
        let query = self.queries.remove(i);
        let mut marks = Watermarks::new(Duration::MAX);
        for id in self.positions.keys().filter(|id| sources.iter().any(|(topic, _)| *topic == id.topic)) {
            marks.add_partition(id.clone(), self.delay(&id.topic));
        }
        tracing::info!(table, "backfilling a new table from the archive; the other tables go on meanwhile");
        let began = Some((self.positions.clone(), self.watermarks.marks()));
        self.backfills.push(Backfill::new(query, marks, BTreeMap::new(), began, sources, lake.clone()));
        Ok(())
    }

    /// In a group, a shard reads only its tables' topics: a new table's topic that
    /// the shard did not read is taken up where shard 0's archive reaches (its
    /// positions and watermarks there), as if the shard had read it so far; the
    /// backfill replays it from the archive. Returns false (not backfilled: the
    /// topic is read from its beginning) if the archive has none of it yet.
    async fn take_up_new_topics(&mut self, table: &str, sources: &[(Arc<str>, TablePath)], lake: &Lake) -> Result<bool> {
        let Some(reach) = self.archive_reach.as_mut() else { return Ok(true) };
        let new: Vec<&Arc<str>> = sources.iter().map(|(t, _)| t).filter(|t| !self.positions.keys().any(|id| id.topic == **t)).collect();
        if new.is_empty() {
            return Ok(true);
        }
        reach.refresh(lake, &self.archives).await?;
        let mut seeded = Vec::new();
        for topic in new {
            let (positions, marks) = reach.of_topic(topic);
            if positions.is_empty() {
                tracing::warn!(table, topic = %topic, "a new table over a topic shard 0 has not archived yet is not backfilled: it reads the topic from its beginning");
                return Ok(false);
            }
            seeded.push((positions, marks));
        }
        for (positions, marks) in seeded {
            tracing::info!(table, partitions = positions.len(), "a topic new to this shard: read on from where shard 0's archive reaches");
            self.positions.extend(positions);
            let decoders = &self.decoders;
            self.watermarks.restore(&marks, |topic| super::delay_in(decoders, topic));
        }
        Ok(true)
    }

    /// Takes up a backfill a checkpoint recorded, its query's state already restored.
    pub(super) fn resume_backfill(&mut self, i: usize, progress: &BackfillProgress, lake: &Lake) {
        let query = self.queries.remove(i);
        let sources = query.query.topics().filter_map(|t| Some((t.clone(), self.archives.get(t)?.clone()))).collect();
        let mut marks = Watermarks::new(Duration::MAX);
        marks.restore(&progress.watermarks, |topic| self.delay(topic));
        let began = progress.began.as_ref().map(|(positions, marks)| (keyed(positions), marks.clone()));
        tracing::info!(table = %query.query.table.sql_name(), "resuming the backfill of a new table where the last commit left it");
        self.backfills.push(Backfill::new(query, marks, keyed(&progress.positions), began, sources, lake.clone()));
    }

    /// Replays a slice of every backfill (at most [`SLICE`]), between live batches.
    pub(super) async fn step_backfills(&mut self) -> Result<()> {
        let mut backfills = std::mem::take(&mut self.backfills);
        let deadline = Instant::now() + SLICE;
        let mut result = Ok(());
        for b in &mut backfills {
            result = self.step(b, Some(deadline)).await;
            if result.is_err() {
                break;
            }
        }
        self.backfills = backfills;
        result
    }

    /// After a commit: a backfill whose phase ended and that is less than [`TAIL`]
    /// messages behind replays the rest and joins the live stream; with `all`
    /// (the input ended), every backfill does, however far behind.
    pub(super) async fn join_backfills(&mut self, all: bool) -> Result<()> {
        if self.backfills.is_empty() {
            return Ok(());
        }
        let positions = self.positions.clone();
        let mut backfills = std::mem::take(&mut self.backfills);
        let mut kept = Vec::new();
        let mut result = Ok(());
        while let Some(mut b) = backfills.pop() {
            let ready = all || (b.phase.is_none() && b.behind(&positions) <= TAIL);
            if result.is_ok() && ready {
                result = match self.archive_reaches(&b, &positions, all).await {
                    Ok(true) => self.replay_to(&mut b, &positions).await,
                    Ok(false) => {
                        kept.push(b);
                        continue;
                    }
                    Err(e) => Err(e),
                };
                if result.is_ok() {
                    self.join(b);
                    continue;
                }
            }
            kept.push(b);
        }
        self.backfills = kept;
        result
    }

    /// Whether the archive holds everything below `positions` in `b`'s partitions.
    /// Where another pipeline writes it (a group's shard 0), this one stops
    /// reading until it does: for a while, or with `all` (the input ended) until
    /// it does or a long while has passed.
    async fn archive_reaches(&mut self, b: &Backfill, positions: &BTreeMap<PartitionId, i64>, all: bool) -> Result<bool> {
        let Some(reach) = self.archive_reach.as_mut() else { return Ok(true) };
        let limit = if all { REACH_WAIT_AT_END } else { REACH_WAIT };
        let started = Instant::now();
        loop {
            reach.refresh(&b.lake, &self.archives).await?;
            if reach.covers(b.mine(positions)) {
                return Ok(true);
            }
            if started.elapsed() >= limit {
                if all {
                    return Err(Error::Input(format!(
                        "the backfill of {} waited {limit:?} for shard 0's archive to reach where this shard read to: is shard 0 running?",
                        b.table().sql_name()
                    )));
                }
                tracing::info!(table = %b.table().sql_name(), "shard 0's archive is behind this shard: the backfill joins later");
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Replays `b` until it has caught up with `positions`, which the archive holds.
    async fn replay_to(&mut self, b: &mut Backfill, positions: &BTreeMap<PartitionId, i64>) -> Result<()> {
        while !b.caught_up(positions) || b.phase.is_some() {
            if b.phase.is_none() {
                b.start_phase(positions, self.archive_reach.as_ref());
            }
            self.step(b, None).await?;
        }
        Ok(())
    }

    fn join(&mut self, b: Backfill) {
        let table = b.table().sql_name();
        self.options.observed.backfill(&table, b.done, b.done, 0.0);
        let secs = b.started.elapsed().as_secs_f64();
        tracing::info!(table, messages = b.done, seconds = format!("{secs:.1}"), "backfilled: the table joins the live stream");
        self.queries.push(b.query);
    }

    /// Replays what `b`'s phase has read, until `deadline` or, without one, until
    /// the phase ends; starts a phase when it has none and the last commit is ahead.
    async fn step(&mut self, b: &mut Backfill, deadline: Option<Instant>) -> Result<()> {
        if b.phase.is_none() {
            let mut until = self.committed.clone();
            if let Some(reach) = self.archive_reach.as_mut() {
                reach.refresh(&b.lake, &self.archives).await?;
                until = reach.bound(&until);
            }
            if b.caught_up(&until) {
                return Ok(());
            }
            b.start_phase(&until, self.archive_reach.as_ref());
        }
        loop {
            let Some(phase) = b.phase.as_mut() else { return Ok(()) };
            let read = match deadline {
                Some(deadline) if Instant::now() >= deadline => return Ok(()),
                Some(_) => match phase.rows.try_recv() {
                    Ok(read) => Some(read),
                    Err(mpsc::error::TryRecvError::Empty) => return Ok(()),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                },
                None => phase.rows.recv().await,
            };
            match read {
                Some(Ok(Read::Done)) => {
                    if b.end_phase(|topic| self.delay(topic)) {
                        // The windows the live watermarks had passed close now.
                        let sink = self.lake.sink(&b.query.query.table)?;
                        b.query.close(&b.marks, &self.mirrors, sink).await?;
                    }
                    b.log_progress(&self.options.observed);
                    return Ok(());
                }
                None => return Err(Error::Internal(format!("the archive reader of {}'s backfill stopped before its end", b.table().sql_name()))),
                Some(Err(e)) => return Err(e),
                Some(Ok(Read::Total(n))) => b.total += n,
                Some(Ok(Read::Rows(rows))) => {
                    for raw in raw_batches(&rows)? {
                        b.done += raw.messages.len() as u64;
                        b.replayed.insert(raw.partition.clone(), raw.next_offset);
                        self.replay(&mut b.query, &raw, &mut b.marks).await?;
                    }
                    b.log_progress(&self.options.observed);
                }
            }
        }
    }

    /// One archived batch through `q` alone, with the backfill's own watermarks.
    async fn replay(&mut self, q: &mut RunningQuery, raw: &RawBatch, marks: &mut Watermarks) -> Result<()> {
        let Some(decoder) = self.decoders.get(&raw.partition.topic) else { return Ok(()) };
        // Bad messages went to dead_letters when first read.
        let decoded = decoder.decode(raw)?;
        let batch = decoded.batch;
        let ts = event_times(&batch)?.clone();
        let mut late = LateEvents::default();
        let mut late_any = vec![false; batch.num_rows()];
        marks.add_partition(raw.partition.clone(), self.delay(&raw.partition.topic));
        if batch.num_rows() > 0 {
            let lateness = super::Lateness { events: &mut late, late_any: &mut late_any };
            let sink = self.lake.sink(&q.query.table)?;
            q.feed(&raw.partition, &batch, marks, &mut self.row_watermarks, Some(lateness), sink).await?;
        }
        if !late.is_empty() {
            let rows = late.to_batch(&batch)?;
            self.lake.sink(&self.late_events.clone())?.push_table_rows(rows);
        }
        marks.observe(&raw.partition, arrow::compute::max(&ts), false);
        let sink = self.lake.sink(&q.query.table)?;
        q.close(marks, &self.mirrors, sink).await?;
        Ok(())
    }

    /// A topic's allowed out-of-orderness, µs.
    fn delay(&self, topic: &str) -> i64 {
        super::delay_in(&self.decoders, topic)
    }
}


fn listed(positions: &BTreeMap<PartitionId, i64>) -> Vec<Position> {
    positions.iter().map(|(id, &next_offset)| Position { topic: id.topic.to_string(), partition: id.partition, next_offset }).collect()
}

fn keyed(positions: &[Position]) -> BTreeMap<PartitionId, i64> {
    positions.iter().map(|p| (PartitionId { topic: Arc::from(p.topic.as_str()), partition: p.partition }, p.next_offset)).collect()
}

/// Archive rows (ordered) as the raw batches they were read in: a run of rows
/// of one partition read at one instant.
fn raw_batches(rows: &RecordBatch) -> Result<Vec<RawBatch>> {
    let column = |name: &str| rows.column_by_name(name).ok_or_else(|| Error::Internal(format!("the archive has no `{name}`")));
    let topics = arrow::compute::cast(column("_topic")?, &arrow::datatypes::DataType::Utf8)?;
    let topics = topics.as_string::<i32>();
    let partitions = column("_partition")?.as_primitive::<Int32Type>();
    let offsets = column("_offset")?.as_primitive::<Int64Type>();
    let read_at = column("_ingested_at")?.as_primitive::<TimestampMicrosecondType>();
    let values = arrow::compute::cast(column("value")?, &arrow::datatypes::DataType::Binary)?;
    let values = values.as_binary::<i32>();
    let mut batches: Vec<RawBatch> = Vec::new();
    for row in 0..rows.num_rows() {
        let (topic, partition, ingested_at) = (topics.value(row), partitions.value(row), read_at.value(row));
        let same = batches.last().is_some_and(|b| {
            b.ingested_at == ingested_at && b.partition.partition == partition && &*b.partition.topic == topic && b.messages.len() < BATCH
        });
        if !same {
            let partition = PartitionId { topic: Arc::from(topic), partition };
            batches.push(RawBatch { partition, ingested_at, data: Vec::new(), messages: Vec::new(), next_offset: 0, end_of_partition: false });
        }
        let Some(batch) = batches.last_mut() else { continue };
        let offset = offsets.value(row);
        let payload = match values.is_null(row) {
            true => None,
            false => {
                let start = batch.data.len();
                batch.data.extend_from_slice(values.value(row));
                Some(start..batch.data.len())
            }
        };
        batch.messages.push(RawMessage { offset, payload, timestamp: None });
        batch.next_offset = offset + 1;
    }
    Ok(batches)
}
