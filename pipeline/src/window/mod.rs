//! Window operators: incremental aggregate state per open window.

mod tumbling;

pub use tumbling::{window_start, TumblingWindows};
