//! What every Kafka client of Sluice does alike: create the topics a cluster
//! lacks, and hand a message to librdkafka, waiting while its queue is full.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::message::ToBytes;
use rdkafka::ClientConfig;

/// How long listing or creating topics may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates those of `topics` the cluster behind `config` does not have; returns
/// the names it created (one another client created meanwhile is there, not an
/// error). The error says what failed, for the caller to put in context.
pub async fn create_missing_topics(config: &ClientConfig, topics: Vec<NewTopic<'_>>) -> Result<Vec<String>, String> {
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(|e| e.to_string())?;
    // Every topic: asking for these by name would let a broker auto-create them
    // with its default partition count.
    let metadata = admin.inner().fetch_metadata(None, ADMIN_TIMEOUT).map_err(|e| format!("listing topics: {e}"))?;
    let exists = |name: &str| metadata.topics().iter().any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty());
    let missing: Vec<NewTopic> = topics.into_iter().filter(|t| !exists(t.name)).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT)).operation_timeout(Some(ADMIN_TIMEOUT));
    let mut created = Vec::new();
    for result in admin.create_topics(&missing, &options).await.map_err(|e| format!("creating topics: {e}"))? {
        match result {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("creating `{topic}`: {code}")),
        }
    }
    Ok(created)
}

/// Hands `record` to librdkafka; while its queue is full, lets it deliver and
/// tries again.
pub fn send_when_queued<C, K, P>(producer: &BaseProducer<C>, mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>) -> KafkaResult<()>
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), again)) => {
                record = again;
                producer.poll(Duration::from_millis(50));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
