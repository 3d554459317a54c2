//! Sources: where raw messages come from. A source hands out [`RawBatch`]es, each
//! from one topic-partition, in the order the pipeline must process them.

mod broker;
mod files;
mod kafka;
mod produce;
mod read_ahead;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

pub use broker::{create_missing_topics, send_when_queued};
pub use files::FileSource;
pub use kafka::{BrokerStats, KafkaSource};
pub use produce::{create_topics, produce_generated, Spool};
pub use read_ahead::ReadAhead;

use crate::error::Result;

/// One topic-partition a source reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic: Arc<str>,
    pub partition: i32,
}

/// Messages read in one go from one topic-partition, bytes back to back.
#[derive(Debug)]
pub struct RawBatch {
    pub partition: PartitionId,
    /// When the pipeline read these messages, µs since the epoch (`_ingested_at`).
    pub ingested_at: i64,
    pub data: Vec<u8>,
    pub messages: Vec<RawMessage>,
    /// The partition's offset to read after this batch: where a restart resumes.
    pub next_offset: i64,
    /// The partition has no more messages (a bounded source's file ended).
    pub end_of_partition: bool,
}

#[derive(Debug, Clone)]
pub struct RawMessage {
    pub offset: i64,
    /// The message's bytes in [`RawBatch::data`]; `None` for a tombstone (null value).
    pub payload: Option<Range<usize>>,
    /// When the message entered the broker (Kafka's timestamp), ms since the epoch:
    /// the start of its end-to-end freshness.
    pub timestamp: Option<i64>,
}

impl RawBatch {
    pub fn payload(&self, message: &RawMessage) -> Option<&[u8]> {
        message.payload.as_ref().map(|r| &self.data[r.clone()])
    }
}

/// A stream of raw messages from one or more topic-partitions.
///
/// Implementations decide the interleaving of partitions; the pipeline's event-time
/// results depend only on that order, so a source should make it deterministic
/// where it can (the file source does).
#[async_trait::async_trait]
pub trait Source: Send {
    /// Every partition the source knows of now, for watermark tracking: a partition
    /// that has not delivered anything holds its topic's watermark back.
    fn partitions(&self) -> Vec<PartitionId>;

    /// Resumes from a checkpoint: each listed partition starts at its offset, the
    /// others at their beginning. Called before the first batch.
    fn seek(&mut self, positions: &BTreeMap<PartitionId, i64>) -> Result<()>;

    /// Reads `topics` too from now on (a reload added tables over them), each
    /// partition listed in `starts` from there and the others from their
    /// beginning. A source that reads every topic already does nothing.
    /// Once it returns, [`partitions`](Self::partitions) lists theirs.
    async fn read_topics(&mut self, topics: &[String], starts: &BTreeMap<PartitionId, i64>) -> Result<()> {
        let _ = (topics, starts);
        Ok(())
    }

    /// The next batch, or `None` once a bounded source is exhausted. Must be
    /// cancel-safe: the run loop drops a waiting call to commit on time.
    async fn next_batch(&mut self) -> Result<Option<RawBatch>>;
}
