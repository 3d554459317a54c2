//! A repartitioned table's topic on the broker, `sluice.repartition.<group>.<table>`,
//! one partition per shard: every shard's [`Sender`] sends it its partials at the
//! end of each epoch, and the table's shard reads every partition with a
//! [`Receiver`] from where its checkpoint's merges left off.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};

use super::Partial;
use crate::catalog::TablePath;
use crate::error::{Error, Result};
use crate::source::{create_missing_topics, send_when_queued};

/// The largest partial sent, and the topics' `max.message.bytes`.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// How long an epoch's partials may take to be acknowledged before its commit fails.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The topic of `table`'s partials in `group`.
pub fn topic_name(group: &str, table: &TablePath) -> String {
    format!("sluice.repartition.{group}.{}", table.sql_name())
}

/// The brokers and the `-X` settings a group's instance was started with.
#[derive(Clone)]
pub struct Brokers {
    pub servers: String,
    pub settings: Vec<(String, String)>,
}

/// Settings may hold credentials: only their names are shown.
impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.settings.iter().map(|(key, _)| key.as_str()).collect();
        f.debug_struct("Brokers").field("servers", &self.servers).field("settings", &names).finish()
    }
}

impl Brokers {
    /// A client's configuration: `defaults`, then the `-X` settings, which win.
    fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.servers);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.settings {
            config.set(key, value);
        }
        config
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Input(format!("kafka {}: {what}: {e}", self.servers))
    }
}

/// Creates those of `topics` that do not exist, with `partitions` partitions each.
pub async fn create_topics(brokers: &Brokers, topics: &[String], partitions: u32) -> Result<()> {
    let max_bytes = MAX_MESSAGE_BYTES.to_string();
    let new = topics.iter().map(|t| NewTopic::new(t, partitions as i32, TopicReplication::Fixed(-1)).set("max.message.bytes", &max_bytes)).collect();
    for topic in create_missing_topics(&brokers.config(&[]), new).await.map_err(|e| brokers.error("the repartition topics", e))? {
        tracing::info!(topic, partitions, "created a repartition topic");
    }
    Ok(())
}

/// Remembers the first message the broker did not take: a flush only waits.
#[derive(Default)]
struct Deliveries {
    failed: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, message)) = result {
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            failed.get_or_insert_with(|| format!("{}/{}: {e}", message.topic(), message.partition()));
        }
    }
}

/// Sends a shard's partials.
pub struct Sender {
    producer: BaseProducer<Deliveries>,
    brokers: Brokers,
    /// Messages and bytes (values and headers) sent so far: the topic's cost.
    pub sent: (u64, u64),
}

impl Sender {
    pub fn open(brokers: &Brokers) -> Result<Self> {
        // Every replica, before the manifest says the epoch is done. A part holds
        // about `PART_BYTES` of states, but one key's percentile values can be more.
        let max_bytes = MAX_MESSAGE_BYTES.to_string();
        let config = brokers.config(&[("acks", "all"), ("linger.ms", "0"), ("message.max.bytes", &max_bytes)]);
        let producer = config.create_with_context(Deliveries::default()).map_err(|e| brokers.error("a producer", e))?;
        Ok(Sender { producer, brokers: brokers.clone(), sent: (0, 0) })
    }

    /// Queues `partial` for partition `partition` of `topic`.
    pub fn send(&mut self, topic: &str, partition: u32, partial: &Partial) -> Result<()> {
        let (headers, value) = partial.encode()?;
        let header_bytes: usize = headers.iter().map(|(key, value)| key.len() + value.len()).sum();
        self.sent = (self.sent.0 + 1, self.sent.1 + (header_bytes + value.as_ref().map_or(0, Vec::len)) as u64);
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| h.insert(Header { key, value: Some(value.as_bytes()) }));
        let mut record = BaseRecord::<(), [u8]>::to(topic).partition(partition as i32).headers(headers);
        if let Some(value) = &value {
            record = record.payload(value);
        }
        send_when_queued(&self.producer, record).map_err(|e| self.brokers.error(&format!("sending a partial to {topic}/{partition}"), e))
    }

    /// Waits until the broker has every partial sent; fails if one was refused.
    pub fn flush(&self) -> Result<()> {
        self.producer.flush(FLUSH_TIMEOUT).map_err(|e| self.brokers.error("waiting for the partials' acknowledgements", e))?;
        let failed = self.producer.context().failed.lock().unwrap_or_else(|p| p.into_inner()).take();
        match failed {
            Some(failed) => Err(self.brokers.error("a partial was not taken", failed)),
            None => Ok(()),
        }
    }
}

/// Reads every partition of one repartition topic.
pub struct Receiver {
    consumer: BaseConsumer,
    topic: String,
    brokers: Brokers,
}

impl Receiver {
    /// Reads `topic`'s partition `p` from `from[p]`.
    pub fn open(brokers: &Brokers, group: &str, topic: &str, from: &[i64]) -> Result<Self> {
        let group_id = format!("{group}.repartition");
        let config = brokers.config(&[
            // Assigned, never subscribed: the id is librdkafka's requirement only.
            ("group.id", &group_id),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            // Partials deleted before they were merged are an error, not a gap.
            ("auto.offset.reset", "error"),
            ("fetch.wait.max.ms", "50"),
        ]);
        let consumer: BaseConsumer = config.create().map_err(|e| brokers.error("a consumer", e))?;
        let mut assignment = TopicPartitionList::new();
        for (partition, offset) in from.iter().enumerate() {
            assignment.add_partition_offset(topic, partition as i32, Offset::Offset(*offset)).map_err(|e| brokers.error(topic, e))?;
        }
        consumer.assign(&assignment).map_err(|e| brokers.error(&format!("reading {topic}"), e))?;
        Ok(Receiver { consumer, topic: topic.to_string(), brokers: brokers.clone() })
    }

    /// The partials that have arrived, with their partitions and offsets.
    pub fn take_arrived(&self) -> Result<Vec<(u32, i64, Partial)>> {
        let mut arrived = Vec::new();
        while let Some(message) = self.consumer.poll(Duration::ZERO) {
            let message = match message {
                Ok(message) => message,
                // Partials gone before they were merged, or a client that cannot go on.
                Err(e @ KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => return Err(self.brokers.error(&format!("reading {}", self.topic), e)),
                Err(e) if self.consumer.client().fatal_error().is_some() => return Err(self.brokers.error(&format!("reading {}", self.topic), e)),
                // A broker away for a moment: librdkafka reconnects, and the next commit reads on.
                Err(e) => {
                    tracing::warn!(topic = self.topic, "reading partials: {e}");
                    break;
                }
            };
            let at = format!("{}/{}@{}", self.topic, message.partition(), message.offset());
            let headers: Vec<(&str, Option<&[u8]>)> = message.headers().map(|h| h.iter().map(|h| (h.key, h.value)).collect()).unwrap_or_default();
            let partial = Partial::decode(&headers, message.payload(), &at)?;
            let partition = u32::try_from(message.partition()).map_err(|_| Error::Input(format!("{at}: a negative partition")))?;
            arrived.push((partition, message.offset(), partial));
        }
        Ok(arrived)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_show_by_name_never_by_value() {
        let brokers = Brokers { servers: "k:9092".into(), settings: vec![("sasl.password".into(), "hunter2".into())] };
        let shown = format!("{brokers:?} {:?}", crate::runtime::RunOptions { brokers: Some(brokers.clone()), ..Default::default() });
        assert!(shown.contains("sasl.password") && shown.contains("k:9092"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let refused = brokers.error("a consumer", "no").to_string();
        assert!(!refused.contains("hunter2"), "{refused}");
    }

    #[test]
    fn a_tables_topic_names_its_group_and_table() {
        let table = TablePath::new("monitoring/api_performance/request_response_times").unwrap();
        assert_eq!(topic_name("lake-writers", &table), "sluice.repartition.lake-writers.monitoring.api_performance.request_response_times");
    }
}
