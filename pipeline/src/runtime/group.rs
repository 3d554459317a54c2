//! `sluice run --group`: this instance runs the shards its consumer group gives it,
//! each a [`Pipeline`] on a thread of its own (so shards use every core), and
//! stops the ones the group takes away before the group hands them on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{stop_signal, stop_signal_or, Pipeline, RunOptions, RunStats};
use crate::catalog::Lake;
use crate::error::{Error, Result};
use crate::group::{Change, Membership, Shard};
use crate::plan::SqlFile;
use crate::schema::SchemaRegistry;
use crate::source::KafkaSource;
use crate::udf::Udfs;

/// What every shard of this instance is built from.
pub struct Instance {
    pub group: String,
    pub lake: Lake,
    pub registry: SchemaRegistry,
    pub sql: Vec<SqlFile>,
    pub udfs: Udfs,
    /// The run's options; each shard gets its own name, stop signal and archive.
    pub options: RunOptions,
    pub brokers: String,
    pub kafka_settings: Vec<(String, String)>,
    pub batch_size: usize,
    /// A bounded run: the instance ends once every shard it holds ran to its end
    /// and the group gave it no other for this long.
    pub stop_when_idle: Option<Duration>,
}

struct Running {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

/// Runs the shards the group assigns until SIGINT/SIGTERM (or, bounded, until the
/// shards it holds have ended and no other came); returns the shards' stats summed.
pub async fn run(instance: Instance, mut membership: Membership) -> Result<RunStats> {
    let instance = Arc::new(instance);
    let shards = membership.shards;
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<(u32, Result<RunStats>)>();
    let mut running: BTreeMap<u32, Running> = BTreeMap::new();
    let (mut held, mut drained) = (BTreeSet::new(), BTreeSet::new());
    let mut total = RunStats::default();
    let observed = instance.options.observed.clone();
    let mut signal = std::pin::pin!(stop_signal());
    // SIGHUP would end the process by default; a group does not reload its SQL.
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
            Some(()) = async { hangups.as_mut()?.recv().await } => {
                tracing::warn!("SIGHUP: a group's instances do not read their SQL files again; restart them one at a time");
            }
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
    match error {
        Error::Fenced(_) => true,
        Error::Delta { source: deltalake::DeltaTableError::Transaction { source: TransactionError::CommitConflict(_) }, .. } => true,
        _ => false,
    }
}

/// One shard, from its checkpoint, until told to stop. A shard fenced by another
/// instance (it stalled, and the group gave the shard away) starts again from
/// the lake if it is still this instance's: then it waits for the lease.
async fn run_shard(instance: &Instance, mut shard: Shard, told: watch::Receiver<bool>) -> Result<RunStats> {
    let sql: Vec<SqlFile> = instance.sql.iter().filter(|f| shard.writes(&f.table)).cloned().collect();
    if sql.is_empty() && !shard.writes_lake_tables() {
        tracing::info!(shard = shard.index, "no table falls in this shard");
        // Held, with nothing to do, until the group moves it (a bounded run: drained).
        if instance.stop_when_idle.is_none() {
            let mut told = told;
            let _ = told.wait_for(|s| *s).await;
        }
        return Ok(RunStats::default());
    }
    let mut backoff = Duration::from_secs(1);
    loop {
        let options = RunOptions {
            pipeline: shard.pipeline(),
            shard: Some(shard.clone()),
            stop: Some(told.clone()),
            archive: if shard.writes_lake_tables() { instance.options.archive } else { crate::sink::ArchiveRetention::Off },
            live: None,
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
                    Ok(mut source) => pipeline.run(&mut source).await,
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
