//! Event time: watermarks per topic-partition and per query.

mod watermark;

pub use watermark::{PartitionMark, QueryClock, Watermarks, DEFAULT_IDLE_TIMEOUT};

/// Wall-clock now, µs since the epoch.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
