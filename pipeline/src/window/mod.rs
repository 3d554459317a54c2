//! Window operators: incremental aggregate state per open window.

mod panes;

pub use panes::{window_start, Windows};
