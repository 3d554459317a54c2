//! Several `sluice run` instances on one lake, coordinated by a Kafka consumer
//! group: the group hands out [`shard`]s of the tables through its [`membership`],
//! and `runtime::group` runs the ones this instance holds.
//!
//! A shard is a whole pipeline over every partition of the topics its tables read,
//! so each table is computed by one instance, from all of its input: windows whose
//! keys span partitions, percentiles, sessions and joins give the rows one process
//! gives, with no repartitioning. The price is that two shards reading one topic
//! both decode it. A table whose file says `-- sluice: repartition` is the
//! exception: every shard folds its share of the partitions, and the table's
//! shard merges them (`runtime::exchange`, [`crate::repartition`]).

pub mod membership;
pub mod shard;

pub use membership::{Change, Membership};
pub use shard::Shard;
