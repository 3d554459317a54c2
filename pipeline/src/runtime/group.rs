//! `sluice run --group`: this instance runs the shards its consumer group gives it,
//! each a [`Pipeline`] on a thread of its own (so shards use every core), and
//! stops the ones the group takes away before the group hands them on.
//!
//! On SIGHUP the instance reads its SQL files again and, if every one plans, tells
//! its shards, each of which takes up the files that fall in it as one pipeline
//! does (a shard with no table yet starts); shards the group gives it later start
//! with them. Each instance of a group reloads on its own signal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{input_tables, stop_signal, stop_signal_or, LiveDefinitions, Pipeline, RunOptions, RunStats};
use crate::catalog::Lake;
use crate::error::{Error, Result};
use crate::group::{Change, Membership, Shard};
use crate::plan::{load_sql_dir, plan, SqlFile};
use crate::repartition::Brokers;
use crate::schema::SchemaRegistry;
use crate::source::{KafkaSource, ReadAhead};
use crate::udf::Udfs;

/// What every shard of this instance is built from.
pub struct Instance {
    pub group: String,
    pub lake: Lake,
    pub registry: SchemaRegistry,
    /// Where the SQL files are read again on SIGHUP.
    pub sql_dir: PathBuf,
    /// The files as last read: a shard starts with those that fall in it.
    pub sql: Mutex<Vec<SqlFile>>,
    pub udfs: Udfs,
    /// The run's options; each shard gets its own name, stop signal and archive.
    pub options: RunOptions,
    pub brokers: String,
    pub kafka_settings: Vec<(String, String)>,
    pub batch_size: usize,
    /// A bounded run: the instance ends once every shard it holds ran to its end
    /// and the group gave it no other for this long.
    pub stop_when_idle: Option<Duration>,
    /// Counts the reloads: each shard reads its files again when it changes.
    pub reloads: watch::Sender<u64>,
}

impl Instance {
    /// The SQL files as last read.
    fn sql(&self) -> Vec<SqlFile> {
        self.sql.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Reads the SQL files again; if every one plans, keeps them and tells the
    /// shards. The UDFs are not built again in a group: a changed UDF needs a restart.
    async fn reload(&self) -> Result<usize> {
        let files = load_sql_dir(&self.sql_dir)?;
        let inputs = input_tables(&self.registry);
        for file in &files {
            plan(file, &inputs, &self.udfs).await?;
        }
        let count = files.len();
        *self.sql.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = files;
        self.reloads.send_modify(|n| *n += 1);
        Ok(count)
    }

    /// How a shard reads its definitions again when `told` changes.
    fn live(&self, told: watch::Receiver<u64>) -> LiveDefinitions {
        LiveDefinitions {
            sql_dir: self.sql_dir.clone(),
            registry: self.registry.clone(),
            udfs: self.udfs.clone(),
            udfs_dir: None,
            lake: self.lake.clone(),
            told: Some(told),
        }
    }
}

struct Running {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

/// Runs the shards the group assigns until SIGINT/SIGTERM (or, bounded, until the
/// shards it holds have ended and no other came); returns the shards' stats summed.
pub async fn run(instance: Instance, mut membership: Membership) -> Result<RunStats> {
    create_shared_tables(&instance).await?;
    let instance = Arc::new(instance);
    let shards = membership.shards;
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<(u32, Result<RunStats>)>();
    let mut running: BTreeMap<u32, Running> = BTreeMap::new();
    let (mut held, mut drained) = (BTreeSet::new(), BTreeSet::new());
    let mut total = RunStats::default();
    let observed = instance.options.observed.clone();
    let mut signal = std::pin::pin!(stop_signal());
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last_change = std::time::Instant::now();
    let failed = 'run: loop {
        let done = !held.is_empty() && held.is_subset(&drained);
        let wait = match instance.stop_when_idle {
            Some(idle) if done => match idle.saturating_sub(last_change.elapsed()) {
                left if left.is_zero() => break None,
                left => left,
            },
            _ => Duration::from_secs(3600),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => continue,
            change = membership.changes.recv() => match change {
                Some(Change::Assigned(new)) => {
                    last_change = std::time::Instant::now();
                    tracing::info!(shards = ?new, "the group gave this instance shards");
                    for index in new {
                        held.insert(index);
                        if !running.contains_key(&index) && !drained.contains(&index) {
                            match start(&instance, index, shards, ended_tx.clone()) {
                                Ok(started) => running.insert(index, started),
                                Err(e) => break 'run Some(e),
                            };
                        }
                    }
                    observed.shards_held(held.iter().copied().collect());
                }
                Some(Change::Revoked(gone, done)) => {
                    tracing::info!(shards = ?gone, "the group moves shards elsewhere: committing and stopping them");
                    for index in &gone {
                        held.remove(index);
                    }
                    stop(&mut running, &gone).await;
                    observed.shards_held(held.iter().copied().collect());
                    let _ = done.send(());
                }
                Some(Change::Failed(reason)) => break Some(Error::Config(format!("group `{}`: {reason}", instance.group))),
                None => break Some(Error::Internal("the group's membership ended".into())),
            },
            Some((index, result)) = ended.recv() => {
                observed.forget(&crate::catalog::writers::shard_pipeline(&instance.group, index));
                let told = running.get(&index).is_none_or(|r| *r.stop.borrow());
                if let Some(r) = running.remove(&index) {
                    let _ = tokio::task::spawn_blocking(move || r.thread.join()).await;
                }
                match result {
                    Ok(stats) => {
                        if !told {
                            drained.insert(index);
                            last_change = std::time::Instant::now();
                        }
                        add(&mut total, stats);
                    }
                    Err(e) => break Some(e),
                }
            }
            Some(()) = async { hangups.as_mut()?.recv().await } => match instance.reload().await {
                Ok(files) => tracing::info!(files, shards = ?held, "SIGHUP: SQL files read again; each shard takes up its own"),
                Err(e) => tracing::error!("SQL files not taken up, the running definitions go on: {e}"),
            },
            () = &mut signal => break None,
        }
    };
    let all: Vec<u32> = running.keys().copied().collect();
    stop(&mut running, &all).await;
    drop(membership);
    while let Ok((_, Ok(stats))) = ended.try_recv() {
        add(&mut total, stats);
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Creates `late_events`, which every shard appends to, and the repartitioned
/// tables, which every shard opens, if the lake lacks them: shards starting
/// together would otherwise race to create them, and the loser's create, retried
/// as the next version, is a metadata change that fails the winner's first commit
/// (its shard then starts again). Instances starting at the same moment can still
/// race; that retry remains.
async fn create_shared_tables(instance: &Instance) -> Result<()> {
    use crate::sink::{late_event_schema, TableLayout, TableSink, LATE_EVENTS};
    let late_events = crate::catalog::TablePath::new(LATE_EVENTS).map_err(Error::Internal)?;
    let pipeline = crate::catalog::writers::shard_pipeline(&instance.group, 0);
    TableSink::open(&instance.lake, late_events, TableLayout::fixed(late_event_schema()), &pipeline).await?;
    let inputs = input_tables(&instance.registry);
    for file in instance.sql().iter().filter(|f| repartitioned(f)) {
        let query = plan(file, &inputs, &instance.udfs).await?;
        super::open_sink(&instance.lake, &query, &pipeline, false).await?;
    }
    Ok(())
}

/// Whether `file` says `-- sluice: repartition` (a malformed directive is refused
/// when the file is planned).
fn repartitioned(file: &SqlFile) -> bool {
    crate::plan::directives::parse(&file.sql).is_ok_and(|d| d.repartition)
}

/// Tells the shards to stop (each commits first) and waits for them.
async fn stop(running: &mut BTreeMap<u32, Running>, shards: &[u32]) {
    let stopping: Vec<Running> = shards.iter().filter_map(|i| running.remove(i)).collect();
    for r in &stopping {
        let _ = r.stop.send(true);
    }
    for r in stopping {
        let _ = tokio::task::spawn_blocking(move || r.thread.join()).await;
    }
}

fn add(total: &mut RunStats, stats: RunStats) {
    total.messages += stats.messages;
    total.bytes += stats.bytes;
    total.bad += stats.bad;
    total.late += stats.late;
    total.tombstones += stats.tombstones;
    total.commits += stats.commits;
    total.peak_open_windows = total.peak_open_windows.max(stats.peak_open_windows);
    total.peak_state_bytes = total.peak_state_bytes.max(stats.peak_state_bytes);
    total.elapsed = total.elapsed.max(stats.elapsed);
    for (table, rows) in stats.rows {
        *total.rows.entry(table).or_default() += rows;
    }
}

/// Starts shard `index` on a thread with a runtime of its own.
fn start(instance: &Arc<Instance>, index: u32, count: u32, ended: mpsc::UnboundedSender<(u32, Result<RunStats>)>) -> Result<Running> {
    let (stop, told) = watch::channel(false);
    let instance = instance.clone();
    // The stack `main` gives the runtime's workers: planning recurses deeply.
    let spawned = std::thread::Builder::new().name(format!("shard-{index}")).stack_size(32 << 20).spawn(move || {
        let shard = Shard { group: instance.group.clone(), index, count, fenced: false };
        let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(run_shard(&instance, shard, told)),
            Err(e) => Err(Error::Internal(format!("a runtime for shard {index}: {e}"))),
        };
        let _ = ended.send((index, result));
    });
    let thread = spawned.map_err(|e| Error::Internal(format!("starting shard {index}'s thread: {e}")))?;
    Ok(Running { stop, thread })
}

/// Whether `error` says another instance wrote what this one was about to: its
/// lease, an epoch's manifest, or a table's `txn` in a concurrent Delta commit.
fn fenced(error: &Error) -> bool {
    use deltalake::kernel::transaction::TransactionError;
    matches!(
        error,
        Error::Fenced(_) | Error::Delta { source: deltalake::DeltaTableError::Transaction { source: TransactionError::CommitConflict(_) }, .. }
    )
}

/// One shard, from its checkpoint, until told to stop. A shard fenced by another
/// instance (it stalled, and the group gave the shard away) starts again from
/// the lake if it is still this instance's: then it waits for the lease.
async fn run_shard(instance: &Instance, mut shard: Shard, told: watch::Receiver<bool>) -> Result<RunStats> {
    let mut backoff = Duration::from_secs(1);
    loop {
        // Before the files are taken: a reload from here on is not missed.
        let mut reloads = instance.reloads.subscribe();
        // Its own tables, and every repartitioned one: each shard folds its share.
        let sql: Vec<SqlFile> = instance.sql().into_iter().filter(|f| shard.writes(&f.table) || repartitioned(f)).collect();
        if sql.is_empty() && !shard.writes_lake_tables() {
            tracing::info!(shard = shard.index, "no table falls in this shard");
            // Held, with nothing to do, until the group moves it or a reload gives
            // it a table (a bounded run: drained).
            if instance.stop_when_idle.is_some() {
                return Ok(RunStats::default());
            }
            let mut told = told.clone();
            tokio::select! {
                _ = told.wait_for(|s| *s) => return Ok(RunStats::default()),
                Ok(()) = reloads.changed() => continue,
            }
        }
        let options = RunOptions {
            pipeline: shard.pipeline(),
            shard: Some(shard.clone()),
            brokers: Some(Brokers { servers: instance.brokers.clone(), settings: instance.kafka_settings.clone() }),
            stop: Some(told.clone()),
            live: Some(instance.live(reloads.clone())),
            ..instance.options.clone()
        };
        let opened = tokio::select! {
            opened = Pipeline::new(&instance.lake, &instance.registry, &sql, &instance.udfs, options) => opened,
            () = stop_signal_or(Some(told.clone())) => return Ok(RunStats::default()),
        };
        let result = match opened {
            Ok(mut pipeline) => {
                let topics = pipeline.topics();
                tracing::info!(shard = shard.index, tables = sql.len(), topics = topics.len(), "running shard");
                match KafkaSource::open(&instance.brokers, &topics, &instance.kafka_settings, instance.batch_size, instance.stop_when_idle, instance.options.observed.clone()) {
                    Ok(source) => {
                        let budget = source.queue_bytes();
                        pipeline.run(&mut ReadAhead::new(Box::new(source), instance.batch_size, budget)).await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(stats) => return Ok(stats),
            Err(e) if fenced(&e) && *told.borrow() => {
                tracing::info!(shard = shard.index, "{e}");
                return Ok(RunStats::default());
            }
            Err(e) if fenced(&e) => {
                // The group still says it is ours: wait for the other's lease.
                tracing::warn!(shard = shard.index, "{e}; starting the shard again from the lake in {backoff:?}");
                shard.fenced = true;
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
