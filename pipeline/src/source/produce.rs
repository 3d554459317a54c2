//! Writing generated traffic into Kafka, keyed and partitioned as the generator says,
//! so a user can try the Kafka path without a platform.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use crate::error::{Error, Result};
use crate::generate::{generate, GenerateOptions, GenerateSummary};
use crate::schema::SchemaRegistry;

/// Creates every topic of the registry with its partition count, unless it exists
/// (then nothing is asked of the admin API, which some brokers lack).
pub async fn create_topics(brokers: &str, registry: &SchemaRegistry) -> Result<()> {
    let kafka = |e: KafkaError| Error::Input(format!("kafka {brokers}: {e}"));
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().map_err(kafka)?;
    let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10)).map_err(kafka)?;
    let exists = |topic: &str| metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    let topics: Vec<NewTopic> = registry
        .topics()
        .filter(|t| !exists(&t.topic))
        .map(|t| NewTopic::new(&t.topic, t.partitions as i32, TopicReplication::Fixed(1)))
        .collect();
    if topics.is_empty() {
        return Ok(());
    }
    for result in admin.create_topics(&topics, &AdminOptions::new()).await.map_err(kafka)? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(Error::Input(format!("kafka {brokers}: creating `{topic}`: {code}"))),
        }
    }
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
    let kafka = |e: KafkaError| Error::Input(format!("kafka {brokers}: {e}"));
    create_topics(brokers, registry).await?;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);


    let producer: BaseProducer = config
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .map_err(kafka)?;
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    let summary = generate(registry, options, &mut |m| {
        sent += 1;
        if let Some(rate) = rate.filter(|_| sent.is_multiple_of(1000)) {
            let due = Duration::from_secs_f64(sent as f64 / f64::from(rate.max(1)));
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
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
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(kafka(e)),
            }
        }
    })?;
    producer.flush(Duration::from_secs(60)).map_err(kafka)?;
    Ok(summary)
}
