//! A group's repartitioned tables (`-- sluice: repartition`) in one shard. Every
//! shard is an upstream of each: it folds its share of the input partitions into
//! panes and, at the end of each epoch, sends the panes its watermark passed to
//! the table's repartition topic. The table's own shard also merges what every
//! shard sent and emits the windows ([`crate::repartition`]).
//!
//! The order within a commit is what makes it exactly once: an epoch's partials
//! are acknowledged before its manifest is written, and the merging side folds a
//! partial only once the sender's manifest names the run that sent it.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::RecordBatch;

use super::query::RunningQuery;
use super::METRICS_TOPIC;
use crate::catalog::writers::shard_pipeline;
use crate::catalog::{Lake, TablePath};
use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::commit::MergeState;
use crate::error::{Error, Result};
use crate::group::Shard;
use crate::plan::Shape;
use crate::repartition::{create_topics, topic_name, Brokers, Merger, Receiver, Sender, Upstream};

pub(super) struct Exchange {
    sender: Sender,
    tables: Vec<Repartitioned>,
}

/// One repartitioned table in this shard.
struct Repartitioned {
    table: TablePath,
    topic: String,
    upstream: Upstream,
    /// In the table's own shard.
    merging: Option<Merging>,
}

/// The table's shard: a merger per repartition partition, reading them all.
struct Merging {
    mergers: Vec<Merger>,
    receiver: Receiver,
    /// Every upstream shard's checkpoints: their manifests say which partials count.
    upstreams: Vec<CheckpointStore>,
}

impl Exchange {
    /// Makes `shard` an upstream of every repartitioned query among `queries`, and
    /// the merger of those it writes, from `checkpoint` (its state files in
    /// `checkpoints`); `None` if no query is repartitioned.
    pub async fn open(
        lake: &Lake,
        brokers: &Brokers,
        shard: &Shard,
        queries: &mut [RunningQuery],
        checkpoint: Option<&Checkpoint>,
        checkpoints: &CheckpointStore,
    ) -> Result<Option<Exchange>> {
        if let Some(q) = queries.iter().find(|q| q.query.repartition && q.reads(METRICS_TOPIC)) {
            return Err(Error::Sql {
                path: q.query.path.clone(),
                message: format!("`-- sluice: repartition` merges topics every shard reads alike, and {METRICS_TOPIC} is each process's own: drop the directive"),
            });
        }
        let topics: Vec<String> = queries.iter().filter(|q| q.query.repartition).map(|q| topic_name(&shard.group, &q.query.table)).collect();
        if topics.is_empty() {
            return Ok(None);
        }
        create_topics(brokers, &topics, shard.count).await?;
        let mut tables = Vec::new();
        for q in queries.iter_mut().filter(|q| q.query.repartition) {
            let (table, fingerprint) = (q.query.table.clone(), q.query.fingerprint.clone());
            let Shape::Windowed { window: spec, .. } = &q.query.shape else {
                return Err(Error::Internal(format!("{table}: repartitioned without a window")));
            };
            let spec = spec.clone();
            q.share(shard.index, shard.count);
            let saved = checkpoint.and_then(|c| c.queries.get(table.as_str()));
            let upstream = Upstream::new(shard.index, shard.count, &spec, &fingerprint, saved.map_or(i64::MIN, |s| s.watermark));
            let topic = topic_name(&shard.group, &table);
            let merging = match shard.writes(&table) {
                true => {
                    let (mergers, from): (Vec<Merger>, Vec<i64>) = resume_mergers(&table, &spec, &fingerprint, shard.count, checkpoint, checkpoints).await?.into_iter().unzip();
                    let upstreams = (0..shard.count).map(|u| CheckpointStore::open(lake, &shard_pipeline(&shard.group, u))).collect::<Result<_>>()?;
                    Some(Merging { mergers, receiver: Receiver::open(brokers, &shard.group, &topic, &from)?, upstreams })
                }
                false => None,
            };
            tracing::info!(table = %table.sql_name(), topic, merges = merging.is_some(), "repartitioned: this shard sends its panes");
            tables.push(Repartitioned { table, topic, upstream, merging });
        }
        Ok(Some(Exchange { sender: Sender::open(brokers)?, tables }))
    }

    /// Whether an upstream's watermark passed a pane end since it last sent: the
    /// epoch must be committed even without new input.
    pub fn due(&self, queries: &[RunningQuery]) -> bool {
        self.tables.iter().any(|t| queries.iter().any(|q| q.query.table == t.table && t.upstream.due(q.clock.watermark())))
    }

    /// Sends the panes each upstream's watermark passed, as epoch `epoch` of run
    /// `writer`, and waits until the broker has them all: before the manifest.
    pub fn send(&mut self, queries: &mut [RunningQuery], epoch: i64, writer: &str) -> Result<()> {
        let mut sent = 0;
        for t in &mut self.tables {
            let q = query_of(queries, &t.table)?;
            let watermark = q.clock.watermark();
            for (partition, partial) in t.upstream.partials(q.panes()?, watermark, epoch, writer)? {
                self.sender.send(&t.topic, partition, &partial)?;
                sent += 1;
            }
        }
        if sent > 0 {
            self.sender.flush()?;
        }
        Ok(())
    }

    /// Takes the partials that arrived, folds those their senders' manifests say
    /// count, and returns per table the rows of the windows every upstream passed.
    pub async fn merge(&mut self) -> Result<Vec<(TablePath, RecordBatch)>> {
        let mut closed = Vec::new();
        for t in &mut self.tables {
            let Some(merging) = t.merging.as_mut() else { continue };
            for (partition, offset, partial) in merging.receiver.take_arrived()? {
                let count = merging.mergers.len();
                let merger = merging
                    .mergers
                    .get_mut(partition as usize)
                    .ok_or_else(|| Error::Input(format!("{}: partition {partition} of {count}: was the group's shard count changed?", t.topic)))?;
                merger.receive(offset, partial)?;
            }
            // Each waiting upstream's newest manifest, read once for every partition.
            let waiting: BTreeSet<u32> = merging.mergers.iter().flat_map(Merger::waiting).collect();
            let mut manifests = BTreeMap::new();
            for u in waiting {
                let store = merging.upstreams.get(u as usize).ok_or_else(|| Error::Internal(format!("upstream {u}")))?;
                if let Some(manifest) = store.latest().await? {
                    manifests.insert(u, manifest);
                }
            }
            for merger in &mut merging.mergers {
                for u in merger.waiting().collect::<Vec<_>>() {
                    if let Some(manifest) = manifests.get(&u) {
                        merger.decide(u, manifest)?;
                    }
                }
                if let Some(rows) = merger.close()? {
                    closed.push((t.table.clone(), rows));
                }
            }
        }
        Ok(closed)
    }

    /// Partials and their bytes sent so far.
    pub fn sent(&self) -> (u64, u64) {
        self.sender.sent
    }

    /// Whether every window of every table this shard merges was emitted: each
    /// upstream sent its last partials (a bounded run's end).
    pub fn merged_to_the_end(&self) -> bool {
        self.tables.iter().filter_map(|t| t.merging.as_ref()).all(|m| m.mergers.iter().all(|merger| merger.watermark() == i64::MAX))
    }

    /// The merges' state for the epoch's checkpoint.
    pub fn snapshot(&mut self) -> Result<Vec<(TablePath, Vec<MergeState>)>> {
        let mut merges = Vec::new();
        for t in &mut self.tables {
            let Some(merging) = t.merging.as_mut() else { continue };
            let states = merging
                .mergers
                .iter_mut()
                .map(|m| m.snapshot().map(|(windows, progress)| MergeState { windows, progress }))
                .collect::<Result<_>>()?;
            merges.push((t.table.clone(), states));
        }
        Ok(merges)
    }
}

fn query_of<'a>(queries: &'a mut [RunningQuery], table: &TablePath) -> Result<&'a mut RunningQuery> {
    queries.iter_mut().find(|q| q.query.table == *table).ok_or_else(|| Error::Internal(format!("no running query writes {table}")))
}

/// `table`'s mergers, one per partition, from the checkpoint's merges (fresh ones
/// without), each with the offset it reads on from.
async fn resume_mergers(
    table: &TablePath,
    spec: &crate::plan::WindowSpec,
    plan: &str,
    partitions: u32,
    checkpoint: Option<&Checkpoint>,
    checkpoints: &CheckpointStore,
) -> Result<Vec<(Merger, i64)>> {
    let Some((epoch, saved)) = checkpoint.and_then(|c| Some((c.epoch, c.merges.get(table.as_str())?))) else {
        return Ok((0..partitions).map(|_| (Merger::new(spec.clone(), plan, partitions), 0)).collect());
    };
    if saved.len() != partitions as usize || saved.iter().any(|m| m.progress.upstreams.len() != partitions as usize) {
        return Err(Error::Checkpoint(format!(
            "{table}: epoch {epoch} merged {} repartition partitions, and the group has {partitions} shards: \
             a group's shard count cannot change under a repartitioned table",
            saved.len()
        )));
    }
    let mut mergers = Vec::new();
    for merge in saved {
        let rows = match &merge.windows {
            Some(name) => {
                let batches = checkpoints.state(epoch, name).await?;
                match batches.first() {
                    Some(first) => Some(arrow::compute::concat_batches(&first.schema(), &batches)?),
                    None => None,
                }
            }
            None => None,
        };
        let merger = Merger::resume(spec.clone(), plan, &merge.progress, rows.as_ref())
            .map_err(|e| Error::Checkpoint(format!("merged windows of {table} in epoch {epoch}: {e}")))?;
        mergers.push((merger, merge.progress.resume_from));
    }
    Ok(mergers)
}
