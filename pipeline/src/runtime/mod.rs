//! The run loop: raw batches in, decoded, through every query, windows closed as
//! watermarks pass, and the lake committed on an interval.

mod ahead;
mod backfill;
mod cores;
mod exchange;
pub mod group;
mod metrics;
mod observe;
mod query;
mod reach;
mod reload;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;

pub use metrics::{metrics_schema, BatchMetrics, METRICS_TOPIC};
pub use observe::{serve, Latencies, Observed};

use ahead::DecodeAhead;
use query::{Lateness, RunningQuery};
pub use reload::LiveDefinitions;

use crate::catalog::lease::Lease;
use crate::catalog::writers::Writers;
use crate::group::Shard;
use crate::catalog::{Lake, TablePath};
use crate::checkpoint::{Checkpoint, CheckpointStore, Position};
use crate::commit::{EpochState, LakeWriter, OutagePolicy, QueryState};
use crate::decode::TopicDecoder;
use crate::error::{Error, Result};
use crate::plan::{InputTable, Shape, SqlFile};
use crate::schema::{SchemaRegistry, EVENT_TIME};
use crate::sink::{archive_layout, archive_table, ArchiveRetention, dead_letter_schema, dead_letters_batch, late_event_schema, LateEvents, Maintained, MaintenancePolicy, TableLayout, TableSink, DEAD_LETTERS, LATE_EVENTS};
use crate::source::{PartitionId, Source};
use crate::time::Watermarks;
use crate::mirror::Mirror;
use crate::udf::Udfs;

/// How often a run reading Kafka commits unless told. A message read just after
/// a cut waits the whole interval, so freshness is about the interval plus one
/// commit: at 100,000 messages/s here p99 was lower at half a second than at 1 s
/// (README, Through Kafka), for twice the Delta versions, which maintenance folds
/// into checkpoints.
pub const LIVE_COMMIT_INTERVAL: Duration = Duration::from_millis(500);

/// How often a replay of files commits unless told: nobody waits on its rows,
/// and fewer, larger commits replay faster.
pub const REPLAY_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// How a pipeline runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Names the pipeline in the lake's `txn` app ids.
    pub pipeline: String,
    /// How often buffered rows are committed to the lake.
    pub commit_interval: Duration,
    /// Rows buffered across tables that force a commit before the interval is up,
    /// which bounds memory whatever the input rate.
    pub max_pending_rows: usize,
    /// A partition that delivers nothing for this long stops holding its queries'
    /// watermarks back (contract §2).
    pub idle_timeout: Duration,
    /// Advanced by the bytes of every batch read (hidden when not on a terminal).
    pub progress: indicatif::ProgressBar,
    /// Counters and gauges for `/metrics`.
    pub observed: Arc<Observed>,
    /// Delta checkpoints, compaction and vacuum, in the commit cycle.
    pub maintenance: MaintenancePolicy,
    /// How long a commit waits for an unreachable store before the run stops.
    pub outage_limit: Duration,
    /// What the raw archive (`archive/raw/<topic>`) keeps.
    pub archive: ArchiveRetention,
    /// Where SIGHUP reads the SQL files again; `None`: SIGHUP is not listened to.
    pub live: Option<LiveDefinitions>,
    /// Run as this shard of a consumer group's tables (`pipeline` is then the shard's).
    pub shard: Option<Shard>,
    /// A group's brokers: its repartitioned tables' partials go through them.
    pub brokers: Option<crate::repartition::Brokers>,
    /// Besides SIGINT and SIGTERM, stops the run when it turns true (a shard the
    /// group took away).
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Told once the tables are open and reading starts: the steady benchmark
    /// produces from then on, so its freshness leaves out creating the tables.
    pub reading: Option<Arc<tokio::sync::Notify>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            pipeline: "sluice".into(),
            commit_interval: REPLAY_COMMIT_INTERVAL,
            max_pending_rows: 500_000,
            idle_timeout: crate::time::DEFAULT_IDLE_TIMEOUT,
            progress: indicatif::ProgressBar::hidden(),
            observed: Arc::default(),
            maintenance: MaintenancePolicy::default(),
            archive: ArchiveRetention::default(),
            live: None,
            outage_limit: Duration::from_secs(600),
            shard: None,
            brokers: None,
            stop: None,
            reading: None,
        }
    }
}

/// Counters for the run summary.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    pub messages: u64,
    pub bytes: u64,
    pub bad: u64,
    pub late: u64,
    pub tombstones: u64,
    pub commits: u64,
    /// The most window state held at a commit: open windows, and bytes of their accumulators.
    pub peak_open_windows: usize,
    pub peak_state_bytes: usize,
    pub elapsed: Duration,
    /// From the start to the commit that followed the last batch read: the time
    /// the run took to make all its input visible (a bounded Kafka run then still
    /// waits for `--stop-when-idle`).
    pub caught_up: Duration,
    /// From a message's Kafka timestamp to the commit that made its rows visible.
    pub freshness: Latencies,
    /// From a message's Kafka timestamp to the source receiving it from
    /// librdkafka: the broker's part of the freshness, with librdkafka's queue
    /// (which fills only while the read-ahead queue is full).
    pub received: Latencies,
    /// From a message's Kafka timestamp to the run loop taking it: `received`,
    /// then the batching, the read-ahead queue and the decode queue.
    pub taken: Latencies,
    /// Rows written per table.
    pub rows: BTreeMap<TablePath, u64>,
    /// The checkpoint's epoch this run carried on from, if the lake had one.
    pub resumed_after: Option<i64>,
    /// Every commit's duration, ms, and the tables it committed to, in order (for
    /// the aging benchmark).
    pub commit_ms: Vec<f64>,
    pub commit_tables: Vec<usize>,
}

pub struct Pipeline {
    options: RunOptions,
    decoders: HashMap<Arc<str>, TopicDecoder>,
    /// Batches read and being decoded, in reading order.
    ahead: DecodeAhead,
    queries: Vec<RunningQuery>,
    /// Per CDC topic, its entities: written to `services/...` and joined by queries.
    mirrors: BTreeMap<Arc<str>, Mirror>,
    watermarks: Watermarks,
    /// Every table's sink, the checkpoints, and the epoch's commit.
    lake: LakeWriter,
    dead_letters: TablePath,
    /// Each topic's raw archive table (none when the archive is off).
    archives: HashMap<Arc<str>, TablePath>,
    /// Where the archive reaches when another pipeline writes it (a group's
    /// shards but 0); `None` when this one does, or there is none.
    archive_reach: Option<reach::ArchiveReach>,
    late_events: TablePath,
    /// Per partition, the offset to read next: what the next checkpoint records.
    positions: BTreeMap<PartitionId, i64>,
    /// The positions of the last commit: what the archive holds.
    committed: BTreeMap<PartitionId, i64>,
    /// New tables computed from the archive beside the live stream, out of `queries`
    /// until they join it.
    backfills: Vec<backfill::Backfill>,
    /// Input was read since the last checkpoint.
    dirty: bool,
    /// Kafka timestamps (ms) of the messages read since the last commit.
    produced_at: Vec<i64>,
    /// When `run` began.
    started: Instant,
    stats: RunStats,
    last_commit: Instant,
    /// Reused per batch by the backfills: the watermark each row is judged by.
    row_watermarks: Vec<i64>,
    /// The one partition of the `sluice.metrics` stream.
    metrics_partition: PartitionId,
    /// This run's hold on the lake: no other pipeline writes it meanwhile.
    lease: Lease,
    /// A group's repartitioned tables: the panes this shard sends, and the windows it merges.
    exchange: Option<exchange::Exchange>,
}

/// Opens (or creates) the table `query` writes: replaced whole at each commit for
/// a query over mirrors or a current state; with `rebuilt`, the next rebuild may
/// change its columns.
async fn open_sink(lake: &Lake, query: &crate::plan::StreamingQuery, pipeline: &str, rebuilt: bool) -> Result<TableSink> {
    let layout = TableLayout::for_result(&query.output_schema, query.window_column());
    let sink = match rebuilt {
        true => TableSink::open_to_rebuild(lake, query.table.clone(), layout, pipeline).await?,
        false => TableSink::open(lake, query.table.clone(), layout, pipeline).await?,
    };
    Ok(match query.shape {
        Shape::OverMirrors { .. } | Shape::Current { .. } => sink.overwriting(),
        _ => sink,
    })
}

/// While tables are backfilled, how long the run loop waits for a live batch
/// before replaying more.
const BACKFILL_TURN: Duration = Duration::from_millis(10);

/// The µs event-time column every topic's batch carries.
fn event_times(batch: &RecordBatch) -> Result<&arrow::array::TimestampMicrosecondArray> {
    batch
        .column_by_name(EVENT_TIME)
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| Error::Internal("a batch without a µs `ts` column".into()))
}

/// A topic's allowed out-of-orderness, µs (0 for a topic without a schema).
fn delay_in(decoders: &HashMap<Arc<str>, TopicDecoder>, topic: &str) -> i64 {
    decoders.get(topic).map_or(0, |d| d.schema().out_of_orderness.as_micros() as i64)
}

/// Resolves on SIGINT or SIGTERM, or when `stop` turns true.
async fn stop_signal_or(stop: Option<tokio::sync::watch::Receiver<bool>>) {
    let told = async {
        // A sender that is gone never stops the run.
        let stopped = match stop {
            Some(mut stop) => stop.wait_for(|s| *s).await.is_ok(),
            None => false,
        };
        if !stopped {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = stop_signal() => {}
        () = told => {}
    }
}

/// Resolves on SIGINT or SIGTERM; never if the handlers cannot be installed.
async fn stop_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// The input tables SQL can read: every topic of the registry, the mirror of every
/// CDC topic, and `sluice.metrics`.
pub fn input_tables(registry: &SchemaRegistry) -> Vec<InputTable> {
    let mut inputs = Vec::new();
    for t in registry.topics() {
        let topic: Arc<str> = Arc::from(t.topic.as_str());
        inputs.push(InputTable { topic: topic.clone(), schema: t.arrow_schema.clone(), mirror: None });
        if let Some(table) = crate::mirror::table_of(t) {
            inputs.push(InputTable { topic, schema: crate::mirror::table_schema(t), mirror: Some(table) });
        }
    }
    inputs.push(InputTable { topic: Arc::from(METRICS_TOPIC), schema: metrics_schema(), mirror: None });
    inputs
}

/// What defines a table of the lake: a SQL file, a CDC topic (its mirror), or the
/// pipeline itself (dead letters and late events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Definition {
    Sql(std::path::PathBuf),
    Mirror(String),
    Archive(String),
    Pipeline,
}

impl std::fmt::Display for Definition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Definition::Sql(path) => write!(f, "{}", path.display()),
            Definition::Mirror(topic) => write!(f, "mirror of {topic}"),
            Definition::Archive(topic) => write!(f, "archive of {topic}"),
            Definition::Pipeline => write!(f, "sluice"),
        }
    }
}

/// Every table a pipeline of these definitions writes, with what defines it.
pub fn definitions(registry: &SchemaRegistry, sql: &[SqlFile]) -> Result<BTreeMap<TablePath, Definition>> {
    let mut tables: BTreeMap<TablePath, Definition> = sql.iter().map(|f| (f.table.clone(), Definition::Sql(f.path.clone()))).collect();
    for topic in registry.topics() {
        if let Some(table) = crate::mirror::table_of(topic) {
            tables.insert(table, Definition::Mirror(topic.topic.clone()));
        }
        if let Some(other) = tables.insert(archive_table(&topic.topic)?, Definition::Archive(topic.topic.clone())) {
            return Err(Error::Config(format!("topic `{}` would share its archive table with {other}: rename one", topic.topic)));
        }
    }
    for name in [DEAD_LETTERS, LATE_EVENTS] {
        tables.insert(TablePath::new(name).map_err(Error::Internal)?, Definition::Pipeline);
    }
    Ok(tables)
}

/// Says which tables of the lake no definition writes any more (their SQL file was
/// deleted): they stay as they were. Only informs, so a store that cannot be listed
/// now is logged and nothing more.
pub async fn say_undefined_tables(lake: Lake, defined: std::collections::BTreeSet<TablePath>) {
    match lake.tables().await {
        Ok(tables) => {
            for table in tables.into_iter().filter(|t| !defined.contains(t)) {
                tracing::warn!(table = %table.sql_name(), "no SQL file defines this table any more: it stays in the lake as it was, no longer updated");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list the lake for tables without a SQL file"),
    }
}

impl Pipeline {
    /// Plans every SQL file and opens (or creates) every table.
    pub async fn new(lake: &Lake, registry: &SchemaRegistry, sql: &[SqlFile], udfs: &Udfs, options: RunOptions) -> Result<Self> {
        // Before anything is written: a second pipeline on the lake stops here.
        let writers = match &options.shard {
            Some(shard) => shard.writers(),
            None => Writers::Pipeline { name: options.pipeline.clone() },
        };
        writers.claim(lake).await?;
        let lease = match &options.shard {
            Some(shard) => Lease::acquire_assigned(lake, &options.pipeline, shard.fenced).await?,
            None => Lease::acquire(lake, &options.pipeline).await?,
        };
        let lake_tables = options.shard.as_ref().is_none_or(Shard::writes_lake_tables);
        let inputs = input_tables(registry);
        let checkpoints = CheckpointStore::open(lake, &options.pipeline)?;
        let latest = checkpoints.latest().await?;
        let mut queries = Vec::new();
        let mut sinks = BTreeMap::new();
        // Per table whose plan changed since the checkpoint: the fingerprint it had, and what changed.
        let mut changed: Vec<(TablePath, String, String)> = Vec::new();
        for file in sql {
            let query = crate::plan::plan(file, &inputs, udfs).await?;
            let saved = latest.as_ref().and_then(|c| c.queries.get(query.table.as_str()));
            let rebuilt = match saved.and_then(|s| Some((s, s.fingerprint.clone()?))) {
                Some((saved, was)) if was != query.fingerprint => {
                    changed.push((query.table.clone(), was, crate::plan::what_changed(&saved.parts, &query.parts)));
                    true
                }
                _ => false,
            };
            let sink = open_sink(lake, &query, &options.pipeline, rebuilt).await?;
            // The other shards of a repartitioned table only send it panes.
            let sink = match &options.shard {
                Some(shard) if !shard.writes(&query.table) => sink.maintained_elsewhere(),
                _ => sink,
            };
            sinks.insert(query.table.clone(), sink);
            queries.push(RunningQuery::new(query)?);
        }
        let dead_letters = TablePath::new(DEAD_LETTERS).map_err(Error::Internal)?;
        let late_events = TablePath::new(LATE_EVENTS).map_err(Error::Internal)?;
        // A group's late events come from every shard, and shard 0 maintains the
        // table; its dead letters come from shard 0 alone.
        let late = TableSink::open(lake, late_events.clone(), TableLayout::fixed(late_event_schema()), &options.pipeline).await?;
        sinks.insert(late_events.clone(), if lake_tables { late } else { late.maintained_elsewhere() });
        if lake_tables {
            let sink = TableSink::open(lake, dead_letters.clone(), TableLayout::fixed(dead_letter_schema()), &options.pipeline).await?;
            sinks.insert(dead_letters.clone(), sink);
        }
        let mut mirrors = BTreeMap::new();
        for topic in registry.topics().filter(|t| crate::mirror::table_of(t).is_some()) {
            let mirror = Mirror::new(topic)?;
            if lake_tables {
                let layout = TableLayout::fixed(mirror.schema().clone());
                let sink = TableSink::open(lake, mirror.table().clone(), layout, &options.pipeline).await?.overwriting();
                sinks.insert(mirror.table().clone(), sink);
            }
            mirrors.insert(mirror.topic().clone(), mirror);
        }
        // A group's shards but 0 read the archive shard 0 writes.
        let mut archives = HashMap::new();
        let mut archive_reach = None;
        if options.archive != ArchiveRetention::Off {
            for topic in registry.topics() {
                let table = archive_table(&topic.topic)?;
                if lake_tables {
                    let sink = TableSink::open(lake, table.clone(), archive_layout(), &options.pipeline).await?.keeping_for(options.archive.keep());
                    sinks.insert(table.clone(), sink);
                }
                archives.insert(Arc::from(topic.topic.as_str()), table);
            }
            if let Some(shard) = options.shard.as_ref().filter(|s| !s.writes_lake_tables()) {
                archive_reach = Some(reach::ArchiveReach::new(lake, crate::catalog::writers::shard_pipeline(&shard.group, 0))?);
            }
        }
        let decoders = registry.topics().map(|t| (Arc::from(t.topic.as_str()), TopicDecoder::new(t.clone()))).collect();
        let outage = OutagePolicy { lake: lake.root().to_string(), limit: options.outage_limit, health: options.observed.store_health() };
        let mut pipeline = Pipeline {
            watermarks: Watermarks::new(options.idle_timeout),
            lake: LakeWriter::new(sinks, checkpoints, options.maintenance.clone(), outage),
            options,
            decoders,
            ahead: DecodeAhead::new(),
            queries,
            mirrors,
            dead_letters,
            late_events,
            archives,
            archive_reach,
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            backfills: Vec::new(),
            dirty: false,
            produced_at: Vec::new(),
            started: Instant::now(),
            stats: RunStats::default(),
            last_commit: Instant::now(),
            row_watermarks: Vec::new(),
            metrics_partition: PartitionId { topic: Arc::from(METRICS_TOPIC), partition: 0 },
            lease,
            exchange: None,
        };
        if let (Some(shard), Some(brokers)) = (&pipeline.options.shard, &pipeline.options.brokers) {
            pipeline.exchange = exchange::Exchange::open(lake, brokers, shard, &mut pipeline.queries, latest.as_ref(), pipeline.lake.checkpoints()).await?;
        }
        match latest {
            Some(mut checkpoint) => {
                // By table, not index: rebuilds and backfills move queries about.
                let new: Vec<TablePath> = pipeline.queries.iter().map(|q| q.query.table.clone()).filter(|t| !checkpoint.queries.contains_key(t.as_str())).collect();
                // A file whose plan changed since the checkpoint: its old state is not taken up.
                for (table, _, _) in &changed {
                    checkpoint.queries.remove(table.as_str());
                }
                let backfilling: BTreeMap<TablePath, _> = pipeline
                    .queries
                    .iter()
                    .filter_map(|q| Some((q.query.table.clone(), checkpoint.queries.get(q.query.table.as_str())?.backfill.clone()?)))
                    .collect();
                pipeline.recover(checkpoint).await?;
                // Rebuilds first: they replay at once, before anything is read.
                for (table, was, why) in &changed {
                    pipeline.rebuild(table, was, why, lake).await?;
                }
                for table in new.iter().chain(backfilling.keys()) {
                    let Some(i) = pipeline.queries.iter().position(|q| q.query.table == *table) else { continue };
                    match backfilling.get(table) {
                        Some(progress) => pipeline.resume_backfill(i, progress, lake),
                        None => pipeline.backfill_if_new(i, lake).await?,
                    }
                }
            }
            None => pipeline.lake.check_fresh_lake(&pipeline.options.pipeline).await?,
        }
        pipeline.publish_lineage();
        Ok(pipeline)
    }

    /// The topics this pipeline reads: those of its tables, or every topic when it
    /// writes the lake's own tables or a table reads `sluice.metrics`.
    pub fn topics(&self) -> Vec<String> {
        let every = || self.decoders.keys().map(|t| t.to_string()).collect();
        if self.lake.has_sink(&self.dead_letters) {
            return every();
        }
        let mut topics = BTreeSet::new();
        for q in self.queries.iter().chain(self.backfills.iter().map(|b| &b.query)).map(|q| &q.query) {
            topics.extend(q.topics().cloned());
            topics.extend(q.mirrors.iter().map(|m| m.topic.clone()));
        }
        if topics.iter().any(|t| !self.decoders.contains_key(t)) {
            return every();
        }
        topics.into_iter().map(|t| t.to_string()).collect()
    }

    /// Tells the live view what each running table reads (topics, mirrors, UDFs)
    /// and what reads it (the dashboard's charts, the analytics API's answers).
    fn publish_lineage(&self) {
        let running = self.queries.iter().chain(self.backfills.iter().map(|b| &b.query));
        let lineage = running
            .map(|q| {
                let q = &q.query;
                let mut reads: Vec<String> = q.topics().map(|t| format!("topic {t}")).collect();
                reads.extend(q.mirrors.iter().map(|m| format!("mirror {}", m.table.sql_name())));
                reads.extend(q.udfs.iter().map(|u| format!("udf {u}")));
                let table = q.table.sql_name();
                let mut read_by: Vec<String> = crate::serve::dashboard::charts_reading(&table).into_iter().map(|c| format!("chart \"{c}\"")).collect();
                read_by.extend(crate::serve::analytics::answers_reading(&table));
                (table, (reads, read_by))
            })
            .collect();
        self.options.observed.lineage(lineage);
    }

    /// Backfills the `i`th query if its table has never been committed to (a table
    /// that was written before, whose file was removed and added again, goes on from
    /// the next message instead).
    async fn backfill_if_new(&mut self, i: usize, lake: &Lake) -> Result<()> {
        let table = self.queries[i].query.table.clone();
        if self.repartitioned(&self.queries[i]) {
            tracing::warn!(table = %table.sql_name(), "a repartitioned table new to a running group is not backfilled: its windows start with each shard's next message");
            return Ok(());
        }
        if self.lake.sink(&table)?.committed_epoch().await?.is_some() {
            tracing::info!(table = %table.sql_name(), "the table has rows from before: it goes on from the next message, not backfilled");
            return Ok(());
        }
        self.start_backfill(i, lake).await
    }

    /// Computes `table` again from the archive, its query's plan having
    /// changed from `was` (`why` says how): the next commit swaps the new rows for the old in one
    /// Delta commit. A query that cannot be backfilled cannot be rebuilt: refused.
    async fn rebuild(&mut self, table: &TablePath, was: &str, why: &str, lake: &Lake) -> Result<()> {
        let Some(i) = self.queries.iter().position(|q| q.query.table == *table) else { return Ok(()) };
        let query = &self.queries[i].query;
        let (table, path, now) = (query.table.clone(), query.path.clone(), query.fingerprint.clone());
        if self.repartitioned(&self.queries[i]) {
            return Err(Error::Sql {
                path,
                message: format!(
                    "{why} (plan {was} → {now}), and a repartitioned table is not rebuilt in a group: restore the old file, \
                     or drop `-- sluice: repartition` to rebuild it whole in its shard"
                ),
            });
        }
        if let Shape::OverMirrors { .. } = query.shape {
            // Computed from the mirrors' current rows, which replace the table's at once.
            let topics: Vec<Arc<str>> = query.mirrors.iter().map(|m| m.topic.clone()).collect();
            tracing::warn!(table = %table.sql_name(), "{why} (plan {was} → {now}): computed again from the mirrors");
            self.lake.sink(&table)?.rebuild();
            return self.rerun_over_mirrors(&topics).await;
        }
        if !backfill::can_backfill(query, &self.archives) {
            // A landing with the same columns can go on beside its old rows; nothing else can.
            if matches!(query.shape, Shape::Stateless { .. }) && !self.lake.sink(&table)?.changes_columns() {
                tracing::warn!(table = %table.sql_name(), "{why} (plan {was} → {now}) and there is no archive to rebuild it from: the new definition writes from the next message on, beside the old rows");
                return Ok(());
            }
            return Err(Error::Sql {
                path,
                message: format!(
                    "{why} (plan {was} → {now}), and its table cannot be rebuilt from the archive (it joins mirrors, reads sluice.metrics, or the archive is off): \
                     restore the old file, or remove the table to start it afresh"
                ),
            });
        }
        tracing::warn!(table = %table.sql_name(), file = %path.display(), "rebuilding the table from the archive: {why} (plan {was} → {now}); readers keep the old rows until the swap");
        self.lake.sink(&table)?.rebuild();
        // At once, before anything is read: the swap is the next commit.
        self.start_backfill(i, lake).await?;
        self.join_backfills(true).await
    }

    /// Whether `q` runs as a repartitioned table's upstream here (a group's shard).
    fn repartitioned(&self, q: &RunningQuery) -> bool {
        q.query.repartition && self.options.shard.is_some()
    }

    /// Carries on from a checkpoint: finishes the commits its epoch did not get to,
    /// then takes up its positions, watermarks and window state.
    async fn recover(&mut self, checkpoint: Checkpoint) -> Result<()> {
        let epoch = checkpoint.epoch;
        self.lake.recover(&checkpoint).await?;
        let decoders = &self.decoders;
        self.watermarks.restore(&checkpoint.watermarks, |topic| delay_in(decoders, topic));
        for q in &mut self.queries {
            let Some(saved) = checkpoint.queries.get(q.query.table.as_str()) else { continue };
            q.clock.restore(saved.watermark);
            if let Some(windows) = q.windows.as_mut() {
                windows.resume_after(saved.watermark);
            }
            if let Some(name) = &saved.windows {
                for rows in self.lake.checkpoints().state(epoch, name).await? {
                    q.restore(&rows).map_err(|e| {
                        let e = if let Error::Checkpoint(message) = e { message } else { e.to_string() };
                        Error::Checkpoint(format!("state of {}: {e}", q.query.table))
                    })?;
                }
            }
        }
        for mirror in self.mirrors.values_mut() {
            let Some(name) = checkpoint.mirrors.get(mirror.table().as_str()) else { continue };
            let saved = self.lake.checkpoints().state(epoch, name).await?;
            let schema = saved.first().map(|b| b.schema()).ok_or_else(|| Error::Checkpoint(format!("{name}: no rows")))?;
            mirror.restore(arrow::compute::concat_batches(&schema, &saved)?)?;
        }
        self.positions = checkpoint.positions();
        self.committed = self.positions.clone();
        self.stats.resumed_after = Some(epoch);
        tracing::info!(epoch, partitions = self.positions.len(), "resuming from checkpoint");
        Ok(())
    }

    /// Runs until the source ends (then every window is emitted and committed) or
    /// SIGINT/SIGTERM arrives (then the batch in flight finishes and is committed).
    pub async fn run(&mut self, source: &mut dyn Source) -> Result<RunStats> {
        self.started = Instant::now();
        self.track_partitions(source);
        self.watermarks.add_partition(self.metrics_partition.clone(), 0);
        source.seek(&self.positions)?;
        if let Some(reading) = &self.options.reading {
            reading.notify_one();
        }
        let mut stop = std::pin::pin!(stop_signal_or(self.options.stop.clone()));
        let mut hangups = self.options.live.as_ref().and_then(reload::Requests::listen);
        // Backfills replay a slice when the input is quiet, and otherwise after as
        // long again of live work: the live tables keep at least half the time.
        let (mut quiet, mut live_since) = (false, Instant::now());
        let ended = loop {
            if self.ahead.is_full() {
                self.take_decoded(source).await?;
                continue;
            }
            if !self.backfills.is_empty() && (quiet || live_since.elapsed() >= backfill::SLICE) {
                self.process_all_decoded().await?;
                self.step_backfills().await?;
                if self.should_commit() {
                    self.commit().await?;
                }
                (quiet, live_since) = (false, Instant::now());
            }
            let mut until_commit = self.options.commit_interval.saturating_sub(self.last_commit.elapsed());
            if !self.backfills.is_empty() {
                // Back to the backfills soon, whether or not a live batch comes.
                until_commit = until_commit.min(BACKFILL_TURN);
            }
            let raw = tokio::select! {
                // The source first; what was decoded is taken while it has nothing ready.
                biased;
                batch = source.next_batch() => batch?,
                () = std::future::ready(()), if !self.ahead.is_empty() => {
                    self.take_decoded(source).await?;
                    continue;
                }
                () = &mut stop => break false,
                Some(()) = async { hangups.as_mut()?.next().await } => {
                    let Some(live) = self.options.live.clone() else { continue };
                    // What was read so far is committed under the old definitions.
                    self.process_all_decoded().await?;
                    self.close_windows().await?;
                    self.commit().await?;
                    match self.reload(&live).await {
                        Ok(r) => {
                            // A group's shard reads only its tables' topics: new ones from where the new tables' backfills begin.
                            source.read_topics(&self.topics(), &self.positions).await?;
                            self.track_partitions(source);
                            self.publish_lineage();
                            tracing::info!(added = r.added.len(), removed = r.removed.len(), changed = r.changed.len(), "SQL files read again");
                        }
                        Err(e) => tracing::error!("SQL files not taken up, the running definitions go on: {e}"),
                    }
                    continue;
                }
                // A quiet input still gets what it sent committed, and idle
                // partitions may have let windows close.
                () = tokio::time::sleep(until_commit) => {
                    quiet = true;
                    if self.last_commit.elapsed() >= self.options.commit_interval {
                        self.close_windows().await?;
                        self.commit().await?;
                    }
                    continue;
                }
            };
            let Some(raw) = raw else { break true };
            self.options.progress.inc(raw.data.len() as u64 + raw.messages.len() as u64);
            let decoder = self
                .decoders
                .get(&raw.partition.topic)
                .ok_or_else(|| Error::Input(format!("no schema for topic `{}`", raw.partition.topic)))?;
            let archive = self.archive_reach.is_none() && self.archives.contains_key(&raw.partition.topic);
            let wanted = self.columns_wanted(&raw.partition.topic, decoder);
            self.ahead.start(decoder.clone(), raw, wanted, archive);
        };
        // Batches read before a stop are processed, and committed below.
        self.process_all_decoded().await?;
        self.options.progress.finish_and_clear();
        if ended {
            // A bounded source is exhausted: backfills finish first (from an archive
            // that holds everything read), then every window can close.
            if !self.backfills.is_empty() {
                self.commit().await?;
                self.join_backfills(true).await?;
            }
            self.watermarks.finish_all();
            self.close_windows().await?;
        } else {
            tracing::info!("stopping on a signal: committing; open windows go into the checkpoint");
        }
        self.commit().await?;
        if ended {
            // The table's shard emits a repartitioned table's last windows once
            // every shard sent its last panes (or a stop leaves them to the next start).
            if self.exchange.as_ref().is_some_and(|e| !e.merged_to_the_end()) {
                tracing::info!("input read to its end: waiting for every shard's last panes of the repartitioned tables");
            }
            while self.exchange.as_ref().is_some_and(|e| !e.merged_to_the_end()) {
                tokio::select! {
                    () = tokio::time::sleep(self.options.commit_interval) => self.commit().await?,
                    () = &mut stop => break,
                }
            }
            // A stop (a signal, a shard moved away) leaves it to the next start.
            let maintained = self.lake.finish_maintenance().await?;
            self.report_maintained(&maintained);
        }
        self.lease.release().await;
        if let Some(exchange) = &self.exchange {
            let (partials, bytes) = exchange.sent();
            tracing::info!(partials, bytes, "repartition topics: sent by this shard");
        }
        self.stats.elapsed = self.started.elapsed();
        self.stats.rows = self.lake.sinks().iter().map(|(p, s)| (p.clone(), s.rows_written())).collect();
        self.stats.freshness = self.options.observed.freshness();
        self.stats.taken = self.options.observed.taken_latencies();
        self.stats.received = self.options.observed.received_latencies();
        Ok(self.stats.clone())
    }

    fn report_maintained(&self, maintained: &BTreeMap<TablePath, Maintained>) {
        for (table, done) in maintained {
            tracing::info!(%table, checkpoint = ?done.checkpoint, compacted = ?done.compacted, vacuumed = done.vacuumed, expired = done.expired, logs_cleaned = done.logs_cleaned, "maintained");
        }
        self.options.observed.maintained(maintained);
    }

    fn track_partitions(&mut self, source: &dyn Source) {
        for id in source.partitions() {
            let delay = delay_in(&self.decoders, &id.topic);
            self.watermarks.add_partition(id, delay);
        }
    }

    /// The columns of `topic` worth building, by position (`None`: all): those some
    /// running query's plan reads, its event time, and the raw message when a query
    /// reads the topic at all (a late event keeps it). A mirrored topic needs them all;
    /// a topic nothing reads needs only to be checked, for its dead letters.
    fn columns_wanted(&self, topic: &str, decoder: &TopicDecoder) -> Option<Arc<[bool]>> {
        if self.mirrors.contains_key(topic) {
            return None;
        }
        let fields = decoder.schema().arrow_schema.fields();
        let mut wanted = vec![false; fields.len()];
        // Backfilling queries too: batches decoded ahead may reach one after it joins.
        let running = self.queries.iter().chain(self.backfills.iter().map(|b| &b.query));
        for q in running.filter(|q| q.query.topics().any(|t| &**t == topic)) {
            let read = q.columns_read_of(topic)?;
            wanted.iter_mut().zip(read).for_each(|(w, r)| *w |= *r);
            if let Some(raw) = wanted.last_mut() {
                *raw = true;
            }
        }
        Some(wanted.into())
    }

    /// The oldest batch being decoded through the queries, and a commit if one is due.
    async fn take_decoded(&mut self, source: &dyn Source) -> Result<()> {
        self.process_decoded().await?;
        if self.should_commit() {
            self.track_partitions(source);
            self.commit().await?;
        }
        Ok(())
    }

    /// Every batch being decoded, through the queries: before anything that must
    /// follow all that was read (a commit, a backfill's slice, a reload).
    async fn process_all_decoded(&mut self) -> Result<()> {
        while !self.ahead.is_empty() {
            self.process_decoded().await?;
        }
        Ok(())
    }

    /// The oldest batch being decoded through every query reading its topic, and the
    /// metrics stream.
    async fn process_decoded(&mut self) -> Result<()> {
        let Some(next) = self.ahead.next().await else { return Ok(()) };
        let ahead::Ready { raw, decoded, archived } = next?;
        self.positions.insert(raw.partition.clone(), raw.next_offset);
        self.dirty = true;
        let produced = self.produced_at.len();
        self.produced_at.extend(raw.messages.iter().filter_map(|m| m.timestamp));
        self.options.observed.taken(&self.produced_at[produced..], crate::time::now_micros() / 1000);
        self.stats.messages += raw.messages.len() as u64;
        self.stats.bytes += raw.data.len() as u64;
        self.stats.bad += decoded.dead_letters.len() as u64;
        self.stats.tombstones += decoded.tombstones as u64;
        if let (Some(archive), Some(rows)) = (self.archives.get(&raw.partition.topic).cloned(), archived) {
            self.sink(&archive)?.push_table_rows(rows);
        }
        if !decoded.dead_letters.is_empty() && self.lake.has_sink(&self.dead_letters) {
            let rows = dead_letters_batch(&raw, &decoded.dead_letters)?;
            self.sink(&self.dead_letters.clone())?.push_table_rows(rows);
        }

        let batch = decoded.batch;
        if let Some(mirror) = self.mirrors.get_mut(&raw.partition.topic) {
            mirror.apply(&batch)?;
        }
        let ts = event_times(&batch)?.clone();
        let mut late = LateEvents::default();
        let late_rows = self.feed(&raw.partition, &batch, Some(&mut late)).await?;
        if !late.is_empty() {
            let rows = late.to_batch(&batch)?;
            self.sink(&self.late_events.clone())?.push_table_rows(rows);
        }
        self.stats.late += late_rows as u64;
        let max_ts = arrow::compute::max(&ts);
        self.watermarks.observe(&raw.partition, max_ts, raw.end_of_partition);

        let metrics = BatchMetrics {
            ingested_at: raw.ingested_at,
            topic: raw.partition.topic.clone(),
            records: raw.messages.len() as i64,
            bad_records: decoded.dead_letters.len() as i64,
            late_records: late_rows as i64,
            max_lag_ms: arrow::compute::min(&ts).map(|min| (raw.ingested_at - min) as f64 / 1000.0),
        };
        self.options.observed.batch(
            &self.options.pipeline,
            &raw.partition.topic,
            raw.partition.partition,
            raw.next_offset,
            raw.messages.len() as u64,
            raw.data.len() as u64,
            decoded.dead_letters.len() as u64,
            late_rows as u64,
        );
        let metrics_id = self.metrics_partition.clone();
        self.feed(&metrics_id, &metrics.to_batch()?, None).await?;
        self.watermarks.observe(&metrics_id, Some(raw.ingested_at), false);

        self.close_windows().await
    }

    /// Runs every query reading `id`'s topic on `batch`, side by side. With `late`,
    /// rows whose window has closed are left out and recorded there; returns how
    /// many rows were late for at least one table.
    async fn feed(&mut self, id: &PartitionId, batch: &RecordBatch, mut late: Option<&mut LateEvents>) -> Result<usize> {
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        let queries: Vec<&mut RunningQuery> = self.queries.iter_mut().filter(|q| q.reads(&id.topic) && q.takes(id.partition)).collect();
        let tables: Vec<&TablePath> = queries.iter().map(|q| q.table()).collect();
        let sinks = self.lake.sinks_of(&tables)?;
        let (watermarks, judge_late) = (&self.watermarks, late.is_some());
        let fed = cores::across_cores(queries.into_iter().zip(sinks).collect(), |(q, sink)| async move {
            let (mut events, mut late_any) = (LateEvents::default(), vec![false; batch.num_rows()]);
            let lateness = judge_late.then_some(Lateness { events: &mut events, late_any: &mut late_any });
            q.feed(id, batch, watermarks, &mut Vec::new(), lateness, sink).await?;
            Ok::<_, Error>((events, late_any))
        })
        .await;
        // In the queries' order, as if they had run one after another.
        let mut late_any = vec![false; batch.num_rows()];
        for result in fed {
            let (events, late_rows) = result?;
            if let Some(late) = late.as_deref_mut() {
                late.append(events);
            }
            late_any.iter_mut().zip(late_rows).for_each(|(any, this)| *any |= this);
        }
        Ok(late_any.iter().filter(|l| **l).count())
    }

    /// Emits every window the watermarks have passed, the queries side by side.
    async fn close_windows(&mut self) -> Result<()> {
        let tables: Vec<&TablePath> = self.queries.iter().map(|q| q.table()).collect();
        let sinks = self.lake.sinks_of(&tables)?;
        let (watermarks, mirrors) = (&self.watermarks, &self.mirrors);
        let jobs = self.queries.iter_mut().zip(sinks).collect();
        let closed = cores::across_cores(jobs, |(q, sink)| async move { q.close(watermarks, mirrors, sink).await }).await;
        for (q, watermark) in self.queries.iter().zip(closed) {
            if let Some(watermark) = watermark? {
                self.options.observed.watermark(q.table().as_str(), watermark);
            }
        }
        Ok(())
    }

    /// Runs the queries over mirrors alone that read one of the `changed` mirrors.
    async fn rerun_over_mirrors(&mut self, changed: &[Arc<str>]) -> Result<()> {
        for q in &self.queries {
            q.rerun_over_mirrors(changed, &self.mirrors, self.lake.sink(q.table())?).await?;
        }
        Ok(())
    }

    /// Commit when the interval is up, or sooner when enough rows wait.
    fn should_commit(&self) -> bool {
        self.last_commit.elapsed() >= self.options.commit_interval
            || self.lake.pending_rows() >= self.options.max_pending_rows
    }

    /// Commits every table with buffered rows, and the state to carry on from, as
    /// the next epoch.
    pub async fn commit(&mut self) -> Result<()> {
        self.last_commit = Instant::now();
        self.lease.renew().await?;
        let (open, bytes) = self.queries.iter().map(RunningQuery::state_size).fold((0, 0), |(o, b), (qo, qb)| (o + qo, b + qb));
        self.stats.peak_open_windows = self.stats.peak_open_windows.max(open);
        self.stats.peak_state_bytes = self.stats.peak_state_bytes.max(bytes);
        self.merge_partials().await?;
        let due = self.exchange.as_ref().is_some_and(|e| e.due(&self.queries));
        if !self.dirty && !self.lake.has_pending() && !due {
            return self.join_backfills(false).await;
        }
        let started = Instant::now();
        self.replace_changed_mirrors().await?;
        for q in self.queries.iter_mut().chain(self.backfills.iter_mut().map(|b| &mut b.query)) {
            q.rewrite_current(self.lake.sink(&q.query.table)?).await?;
        }
        if let Some(exchange) = self.exchange.as_mut() {
            exchange.send(&mut self.queries, self.lake.next_epoch(), self.lake.checkpoints().writer())?;
        }
        let state = self.epoch_state()?;
        let prepare_ms = started.elapsed().as_millis() as u64;
        let committed = self.lake.commit(state).await?;
        self.watermarks.pause(started.elapsed());
        let input_read = std::mem::take(&mut self.dirty);
        self.options.observed.visible(&self.produced_at, committed.visible_at_ms);
        self.produced_at.clear();
        if input_read {
            self.stats.caught_up = self.started.elapsed();
        }
        for (topic, watermark) in self.watermarks.per_topic() {
            self.options.observed.source_watermark(&topic, watermark);
        }
        self.report_maintained(&committed.maintained);
        self.stats.commits += 1;
        self.stats.commit_ms.push(started.elapsed().as_secs_f64() * 1e3);
        self.stats.commit_tables.push(committed.tables);
        let ms = started.elapsed().as_millis() as u64;
        self.options.observed.commit(committed.rows as u64, started.elapsed().as_secs_f64(), open, bytes);
        tracing::info!(epoch = committed.epoch, rows = committed.rows, tables = committed.tables, ms, prepare_ms, write_ms = committed.write_ms, state_ms = committed.state_ms, delta_ms = committed.delta_ms, prune_ms = committed.prune_ms, maintain_ms = committed.maintain_ms, "committed");
        self.committed = self.positions.clone();
        self.join_backfills(false).await
    }

    /// The windows of the repartitioned tables this shard merges that every shard's
    /// panes have passed, into their tables.
    async fn merge_partials(&mut self) -> Result<()> {
        let Some(exchange) = self.exchange.as_mut() else { return Ok(()) };
        for (table, rows) in exchange.merge().await? {
            let q = self.queries.iter().find(|q| q.query.table == table).ok_or_else(|| Error::Internal(format!("no running query writes {table}")))?;
            q.emit(rows, &self.mirrors, self.lake.sink(&table)?).await?;
        }
        Ok(())
    }

    /// Rewrites the mirrors that changed since the last epoch, and the tables
    /// computed from them alone.
    async fn replace_changed_mirrors(&mut self) -> Result<()> {
        let mut changed = Vec::new();
        for mirror in self.mirrors.values_mut() {
            if mirror.take_changed() {
                // A group's mirror tables are shard 0's to write; every shard keeps its mirrors.
                if self.lake.has_sink(mirror.table()) {
                    let sink = self.lake.sink(mirror.table())?;
                    sink.begin_replacement();
                    sink.push_table_rows(mirror.current()?);
                }
                changed.push(mirror.topic().clone());
            }
        }
        self.rerun_over_mirrors(&changed).await
    }

    /// What a restart needs besides the tables: positions, watermarks, every
    /// query's window state, every mirror's retained changes (pruned first).
    fn epoch_state(&mut self) -> Result<EpochState> {
        let mut queries = Vec::new();
        let backfilling = self.backfills.iter_mut().map(|b| (b.progress(), &mut b.query));
        for (backfill, q) in self.queries.iter_mut().map(|q| (None, q)).chain(backfilling.map(|(p, q)| (Some(p), q))) {
            let (table, fingerprint, parts, watermark) = (q.query.table.clone(), q.query.fingerprint.clone(), q.query.parts.clone(), q.clock.watermark());
            queries.push(QueryState { table, fingerprint, parts, watermark, windows: q.snapshot()?, backfill });
        }
        let mut mirrors = Vec::new();
        for mirror in self.mirrors.values_mut() {
            // Windows still open end after their query's watermark: older history is not needed.
            // Corrected windows are kept past the watermark, and may be joined again.
            let joining = self.queries.iter().filter(|q| q.windows.is_some() && q.query.mirrors.iter().any(|m| m.topic == *mirror.topic()));
            let horizon = |q: &RunningQuery| q.clock.watermark().saturating_sub(q.query.corrections().unwrap_or(0));
            mirror.prune(joining.map(horizon).min().unwrap_or(i64::MAX))?;
            if mirror.keys() > 0 {
                mirrors.push((mirror.table().clone(), mirror.snapshot()?));
            }
        }
        let positions = self
            .positions
            .iter()
            .map(|(id, &next_offset)| Position { topic: id.topic.to_string(), partition: id.partition, next_offset })
            .collect();
        let merges = match self.exchange.as_mut() {
            Some(exchange) => exchange.snapshot()?,
            None => Vec::new(),
        };
        Ok(EpochState { positions, watermarks: self.watermarks.marks(), queries, mirrors, merges })
    }

    fn sink(&mut self, table: &TablePath) -> Result<&mut TableSink> {
        self.lake.sink(table)
    }
}
