//! How far the raw archive reaches when another pipeline writes it: in a group,
//! shard 0 archives every topic, and the other shards backfill and rebuild their
//! tables from it. Their own positions may be ahead of what shard 0 committed, so
//! a replay stops where the archive ends, and a backfill joins the live stream
//! only once the archive holds everything below the shard's positions.
//!
//! The reach is shard 0's newest checkpoint, once every archive table that epoch
//! staged has its Delta commit (the manifest comes first, the commits after it;
//! an epoch's manifest exists only once the epoch before was fully committed).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{Lake, TablePath};
use crate::checkpoint::CheckpointStore;
use crate::error::Result;
use crate::source::PartitionId;
use crate::time::PartitionMark;

/// How often the writer's checkpoints are read again, at most.
const REFRESH: Duration = Duration::from_millis(250);

/// What the archive another pipeline writes holds.
pub(super) struct ArchiveReach {
    /// The pipeline writing the archive (`<group>/shard-0`).
    writer: String,
    checkpoints: CheckpointStore,
    epoch: i64,
    /// Per partition, the offset below which the archive holds every message.
    positions: BTreeMap<PartitionId, i64>,
    /// The writer's watermarks there.
    marks: Vec<PartitionMark>,
    read_at: Option<Instant>,
    /// The archive tables as last read, brought forward (one log listing) rather
    /// than loaded again.
    tables: HashMap<TablePath, deltalake::DeltaTable>,
}

impl ArchiveReach {
    pub(super) fn new(lake: &Lake, writer: String) -> Result<Self> {
        let checkpoints = CheckpointStore::open(lake, &writer)?;
        Ok(ArchiveReach { writer, checkpoints, epoch: 0, positions: BTreeMap::new(), marks: Vec::new(), read_at: None, tables: HashMap::new() })
    }

    /// Reads the writer's newest checkpoint again (at most every [`REFRESH`]);
    /// it counts once the archive tables it staged are committed.
    pub(super) async fn refresh(&mut self, lake: &Lake, archives: &HashMap<Arc<str>, TablePath>) -> Result<()> {
        if self.read_at.is_some_and(|at| at.elapsed() < REFRESH) {
            return Ok(());
        }
        self.read_at = Some(Instant::now());
        let Some(checkpoint) = self.checkpoints.latest().await? else { return Ok(()) };
        if checkpoint.epoch <= self.epoch {
            return Ok(());
        }
        for archive in archives.values().filter(|a| checkpoint.staged.contains_key(a.as_str())) {
            let table = match self.tables.entry(archive.clone()) {
                std::collections::hash_map::Entry::Occupied(kept) => {
                    let table = kept.into_mut();
                    table.update_incremental(None).await.map_err(|e| crate::error::Error::delta(archive.as_str(), e))?;
                    table
                }
                std::collections::hash_map::Entry::Vacant(new) => new.insert(lake.load_table(archive).await?),
            };
            let app_id = format!("{}:{}", self.writer, archive.as_str());
            if crate::sink::committed_epoch(table, &app_id).await?.is_none_or(|e| e < checkpoint.epoch) {
                // Its commit is under way (or the writer died before it): later.
                return Ok(());
            }
        }
        self.positions = checkpoint.positions();
        self.marks = checkpoint.watermarks;
        self.epoch = checkpoint.epoch;
        Ok(())
    }

    /// `positions`, each no further than the archive reaches.
    pub(super) fn bound(&self, positions: &BTreeMap<PartitionId, i64>) -> BTreeMap<PartitionId, i64> {
        positions.iter().map(|(id, &next)| (id.clone(), next.min(self.positions.get(id).copied().unwrap_or(0)))).collect()
    }

    /// Whether the archive holds everything below `positions`.
    pub(super) fn covers<'a>(&self, mut positions: impl Iterator<Item = (&'a PartitionId, &'a i64)>) -> bool {
        positions.all(|(id, &next)| self.positions.get(id).is_some_and(|&reach| reach >= next))
    }

    /// Where the archive has got to in `topic`'s partitions, and the writer's
    /// watermarks there (not finished: this pipeline reads on from there).
    pub(super) fn of_topic(&self, topic: &str) -> (Vec<(PartitionId, i64)>, Vec<PartitionMark>) {
        let positions = self.positions.iter().filter(|(id, _)| &*id.topic == topic).map(|(id, &next)| (id.clone(), next)).collect();
        let marks = self.marks.iter().filter(|m| m.topic == topic).map(|m| PartitionMark { finished: false, ..m.clone() }).collect();
        (positions, marks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(topic: &str, partition: i32) -> PartitionId {
        PartitionId { topic: Arc::from(topic), partition }
    }

    #[tokio::test]
    async fn a_bound_never_passes_the_archive_and_a_partition_it_never_saw_is_not_covered() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::connect(dir.path().to_str().unwrap(), true, Default::default()).await.unwrap();
        let mut reach = ArchiveReach::new(&lake, "g/shard-0".into()).unwrap();
        reach.positions = BTreeMap::from([(id("t", 0), 10), (id("t", 1), 5)]);
        let live = BTreeMap::from([(id("t", 0), 7), (id("t", 1), 9), (id("u", 0), 3)]);
        assert_eq!(reach.bound(&live), BTreeMap::from([(id("t", 0), 7), (id("t", 1), 5), (id("u", 0), 0)]));
        assert!(!reach.covers(live.iter()));
        assert!(reach.covers(live.iter().filter(|(id, _)| id.partition == 0 && &*id.topic == "t")));
        assert!(!reach.covers(live.iter().filter(|(id, _)| &*id.topic == "u")));
    }
}
