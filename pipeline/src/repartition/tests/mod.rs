//! The repartition parts together: through a real broker, and what they cost.

mod cost;
mod through_kafka;
