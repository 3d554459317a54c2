//! Kafka as a source, through librdkafka. The pipeline owns its offsets: it assigns
//! every partition of the topics itself (no consumer-group rebalancing, no slow
//! join), starts each where the lake's checkpoint says, and looks for new
//! partitions and topics every few seconds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, Statistics, TopicPartitionList};

use super::{PartitionId, RawBatch, RawMessage, Source};
use crate::error::{Error, Result};

/// Where the brokers' high watermarks go: with the pipeline's own positions they
/// give the consumer lag (the pipeline stores no offsets in Kafka, so librdkafka's
/// own lag figures stay empty). The run's metrics implement it.
pub trait BrokerStats: Send + Sync {
    fn high_watermark(&self, topic: &str, partition: i32, offset: i64);
    /// Messages just received, by how long each took from its Kafka timestamp (ms).
    fn received(&self, latencies_ms: &[i64]);
}

/// Hands the high watermarks of librdkafka's statistics to a [`BrokerStats`].
struct StatsContext {
    observed: Arc<dyn BrokerStats>,
}

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                if partition >= 0 && p.hi_offset >= 0 {
                    self.observed.high_watermark(topic, partition, p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for StatsContext {}

/// How long a partition's messages may wait for more before they go out as a batch.
const LINGER: Duration = Duration::from_millis(100);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// What is read ahead unless `queued.max.messages.kbytes` says otherwise: about a
/// second of the bench's 100,000 messages/s (librdkafka's own default is 64 MiB).
const DEFAULT_QUEUE_BYTES: usize = 32 << 20;
/// How often the topics' partitions are listed again, to pick up added ones.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

pub struct KafkaSource {
    consumer: StreamConsumer<StatsContext>,
    brokers: String,
    topics: Vec<String>,
    partitions: Vec<PartitionId>,
    /// Where each partition starts, from [`Source::seek`]; the others start at the beginning.
    starts: BTreeMap<PartitionId, i64>,
    /// Partitions handed to librdkafka so far.
    assigned: Vec<PartitionId>,
    last_discovery: Instant,
    batches: Batches,
    /// Stop (as a bounded source) after waiting this long without a message while
    /// the brokers answer.
    stop_when_idle: Option<Duration>,
    quiet: Quiet,
    /// Since the last batch was handed out: each message's time from its Kafka
    /// timestamp to its receipt here (the broker's path and librdkafka's queue).
    received: Vec<i64>,
    /// What to read ahead of the loop, in bytes: `queued.max.messages.kbytes` if set.
    queue_bytes: usize,
}

/// How long the source has waited for a message in vain. Only time spent waiting
/// counts: time the pipeline spends elsewhere (planning and restoring a checkpoint
/// before the first read, a long commit) is no sign that the input has ended. A
/// restart whose restore took longer than `--stop-when-idle` once ended at its
/// first read, closing every window with the input half read.
struct Quiet {
    waited: Duration,
    since: Instant,
    /// The partitions the broker held more of when the last wait ended: (partition,
    /// where reading is, the broker's end).
    behind: Vec<(PartitionId, i64, i64)>,
}

impl Quiet {
    fn new() -> Self {
        Quiet { waited: Duration::ZERO, since: Instant::now(), behind: Vec::new() }
    }

    /// A message came (or the broker was away): the wait starts again.
    fn reset(&mut self) {
        self.waited = Duration::ZERO;
        self.since = Instant::now();
        self.behind.clear();
    }

    /// Waiting begins (again): the time since the last look is not counted. A wait
    /// cut short by the pipeline loses at most the time since its last look.
    fn resume(&mut self) {
        self.since = Instant::now();
    }

    /// The time waited so far, counting up to now.
    fn waited(&mut self) -> Duration {
        let now = Instant::now();
        self.waited += now - self.since;
        self.since = now;
        self.waited
    }
}

/// What is remembered of a partition's last batch.
#[derive(Clone, Copy, Default)]
struct HandedOut {
    /// Its bytes and messages: the next batch starts with that room, not growing
    /// (and copying, and faulting pages in) as it fills.
    bytes: usize,
    messages: usize,
    /// Where the partition's next message is.
    next_offset: i64,
}

/// Batches being filled, one per partition, each with when it was started.
struct Batches {
    pending: Vec<(Instant, RawBatch)>,
    /// Where the last message went: messages come in runs per partition.
    last: usize,
    batch_size: usize,
    /// Per partition, its last batch handed out.
    handed_out: HashMap<PartitionId, HandedOut>,
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
        observed: Arc<dyn BrokerStats>,
    ) -> Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("group.id", "sluice")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "1000")
            // Back within seconds of a broker's return (librdkafka's default waits up to 10 s).
            .set("reconnect.backoff.max.ms", "2000")
            // Keep fetching ahead of the pipeline: measured against Tansu, this read a
            // backlog 1.5x as fast as librdkafka's default (100000).
            .set("queued.min.messages", "1000000")
            // A fetch the broker holds for want of data ends this soon. Against Tansu at
            // 100,000 messages/s, p99 until received was 0.08-0.14 s, against 0.15-0.48 s
            // at 100 ms (alternating runs); the price is an idle consumer's fetches,
            // about 100 a second per broker.
            .set("fetch.wait.max.ms", "10");
        for (key, value) in settings {
            config.set(key, value);
        }
        // librdkafka checks the setting's range when the consumer is created.
        let queue_kbytes = config.get("queued.max.messages.kbytes").and_then(|kb| kb.parse::<usize>().ok());
        let consumer: StreamConsumer<StatsContext> = config
            .create_with_context(StatsContext { observed })
            .map_err(|e| Error::Config(format!("kafka {brokers}: {e}")))?;
        let mut source = KafkaSource {
            consumer,
            brokers: brokers.to_string(),
            topics: topics.to_vec(),
            partitions: Vec::new(),
            starts: BTreeMap::new(),
            assigned: Vec::new(),
            last_discovery: Instant::now(),
            batches: Batches { pending: Vec::new(), last: 0, batch_size, handed_out: HashMap::new() },
            stop_when_idle,
            quiet: Quiet::new(),
            received: Vec::new(),
            queue_bytes: queue_kbytes.map_or(DEFAULT_QUEUE_BYTES, |kb| kb.saturating_mul(1024)),
        };
        source.partitions = source.discover(METADATA_TIMEOUT)?;
        for topic in topics {
            if !source.partitions.iter().any(|p| &*p.topic == topic) {
                tracing::warn!(topic, "topic not on the broker (yet); it is read once it appears");
            }
        }
        Ok(source)
    }

    /// How far to read ahead of the run loop ([`super::ReadAhead`]): as much as
    /// librdkafka may queue, so that `-X queued.max.messages.kbytes` bounds both.
    pub fn queue_bytes(&self) -> usize {
        self.queue_bytes
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
            // A broker that is away: try again later; meanwhile nothing is idle.
            Err(e) => {
                tracing::warn!(error = %e, "kafka");
                self.quiet.reset();
                Ok(())
            }
        }
    }

    /// The partitions whose end on the broker is past where reading is: (partition,
    /// where reading is, the broker's end). Asked only when the input fell quiet.
    fn behind(&self) -> Result<Vec<(PartitionId, i64, i64)>> {
        let ends = self.broker_offsets(self.assigned.iter(), Offset::End)?;
        // Where reading is in a partition nothing was read from: its seek start,
        // unless the log now starts later (retention), else the log's start.
        let unread = self.assigned.iter().filter(|id| !self.batches.handed_out.contains_key(*id));
        let firsts = self.broker_offsets(unread, Offset::Beginning)?;
        let mut behind = Vec::new();
        for id in &self.assigned {
            let at = match (self.batches.handed_out.get(id), firsts.get(id)) {
                (Some(last), _) => last.next_offset,
                (None, first) => {
                    let first = first.copied().unwrap_or(0);
                    self.starts.get(id).copied().unwrap_or(first).max(first)
                }
            };
            // A partition whose end is not known may hold more: no end of input.
            let end = *ends.get(id).ok_or_else(|| Error::Input(format!("kafka {}: {}/{}: no end offset", self.brokers, id.topic, id.partition)))?;
            if end > at {
                behind.push((id.clone(), at, end));
            }
        }
        Ok(behind)
    }

    /// The brokers' first or next offset of each of `partitions`: one request per
    /// broker (ListOffsets), not two per partition as `fetch_watermarks` makes.
    fn broker_offsets<'a>(&self, partitions: impl Iterator<Item = &'a PartitionId>, which: Offset) -> Result<HashMap<PartitionId, i64>> {
        let failed = |e: rdkafka::error::KafkaError| Error::Input(format!("kafka {}: offsets: {e}", self.brokers));
        let mut list = TopicPartitionList::new();
        for id in partitions {
            list.add_partition_offset(&id.topic, id.partition, which).map_err(failed)?;
        }
        if list.count() == 0 {
            return Ok(HashMap::new());
        }
        let answered = self.consumer.offsets_for_times(list, Duration::from_secs(2)).map_err(failed)?;
        let mut offsets = HashMap::with_capacity(answered.count());
        for element in answered.elements() {
            element.error().map_err(|e| Error::Input(format!("kafka {}: {}/{}: offsets: {e}", self.brokers, element.topic(), element.partition())))?;
            if let Offset::Offset(offset) = element.offset() {
                offsets.insert(PartitionId { topic: Arc::from(element.topic()), partition: element.partition() }, offset);
            }
        }
        Ok(offsets)
    }
}

impl Batches {
    /// Adds a message to its partition's batch; returns the batch once it is full.
    fn add(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) -> Option<RawBatch> {
        let same = |b: &RawBatch| b.partition.partition == message.partition() && &*b.partition.topic == message.topic();
        let i = match self.pending.get(self.last) {
            Some((_, b)) if same(b) => self.last,
            _ => match self.pending.iter().position(|(_, b)| same(b)) {
                Some(i) => i,
                None => {
                    let partition = PartitionId { topic: Arc::from(message.topic()), partition: message.partition() };
                    let HandedOut { bytes, messages, .. } = self.handed_out.get(&partition).copied().unwrap_or_default();
                    let batch = RawBatch {
                        partition,
                        ingested_at: crate::time::now_micros(),
                        data: Vec::with_capacity(bytes),
                        messages: Vec::with_capacity(messages),
                        next_offset: 0,
                        end_of_partition: false,
                    };
                    self.pending.push((Instant::now(), batch));
                    self.pending.len() - 1
                }
            },
        };
        self.last = i;
        let batch = &mut self.pending[i].1;
        let payload = message.payload().map(|bytes| {
            let start = batch.data.len();
            batch.data.extend_from_slice(bytes);
            start..batch.data.len()
        });
        batch.messages.push(RawMessage { offset: message.offset(), payload, timestamp: message.timestamp().to_millis() });
        batch.next_offset = message.offset() + 1;
        (batch.messages.len() >= self.batch_size).then(|| self.hand_out(i))
    }

    fn hand_out(&mut self, i: usize) -> RawBatch {
        let batch = self.pending.swap_remove(i).1;
        let last = HandedOut { bytes: batch.data.len(), messages: batch.messages.len(), next_offset: batch.next_offset };
        self.handed_out.insert(batch.partition.clone(), last);
        batch
    }

    /// The batch that has waited longest, if it has waited `at_least`.
    fn take_oldest(&mut self, at_least: Duration) -> Option<RawBatch> {
        let (i, (since, _)) = self.pending.iter().enumerate().min_by_key(|(_, (since, _))| *since)?;
        (since.elapsed() >= at_least).then(|| self.hand_out(i))
    }

    /// When to stop waiting for messages: when the oldest batch has lingered enough,
    /// or, with none, after a while to check for new partitions and idleness.
    fn wake_at(&self) -> tokio::time::Instant {
        let oldest = self.pending.iter().map(|(since, _)| *since + LINGER).min();
        tokio::time::Instant::from_std(oldest.unwrap_or_else(|| Instant::now() + LINGER / 2))
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

    async fn read_topics(&mut self, topics: &[String], starts: &BTreeMap<PartitionId, i64>) -> Result<()> {
        let new: Vec<String> = topics.iter().filter(|t| !self.topics.contains(t)).cloned().collect();
        if new.is_empty() {
            return Ok(());
        }
        tracing::info!(topics = ?new, "reading more topics");
        for (id, &offset) in starts.iter().filter(|(id, _)| new.iter().any(|t| **t == *id.topic)) {
            self.starts.entry(id.clone()).or_insert(offset);
        }
        self.topics.extend(new);
        self.partitions = self.discover(METADATA_TIMEOUT)?;
        self.assign_new()
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>> {
        if self.assigned.is_empty() {
            self.assign_new()?;
        }
        self.consumer.context().observed.received(&self.received);
        self.received.clear();
        self.quiet.resume();
        loop {
            self.rediscover()?;
            if let Some(batch) = self.batches.take_oldest(LINGER) {
                return Ok(Some(batch));
            }
            let wake = tokio::time::sleep_until(self.batches.wake_at());
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    biased;
                    received = self.consumer.recv() => match received {
                        Ok(message) => {
                            self.quiet.reset();
                            if let Some(sent) = message.timestamp().to_millis() {
                                self.received.push(crate::time::now_micros() / 1000 - sent);
                            }
                            if let Some(full) = self.batches.add(&message) {
                                return Ok(Some(full));
                            }
                        }
                        // A broker that is away: librdkafka reconnects; keep polling. Time
                        // without a broker does not count towards --stop-when-idle.
                        Err(e) => {
                            tracing::warn!(error = %e, "kafka");
                            self.quiet.reset();
                        }
                    },
                    () = &mut wake => break,
                }
            }
            if let Some(batch) = self.batches.take_oldest(LINGER) {
                return Ok(Some(batch));
            }
            if self.batches.pending.is_empty() && self.stop_when_idle.is_some_and(|idle| self.quiet.waited() >= idle) {
                // Quiet only counts if a broker answers (an outage is no end of
                // input) and has nothing more: a fetch may be slow.
                match self.behind() {
                    Ok(behind) if behind.is_empty() => return Ok(None),
                    Ok(behind) if self.quiet.behind == behind => {
                        // The broker's ends did not move, nor did anything come, for
                        // two waits: what is left are a transaction's markers.
                        tracing::info!(partitions = behind.len(), "nothing came for two idle waits; ending");
                        return Ok(None);
                    }
                    Ok(behind) => {
                        tracing::debug!(partitions = behind.len(), "quiet, but the broker holds more; waiting for it");
                        self.quiet.reset();
                        self.quiet.behind = behind;
                    }
                    Err(e) => {
                        tracing::warn!(brokers = %self.brokers, error = %e, "no broker answers; waiting for one");
                        self.quiet.reset();
                    }
                }
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use super::*;

    /// The messages a bounded source gives before it ends (within 20 s).
    async fn read_to_the_end(source: &mut KafkaSource) -> usize {
        let mut read = 0;
        let reading = async {
            while let Some(batch) = source.next_batch().await.unwrap() {
                read += batch.messages.len();
            }
        };
        tokio::time::timeout(Duration::from_secs(20), reading).await.expect("the source ends");
        read
    }

    /// A restart that spends longer planning and restoring than `--stop-when-idle`
    /// still reads what the broker holds, and ends only once it has waited that
    /// long after the last message.
    #[tokio::test]
    async fn a_slow_start_is_not_the_end_of_a_bounded_run() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let producer: BaseProducer =
            ClientConfig::new().set("bootstrap.servers", cluster.bootstrap_servers()).create().unwrap();
        for i in 0..25 {
            producer.send(BaseRecord::<(), _>::to("t").payload(&format!("{i}"))).unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        // The mock broker answers its first fetch only after this long: as a broker
        // under load might, and longer than the first wait for messages.
        cluster.broker_round_trip_time(1, Duration::from_millis(300)).unwrap();

        let idle = Duration::from_millis(500);
        let observed = Arc::new(crate::runtime::Observed::default());
        let mut source = KafkaSource::open(&cluster.bootstrap_servers(), &["t".into()], &[], 10, Some(idle), observed).unwrap();
        // The pipeline restores a checkpoint for three times the idle time.
        std::thread::sleep(3 * idle);
        let started = Instant::now();
        assert_eq!(read_to_the_end(&mut source).await, 25, "every message before the end");
        assert!(started.elapsed() >= idle, "the end came only after waiting {idle:?}");
    }

    /// A transaction's commit marker takes an offset no message is read at: the
    /// broker's end stays one past where reading is, and the run still ends.
    #[tokio::test]
    async fn a_bounded_run_over_a_transactional_topic_ends() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("transactional.id", "upstream")
            .create()
            .unwrap();
        producer.init_transactions(Duration::from_secs(10)).unwrap();
        producer.begin_transaction().unwrap();
        for i in 0..5 {
            producer.send(BaseRecord::<(), _>::to("t").payload(&format!("{i}"))).unwrap();
        }
        producer.commit_transaction(Duration::from_secs(10)).unwrap();

        let idle = Duration::from_millis(300);
        let observed = Arc::new(crate::runtime::Observed::default());
        let mut source = KafkaSource::open(&cluster.bootstrap_servers(), &["t".into()], &[], 10, Some(idle), observed).unwrap();
        assert_eq!(read_to_the_end(&mut source).await, 5);
    }

    /// librdkafka's mock cluster, unlike Tansu, reports exact high watermarks.
    #[tokio::test]
    async fn consumer_lag_is_the_high_watermark_minus_the_pipelines_position() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 2, 1).unwrap();
        let producer: BaseProducer =
            ClientConfig::new().set("bootstrap.servers", cluster.bootstrap_servers()).create().unwrap();
        for (partition, count) in [(0, 30), (1, 10)] {
            for i in 0..count {
                producer.send(BaseRecord::<(), _>::to("t").partition(partition).payload(&format!("{i}"))).unwrap();
            }
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let observed = Arc::new(crate::runtime::Observed::default());
        let settings = [("statistics.interval.ms".to_string(), "100".to_string())];
        let mut source = KafkaSource::open(&cluster.bootstrap_servers(), &["t".into()], &settings, 4, None, observed.clone()).unwrap();
        // The pipeline has processed partition 1 and the first batch of partition 0.
        let mut positions = BTreeMap::new();
        let started = Instant::now();
        while positions.values().sum::<i64>() < 40 && started.elapsed() < Duration::from_secs(20) {
            let b = source.next_batch().await.unwrap().unwrap();
            let processed = b.partition.partition == 1 || b.messages.first().is_some_and(|m| m.offset == 0);
            if processed {
                observed.batch("sluice", "t", b.partition.partition, b.next_offset, b.messages.len() as u64, 0, 0, 0);
            }
            positions.insert(b.partition.partition, b.next_offset);
        }
        assert_eq!(positions, BTreeMap::from([(0, 30), (1, 10)]), "every message read");
        let expected = ["sluice_consumer_lag{topic=\"t\",partition=\"0\"} 26", "sluice_consumer_lag{topic=\"t\",partition=\"1\"} 0"];
        let started = Instant::now();
        loop {
            let metrics = observed.render();
            if expected.iter().all(|line| metrics.lines().any(|l| l == *line)) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no lag of 26 and 0 in\n{metrics}");
            // Statistics arrive while the consumer is polled.
            let _ = tokio::time::timeout(Duration::from_millis(200), source.next_batch()).await;
        }
    }
}
