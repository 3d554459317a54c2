//! The sending side of a repartitioned query: what an upstream sends at the end of
//! an epoch, and when it may send nothing.
//!
//! The merging side can close a window only once every upstream's watermark has
//! passed the window's end, and window ends are pane ends. A partition is
//! therefore sent a partial only when the upstream has states for it, or when its
//! watermark has passed a pane end since it last sent one: with an epoch a second
//! and one-minute windows, one marker a minute instead of sixty.

use arrow::array::RecordBatch;

use super::{split_by_key, Partial};
use crate::error::Result;
use crate::plan::WindowSpec;
use crate::window::Windows;

/// One upstream of a repartitioned query.
pub struct Upstream {
    /// Which upstream this is, `0..upstreams`.
    index: u32,
    partitions: u32,
    /// GROUP BY keys besides the window, and the pane length (µs).
    keys: usize,
    slide: i64,
    /// The plan's fingerprint, in every partial.
    plan: String,
    /// The watermark last sent to every partition.
    sent: i64,
    /// Bytes of state (in memory, about their size on the wire) per message.
    part_bytes: usize,
}

/// A partial's states are split into parts of about this size: brokers refuse
/// messages over 1 MB unless told otherwise, and a catch-up epoch's percentile
/// states (every value) can be far larger.
pub const PART_BYTES: usize = 256 << 10;

impl Upstream {
    /// Upstream `index` of the query with window `spec` and plan fingerprint
    /// `plan`, sending to `partitions` partitions; `sent` is the watermark it last
    /// sent (its checkpoint's, or `i64::MIN`).
    pub fn new(index: u32, partitions: u32, spec: &WindowSpec, plan: &str, sent: i64) -> Self {
        let (keys, slide) = (spec.keys.len(), spec.slide.max(1));
        Upstream { index, partitions: partitions.max(1), keys, slide, plan: plan.to_string(), sent, part_bytes: PART_BYTES }
    }

    /// Splits states into parts of about `bytes` (tests send many parts).
    pub fn with_part_bytes(mut self, bytes: usize) -> Self {
        self.part_bytes = bytes.max(1);
        self
    }

    /// The partials of the epoch `epoch` of run `writer`, by partition: the states
    /// of the panes `watermark` has passed (taken out of `windows`) and the
    /// watermark, to the partitions that need them.
    pub fn partials(&mut self, windows: &mut Windows, watermark: i64, epoch: i64, writer: &str) -> Result<Vec<(u32, Partial)>> {
        let passed = windows.take_passed_panes(watermark)?;
        let marker = self.due(watermark);
        if passed.is_none() && !marker {
            return Ok(Vec::new());
        }
        let states = match &passed {
            Some(states) => split_by_key(states, self.keys, self.partitions)?,
            None => vec![None; self.partitions as usize],
        };
        self.sent = watermark;
        let mut partials = Vec::new();
        for (partition, states) in states.into_iter().enumerate().filter(|(_, states)| marker || states.is_some()) {
            let parts = match &states {
                Some(states) => in_parts(states, self.part_bytes),
                None => vec![None],
            };
            let count = parts.len() as u32;
            for (part, states) in parts.into_iter().enumerate() {
                let (upstream, plan, writer) = (self.index, self.plan.clone(), writer.to_string());
                partials.push((partition as u32, Partial { upstream, epoch, plan, writer, watermark, states, part: part as u32, parts: count }));
            }
        }
        Ok(partials)
    }

    /// Whether `watermark` passed a pane end since the last partials: then there is
    /// something to send (a pane can only pass once its end does).
    pub fn due(&self, watermark: i64) -> bool {
        watermark.div_euclid(self.slide) > self.sent.div_euclid(self.slide)
    }

    /// The watermark last sent, for the upstream's checkpoint.
    pub fn sent(&self) -> i64 {
        self.sent
    }
}

/// `states` in slices of about `bytes` each (at least a row each).
fn in_parts(states: &RecordBatch, bytes: usize) -> Vec<Option<RecordBatch>> {
    let (rows, size) = (states.num_rows(), states.get_array_memory_size());
    let per_part = (rows.saturating_mul(bytes) / size.max(1)).clamp(1, rows.max(1));
    match rows <= per_part {
        true => vec![Some(states.clone())],
        false => (0..rows).step_by(per_part).map(|start| Some(states.slice(start, per_part.min(rows - start)))).collect(),
    }
}
