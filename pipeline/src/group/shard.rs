//! A group's tables split into shards: each shard is a pipeline of its own, with
//! its own checkpoints, lease and `txn` app ids, so that the consumer group can
//! move it between instances whole.
//!
//! A table's shard is a hash of its path, so it stays put as files are added.
//! Shard 0 also writes the lake's own tables (dead letters, mirrors, the raw
//! archive), which every topic feeds. Late events go to `late_events` from the
//! shard of the table they were late for.

use crate::catalog::writers::{shard_pipeline, Writers};
use crate::catalog::TablePath;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub group: String,
    pub index: u32,
    pub count: u32,
    /// Whether this instance was fenced from the shard since the group gave it
    /// here: then another still claims it, and it waits for that one's lease to
    /// lapse instead of taking it at once (two claimants would take turns).
    pub fenced: bool,
}

impl Shard {
    /// Its name in the lake: `_sluice/<group>/shard-<index>/` and the tables' `txn` app ids.
    pub fn pipeline(&self) -> String {
        shard_pipeline(&self.group, self.index)
    }

    /// Whether this shard computes the table.
    pub fn writes(&self, table: &TablePath) -> bool {
        shard_of(table, self.count) == self.index
    }

    /// Whether this shard writes the dead letters, the mirrors and the raw archive.
    pub fn writes_lake_tables(&self) -> bool {
        self.index == 0
    }

    pub fn writers(&self) -> Writers {
        Writers::Group { name: self.group.clone(), shards: self.count }
    }
}

/// The shard of `table` among `count` (FNV-1a of its path: stable across builds).
pub fn shard_of(table: &TablePath, count: u32) -> u32 {
    let hash = table.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    (hash % count.max(1) as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_one_shard_and_it_does_not_move() {
        let tables: Vec<TablePath> = ["monitoring/api_performance/request_response_times", "analytics/learner/progress", "a/b/c"]
            .iter()
            .map(|t| TablePath::new(t).unwrap())
            .collect();
        for table in &tables {
            let owners: Vec<u32> = (0..6).filter(|i| Shard { group: "g".into(), index: *i, count: 6, fenced: false }.writes(table)).collect();
            assert_eq!(owners.len(), 1, "{table:?}");
            assert_eq!(owners[0], shard_of(table, 6));
        }
        // Pinned: a changed hash would move every table to another pipeline's checkpoints.
        assert_eq!(shard_of(&tables[2], 1_000_003), 437_080);
    }
}
