//! One SQL file running: its plan, its clock and its state (windows, or keys'
//! current state), and what it does with them: take a batch of a topic it reads
//! (judging which rows are late), emit the windows its watermark has passed, and
//! at a commit, rewrite its table when its keys or the mirrors it reads changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::physical_plan::execution_plan::reset_plan_states;

use super::event_times;
use crate::catalog::TablePath;
use crate::error::{Error, Result};
use crate::keyed::CurrentState;
use crate::mirror::Mirror;
use crate::plan::{Shape, Slot, StreamingQuery};
use crate::sink::{LateEvents, TableSink};
use crate::source::PartitionId;
use crate::time::{QueryClock, Watermarks};
use crate::window::WindowOperator;

/// A planned query with its running state.
pub struct RunningQuery {
    pub query: StreamingQuery,
    pub clock: QueryClock,
    pub windows: Option<WindowOperator>,
    /// A current-state query's keys.
    pub current: Option<CurrentState>,
    /// The windowed query keeps only some of its topics' rows (a `WHERE`): a row
    /// past its window is late for this table only if the filter keeps it.
    filters_input: bool,
    /// Per topic it reads, the columns of the topic's batches its plan reads (all
    /// when absent): leaving late rows out copies only those.
    columns_read: Vec<(Arc<str>, Vec<bool>)>,
    /// A repartitioned query's upstream in a group: shard `index` of `count` takes
    /// the partitions `p % count == index`, and sends its panes on instead of
    /// emitting windows.
    share: Option<(u32, u32)>,
}

/// Where a batch's late rows are recorded: the rows for `late_events`, and per
/// row of the batch whether any query found it late.
pub struct Lateness<'a> {
    pub events: &'a mut LateEvents,
    pub late_any: &'a mut [bool],
}

impl RunningQuery {
    pub fn new(query: StreamingQuery) -> Result<Self> {
        let clock = QueryClock::new(query.clock_topics());
        let windows = match &query.shape {
            Shape::Windowed { window, .. } => Some(WindowOperator::new(window.clone())?),
            Shape::Stateless { .. } | Shape::OverMirrors { .. } | Shape::Current { .. } => None,
        };
        let current = match &query.shape {
            Shape::Current { spec, .. } => Some(CurrentState::new(spec.clone())?),
            _ => None,
        };
        let filters_input = match &query.shape {
            Shape::Windowed { input, .. } => has_filter(input.as_ref()),
            _ => false,
        };
        let columns_read = match &query.shape {
            Shape::Windowed { input, .. } => query
                .inputs
                .iter()
                .map(|(topic, slot)| {
                    let mut read = vec![false; slot.schema().fields().len()];
                    mark_columns_read(input.as_ref(), slot, &mut read);
                    (topic.clone(), read)
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(RunningQuery { query, clock, windows, current, filters_input, columns_read, share: None })
    }

    /// Makes it upstream `index` of `count` of its repartitioned table: it takes its
    /// share of the partitions and keeps its panes for [`panes`](Self::panes).
    pub fn share(&mut self, index: u32, count: u32) {
        self.share = Some((index, count.max(1)));
    }

    /// Whether it takes partition `partition` of the topics it reads.
    pub fn takes(&self, partition: i32) -> bool {
        self.share.is_none_or(|(index, count)| partition.rem_euclid(count as i32) as u32 == index)
    }

    /// A windowed query's panes, as an upstream sends them.
    pub fn panes(&mut self) -> Result<&mut crate::window::Windows> {
        match self.windows.as_mut() {
            Some(WindowOperator::Panes(windows)) => Ok(windows),
            _ => Err(Error::Internal(format!("{}: repartitioned, but not a tumble() or hop() window", self.query.table))),
        }
    }

    /// The columns of `topic` (by position) its plan reads; `None`: any of them
    /// (a shape whose reads are not traced, or a topic it does not read).
    pub fn columns_read_of(&self, topic: &str) -> Option<&[bool]> {
        self.columns_read.iter().find(|(t, _)| &**t == topic).map(|(_, read)| read.as_slice())
    }

    /// The state a restart needs (windows, or keys), as rows.
    pub fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        match (self.windows.as_mut(), self.current.as_mut()) {
            (Some(windows), _) => windows.snapshot(),
            (_, Some(current)) => current.snapshot(),
            _ => Ok(None),
        }
    }

    /// Takes up state from [`snapshot`](Self::snapshot) rows.
    pub fn restore(&mut self, rows: &RecordBatch) -> Result<()> {
        match (self.windows.as_mut(), self.current.as_mut()) {
            (Some(windows), _) => windows.restore(rows),
            (_, Some(current)) => current.restore(rows),
            _ => Ok(()),
        }
    }

    /// Open windows (or live keys) and the bytes of their state.
    pub fn state_size(&self) -> (usize, usize) {
        match (&self.windows, &self.current) {
            (Some(w), _) => (w.open_windows(), w.state_bytes()),
            (_, Some(c)) => (c.live_keys(), c.state_bytes()),
            _ => (0, 0),
        }
    }

    /// Whether it reads `topic` (as a stream, not as a mirror).
    pub fn reads(&self, topic: &str) -> bool {
        self.query.inputs.iter().any(|(t, _)| &**t == topic)
    }

    pub fn table(&self) -> &TablePath {
        &self.query.table
    }

    /// Runs the query on `batch` of partition `id`, if it reads that topic: a
    /// stateless query's rows go to `sink`; a windowed one's into its windows.
    /// With `late`, rows whose window has closed are left out and recorded there.
    /// `row_watermarks` is a buffer reused across calls.
    pub async fn feed(
        &mut self,
        id: &PartitionId,
        batch: &RecordBatch,
        watermarks: &Watermarks,
        row_watermarks: &mut Vec<i64>,
        mut late: Option<Lateness<'_>>,
        sink: &mut TableSink,
    ) -> Result<()> {
        let Some(slot) = self.query.inputs.iter().find(|(t, _)| *t == id.topic).map(|(_, s)| s.clone()) else {
            return Ok(());
        };
        let task_ctx = self.query.task_ctx.clone();
        let (input, sessions) = match &self.query.shape {
            Shape::Stateless { plan } => {
                slot.fill(vec![batch.clone()]);
                for b in &collect(plan.clone(), task_ctx).await? {
                    sink.push(b)?;
                }
                return Ok(());
            }
            Shape::Windowed { input, window, .. } => (input.clone(), window.session_gap.is_some()),
            // No event is late for a current-state query: every row goes to its key.
            Shape::Current { input, .. } => {
                slot.fill(vec![batch.clone()]);
                if let Some(current) = self.current.as_mut() {
                    for b in &collect(input.clone(), task_ctx).await? {
                        current.update(b)?;
                    }
                }
                return Ok(());
            }
            // Reads no topic: runs at commits, when its mirrors changed.
            Shape::OverMirrors { .. } => return Ok(()),
        };
        let mut rows = batch.clone();
        match late.as_mut() {
            Some(late) if !sessions => {
                if let Some((keep, late_rows)) = self.late_rows(id, batch, watermarks, row_watermarks)? {
                    for row in late_rows {
                        if !self.filters_input || self.keeps(&input, &slot, &batch.slice(row, 1)).await? {
                            late.late_any[row] = true;
                            late.events.push(row, row_watermarks[row], &self.query.table);
                        }
                    }
                    rows = self.without_late_rows(&id.topic, batch, &keep)?;
                }
            }
            // Sessions judge lateness per input row, at the watermark just before
            // the message the row came from (found by its offset).
            Some(_) => {
                let ts = event_times(batch)?.values().iter().copied();
                self.clock.row_watermarks(watermarks, id, ts, row_watermarks);
            }
            None => row_watermarks.clear(),
        }
        slot.fill(vec![rows]);
        let inputs = collect(input, task_ctx).await?;
        let offsets = batch.column_by_name(crate::schema::LINEAGE[2]).and_then(|c| c.as_primitive_opt::<Int64Type>());
        let row_of = |offset: i64| offsets.and_then(|o| o.values().binary_search(&offset).ok());
        let watermark = |offset: i64| row_of(offset).and_then(|row| row_watermarks.get(row).copied()).unwrap_or(i64::MIN);
        if let Some(windows) = self.windows.as_mut() {
            for b in &inputs {
                for (offset, wm) in windows.update(b, watermark)? {
                    if let (Some(late), Some(row)) = (late.as_mut(), row_of(offset)) {
                        late.late_any[row] = true;
                        late.events.push(row, wm, &self.query.table);
                    }
                }
            }
        }
        Ok(())
    }

    /// Finds the rows of `batch` whose tumbling or hopping window has closed;
    /// returns the rows to keep and the late ones, or `None` when none is late.
    fn late_rows(
        &self,
        id: &PartitionId,
        batch: &RecordBatch,
        watermarks: &Watermarks,
        row_watermarks: &mut Vec<i64>,
    ) -> Result<Option<(BooleanArray, Vec<usize>)>> {
        let ts = event_times(batch)?;
        let Some(WindowOperator::Panes(windows)) = self.windows.as_ref() else { return Ok(None) };
        self.clock.row_watermarks(watermarks, id, ts.values().iter().copied(), row_watermarks);
        let is_late: Vec<bool> = ts.values().iter().zip(row_watermarks.iter()).map(|(&t, &wm)| windows.late_from(t) <= wm).collect();
        if !is_late.contains(&true) {
            return Ok(None);
        }
        let late_rows = is_late.iter().enumerate().filter(|(_, l)| **l).map(|(row, _)| row).collect();
        Ok(Some((BooleanArray::from(is_late.into_iter().map(|l| !l).collect::<Vec<bool>>()), late_rows)))
    }

    /// `batch` with only the rows `keep` says, in the columns the plan reads; the
    /// others (often most of the bytes: ids, the raw message) become placeholders
    /// of the right length that the plan never looks at.
    fn without_late_rows(&self, topic: &str, batch: &RecordBatch, keep: &BooleanArray) -> Result<RecordBatch> {
        let Some(read) = self.columns_read_of(topic) else {
            return Ok(filter_record_batch(batch, keep)?);
        };
        let kept = keep.true_count();
        let columns = batch
            .columns()
            .iter()
            .zip(read)
            .map(|(column, &read)| match read {
                true => Ok(arrow::compute::filter(column, keep)?),
                false => crate::decode::placeholder(column.data_type(), kept).or_else(|_| Ok(arrow::compute::filter(column, keep)?)),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(batch.schema(), columns)?)
    }

    /// Whether the query's `input` keeps anything of `row` (late rows only: they
    /// are few, and each runs the input plan alone).
    async fn keeps(&self, input: &Arc<dyn ExecutionPlan>, slot: &Slot, row: &RecordBatch) -> Result<bool> {
        slot.fill(vec![row.clone()]);
        let out = collect(input.clone(), self.query.task_ctx.clone()).await?;
        Ok(out.iter().any(|b| b.num_rows() > 0))
    }

    /// Emits every window the watermarks have passed into `sink`, joined with the
    /// mirrors as of each window's end; returns the query's watermark.
    pub async fn close(&mut self, watermarks: &Watermarks, mirrors: &BTreeMap<Arc<str>, Mirror>, sink: &mut TableSink) -> Result<Option<i64>> {
        let Some(windows) = self.windows.as_mut() else { return Ok(None) };
        let watermark = self.clock.advance(watermarks);
        if self.share.is_some() {
            // Its panes go to the table's shard, which emits the windows.
            return Ok(Some(watermark));
        }
        let Some(rows) = windows.close_until(watermark)? else { return Ok(Some(watermark)) };
        sink.replace_windows(&windows.take_corrected())?;
        self.emit(rows, mirrors, sink).await?;
        Ok(Some(watermark))
    }

    /// Closed windows' aggregate rows through the plan above the aggregate, into
    /// `sink`, joined with the mirrors as of each window's end.
    pub async fn emit(&self, rows: RecordBatch, mirrors: &BTreeMap<Arc<str>, Mirror>, sink: &mut TableSink) -> Result<()> {
        let Shape::Windowed { output, output_slot, per_window, window, .. } = &self.query.shape else { return Ok(()) };
        let groups = match per_window {
            true => split_by_window_end(&rows, window.window_index)?,
            false => vec![(i64::MAX, rows)],
        };
        for (end, rows) in groups {
            for joined in &self.query.mirrors {
                joined.slot.fill(vec![mirror_of(mirrors, &joined.topic)?.as_of(end)?]);
            }
            output_slot.fill(vec![rows]);
            // A join keeps its build side in the plan: start each window afresh.
            let plan = if *per_window { reset_plan_states(output.clone())? } else { output.clone() };
            for b in &collect(plan, self.query.task_ctx.clone()).await? {
                sink.push(b)?;
            }
        }
        Ok(())
    }

    /// A current-state query whose keys changed rewrites its table: every live
    /// key's row, through the plan above the aggregate.
    pub async fn rewrite_current(&mut self, sink: &mut TableSink) -> Result<()> {
        let (Some(current), Shape::Current { output, output_slot, .. }) = (self.current.as_mut(), &self.query.shape) else { return Ok(()) };
        let Some(rows) = current.take_rows()? else { return Ok(()) };
        output_slot.fill(vec![rows]);
        let rows = collect(reset_plan_states(output.clone())?, self.query.task_ctx.clone()).await?;
        sink.begin_replacement();
        for b in &rows {
            sink.push(b)?;
        }
        Ok(())
    }

    /// A query over mirrors alone that reads one of the `changed` mirrors runs on
    /// the mirrors' current rows, and its result replaces its table's rows.
    pub async fn rerun_over_mirrors(&self, changed: &[Arc<str>], mirrors: &BTreeMap<Arc<str>, Mirror>, sink: &mut TableSink) -> Result<()> {
        let Shape::OverMirrors { plan } = &self.query.shape else { return Ok(()) };
        if !self.query.mirrors.iter().any(|m| changed.contains(&m.topic)) {
            return Ok(());
        }
        for read in &self.query.mirrors {
            read.slot.fill(vec![mirror_of(mirrors, &read.topic)?.current()?]);
        }
        let rows = collect(reset_plan_states(plan.clone())?, self.query.task_ctx.clone()).await?;
        sink.begin_replacement();
        for b in &rows {
            sink.push(b)?;
        }
        Ok(())
    }
}

/// Marks in `read` the columns of `slot`'s batches that `plan`'s scans of it read;
/// a scan without a projection reads them all.
fn mark_columns_read(plan: &dyn ExecutionPlan, slot: &Slot, read: &mut [bool]) {
    if let Some(scan) = plan.downcast_ref::<StreamingTableExec>() {
        if scan.partitions().iter().any(|p| Arc::ptr_eq(p.schema(), slot.schema())) {
            match scan.projection() {
                Some(columns) => {
                    for &c in columns.iter() {
                        if let Some(r) = read.get_mut(c) {
                            *r = true;
                        }
                    }
                }
                None => read.fill(true),
            }
        }
    }
    for child in plan.children() {
        mark_columns_read(child.as_ref(), slot, read);
    }
}

/// Whether `plan` drops rows by a predicate somewhere (a `WHERE`).
fn has_filter(plan: &dyn ExecutionPlan) -> bool {
    plan.name() == FilterExec::static_name() || plan.children().into_iter().any(|c| has_filter(c.as_ref()))
}

/// The mirror of CDC topic `topic` (one is kept for every CDC topic).
pub fn mirror_of<'a>(mirrors: &'a BTreeMap<Arc<str>, Mirror>, topic: &str) -> Result<&'a Mirror> {
    mirrors.get(topic).ok_or_else(|| Error::Internal(format!("no mirror of {topic}")))
}

/// Splits the rows of closed windows by window end, earliest first.
fn split_by_window_end(rows: &RecordBatch, window_index: usize) -> Result<Vec<(i64, RecordBatch)>> {
    let ends = rows
        .column(window_index)
        .as_struct()
        .column(1)
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| Error::Internal("a window column without a µs end".into()))?
        .clone();
    let mut distinct: Vec<i64> = ends.values().to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if let [end] = distinct[..] {
        return Ok(vec![(end, rows.clone())]);
    }
    distinct
        .into_iter()
        .map(|end| {
            let end_scalar = arrow::array::TimestampMicrosecondArray::from(vec![end]).with_timezone_opt(ends.timezone());
            let keep = arrow::compute::kernels::cmp::eq(&ends, &arrow::array::Scalar::new(end_scalar))?;
            Ok((end, filter_record_batch(rows, &keep)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use arrow::array::Array;

    use super::*;
    use crate::decode::testing::{decode, registry};
    use crate::plan::{plan, SqlFile};

    #[tokio::test]
    async fn late_rows_are_left_out_of_the_columns_the_plan_reads_with_the_same_result() {
        let sql = "SELECT tumble(interval '1 minute') AS window, service, count(*) AS n, max(duration_ms) AS worst \
                   FROM gateway.requests WHERE method = 'GET' GROUP BY window, service";
        let file = SqlFile { path: PathBuf::from("t.sql"), table: TablePath::new("a/b/c").unwrap(), sql: sql.into() };
        let query = RunningQuery::new(plan(&file, &crate::runtime::input_tables(&registry()), &Default::default()).await.unwrap()).unwrap();
        let (topic, slot) = query.query.inputs[0].clone();
        let read = query.columns_read_of(&topic).unwrap();
        let names: Vec<&str> = slot.schema().fields().iter().zip(read).filter(|(_, r)| **r).map(|(f, _)| f.name().as_str()).collect();
        for used in ["ts", "service", "duration_ms", "method"] {
            assert!(names.contains(&used), "{used} is read, but the plan is said to read only {names:?}");
        }
        for unused in ["request_id", "correlation_id", "user_id", "_raw"] {
            assert!(!names.contains(&unused), "{unused} is not read, but is in {names:?}");
        }

        let lines: Vec<String> = (0..40)
            .map(|i| {
                let method = if i % 3 == 0 { "POST" } else { "GET" };
                let service = ["auth", "devlab"][i % 2];
                format!(
                    r#"{{"request_id":"r{i}","correlation_id":"c{i}","ts":"2026-03-01T00:0{}:{:02}Z","service":"{service}","upstream_instance":"x","method":"{method}","route":"/","status":200,"duration_ms":{i}.5,"auth_outcome":"ok","rate_limited":false,"bytes_out":1}}"#,
                    i % 4,
                    i
                )
            })
            .collect();
        let batch = decode(&topic, &lines.iter().map(String::as_str).collect::<Vec<_>>()).batch;
        let keep = BooleanArray::from((0..40).map(|i| i % 5 != 0).collect::<Vec<bool>>());

        let Shape::Windowed { input, .. } = &query.query.shape else { panic!("not windowed") };
        let run = |rows: RecordBatch| {
            let (input, slot, ctx) = (input.clone(), slot.clone(), query.query.task_ctx.clone());
            async move {
                slot.fill(vec![rows]);
                let out = collect(input, ctx).await.unwrap();
                arrow::compute::concat_batches(&out[0].schema(), &out).unwrap()
            }
        };
        let thin = query.without_late_rows(&topic, &batch, &keep).unwrap();
        assert_eq!(thin.num_rows(), 32);
        let raw_column = thin.column_by_name("_raw").unwrap();
        assert_eq!(raw_column.len(), 32);
        assert!(raw_column.as_string::<i32>().iter().all(|v| v == Some("")), "an unread column is a placeholder");
        assert_eq!(run(thin).await, run(filter_record_batch(&batch, &keep).unwrap()).await);
    }
}
