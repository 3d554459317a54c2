//! An instance's membership of its consumer group: Kafka's own coordinator says
//! which shards it runs, notices when an instance dies, and hands its shards on.
//!
//! The group consumes a control topic, `sluice.group.<NAME>`, with one partition
//! per shard and no messages: owning partition k means running shard k. The data
//! topics are read by each shard with positions from the lake's checkpoints, not
//! with the group's offsets. Assignment is cooperative-sticky (a rebalance moves
//! only the shards that must move) and membership static (`group.instance.id`), so
//! an instance restarted within the session timeout gets its shards back without
//! a rebalance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// How long a revocation waits for the revoked shards to commit and give their
/// leases up before the group may hand them on.
const REVOKE_WAIT: Duration = Duration::from_secs(60);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A change of what this instance runs, from the group.
#[derive(Debug)]
pub enum Change {
    /// These shards are this instance's now.
    Assigned(Vec<u32>),
    /// These shards go elsewhere: stop them, then answer on the sender.
    Revoked(Vec<u32>, std::sync::mpsc::Sender<()>),
    /// The membership ended with an error (another process uses this instance id...).
    Failed(String),
}

pub struct Membership {
    pub changes: mpsc::UnboundedReceiver<Change>,
    /// The group's shards: the control topic's partitions.
    pub shards: u32,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A group name, which also names a Kafka topic and a lake directory.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let fine = !name.is_empty() && name.len() <= 100 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    match fine && !name.starts_with('.') {
        true => Ok(()),
        false => Err(Error::Config(format!("{what} `{name}`: use 1 to 100 letters, digits, `.`, `_` or `-`, not starting with `.`"))),
    }
}

impl Membership {
    /// Creates the group's control topic with `shards` partitions unless it exists
    /// (then its partitions say how many shards there are), and joins the group.
    pub async fn join(brokers: &str, settings: &[(String, String)], group: &str, instance: &str, shards: u32) -> Result<Membership> {
        check_name("--group", group)?;
        check_name("--instance", instance)?;
        let topic = format!("sluice.group.{group}");
        let kafka = |e: &dyn std::fmt::Display| Error::Config(format!("kafka {brokers}, group `{group}`: {e}"));
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        for (key, value) in settings {
            config.set(key, value);
        }
        let control = NewTopic::new(&topic, shards as i32, TopicReplication::Fixed(-1));
        if !crate::source::create_missing_topics(&config, vec![control]).await.map_err(|e| kafka(&e))?.is_empty() {
            tracing::info!(topic, shards, "created the group's control topic");
        }

        let (sender, changes) = mpsc::unbounded_channel();
        config
            .set("group.id", group)
            .set("group.instance.id", instance)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        // -X settings win over these (a broker without cooperative rebalancing...).
        for (key, value) in settings {
            config.set(key, value);
        }
        let consumer: BaseConsumer<Rebalances> = config.create_with_context(Rebalances { sender: sender.clone() }).map_err(|e| kafka(&e))?;
        // A topic just created may take a moment to show in the metadata.
        let mut found = 0;
        for _ in 0..50 {
            let metadata = consumer.fetch_metadata(None, METADATA_TIMEOUT).map_err(|e| kafka(&e))?;
            found = metadata.topics().iter().find(|t| t.name() == topic).map(|t| t.partitions().len() as u32).unwrap_or(0);
            if found > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if found == 0 {
            return Err(kafka(&format!("the control topic {topic} has no partitions 10 s after it was created")));
        }
        if found != shards {
            tracing::info!(topic, shards = found, "the group's control topic exists: its partitions are the shards");
        }
        consumer.subscribe(&[&topic]).map_err(|e| kafka(&e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let polling = stop.clone();
        let thread = std::thread::Builder::new()
            .name("group".into())
            .spawn(move || {
                // Polling serves the rebalance callbacks and the heartbeats.
                while !polling.load(Ordering::Relaxed) {
                    if let Some(Err(e)) = consumer.poll(Duration::from_millis(200)) {
                        match consumer.client().fatal_error() {
                            Some((_, reason)) => {
                                let _ = sender.send(Change::Failed(reason));
                                return;
                            }
                            None => tracing::warn!(error = %e, "the consumer group"),
                        }
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("starting the group's thread: {e}")))?;
        Ok(Membership { changes, shards: found, stop, thread: Some(thread) })
    }
}

impl Drop for Membership {
    /// Leaves as a static member does: its shards stay its own for the session
    /// timeout, so a restart gets them back without a rebalance.
    fn drop(&mut self) {
        // A revocation waiting for its answer gets it now (its sender is dropped).
        self.changes.close();
        while self.changes.try_recv().is_ok() {}
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Rebalances {
    sender: mpsc::UnboundedSender<Change>,
}

fn shards(partitions: &TopicPartitionList) -> Vec<u32> {
    partitions.elements().iter().filter_map(|p| u32::try_from(p.partition()).ok()).collect()
}

impl ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let (done, stopped) = std::sync::mpsc::channel();
            if self.sender.send(Change::Revoked(shards(partitions), done)).is_ok() && stopped.recv_timeout(REVOKE_WAIT).is_err() {
                tracing::warn!("revoked shards did not stop in time; the group hands them on, and their leases fence them");
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let _ = self.sender.send(Change::Assigned(shards(partitions)));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "the consumer group's rebalance failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn a_group_or_instance_name_that_could_escape_a_topic_or_a_directory_is_refused() {
        for fine in ["lake", "lake-writers_2", "sluice-run-0", "a.b"] {
            assert!(check_name("--group", fine).is_ok(), "{fine}");
        }
        let long = "x".repeat(101);
        for bad in ["", "../lake", "a/b", ".hidden", "with space", "tab\t", "ü", long.as_str()] {
            let refused = check_name("--group", bad).expect_err(bad).to_string();
            assert!(refused.contains("--group") && refused.contains("letters, digits"), "{refused}");
        }
    }
}
