//! Kafka as a source, through librdkafka. The pipeline owns its offsets: it assigns
//! every partition of the topics itself (no consumer-group rebalancing, no slow
//! join), starts each where the lake's checkpoint says, and looks for new
//! partitions and topics every few seconds.

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
/// How often the topics' partitions are listed again, to pick up added ones.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

pub struct KafkaSource {
    consumer: StreamConsumer,
    brokers: String,
    topics: Vec<String>,
    partitions: Vec<PartitionId>,
    /// Where each partition starts, from [`Source::seek`]; the others start at the beginning.
    starts: BTreeMap<PartitionId, i64>,
    /// Partitions handed to librdkafka so far.
    assigned: Vec<PartitionId>,
    last_discovery: Instant,
    batch_size: usize,
    /// Stop (as a bounded source) after this long without a message.
    stop_when_idle: Option<Duration>,
    pending: BTreeMap<PartitionId, RawBatch>,
    first_pending: Option<Instant>,
    last_message: Instant,
}

impl KafkaSource {
    /// Connects and lists the partitions of `topics`; reading starts with the first
    /// batch. `settings` go to librdkafka as they are (security, timeouts...).
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
        let mut source = KafkaSource {
            consumer,
            brokers: brokers.to_string(),
            topics: topics.to_vec(),
            partitions: Vec::new(),
            starts: BTreeMap::new(),
            assigned: Vec::new(),
            last_discovery: Instant::now(),
            batch_size,
            stop_when_idle,
            pending: BTreeMap::new(),
            first_pending: None,
            last_message: Instant::now(),
        };
        source.partitions = source.discover(METADATA_TIMEOUT)?;
        for topic in topics {
            if !source.partitions.iter().any(|p| &*p.topic == topic) {
                tracing::warn!(topic, "topic not on the broker (yet); it is read once it appears");
            }
        }
        Ok(source)
    }

    /// Every partition of the topics that exist now.
    fn discover(&self, timeout: Duration) -> Result<Vec<PartitionId>> {
        let metadata = self
            .consumer
            .fetch_metadata(None, timeout)
            .map_err(|e| Error::Input(format!("kafka {}: listing topics: {e}", self.brokers)))?;
        let mut found = Vec::new();
        for t in metadata.topics() {
            if t.error().is_some() || !self.topics.iter().any(|name| name == t.name()) {
                continue;
            }
            for p in t.partitions() {
                found.push(PartitionId { topic: Arc::from(t.name()), partition: p.id() });
            }
        }
        found.sort();
        Ok(found)
    }

    /// Hands librdkafka the partitions it does not read yet, each from its start.
    fn assign_new(&mut self) -> Result<()> {
        let mut list = TopicPartitionList::new();
        let mut added = Vec::new();
        for id in &self.partitions {
            if self.assigned.contains(id) {
                continue;
            }
            let offset = self.starts.get(id).map_or(Offset::Beginning, |&o| Offset::Offset(o));
            list.add_partition_offset(&id.topic, id.partition, offset)
                .map_err(|e| Error::Input(format!("kafka: {}/{}: {e}", id.topic, id.partition)))?;
            added.push(id.clone());
        }
        if added.is_empty() {
            return Ok(());
        }
        self.consumer
            .incremental_assign(&list)
            .map_err(|e| Error::Input(format!("kafka {}: assign: {e}", self.brokers)))?;
        if !self.assigned.is_empty() {
            tracing::info!(partitions = ?added, "reading new partitions");
        }
        self.assigned.extend(added);
        Ok(())
    }

    /// Every few seconds, picks up partitions added to the topics (and new topics).
    fn rediscover(&mut self) -> Result<()> {
        if self.last_discovery.elapsed() < DISCOVERY_INTERVAL {
            return Ok(());
        }
        self.last_discovery = Instant::now();
        match self.discover(Duration::from_secs(2)) {
            Ok(found) if found.len() > self.partitions.len() => {
                self.partitions = found;
                self.assign_new()
            }
            Ok(_) => Ok(()),
            // A broker that is away: try again later.
            Err(e) => {
                tracing::warn!(error = %e, "kafka");
                Ok(())
            }
        }
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

    fn seek(&mut self, positions: &BTreeMap<PartitionId, i64>) -> Result<()> {
        if !self.assigned.is_empty() {
            return Err(Error::Internal("kafka source: seek after reading began".into()));
        }
        self.starts = positions.clone();
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>> {
        if self.assigned.is_empty() {
            self.assign_new()?;
        }
        loop {
            self.rediscover()?;
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
                        next_offset: 0,
                        end_of_partition: false,
                    });
                    let payload = message.payload().map(|bytes| {
                        let start = batch.data.len();
                        batch.data.extend_from_slice(bytes);
                        start..batch.data.len()
                    });
                    batch.messages.push(RawMessage { offset: message.offset(), payload });
                    batch.next_offset = message.offset() + 1;
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
