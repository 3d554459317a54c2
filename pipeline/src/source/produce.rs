//! Writing generated traffic into Kafka, keyed and partitioned as the generator says,
//! so a user can try the Kafka path without a platform.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use super::{create_missing_topics, send_when_queued};
use crate::error::{Error, Result};
use crate::generate::{generate, GenerateOptions, GenerateSummary, Message};
use crate::schema::SchemaRegistry;

/// Creates every topic of the registry with its partition count, unless it exists
/// (then nothing is asked of the admin API, which some brokers lack).
pub async fn create_topics(brokers: &str, registry: &SchemaRegistry) -> Result<()> {
    let topics = registry.topics().map(|t| NewTopic::new(&t.topic, t.partitions as i32, TopicReplication::Fixed(1))).collect();
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    create_missing_topics(&config, topics).await.map_err(|e| Error::Input(format!("kafka {brokers}: {e}")))?;
    Ok(())
}

/// Creates the topics (with the schemas' partition counts) and produces every
/// generated message into them, in order per partition; with `rate`, at that many
/// messages per second (the generation blocks this thread meanwhile).
pub async fn produce_generated(
    brokers: &str,
    registry: &SchemaRegistry,
    options: &GenerateOptions,
    rate: Option<u32>,
) -> Result<GenerateSummary> {
    create_topics(brokers, registry).await?;
    let mut sender = Sender::new(brokers, rate)?;
    let summary = generate(registry, options, &mut |m| sender.send(m))?;
    sender.flush()?;
    Ok(summary)
}

/// Generated traffic kept in a file, to be produced later without generating it
/// again: the benchmark's producer then costs the machine what a real service's
/// would (the generator's CPU, 1.8 s for 1.5 M messages, is spent before the clock).
pub struct Spool {
    path: PathBuf,
    pub summary: GenerateSummary,
}

impl Spool {
    /// Generates the traffic into `path`: each message as its topic, partition,
    /// key and payload, length-prefixed.
    pub fn record(registry: &SchemaRegistry, options: &GenerateOptions, path: &Path) -> Result<Self> {
        let io = |e| Error::io(path, e);
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
        let summary = generate(registry, options, &mut |m| {
            let field = |out: &mut BufWriter<File>, bytes: Option<&[u8]>| match bytes {
                Some(b) => out.write_all(&(b.len() as u32).to_le_bytes()).and_then(|()| out.write_all(b)),
                None => out.write_all(&ABSENT.to_le_bytes()),
            };
            field(&mut out, Some(m.topic.as_bytes()))
                .and_then(|()| out.write_all(&m.partition.to_le_bytes()))
                .and_then(|()| field(&mut out, m.key.map(str::as_bytes)))
                .and_then(|()| field(&mut out, m.payload))
                .map_err(io)
        })?;
        out.flush().map_err(io)?;
        Ok(Spool { path: path.to_path_buf(), summary })
    }

    /// Produces the recorded messages in their order; with `rate`, at that many a second.
    pub fn produce(&self, brokers: &str, rate: Option<u32>) -> Result<u64> {
        let mut sender = Sender::new(brokers, rate)?;
        self.for_each(&mut |m| sender.send(m))?;
        let sent = sender.sent;
        sender.flush()?;
        Ok(sent)
    }

    /// Hands each recorded message to `emit`, in the order they were recorded.
    fn for_each(&self, emit: &mut dyn FnMut(Message<'_>) -> Result<()>) -> Result<()> {
        let io = |e| Error::io(&self.path, e);
        let mut input = BufReader::with_capacity(1 << 20, File::open(&self.path).map_err(io)?);
        let (mut topic, mut key, mut payload) = (Vec::new(), Vec::new(), Vec::new());
        let (mut topic_name, mut partition) = (String::new(), [0u8; 4]);
        loop {
            match read_field(&mut input, &mut topic) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(io(e)),
            }
            if topic != topic_name.as_bytes() {
                topic_name = utf8(&self.path, "a topic name", &topic)?.to_string();
            }
            input.read_exact(&mut partition).map_err(io)?;
            let key = match read_field(&mut input, &mut key).map_err(io)? {
                true => Some(utf8(&self.path, "a key", &key)?),
                false => None,
            };
            let payload = read_field(&mut input, &mut payload).map_err(io)?.then_some(payload.as_slice());
            emit(Message { topic: &topic_name, partition: u32::from_le_bytes(partition), key, payload })?;
        }
    }
}

/// The length written for an absent key, or a tombstone's absent payload.
const ABSENT: u32 = u32::MAX;

/// Reads one length-prefixed field into `into`; false if it was absent.
fn read_field(input: &mut impl Read, into: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    into.clear();
    if len == ABSENT {
        return Ok(false);
    }
    into.resize(len as usize, 0);
    input.read_exact(into)?;
    Ok(true)
}

fn utf8<'b>(spool: &Path, what: &str, bytes: &'b [u8]) -> Result<&'b str> {
    std::str::from_utf8(bytes).map_err(|e| Error::Internal(format!("{}: {what}: {e}", spool.display())))
}

/// An idempotent producer that keeps to a rate, if it has one, and waits while
/// librdkafka's queue is full.
struct Sender {
    brokers: String,
    producer: BaseProducer,
    rate: Option<u32>,
    started: std::time::Instant,
    sent: u64,
}

impl Sender {
    fn new(brokers: &str, rate: Option<u32>) -> Result<Self> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "500000")
            .create()
            .map_err(|e| kafka_error(brokers, e))?;
        Ok(Sender { brokers: brokers.to_string(), producer, rate, started: std::time::Instant::now(), sent: 0 })
    }

    fn send(&mut self, m: Message<'_>) -> Result<()> {
        self.sent += 1;
        if let Some(rate) = self.rate.filter(|_| self.sent.is_multiple_of(1000)) {
            let due = Duration::from_secs_f64(self.sent as f64 / f64::from(rate.max(1)));
            if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(m.topic).partition(m.partition as i32);
        if let Some(key) = m.key {
            record = record.key(key.as_bytes());
        }
        if let Some(payload) = m.payload {
            record = record.payload(payload);
        }
        send_when_queued(&self.producer, record).map_err(|e| kafka_error(&self.brokers, e))
    }

    fn flush(self) -> Result<()> {
        self.producer.flush(Duration::from_secs(60)).map_err(|e| kafka_error(&self.brokers, e))
    }
}

fn kafka_error(brokers: &str, e: KafkaError) -> Error {
    Error::Input(format!("kafka {brokers}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Owned = (String, u32, Option<String>, Option<Vec<u8>>);

    fn owned(m: Message<'_>) -> Owned {
        (m.topic.to_string(), m.partition, m.key.map(str::to_string), m.payload.map(<[u8]>::to_vec))
    }

    #[test]
    fn a_spool_gives_back_what_the_generator_made_in_its_order() {
        let registry = SchemaRegistry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")).unwrap();
        let options = GenerateOptions { users: 40, hours: 2, ..GenerateOptions::default() };
        let mut generated: Vec<Owned> = Vec::new();
        generate(&registry, &options, &mut |m| {
            generated.push(owned(m));
            Ok(())
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::record(&registry, &options, &dir.path().join("spool")).unwrap();
        let mut replayed: Vec<Owned> = Vec::new();
        spool
            .for_each(&mut |m| {
                replayed.push(owned(m));
                Ok(())
            })
            .unwrap();
        assert_eq!(spool.summary.total_messages(), generated.len() as u64);
        assert!(generated.iter().any(|m| m.3.is_none()), "the traffic has tombstones");
        assert!(generated.iter().any(|m| m.2.is_none()), "and messages without a key");
        assert_eq!(replayed, generated);
    }
}
