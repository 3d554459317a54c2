//! Window operators: incremental aggregate state per open window.
//!
//! Tumbling and hopping windows keep partial aggregates per pane ([`Windows`]);
//! session windows keep their events' rows until they close ([`Sessions`]).

mod panes;
mod sessions;
#[cfg(test)]
pub(crate) mod testing;

pub use panes::{window_start, Windows};
pub use sessions::Sessions;

use arrow::array::RecordBatch;

use crate::error::Result;
use crate::plan::WindowSpec;

/// The window operator of one windowed query.
pub enum WindowOperator {
    Panes(Windows),
    Sessions(Sessions),
}

impl WindowOperator {
    pub fn new(spec: WindowSpec) -> Result<Self> {
        Ok(match spec.session_gap {
            Some(gap) => WindowOperator::Sessions(Sessions::new(spec, gap)?),
            None => WindowOperator::Panes(Windows::new(spec)),
        })
    }

    /// Folds a batch of the aggregate's input rows in. Sessions judge lateness
    /// themselves, per input row, at `watermark(offset)`, and return the late
    /// rows' offsets and watermarks; panes are filtered before ([`Windows::late_from`]).
    pub fn update(&mut self, batch: &RecordBatch, watermark: impl Fn(i64) -> i64) -> Result<Vec<(i64, i64)>> {
        match self {
            WindowOperator::Panes(w) => w.update(batch).map(|()| Vec::new()),
            WindowOperator::Sessions(s) => s.update(batch, watermark),
        }
    }

    pub fn close_until(&mut self, watermark: i64) -> Result<Option<RecordBatch>> {
        match self {
            WindowOperator::Panes(w) => w.close_until(watermark),
            WindowOperator::Sessions(s) => s.close_until(watermark),
        }
    }

    /// The starts of the windows emitted again, corrected, by the last closes.
    pub fn take_corrected(&mut self) -> Vec<i64> {
        match self {
            WindowOperator::Panes(w) => w.take_corrected(),
            WindowOperator::Sessions(_) => Vec::new(),
        }
    }

    pub fn resume_after(&mut self, watermark: i64) {
        if let WindowOperator::Panes(w) = self {
            w.resume_after(watermark);
        }
    }

    pub fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        match self {
            WindowOperator::Panes(w) => w.snapshot(),
            WindowOperator::Sessions(s) => s.snapshot(),
        }
    }

    pub fn restore(&mut self, rows: &RecordBatch) -> Result<()> {
        match self {
            WindowOperator::Panes(w) => w.restore(rows),
            WindowOperator::Sessions(s) => s.restore(rows),
        }
    }

    pub fn open_windows(&self) -> usize {
        match self {
            WindowOperator::Panes(w) => w.open_windows(),
            WindowOperator::Sessions(s) => s.open_windows(),
        }
    }

    pub fn state_bytes(&self) -> usize {
        match self {
            WindowOperator::Panes(w) => w.state_bytes(),
            WindowOperator::Sessions(s) => s.state_bytes(),
        }
    }
}
