//! Kafka as a source, through librdkafka. The pipeline owns its offsets: it assigns
//! every partition of the topics itself (no consumer-group rebalancing, no slow
//! join) and starts each at the offset it is given.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{PartitionId, RawBatch, RawMessage, Source};
use crate::error::{Error, Result};

/// How long a partition's messages may wait for more before they go out as a batch.
const LINGER: Duration = Duration::from_millis(100);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

pub struct KafkaSource {
    consumer: StreamConsumer,
    partitions: Vec<PartitionId>,
    batch_size: usize,
    /// Stop (as a bounded source) after this long without a message.
    stop_when_idle: Option<Duration>,
    pending: BTreeMap<PartitionId, RawBatch>,
    first_pending: Option<Instant>,
    last_message: Instant,
}

impl KafkaSource {
    /// Connects and assigns every partition of `topics` from its beginning.
    /// `settings` go to librdkafka as they are (security, timeouts...).
    pub fn open(
        brokers: &str,
        topics: &[String],
        settings: &[(String, String)],
        batch_size: usize,
        stop_when_idle: Option<Duration>,
    ) -> Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("group.id", "sluice")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        for (key, value) in settings {
            config.set(key, value);
        }
        let consumer: StreamConsumer =
            config.create().map_err(|e| Error::Config(format!("kafka {brokers}: {e}")))?;
        let mut assignment = TopicPartitionList::new();
        let mut partitions = Vec::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                .map_err(|e| Error::Input(format!("kafka {brokers}: metadata of `{topic}`: {e}")))?;
            for t in metadata.topics() {
                if t.error().is_some() {
                    tracing::warn!(topic, "topic not on the broker; skipped");
                    continue;
                }
                for p in t.partitions() {
                    assignment
                        .add_partition_offset(topic, p.id(), Offset::Beginning)
                        .map_err(|e| Error::Input(format!("kafka: {topic}/{}: {e}", p.id())))?;
                    partitions.push(PartitionId { topic: Arc::from(topic.as_str()), partition: p.id() });
                }
            }
        }
        consumer.assign(&assignment).map_err(|e| Error::Input(format!("kafka {brokers}: assign: {e}")))?;
        Ok(KafkaSource {
            consumer,
            partitions,
            batch_size,
            stop_when_idle,
            pending: BTreeMap::new(),
            first_pending: None,
            last_message: Instant::now(),
        })
    }

    /// The pending batch that waited longest (the first, in partition order).
    fn take_pending(&mut self) -> Option<RawBatch> {
        let id = self.pending.keys().next()?.clone();
        let batch = self.pending.remove(&id);
        self.first_pending = if self.pending.is_empty() { None } else { Some(Instant::now()) };
        batch
    }
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    fn partitions(&self) -> Vec<PartitionId> {
        self.partitions.clone()
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>> {
        loop {
            if self.first_pending.is_some_and(|t| t.elapsed() >= LINGER) {
                return Ok(self.take_pending());
            }
            match tokio::time::timeout(LINGER / 2, self.consumer.recv()).await {
                Ok(Ok(message)) => {
                    self.last_message = Instant::now();
                    let id = PartitionId { topic: Arc::from(message.topic()), partition: message.partition() };
                    let batch = self.pending.entry(id.clone()).or_insert_with(|| RawBatch {
                        partition: id.clone(),
                        ingested_at: crate::time::now_micros(),
                        data: Vec::new(),
                        messages: Vec::new(),
                        end_of_partition: false,
                    });
                    let payload = message.payload().map(|bytes| {
                        let start = batch.data.len();
                        batch.data.extend_from_slice(bytes);
                        start..batch.data.len()
                    });
                    batch.messages.push(RawMessage { offset: message.offset(), payload });
                    self.first_pending.get_or_insert_with(Instant::now);
                    if batch.messages.len() >= self.batch_size {
                        let full = self.pending.remove(&id);
                        if self.pending.is_empty() {
                            self.first_pending = None;
                        }
                        return Ok(full);
                    }
                }
                // A broker that is away: librdkafka reconnects; keep polling.
                Ok(Err(e)) => tracing::warn!(error = %e, "kafka"),
                Err(_elapsed) => {
                    if !self.pending.is_empty() {
                        return Ok(self.take_pending());
                    }
                    if self.stop_when_idle.is_some_and(|idle| self.last_message.elapsed() >= idle) {
                        return Ok(None);
                    }
                }
            }
        }
    }
}
