//! Tumbling and hopping windows, epoch-aligned, kept as panes: slide-long stretches
//! of event time, each with its own groups and DataFusion accumulators. Rows are
//! folded into their pane's accumulators as they arrive, so state grows with open
//! panes times keys, not with events, and an event is folded once however many
//! hopping windows it falls in. A window's rows are produced once, when the
//! watermark passes its end: a tumbling window is its one pane; a hopping window
//! merges the partial states of its `width / slide` panes.
//!
//! With corrections (tumbling windows only), an emitted window keeps its state for
//! the declared time: a late event folds into it, and the window is emitted again,
//! whole, at the next close, to replace its rows in the table.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StructArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::{DataType, TimestampMicrosecondType};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use crate::error::{Error, Result};
use crate::plan::WindowSpec;

/// The open panes of one windowed query.
pub struct Windows {
    spec: WindowSpec,
    /// By start; a tumbling query's panes are its windows.
    windows: BTreeMap<i64, WindowState>,
    /// Every window ending at or before this has been emitted (hopping windows: a
    /// pane outlives the first windows it is part of).
    emitted_until: i64,
    /// Starts of the windows emitted again since [`take_corrected`](Self::take_corrected).
    corrected: Vec<i64>,
}

/// One window: its groups and accumulators while rows come in, or the state rows
/// they gave when it was last checkpointed, if no row came in since. A window that
/// stands still (a sparse partition's, one kept for corrections, a pane of later
/// hopping windows) is then held as compact Arrow arrays, not drained and rebuilt
/// at every checkpoint; a row coming in rebuilds it from them.
struct WindowState {
    /// One of these two at most: a window is live or saved.
    live: Option<Live>,
    saved: Option<RecordBatch>,
    /// Emitted and kept for corrections.
    emitted: bool,
    /// Emitted, and rows came in since: to be emitted again.
    corrected: bool,
}

/// A window's groups and, per aggregate, its accumulator over those groups.
struct Live {
    groups: Groups,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

/// Group ids for the window's key rows; a query without keys has one group.
enum Groups {
    Keyed { values: Box<dyn GroupValues>, ids: Vec<usize> },
    Single { ids: Vec<usize> },
}

impl Windows {
    pub fn new(spec: WindowSpec) -> Self {
        Windows { spec, windows: BTreeMap::new(), emitted_until: i64::MIN, corrected: Vec::new() }
    }

    /// The watermark from which an event at `ts` is late: the end of the first window
    /// holding it, plus the time corrections are taken. A late event counts in none
    /// of its windows, so every emitted window either saw it or never will (for
    /// tumbling windows, the first window is the only one).
    pub fn late_from(&self, ts: i64) -> i64 {
        let first_end = window_start(ts, self.spec.slide).saturating_add(self.spec.slide);
        first_end.saturating_add(self.spec.corrections.unwrap_or(0))
    }

    /// The starts of the windows emitted again, corrected, since the last call.
    pub fn take_corrected(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.corrected)
    }

    /// After a restart: the windows ending by `watermark` were emitted before.
    pub fn resume_after(&mut self, watermark: i64) {
        self.emitted_until = self.emitted_until.max(watermark);
    }

    /// Number of open panes (windows, for tumbling ones).
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Bytes of state held by the open windows.
    pub fn state_bytes(&self) -> usize {
        self.windows
            .values()
            .map(|w| w.live.as_ref().map_or(0, Live::size) + w.saved.as_ref().map_or(0, |rows| rows.get_array_memory_size()))
            .sum()
    }

    /// Folds a batch of the aggregate's input rows into their windows.
    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let spec = &self.spec;
        let time = spec.time.evaluate(batch)?.into_array(batch.num_rows())?;
        let time = time
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| Error::Internal(format!("event time is {}, not a µs timestamp", time.data_type())))?;
        let mut keys = evaluate_all(&spec.keys, batch)?;
        let mut args = Vec::with_capacity(spec.aggregates.len());
        let mut filters = Vec::with_capacity(spec.aggregates.len());
        for aggregate in &spec.aggregates {
            args.push(evaluate_all(&crate::aggregate::arguments(&aggregate.function), batch)?);
            // None or one array, so that it is reordered and sliced as the arguments are.
            filters.push(match &aggregate.filter {
                Some(f) => vec![f.evaluate(batch)?.into_array(batch.num_rows())?],
                None => Vec::new(),
            });
        }

        // A batch spans several windows as a rule (a partition's minutes, several
        // partitions): its rows are put in window order once, every column taken
        // in that order once, and each window folds a slice of it. Sorting by
        // (start, row) keeps a window's rows in the batch's order.
        let runs = match by_window(time, spec.slide) {
            Order::AsIs(start) => vec![(start, 0, batch.num_rows())],
            Order::Sorted { indices, runs } => {
                let reorder = |arrays: &mut Vec<ArrayRef>| -> Result<()> {
                    for array in arrays.iter_mut() {
                        *array = take(array.as_ref(), &indices, None)?;
                    }
                    Ok(())
                };
                reorder(&mut keys)?;
                args.iter_mut().try_for_each(reorder)?;
                filters.iter_mut().try_for_each(reorder)?;
                runs
            }
        };
        let slice = |arrays: &[ArrayRef], offset: usize, len: usize| -> Vec<ArrayRef> {
            arrays.iter().map(|a| if offset == 0 && len == a.len() { a.clone() } else { a.slice(offset, len) }).collect()
        };
        for (start, offset, len) in runs {
            let window = match self.windows.entry(start) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(WindowState::new()),
            };
            window.corrected |= window.emitted;
            let window = window.live(spec)?;
            let (ids, groups) = window.groups.intern(&slice(&keys, offset, len), len)?;
            for ((accumulator, args), filter) in window.accumulators.iter_mut().zip(&args).zip(&filters) {
                let filter = slice(filter, offset, len).pop();
                let filter = filter.as_ref().and_then(|f| f.as_boolean_opt().cloned());
                accumulator.update_batch(&slice(args, offset, len), ids, filter.as_ref(), groups)?;
            }
        }
        Ok(())
    }

    /// Returns the rows of every window that ends at or before `watermark`, and drops
    /// the panes no open window needs.
    pub fn close_until(&mut self, watermark: i64) -> Result<Option<RecordBatch>> {
        if self.spec.slide != self.spec.size {
            return self.close_hopping_until(watermark);
        }
        if let Some(kept_for) = self.spec.corrections {
            return self.close_correctable_until(watermark, kept_for);
        }
        let mut batches = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            let start = *entry.key();
            if start.saturating_add(self.spec.size) > watermark {
                break;
            }
            let window = entry.remove();
            batches.push(window.finish(&self.spec, start)?);
        }
        if batches.is_empty() {
            return Ok(None);
        }
        Ok(Some(concat_batches(&self.spec.schema, &batches)?))
    }
    /// Tumbling windows kept `kept_for` after they end: emits the windows that ended
    /// and those corrected since, and drops the windows whose corrections are over.
    fn close_correctable_until(&mut self, watermark: i64, kept_for: i64) -> Result<Option<RecordBatch>> {
        let size = self.spec.size;
        let mut batches = Vec::new();
        for (&start, window) in self.windows.iter_mut() {
            if start.saturating_add(size) > watermark {
                break;
            }
            if window.emitted && !window.corrected {
                continue;
            }
            if window.emitted {
                self.corrected.push(start);
            }
            let rows = window.state_rows(&self.spec, start)?;
            let mut copy = WindowState::new();
            copy.merge_state(&self.spec, &rows)?;
            batches.push(copy.finish(&self.spec, start)?);
            (window.emitted, window.corrected) = (true, false);
        }
        self.emitted_until = self.emitted_until.max(watermark);
        while let Some(entry) = self.windows.first_entry() {
            if entry.key().saturating_add(size).saturating_add(kept_for) > watermark {
                break;
            }
            entry.remove();
        }
        if batches.is_empty() {
            return Ok(None);
        }
        Ok(Some(concat_batches(&self.spec.schema, &batches)?))
    }

    fn close_hopping_until(&mut self, watermark: i64) -> Result<Option<RecordBatch>> {
        let (slide, width) = (self.spec.slide, self.spec.size);
        let (Some(first), Some(last)) = (self.windows.keys().next().copied(), self.windows.keys().next_back().copied()) else {
            self.emitted_until = self.emitted_until.max(watermark);
            return Ok(None);
        };
        // The first window not emitted yet that holds the first pane.
        let mut start = first.saturating_sub(width - slide);
        if self.emitted_until != i64::MIN {
            start = start.max(window_start(self.emitted_until.saturating_sub(width), slide).saturating_add(slide));
        }
        let mut batches = Vec::new();
        while start <= last && start.saturating_add(width) <= watermark {
            let mut window = WindowState::new();
            let mut any = false;
            for (&pane_start, pane) in self.windows.range_mut(start..start + width) {
                window.merge_state(&self.spec, &pane.state_rows(&self.spec, pane_start)?)?;
                any = true;
            }
            if any {
                batches.push(window.finish(&self.spec, start)?);
            }
            start += slide;
        }
        self.emitted_until = self.emitted_until.max(watermark);
        // A pane's last window starts with it.
        self.windows.retain(|&pane, _| pane.saturating_add(width) > watermark);
        if batches.is_empty() {
            return Ok(None);
        }
        Ok(Some(concat_batches(&self.spec.schema, &batches)?))
    }

    /// The state rows of every pane the watermark has passed, taken out: no row can
    /// reach such a pane any more ([`late_from`](Self::late_from) is its end), so
    /// its state is final here. This is what an upstream of a repartitioned query
    /// sends on ([`crate::repartition`]); the merging side folds the panes of every
    /// upstream and closes the windows itself. Corrected windows are not final at
    /// their end, and are refused.
    pub fn take_passed_panes(&mut self, watermark: i64) -> Result<Option<RecordBatch>> {
        if self.spec.corrections.is_some() {
            return Err(Error::Config("a window with corrections cannot be repartitioned: its panes are not final at their end".into()));
        }
        let mut batches = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            let start = *entry.key();
            if start.saturating_add(self.spec.slide) > watermark {
                break;
            }
            let mut pane = entry.remove();
            batches.push(pane.state_rows(&self.spec, start)?);
        }
        let Some(first) = batches.first() else { return Ok(None) };
        Ok(Some(concat_batches(&first.schema(), &batches)?))
    }

    /// The open windows' state as rows, for an epoch snapshot: `window_start`, the
    /// key columns, then each aggregate's partial state (`GroupsAccumulator::state`).
    /// Taking a state drains its accumulator, so each window is rebuilt from the rows
    /// it just gave.
    pub fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let mut batches = Vec::with_capacity(self.windows.len());
        for (start, window) in self.windows.iter_mut() {
            batches.push(window.state_rows(&self.spec, *start)?);
        }
        let Some(first) = batches.first() else { return Ok(None) };
        Ok(Some(concat_batches(&first.schema(), &batches)?))
    }

    /// Adds windows from [`snapshot`](Self::snapshot) rows (windows in order of start).
    pub fn restore(&mut self, rows: &RecordBatch) -> Result<()> {
        let starts = rows
            .column(0)
            .as_primitive_opt::<arrow::datatypes::Int64Type>()
            .ok_or_else(|| Error::Checkpoint("window state without an Int64 window_start".into()))?;
        let mut from = 0;
        while from < rows.num_rows() {
            let start = starts.value(from);
            let len = starts.values()[from..].iter().take_while(|s| **s == start).count();
            let window = match self.windows.entry(start) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(WindowState::new()),
            };
            window.merge_state(&self.spec, &rows.slice(from, len))?;
            window.emitted = start.saturating_add(self.spec.size) <= self.emitted_until;
            from += len;
        }
        Ok(())
    }
}

/// The start of the window holding `ts`: windows are aligned to the epoch.
pub fn window_start(ts: i64, size: i64) -> i64 {
    ts.div_euclid(size) * size
}

/// Where a batch's rows go, by the start of their first pane.
#[derive(Debug, PartialEq)]
enum Order {
    /// Every row is in the pane starting here.
    AsIs(i64),
    /// The rows with a time, in pane order (by start, then row), and per pane its
    /// start, offset and length in that order.
    Sorted { indices: UInt32Array, runs: Vec<(i64, usize, usize)> },
}

fn by_window(time: &TimestampMicrosecondArray, slide: i64) -> Order {
    if time.null_count() == 0 {
        if let Some(&first) = time.values().first() {
            let start = window_start(first, slide);
            if time.values().iter().all(|&ts| window_start(ts, slide) == start) {
                return Order::AsIs(start);
            }
        }
    }
    let mut order: Vec<(i64, u32)> =
        time.iter().enumerate().filter_map(|(row, ts)| Some((window_start(ts?, slide), row as u32))).collect();
    // (start, row) pairs are distinct, so an unstable sort keeps rows in order.
    order.sort_unstable();
    let mut runs: Vec<(i64, usize, usize)> = Vec::new();
    for (offset, &(start, _)) in order.iter().enumerate() {
        match runs.last_mut() {
            Some((last, _, len)) if *last == start => *len += 1,
            _ => runs.push((start, offset, 1)),
        }
    }
    Order::Sorted { indices: UInt32Array::from_iter_values(order.into_iter().map(|(_, row)| row)), runs }
}

fn evaluate_all(exprs: &[Arc<dyn datafusion::physical_plan::PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    exprs.iter().map(|e| Ok(e.evaluate(batch)?.into_array(batch.num_rows())?)).collect()
}

impl WindowState {
    fn new() -> Self {
        WindowState { live: None, saved: None, emitted: false, corrected: false }
    }

    /// The window's groups and accumulators, taken out: as they are, or rebuilt
    /// from the saved rows (which then no longer hold).
    fn take_live(&mut self, spec: &WindowSpec) -> Result<Live> {
        match self.live.take() {
            Some(live) => Ok(live),
            None => Live::from_rows(spec, self.saved.take().as_ref()),
        }
    }

    /// The window's groups and accumulators, to take rows.
    fn live(&mut self, spec: &WindowSpec) -> Result<&mut Live> {
        let live = self.take_live(spec)?;
        Ok(self.live.insert(live))
    }

    /// The window's state as rows; from then on it keeps only those until a row
    /// comes in.
    fn state_rows(&mut self, spec: &WindowSpec, start: i64) -> Result<RecordBatch> {
        if let Some(rows) = &self.saved {
            return Ok(rows.clone());
        }
        let rows = self.take_live(spec)?.into_state(start)?;
        self.saved = Some(rows.clone());
        Ok(rows)
    }

    /// Folds state rows (as [`state_rows`](Self::state_rows) made them) into the window.
    fn merge_state(&mut self, spec: &WindowSpec, rows: &RecordBatch) -> Result<()> {
        self.live(spec)?.merge_state(spec, rows)
    }

    fn finish(mut self, spec: &WindowSpec, start: i64) -> Result<RecordBatch> {
        self.take_live(spec)?.finish(spec, start)
    }
}

impl Live {
    fn new(spec: &WindowSpec) -> Result<Self> {
        let groups = if spec.keys.is_empty() {
            Groups::Single { ids: Vec::new() }
        } else {
            Groups::Keyed { values: new_group_values(spec.key_schema.clone(), &GroupOrdering::None)?, ids: Vec::new() }
        };
        let accumulators = spec
            .aggregates
            .iter()
            .map(|a| crate::aggregate::groups_accumulator(&a.function))
            .collect::<Result<_>>()?;
        Ok(Live { groups, accumulators })
    }

    fn from_rows(spec: &WindowSpec, rows: Option<&RecordBatch>) -> Result<Self> {
        let mut live = Live::new(spec)?;
        if let Some(rows) = rows {
            live.merge_state(spec, rows)?;
        }
        Ok(live)
    }

    fn size(&self) -> usize {
        let groups = match &self.groups {
            Groups::Keyed { values, .. } => values.size(),
            Groups::Single { .. } => 0,
        };
        groups + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
    }

    /// Drains the window into state rows: its start, the keys, each aggregate's state.
    fn into_state(mut self, start: i64) -> Result<RecordBatch> {
        let (keys, n) = match &mut self.groups {
            Groups::Keyed { values, .. } => {
                let n = values.len();
                (values.emit(EmitTo::All)?, n)
            }
            Groups::Single { .. } => (Vec::new(), 1),
        };
        let mut columns: Vec<ArrayRef> = vec![Arc::new(arrow::array::Int64Array::from_value(start, n))];
        columns.extend(keys);
        for accumulator in &mut self.accumulators {
            columns.extend(accumulator.state(EmitTo::All)?);
        }
        let fields: Vec<arrow::datatypes::Field> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| arrow::datatypes::Field::new(if i == 0 { "window_start".to_string() } else { format!("c{i}") }, c.data_type().clone(), true))
            .collect();
        let schema = Arc::new(arrow::datatypes::Schema::new(fields));
        let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n));
        Ok(RecordBatch::try_new_with_options(schema, columns, &options)?)
    }

    /// Folds state rows (as [`into_state`](Self::into_state) made them) into the
    /// groups and accumulators.
    fn merge_state(&mut self, spec: &WindowSpec, rows: &RecordBatch) -> Result<()> {
        let mut column = 1;
        let mut take = |count: usize| -> Result<Vec<ArrayRef>> {
            let end = column + count;
            if end > rows.num_columns() {
                return Err(Error::Checkpoint(format!(
                    "window state has {} columns, the query needs more: was its SQL changed?",
                    rows.num_columns()
                )));
            }
            let taken = rows.columns()[column..end].to_vec();
            column = end;
            Ok(taken)
        };
        let keys = take(spec.keys.len())?;
        same_types(&keys, spec.key_schema.fields().iter().map(|f| f.data_type()))?;
        let mut states = Vec::with_capacity(spec.aggregates.len());
        for aggregate in &spec.aggregates {
            let fields = aggregate.function.state_fields()?;
            let state = take(fields.len())?;
            // Accumulators downcast their state and would panic on another type.
            same_types(&state, fields.iter().map(|f| f.data_type()))?;
            states.push(state);
        }
        let (ids, groups) = self.groups.intern(&keys, rows.num_rows())?;
        let ids = ids.to_vec();
        for (accumulator, state) in self.accumulators.iter_mut().zip(&states) {
            accumulator.merge_batch(state, &ids, groups)?;
        }
        if column != rows.num_columns() {
            return Err(Error::Checkpoint(format!(
                "window state has {} columns, the query needs {column}: was its SQL changed?",
                rows.num_columns()
            )));
        }
        Ok(())
    }

    /// The window's result rows: group columns (the window as `{start, end}`), then aggregates.
    fn finish(mut self, spec: &WindowSpec, start: i64) -> Result<RecordBatch> {
        let (mut keys, n) = match &mut self.groups {
            Groups::Keyed { values, .. } => {
                let n = values.len();
                (values.emit(EmitTo::All)?, n)
            }
            Groups::Single { .. } => (Vec::new(), 1),
        };
        let window = window_array(spec, start, n)?;
        keys.insert(spec.window_index, window);
        for accumulator in &mut self.accumulators {
            keys.push(accumulator.evaluate(EmitTo::All)?);
        }
        // Aggregates may type their results more loosely than the plan (e.g. nullability).
        let columns = keys
            .into_iter()
            .zip(spec.schema.fields())
            .map(|(array, field)| {
                if array.data_type() == field.data_type() {
                    Ok(array)
                } else {
                    Ok(arrow::compute::cast(&array, field.data_type())?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n));
        Ok(RecordBatch::try_new_with_options(spec.schema.clone(), columns, &options)?)
    }
}

impl Groups {
    /// Group ids of `rows` rows with these key columns; also returns the group count.
    fn intern(&mut self, keys: &[ArrayRef], rows: usize) -> Result<(&[usize], usize)> {
        match self {
            Groups::Keyed { values, ids } => {
                values.intern(keys, ids)?;
                Ok((ids.as_slice(), values.len()))
            }
            Groups::Single { ids } => {
                ids.clear();
                ids.resize(rows, 0);
                Ok((ids.as_slice(), 1))
            }
        }
    }
}

/// Checkpointed columns must have the types the query's state has now.
fn same_types<'a>(columns: &[ArrayRef], types: impl Iterator<Item = &'a DataType>) -> Result<()> {
    for (column, expected) in columns.iter().zip(types) {
        if column.data_type() != expected {
            return Err(Error::Checkpoint(format!(
                "window state holds {} where the query now keeps {expected}: was its SQL changed?",
                column.data_type()
            )));
        }
    }
    Ok(())
}

/// `n` copies of the window `{start, end}` in the `window` column's struct type.
fn window_array(spec: &WindowSpec, start: i64, n: usize) -> Result<ArrayRef> {
    let DataType::Struct(fields) = spec.schema.field(spec.window_index).data_type().clone() else {
        return Err(Error::Internal("the window column is not a struct".into()));
    };
    let starts = TimestampMicrosecondArray::from_value(start, n).with_timezone("UTC");
    let ends = TimestampMicrosecondArray::from_value(start + spec.size, n).with_timezone("UTC");
    Ok(Arc::new(StructArray::try_new(fields, vec![Arc::new(starts), Arc::new(ends)], None)?))
}


#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use arrow::array::{AsArray, StructArray};
    use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::plan::{Shape, StreamingQuery};
    use crate::window::testing::{aggregate_input, assert_stats, emitted_stats, expected_stats, request, stats_sql, windowed, Request};

    const MINUTE: i64 = 60_000_000;
    const T0: i64 = 1_772_323_200_000_000;
    /// Per window and service: count, sum and max of `duration_ms`.
    type Sums = BTreeMap<(i64, String), (i64, f64, f64)>;

    /// `SELECT <window> AS window, service, count, sum and max of duration_ms`.
    async fn planned(window: &str) -> StreamingQuery {
        let sql = format!(
            "SELECT {window} AS window, service, count(*) AS n, sum(duration_ms) AS total, max(duration_ms) AS worst \
             FROM gateway.requests GROUP BY window, service"
        );
        windowed(&sql).await.0
    }

    /// `n` requests at random times in `[from, to)` µs after T0.
    fn requests(rng: &mut SmallRng, first_id: usize, n: usize, from: i64, to: i64) -> Vec<Request> {
        (first_id..first_id + n)
            .map(|i| {
                let ts = T0 + rng.random_range(from..to);
                request(rng, i, ts)
            })
            .collect()
    }

    /// Feeds rows in random batch sizes through the query's input plan into
    /// `windows`, with checkpoints along the way: some carry on with the windows
    /// they drained, some as a restart would, from the state rows alone.
    async fn feed(query: &StreamingQuery, windows: &mut Windows, rows: &[Request], rng: &mut SmallRng) {
        let mut start = 0;
        while start < rows.len() {
            let end = (start + rng.random_range(1..700)).min(rows.len());
            for b in aggregate_input(query, &rows[start..end]).await {
                windows.update(&b).unwrap();
            }
            if rng.random_bool(0.3) {
                let state = windows.snapshot().unwrap().unwrap();
                if rng.random_bool(0.5) {
                    let emitted = windows.emitted_until;
                    *windows = Windows::new(windows.spec.clone());
                    windows.restore(&state).unwrap();
                    windows.resume_after(emitted);
                }
            }
            start = end;
        }
    }

    /// The rows of emitted windows `width` long, each window and service once.
    fn emitted(batches: &[RecordBatch], width: i64) -> Sums {
        let mut actual = Sums::new();
        for b in batches {
            let w: &StructArray = b.column(0).as_struct();
            let starts = w.column(0).as_primitive::<TimestampMicrosecondType>();
            let ends = w.column(1).as_primitive::<TimestampMicrosecondType>();
            for r in 0..b.num_rows() {
                assert_eq!(ends.value(r) - starts.value(r), width);
                let service = b.column(1).as_string::<i32>().value(r).to_string();
                let n = b.column(2).as_primitive::<Int64Type>().value(r);
                let total = b.column(3).as_primitive::<Float64Type>().value(r);
                let worst = b.column(4).as_primitive::<Float64Type>().value(r);
                assert!(actual.insert((starts.value(r), service), (n, total, worst)).is_none(), "a window emitted twice");
            }
        }
        actual
    }

    /// Adds a request to the sums of the window starting at `start`.
    fn add(expected: &mut Sums, start: i64, service: &str, duration: f64) {
        let e = expected.entry((start, service.to_string())).or_insert((0, 0.0, f64::MIN));
        e.0 += 1;
        e.1 += duration;
        e.2 = e.2.max(duration);
    }

    fn assert_same(actual: &Sums, expected: &Sums) {
        assert_eq!(actual.len(), expected.len(), "windows: {:?} vs {:?}", actual.keys().take(3).collect::<Vec<_>>(), expected.keys().take(3).collect::<Vec<_>>());
        for (key, (n, total, worst)) in expected {
            let got = actual[key];
            assert_eq!(got.0, *n, "count {key:?}");
            assert!((got.1 - total).abs() <= 1e-9 * total.abs(), "sum {key:?}: {} vs {total}", got.1);
            assert_eq!(got.2, *worst, "max {key:?}");
        }
    }

    /// Rows go to their panes in the batch's order; rows without a time go nowhere.
    #[test]
    fn a_batch_is_split_by_pane_in_row_order() {
        let one = TimestampMicrosecondArray::from(vec![10, 19, 11]);
        assert_eq!(by_window(&one, 10), Order::AsIs(10));
        let mixed = TimestampMicrosecondArray::from(vec![Some(25), Some(-1), None, Some(3), Some(21), Some(9), Some(-10)]);
        let Order::Sorted { indices, runs } = by_window(&mixed, 10) else { panic!("not sorted") };
        assert_eq!(indices.values().to_vec(), vec![1, 6, 3, 5, 0, 4]);
        assert_eq!(runs, vec![(-10, 0, 2), (0, 2, 2), (20, 4, 2)]);
        let nulls = TimestampMicrosecondArray::from(vec![None, Some(4)]);
        assert_eq!(by_window(&nulls, 10), Order::Sorted { indices: UInt32Array::from(vec![1]), runs: vec![(0, 0, 1)] });
    }

    /// Random rows in random batch sizes, against sums computed row by row here.
    #[tokio::test]
    async fn windows_match_a_row_by_row_computation_whatever_the_batching_and_checkpoints() {
        let query = planned("tumble(interval '1 minute')").await;
        let Shape::Windowed { window, .. } = &query.shape else { panic!("not windowed") };
        let mut windows = Windows::new(window.clone());
        let mut rng = SmallRng::seed_from_u64(7);
        let rows = requests(&mut rng, 0, 5000, 0, 10 * MINUTE);
        let mut expected = Sums::new();
        for (ts, service, duration, _) in &rows {
            add(&mut expected, ts - ts.rem_euclid(MINUTE), service, *duration);
        }

        feed(&query, &mut windows, &rows, &mut rng).await;
        assert_eq!(windows.open_windows(), 10);
        let closed = windows.close_until(T0 + 5 * MINUTE).unwrap().unwrap();
        assert_eq!(windows.open_windows(), 5, "only windows ending by the watermark close");
        let rest = windows.close_until(i64::MAX).unwrap().unwrap();
        assert_same(&emitted(&[closed, rest], MINUTE), &expected);
    }

    /// Issue 20's repartitioning in miniature: rows split over three upstream
    /// partitions, each folded into windows of its own; their state rows (what a
    /// repartition topic carries) folded into a fourth, whose windows must hold
    /// what the requests themselves give, percentiles and distinct counts included.
    #[tokio::test]
    async fn partial_states_of_split_input_merge_into_the_rows_of_one_process() {
        for (window, width) in [("tumble(interval '1 minute')", MINUTE), ("hop(interval '1 minute', interval '3 minutes')", 3 * MINUTE)] {
            let (query, spec) = windowed(&stats_sql(window)).await;
            let mut rng = SmallRng::seed_from_u64(23);
            let rows = requests(&mut rng, 0, 6000, 0, 12 * MINUTE);
            let mut merged = Windows::new(spec.clone());
            let mut parts: Vec<Vec<_>> = vec![Vec::new(); 3];
            for row in &rows {
                parts[rng.random_range(0..3)].push(row.clone());
            }
            for part in &parts {
                let mut upstream = Windows::new(spec.clone());
                feed(&query, &mut upstream, part, &mut rng).await;
                merged.restore(&upstream.snapshot().unwrap().unwrap()).unwrap();
            }
            let closed = merged.close_until(i64::MAX).unwrap().unwrap();
            assert!(closed.num_rows() > 30, "{window}: {} rows", closed.num_rows());
            assert_stats(&emitted_stats([&closed]), &expected_stats(&rows, width, MINUTE), window);
        }
    }

    /// `last_value(x ORDER BY ts)` and `first_value(x ORDER BY ts)` in tumbling and
    /// hopping windows: rows arrive in any order and in any batches, pane states are
    /// checkpointed and merged, and the answer is still the row with the latest
    /// (earliest) time, found here by sorting.
    #[tokio::test]
    async fn an_order_sensitive_aggregate_finds_its_row_whatever_the_arrival_order() {
        for (window, width, slide) in [("tumble(interval '1 minute')", MINUTE, MINUTE), ("hop(interval '1 minute', interval '3 minutes')", 3 * MINUTE, MINUTE)] {
            let sql = format!(
                "SELECT {window} AS window, service, last_value(duration_ms ORDER BY ts) AS latest, \
                 first_value(duration_ms ORDER BY ts) AS earliest, max(duration_ms) AS worst, count(*) AS n, sum(duration_ms) AS total \
                 FROM gateway.requests GROUP BY window, service"
            );
            let (query, spec) = windowed(&sql).await;
            let mut windows = Windows::new(spec.clone());
            let mut rng = SmallRng::seed_from_u64(13);
            // Distinct times (no ties), in random order.
            let mut times: Vec<i64> = (0..3000).map(|i| i * 200_000 + rng.random_range(0..100_000)).collect();
            for i in (1..times.len()).rev() {
                times.swap(i, rng.random_range(0..=i));
            }
            let rows: Vec<_> = times.iter().enumerate().map(|(i, t)| request(&mut rng, i, T0 + t)).collect();
            // Per (window, service): the latest and the earliest (ts, duration).
            type LatestAndEarliest = ((i64, f64), (i64, f64));
            let mut expected: BTreeMap<(i64, String), LatestAndEarliest> = BTreeMap::new();
            for (ts, service, duration, _) in &rows {
                let first_start = ts - ts.rem_euclid(slide) - (width - slide);
                for start in (first_start..=*ts).step_by(slide as usize) {
                    let e = expected.entry((start, service.clone())).or_insert(((i64::MIN, 0.0), (i64::MAX, 0.0)));
                    if *ts > e.0 .0 {
                        e.0 = (*ts, *duration);
                    }
                    if *ts < e.1 .0 {
                        e.1 = (*ts, *duration);
                    }
                }
            }
            feed(&query, &mut windows, &rows, &mut rng).await;
            let closed = windows.close_until(i64::MAX).unwrap().unwrap();
            let w: &StructArray = closed.column(0).as_struct();
            let starts = w.column(0).as_primitive::<TimestampMicrosecondType>();
            assert_eq!(closed.num_rows(), expected.len(), "{window}");
            for r in 0..closed.num_rows() {
                let key = (starts.value(r), closed.column(1).as_string::<i32>().value(r).to_string());
                let (latest, earliest) = expected[&key];
                assert_eq!(closed.column(2).as_primitive::<Float64Type>().value(r), latest.1, "{window} latest {key:?}");
                assert_eq!(closed.column(3).as_primitive::<Float64Type>().value(r), earliest.1, "{window} earliest {key:?}");
            }
        }
    }

    /// A corrected window is not final at its end: its panes are not sent on
    /// (`take_passed_panes`), and the refusal says why.
    #[tokio::test]
    async fn windows_with_corrections_refuse_to_give_their_panes_away() {
        let query = planned("tumble(interval '1 minute')").await;
        let Shape::Windowed { window, .. } = &query.shape else { panic!("not windowed") };
        let mut windows = Windows::new(WindowSpec { corrections: Some(3 * MINUTE), ..window.clone() });
        let mut rng = SmallRng::seed_from_u64(6);
        feed(&query, &mut windows, &requests(&mut rng, 0, 100, 0, MINUTE), &mut rng).await;
        let refused = windows.take_passed_panes(i64::MAX).unwrap_err().to_string();
        assert!(refused.contains("corrections cannot be repartitioned"), "{refused}");
        assert_eq!(windows.open_windows(), 1, "the window is kept");
    }

    /// With corrections, late rows fold into emitted windows, which are emitted again
    /// whole; a window is dropped once its corrections are over.
    #[tokio::test]
    async fn corrected_windows_are_emitted_again_with_every_row() {
        let query = planned("tumble(interval '1 minute')").await;
        let Shape::Windowed { window, .. } = &query.shape else { panic!("not windowed") };
        let spec = WindowSpec { corrections: Some(3 * MINUTE), ..window.clone() };
        let mut windows = Windows::new(spec);
        let mut rng = SmallRng::seed_from_u64(5);
        let on_time = requests(&mut rng, 0, 3000, 0, 10 * MINUTE);
        let late = requests(&mut rng, 5000, 500, 3 * MINUTE, 5 * MINUTE);
        let mut expected = Sums::new();
        for (ts, service, duration, _) in on_time.iter().chain(&late) {
            add(&mut expected, ts - ts.rem_euclid(MINUTE), service, *duration);
        }

        feed(&query, &mut windows, &on_time, &mut rng).await;
        let first = windows.close_until(T0 + 5 * MINUTE).unwrap().unwrap();
        assert!(windows.take_corrected().is_empty());
        feed(&query, &mut windows, &late, &mut rng).await;
        let again = windows.close_until(T0 + 6 * MINUTE).unwrap().unwrap();
        assert_eq!(windows.take_corrected(), [T0 + 3 * MINUTE, T0 + 4 * MINUTE]);
        assert_eq!(windows.open_windows(), 7, "windows 0..=2 are past their corrections; 3..=9 are kept");
        let rest = windows.close_until(i64::MAX).unwrap().unwrap();

        // The last emission of each window is what the table ends up with.
        let mut table = emitted(&[first], MINUTE);
        let again = emitted(&[again], MINUTE);
        assert_eq!(again.keys().map(|(start, _)| (start - T0) / MINUTE).collect::<BTreeSet<_>>(), BTreeSet::from([3, 4, 5]));
        table.extend(again);
        table.extend(emitted(&[rest], MINUTE));
        assert_same(&table, &expected);
    }

    /// Hopping windows against sums over every window each event falls in, with
    /// events that share panes with windows emitted before they came.
    #[tokio::test]
    async fn hopping_windows_match_a_row_by_row_computation() {
        let query = planned("hop(interval '1 minute', interval '5 minutes')").await;
        let Shape::Windowed { window, .. } = &query.shape else { panic!("not windowed") };
        assert_eq!((window.slide, window.size), (MINUTE, 5 * MINUTE));
        let mut windows = Windows::new(window.clone());
        let mut rng = SmallRng::seed_from_u64(11);

        // Phase one: ten minutes of events; then windows ending by minute 5 close.
        let first = requests(&mut rng, 0, 3000, 0, 10 * MINUTE);
        // Phase two: events from minute 5 on, in panes shared with windows still open
        // (an event whose first window was emitted is late, left out before this).
        let second = requests(&mut rng, 5000, 2000, 5 * MINUTE, 12 * MINUTE);
        let mut expected = Sums::new();
        for (ts, service, duration, _) in first.iter().chain(&second) {
            let pane = ts - (ts - T0).rem_euclid(MINUTE);
            for k in 0..5 {
                add(&mut expected, pane - k * MINUTE, service, *duration);
            }
        }

        feed(&query, &mut windows, &first, &mut rng).await;
        let early = windows.close_until(T0 + 5 * MINUTE).unwrap().unwrap();
        feed(&query, &mut windows, &second, &mut rng).await;
        let rest = windows.close_until(i64::MAX).unwrap().unwrap();
        assert_eq!(windows.open_windows(), 0, "every pane dropped at the end");
        assert_same(&emitted(&[early, rest], 5 * MINUTE), &expected);
    }
}
