//! Keyed state from events: the operator of a current-state query (`-- sluice:
//! current state[, removed when <condition>]` over a `GROUP BY` without a window).
//!
//! Per key it keeps the input rows since the key was last removed, and emits, per
//! live key, the query's aggregates over them: a table like a mirror, one row per
//! key, built from an event stream instead of a change feed. Events are applied in
//! event-time order per key whatever order they arrive in:
//!
//! - an event whose condition holds (a close) removes the key's row; so does it
//!   every event of the key at or before its `ts`, whenever they arrive (a removal
//!   comes after the other events of the same instant);
//! - an event after the removal starts the row afresh, its aggregates counting from
//!   then.
//!
//! The table is not windowed: no event is ever late for it. Removals are
//! remembered for [`REMEMBER_REMOVALS`] of event time past the query's newest
//! event, which bounds their memory; a straggler older than that for a removed key
//! would start it again.
//!
//! Rows stay in the batches they came in, as a session window keeps them
//! ([`crate::window::Sessions`]); the state goes into each epoch's checkpoint.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{interleave_record_batch, take};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimestampMicrosecondType};
use arrow::row::{RowConverter, SortField};

use crate::error::{Error, Result};
use crate::plan::CurrentSpec;

/// How long past the query's newest event a removal is remembered, µs (a day).
pub const REMEMBER_REMOVALS: i64 = 86_400_000_000;

/// The live keys of one current-state query.
pub struct CurrentState {
    spec: CurrentSpec,
    converter: RowConverter,
    /// Input rows of live keys (and garbage, until compacted).
    batches: Vec<RecordBatch>,
    stored_rows: usize,
    keys: HashMap<Box<[u8]>, KeyState>,
    /// The newest event time seen, µs.
    newest: i64,
    /// A key changed since the last [`take_rows`](Self::take_rows).
    changed: bool,
}

#[derive(Default)]
struct KeyState {
    /// The time of the key's latest removal: its events at or before it count for nothing.
    removed_at: Option<i64>,
    /// (batch, row, ts) of the events after it.
    rows: Vec<(usize, usize, i64)>,
}

impl CurrentState {
    pub fn new(spec: CurrentSpec) -> Result<Self> {
        let fields = spec.key_schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
        Ok(CurrentState {
            converter: RowConverter::new(fields)?,
            spec,
            batches: Vec::new(),
            stored_rows: 0,
            keys: HashMap::new(),
            newest: i64::MIN,
            changed: false,
        })
    }

    /// Live keys.
    pub fn live_keys(&self) -> usize {
        self.keys.values().filter(|k| !k.rows.is_empty()).count()
    }

    pub fn state_bytes(&self) -> usize {
        self.batches.iter().map(RecordBatch::get_array_memory_size).sum()
    }

    /// Applies a batch of the aggregate's input rows to their keys.
    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let time = self.spec.time.evaluate(batch)?.into_array(n)?;
        let time = time
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| Error::Internal(format!("event time is {}, not a µs timestamp", time.data_type())))?
            .clone();
        let removed = match &self.spec.removed {
            Some(condition) => Some(
                condition
                    .evaluate(batch)?
                    .into_array(n)?
                    .as_boolean_opt()
                    .cloned()
                    .ok_or_else(|| Error::Internal("a removal condition that is not boolean".into()))?,
            ),
            None => None,
        };
        let keys: Vec<ArrayRef> = self.spec.keys.iter().map(|k| Ok(k.evaluate(batch)?.into_array(n)?)).collect::<Result<_>>()?;
        let keys = self.converter.convert_columns(&keys)?;
        let index = self.batches.len();
        self.batches.push(batch.clone());
        self.stored_rows += n;
        for row in 0..n {
            if time.is_null(row) {
                continue;
            }
            let ts = time.value(row);
            self.newest = self.newest.max(ts);
            let removes = removed.as_ref().is_some_and(|r| r.is_valid(row) && r.value(row));
            let state = self.keys.entry(keys.row(row).as_ref().into()).or_default();
            if state.removed_at.is_some_and(|at| ts <= at) {
                continue;
            }
            if removes {
                state.removed_at = Some(ts);
                state.rows.retain(|&(_, _, t)| t > ts);
            } else {
                state.rows.push((index, row, ts));
            }
            self.changed = true;
        }
        Ok(())
    }

    /// Whether a key changed since the rows were last taken.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The aggregate's rows of every live key (keys in their row-format order);
    /// `None` when nothing changed since the last call.
    pub fn take_rows(&mut self) -> Result<Option<RecordBatch>> {
        if !std::mem::take(&mut self.changed) {
            return Ok(None);
        }
        self.forget_old_removals();
        let mut live: Vec<(&Box<[u8]>, &KeyState)> = self.keys.iter().filter(|(_, s)| !s.rows.is_empty()).collect();
        live.sort_by(|a, b| a.0.cmp(b.0));
        let mut indices = Vec::new();
        let mut group_ids = Vec::new();
        let mut firsts = Vec::with_capacity(live.len());
        for (group, (_, state)) in live.iter().enumerate() {
            firsts.push(indices.len() as u32);
            // In event-time order, so that an order-dependent aggregate without ORDER BY sees the events as they happened.
            let mut rows = state.rows.clone();
            rows.sort_by_key(|&(batch, row, ts)| (ts, batch, row));
            indices.extend(rows.iter().map(|&(batch, row, _)| (batch, row)));
            group_ids.extend(std::iter::repeat_n(group, rows.len()));
        }
        let schema = self.spec.schema.clone();
        if live.is_empty() {
            self.compact()?;
            return Ok(Some(RecordBatch::new_empty(schema)));
        }
        let rows = interleave_record_batch(&self.batches.iter().collect::<Vec<_>>(), &indices)?;
        let firsts = UInt32Array::from(firsts);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for key in &self.spec.keys {
            columns.push(take(&key.evaluate(&rows)?.into_array(rows.num_rows())?, &firsts, None)?);
        }
        columns.extend(crate::aggregate::aggregate_groups(&self.spec.aggregates, &rows, &group_ids, live.len())?);
        let columns = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(a, f)| if a.data_type() == f.data_type() { Ok(a) } else { Ok(arrow::compute::cast(&a, f.data_type())?) })
            .collect::<Result<Vec<_>>>()?;
        let result = RecordBatch::try_new(schema, columns)?;
        self.compact()?;
        Ok(Some(result))
    }

    /// Removed keys with no row left are forgotten once their removal is
    /// [`REMEMBER_REMOVALS`] older than the newest event.
    fn forget_old_removals(&mut self) {
        let horizon = self.newest.saturating_sub(REMEMBER_REMOVALS);
        self.keys.retain(|_, s| !s.rows.is_empty() || s.removed_at.is_some_and(|at| at > horizon));
    }

    /// Copies the live keys' rows into one batch once most stored rows are garbage.
    fn compact(&mut self) -> Result<()> {
        let live: usize = self.keys.values().map(|k| k.rows.len()).sum();
        if self.stored_rows <= 2 * live + 8192 {
            return Ok(());
        }
        let mut indices = Vec::with_capacity(live);
        for state in self.keys.values_mut() {
            for row in state.rows.iter_mut() {
                indices.push((row.0, row.1));
                *row = (0, indices.len() - 1, row.2);
            }
        }
        self.batches = match indices.is_empty() {
            true => Vec::new(),
            false => vec![interleave_record_batch(&self.batches.iter().collect::<Vec<_>>(), &indices)?],
        };
        self.stored_rows = live;
        Ok(())
    }

    /// The state as rows, for an epoch snapshot: `_key` (row format), `_removed_at`,
    /// then the input columns. A row with `_removed_at` records a key's latest
    /// removal; the others are live keys' input rows.
    pub fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let input = match self.batches.first() {
            Some(b) => b.schema(),
            None if self.keys.is_empty() => return Ok(None),
            None => Arc::new(Schema::empty()),
        };
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut removals: Vec<Option<i64>> = Vec::new();
        let mut indices = Vec::new();
        for (key, state) in &self.keys {
            for &(batch, row, _) in &state.rows {
                keys.push(key);
                removals.push(None);
                indices.push((batch, row));
            }
        }
        let live_rows = indices.len();
        for (key, state) in &self.keys {
            if let Some(at) = state.removed_at {
                keys.push(key);
                removals.push(Some(at));
            }
        }
        let markers = keys.len() - live_rows;
        let mut fields = vec![Field::new("_key", DataType::Binary, false), Field::new("_removed_at", DataType::Int64, true)];
        let mut columns: Vec<ArrayRef> = vec![Arc::new(BinaryArray::from(keys)), Arc::new(Int64Array::from(removals))];
        let gathered = match live_rows {
            0 => RecordBatch::new_empty(input.clone()),
            _ => interleave_record_batch(&self.batches.iter().collect::<Vec<_>>(), &indices)?,
        };
        for (field, column) in input.fields().iter().zip(gathered.columns()) {
            fields.push(field.as_ref().clone().with_nullable(true));
            columns.push(arrow::compute::concat(&[column.as_ref(), new_null_array(field.data_type(), markers).as_ref()])?);
        }
        Ok(Some(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?))
    }

    /// Takes up state from [`snapshot`](Self::snapshot) rows.
    pub fn restore(&mut self, rows: &RecordBatch) -> Result<()> {
        let bad = || Error::Checkpoint("current state without its `_key` and `_removed_at` columns".into());
        let keys = rows.column_by_name("_key").and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(bad)?;
        let removals = rows.column_by_name("_removed_at").and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or_else(bad)?;
        for row in (0..rows.num_rows()).filter(|&r| removals.is_valid(r)) {
            let state = self.keys.entry(keys.value(row).into()).or_default();
            state.removed_at = Some(state.removed_at.map_or(removals.value(row), |at| at.max(removals.value(row))));
        }
        let live = arrow::compute::filter_record_batch(rows, &arrow::compute::is_null(removals)?)?;
        if live.num_rows() > 0 {
            // The plan's expressions address columns by position, as saved.
            self.update(&live.project(&(2..live.num_columns()).collect::<Vec<_>>())?)?;
        }
        // What was restored is what the table holds: nothing to rewrite yet.
        self.changed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
