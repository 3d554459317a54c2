//! Windowed aggregates whose keys span input partitions, computed by several
//! instances and merged through Kafka, as Kafka Streams and Flink's `keyBy` do
//! (issue 20, item 3).
//!
//! Each [`Upstream`] (a shard of the input partitions) folds its rows into panes
//! as one process would, and once its watermark passes a pane's end, sends the
//! pane's partial state on ([`Windows::take_passed_panes`]): at the end of an
//! epoch, a [`Partial`] to each partition of the query's repartition topic,
//! holding the states whose GROUP BY key hashes there ([`split_by_key`]) and the
//! upstream's watermark, the marker that says every pane ending by it has been
//! sent. The owner of a repartition partition folds what every upstream sent
//! ([`Merger`]) and emits a window once every upstream's marker has passed its end.
//! In a group, each shard is an upstream and the table's shard owns every
//! partition of its [`topic_name`] (`runtime::exchange`).
//!
//! Exactly once: a message is folded only if the upstream run that sent it is the
//! one that committed its epoch, as the upstream's manifest says
//! ([`Checkpoint::committer_of`](crate::checkpoint::Checkpoint::committer_of)): the
//! attempt at an epoch that died before its manifest, or a zombie fenced from it,
//! may have covered other offsets, and is never folded. Kafka transactions would
//! do the same on a production Kafka; the manifest also works on Tansu, whose
//! fetches do not tell a `read_committed` consumer what was aborted.
//!
//! [`Windows::take_passed_panes`]: crate::window::Windows::take_passed_panes

mod merge;
mod partial;
#[cfg(test)]
mod tests;
mod topic;
mod upstream;

pub use merge::Merger;
pub use partial::{split_by_key, Partial};
pub use topic::{create_topics, topic_name, Brokers, Receiver, Sender};
pub use upstream::{Upstream, PART_BYTES};
