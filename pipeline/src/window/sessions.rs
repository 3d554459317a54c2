//! Session windows (contract §2): per key, a run of events with gaps under `gap`;
//! `window_start` is its first event, `window_end` its last plus the gap.
//!
//! A session's extent is only known once it closes, and an event arriving between
//! two sessions of a key merges them, so the operator keeps the open sessions' input
//! rows (as Arroyo does) rather than partial aggregates, and runs the aggregates
//! over each session's rows when the watermark passes its end. Rows stay in the
//! batches they came in; sessions point at them.
//!
//! An event is late when its session would already have been emitted: a session of
//! it alone would have ended (`ts + gap <= watermark`), or it falls before the end
//! of the key's last emitted session, which it would have extended.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch, StructArray, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::{interleave_record_batch, take};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimestampMicrosecondType};
use arrow::row::{RowConverter, SortField};

use crate::error::{Error, Result};
use crate::plan::WindowSpec;

/// The open sessions of one windowed query.
pub struct Sessions {
    spec: WindowSpec,
    gap: i64,
    converter: RowConverter,
    /// Input rows of open sessions (and garbage, until compacted).
    batches: Vec<RecordBatch>,
    stored_rows: usize,
    /// Per key (in arrow's row format), its open sessions and last emitted end.
    keys: HashMap<Box<[u8]>, KeyState>,
}

#[derive(Default)]
struct KeyState {
    /// Disjoint, in order of start.
    open: Vec<Session>,
    /// The end of the key's last emitted session.
    emitted_end: Option<i64>,
}

struct Session {
    first: i64,
    last: i64,
    /// (batch, row) of each event.
    rows: Vec<(usize, usize)>,
}

impl Sessions {
    pub fn new(spec: WindowSpec, gap: i64) -> Result<Self> {
        let fields = spec.key_schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
        Ok(Sessions { converter: RowConverter::new(fields)?, spec, gap, batches: Vec::new(), stored_rows: 0, keys: HashMap::new() })
    }

    /// Whether an event of `key` at `ts` is late at `watermark`: the session it
    /// would be part of has ended by the watermark (and was emitted, or is about to
    /// be). Judged per event, so batch cuts do not matter.
    fn is_late(state: Option<&KeyState>, gap: i64, ts: i64, watermark: i64) -> bool {
        if ts.saturating_add(gap) <= watermark {
            return true;
        }
        let Some(state) = state else { return false };
        state.emitted_end.is_some_and(|end| ts < end)
            || state.open.iter().any(|s| s.last + gap <= watermark && s.first - gap < ts && ts < s.last + gap)
    }

    pub fn open_windows(&self) -> usize {
        self.keys.values().map(|k| k.open.len()).sum()
    }

    pub fn state_bytes(&self) -> usize {
        self.batches.iter().map(RecordBatch::get_array_memory_size).sum()
    }

    /// Adds a batch of the aggregate's input rows to their keys' sessions, except
    /// late ones, judged at `watermark(offset)`; returns the late rows' `_offset`s
    /// with their watermarks.
    pub fn update(&mut self, batch: &RecordBatch, watermark: impl Fn(i64) -> i64) -> Result<Vec<(i64, i64)>> {
        let mut late = Vec::new();
        if batch.num_rows() == 0 {
            return Ok(late);
        }
        let n = batch.num_rows();
        let time = self.spec.time.evaluate(batch)?.into_array(n)?;
        let time = time
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| Error::Internal(format!("event time is {}, not a µs timestamp", time.data_type())))?
            .clone();
        let keys: Vec<ArrayRef> = self.spec.keys.iter().map(|k| Ok(k.evaluate(batch)?.into_array(n)?)).collect::<Result<_>>()?;
        let keys = self.converter.convert_columns(&keys)?;
        let offsets = match &self.spec.offset {
            Some(offset) => offset.evaluate(batch)?.into_array(n)?,
            None => return Err(Error::Internal("a session window without `_offset`".into())),
        };
        let offsets = offsets.as_primitive_opt::<Int64Type>().ok_or_else(|| Error::Internal("`_offset` is not Int64".into()))?;
        let index = self.batches.len();
        self.batches.push(batch.clone());
        self.stored_rows += n;
        let gap = self.gap;
        for row in 0..n {
            if time.is_null(row) {
                continue;
            }
            let ts = time.value(row);
            let key = keys.row(row);
            let wm = watermark(offsets.value(row));
            if Self::is_late(self.keys.get(key.as_ref()), gap, ts, wm) {
                late.push((offsets.value(row), wm));
                continue;
            }
            let state = self.keys.entry(key.as_ref().into()).or_default();
            // Every open session within the gap of the event merges with it.
            let mut merged = Session { first: ts, last: ts, rows: vec![(index, row)] };
            state.open.retain_mut(|s| {
                let joins = s.first - gap < ts && ts < s.last + gap;
                if joins {
                    merged.first = merged.first.min(s.first);
                    merged.last = merged.last.max(s.last);
                    merged.rows.append(&mut s.rows);
                }
                !joins
            });
            let at = state.open.partition_point(|s| s.first < merged.first);
            state.open.insert(at, merged);
        }
        Ok(late)
    }

    /// Returns the rows of every session ending at or before `watermark`.
    pub fn close_until(&mut self, watermark: i64) -> Result<Option<RecordBatch>> {
        let gap = self.gap;
        let mut closed: Vec<Session> = Vec::new();
        self.keys.retain(|_, state| {
            state.open.retain_mut(|s| {
                let ends = s.last + gap <= watermark;
                if ends {
                    state.emitted_end = Some(state.emitted_end.map_or(s.last + gap, |e| e.max(s.last + gap)));
                    closed.push(Session { first: s.first, last: s.last, rows: std::mem::take(&mut s.rows) });
                }
                !ends
            });
            // Once the gap has passed the emitted end, the first late rule covers it.
            !state.open.is_empty() || state.emitted_end.is_some_and(|end| end > watermark.saturating_sub(gap))
        });
        if closed.is_empty() {
            return Ok(None);
        }
        closed.sort_by_key(|s| (s.first, s.rows.first().copied()));
        let result = self.aggregate(&closed)?;
        self.compact()?;
        Ok(Some(result))
    }

    /// The result rows of closed sessions: the aggregates over each one's rows.
    fn aggregate(&self, sessions: &[Session]) -> Result<RecordBatch> {
        let spec = &self.spec;
        let mut indices = Vec::new();
        let mut group_ids = Vec::new();
        let mut firsts = Vec::with_capacity(sessions.len());
        for (id, s) in sessions.iter().enumerate() {
            firsts.push(indices.len() as u32);
            indices.extend_from_slice(&s.rows);
            group_ids.extend(std::iter::repeat_n(id, s.rows.len()));
        }
        let rows = interleave_record_batch(&self.batches.iter().collect::<Vec<_>>(), &indices)?;
        let n = rows.num_rows();
        let firsts = UInt32Array::from(firsts);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(spec.schema.fields().len());
        for key in &spec.keys {
            columns.push(take(&key.evaluate(&rows)?.into_array(n)?, &firsts, None)?);
        }
        columns.insert(spec.window_index, self.window_array(sessions)?);
        columns.extend(crate::aggregate::aggregate_groups(&spec.aggregates, &rows, &group_ids, sessions.len())?);
        let columns = columns
            .into_iter()
            .zip(spec.schema.fields())
            .map(|(a, f)| if a.data_type() == f.data_type() { Ok(a) } else { Ok(arrow::compute::cast(&a, f.data_type())?) })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(spec.schema.clone(), columns)?)
    }

    fn window_array(&self, sessions: &[Session]) -> Result<ArrayRef> {
        let DataType::Struct(fields) = self.spec.schema.field(self.spec.window_index).data_type().clone() else {
            return Err(Error::Internal("the window column is not a struct".into()));
        };
        let starts = TimestampMicrosecondArray::from_iter_values(sessions.iter().map(|s| s.first)).with_timezone("UTC");
        let ends = TimestampMicrosecondArray::from_iter_values(sessions.iter().map(|s| s.last + self.gap)).with_timezone("UTC");
        Ok(Arc::new(StructArray::try_new(fields, vec![Arc::new(starts), Arc::new(ends)], None)?))
    }

    /// Copies the open sessions' rows into one batch once most stored rows are garbage.
    fn compact(&mut self) -> Result<()> {
        let live: usize = self.keys.values().flat_map(|k| &k.open).map(|s| s.rows.len()).sum();
        if self.stored_rows <= 2 * live + 8192 {
            return Ok(());
        }
        let mut indices = Vec::with_capacity(live);
        for session in self.keys.values_mut().flat_map(|k| k.open.iter_mut()) {
            for row in session.rows.iter_mut() {
                indices.push(*row);
                *row = (0, indices.len() - 1);
            }
        }
        let compacted = match indices.is_empty() {
            true => Vec::new(),
            false => vec![interleave_record_batch(&self.batches.iter().collect::<Vec<_>>(), &indices)?],
        };
        self.batches = compacted;
        self.stored_rows = live;
        Ok(())
    }

    /// The state as rows, for an epoch snapshot: `_key` (row format), `_emitted_end`,
    /// then the input columns. A row with `_emitted_end` records a key's last emitted
    /// session; the others are the open sessions' input rows.
    pub fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let input = match self.batches.first() {
            Some(b) => b.schema(),
            None if self.keys.is_empty() => return Ok(None),
            None => Arc::new(Schema::empty()),
        };
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut ends: Vec<Option<i64>> = Vec::new();
        let mut indices = Vec::new();
        for (key, state) in &self.keys {
            for row in state.open.iter().flat_map(|s| &s.rows) {
                keys.push(key);
                ends.push(None);
                indices.push(*row);
            }
        }
        let open_rows = indices.len();
        for (key, state) in &self.keys {
            if let Some(end) = state.emitted_end {
                keys.push(key);
                ends.push(Some(end));
            }
        }
        let markers = keys.len() - open_rows;
        let mut fields = vec![Field::new("_key", DataType::Binary, false), Field::new("_emitted_end", DataType::Int64, true)];
        let mut columns: Vec<ArrayRef> = vec![Arc::new(BinaryArray::from(keys)), Arc::new(Int64Array::from(ends))];
        let gathered = match open_rows {
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
        let bad = || Error::Checkpoint("session state without its `_key` and `_emitted_end` columns".into());
        let keys = rows.column_by_name("_key").and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(bad)?;
        let ends = rows.column_by_name("_emitted_end").and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or_else(bad)?;
        for row in (0..rows.num_rows()).filter(|&r| ends.is_valid(r)) {
            let state = self.keys.entry(keys.value(row).into()).or_default();
            state.emitted_end = Some(state.emitted_end.map_or(ends.value(row), |e| e.max(ends.value(row))));
        }
        let open = arrow::compute::filter_record_batch(rows, &arrow::compute::is_null(ends)?)?;
        if open.num_rows() > 0 {
            // The plan's expressions address columns by position, as saved.
            self.update(&open.project(&(2..open.num_columns()).collect::<Vec<_>>())?, |_| i64::MIN)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use arrow::datatypes::Float64Type;
    use datafusion::physical_plan::collect;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::catalog::TablePath;
    use crate::decode::testing::{raw, registry};
    use crate::decode::TopicDecoder;
    use crate::plan::{plan, Shape, SqlFile, StreamingQuery};

    const MINUTE: i64 = 60_000_000;
    const GAP: i64 = 30 * MINUTE;
    const T0: i64 = 1_772_323_200_000_000;

    async fn planned() -> StreamingQuery {
        let sql = "SELECT session(interval '30 minutes') AS window, service, count(*) AS n, sum(duration_ms) AS total \
                   FROM gateway.requests GROUP BY window, service"
            .to_string();
        let file = SqlFile { path: PathBuf::from("t.sql"), table: TablePath::new("a/b/c").unwrap(), sql };
        plan(&file, &crate::runtime::input_tables(&registry()), &Default::default()).await.unwrap()
    }

    fn request(service: &str, ts: i64, duration: f64) -> String {
        let iso = chrono::DateTime::from_timestamp_micros(ts).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        format!(
            r#"{{"request_id":"r","correlation_id":"c","ts":"{iso}","service":"{service}","upstream_instance":"x","method":"GET","route":"/","status":200,"duration_ms":{duration},"auth_outcome":"ok","rate_limited":false,"bytes_out":1}}"#
        )
    }

    fn sessions(query: &StreamingQuery) -> Sessions {
        let Shape::Windowed { window, .. } = &query.shape else { panic!("not windowed") };
        Sessions::new(window.clone(), window.session_gap.unwrap()).unwrap()
    }

    /// Feeds lines through the input plan, each judged at `watermark`; returns the late offsets.
    async fn feed(query: &StreamingQuery, sessions: &mut Sessions, lines: &[String], watermark: i64) -> Vec<i64> {
        let Shape::Windowed { input, .. } = &query.shape else { panic!("not windowed") };
        let decoder = TopicDecoder::new(registry().get("gateway.requests").unwrap().clone());
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        query.inputs[0].1.fill(vec![decoder.decode(&raw("gateway.requests", &lines)).unwrap().batch]);
        let mut late = Vec::new();
        for b in collect(input.clone(), query.task_ctx.clone()).await.unwrap() {
            late.extend(sessions.update(&b, |_| watermark).unwrap().into_iter().map(|(offset, _)| offset));
        }
        late
    }

    /// (service, start) → (end, n, total) of emitted sessions.
    fn emitted(batch: &RecordBatch) -> BTreeMap<(String, i64), (i64, i64, f64)> {
        let window = batch.column(0).as_struct();
        let starts = window.column(0).as_primitive::<TimestampMicrosecondType>();
        let ends = window.column(1).as_primitive::<TimestampMicrosecondType>();
        (0..batch.num_rows())
            .map(|r| {
                let service = batch.column(1).as_string::<i32>().value(r).to_string();
                let n = batch.column(2).as_primitive::<Int64Type>().value(r);
                let total = batch.column(3).as_primitive::<Float64Type>().value(r);
                ((service, starts.value(r)), (ends.value(r), n, total))
            })
            .collect()
    }

    #[tokio::test]
    async fn sessions_match_a_sorted_split_at_gaps_whatever_the_order_batches_and_checkpoints() {
        let query = planned().await;
        let mut rng = SmallRng::seed_from_u64(5);
        let mut events: Vec<(String, i64, f64)> = (0..3_000)
            .map(|_| {
                let service = ["auth", "devlab", "assessment"][rng.random_range(0..3)].to_string();
                (service, T0 + rng.random_range(0..3_000 * MINUTE), f64::from(rng.random_range(1..400u32)) / 4.0)
            })
            .collect();
        // Expected: per service, sorted events split where the gap is 30 minutes or more.
        events.sort_by_key(|e| (e.0.clone(), e.1));
        let mut expected: BTreeMap<(String, i64), (i64, i64, f64)> = BTreeMap::new();
        let mut current: Option<(String, i64)> = None;
        for (service, ts, duration) in &events {
            let key = match &current {
                Some((s, start)) if s == service && expected[&(s.clone(), *start)].0 > *ts => (s.clone(), *start),
                _ => (service.clone(), *ts),
            };
            let e = expected.entry(key.clone()).or_insert((0, 0, 0.0));
            *e = (ts + GAP, e.1 + 1, e.2 + duration);
            current = Some(key);
        }
        // Arrival in random order (so later events bridge sessions), random batches,
        // checkpoints taken and restored along the way; no watermark until the end.
        for i in (1..events.len()).rev() {
            events.swap(i, rng.random_range(0..=i));
        }
        let mut s = sessions(&query);
        for chunk in events.chunks(rng.random_range(50..400)) {
            let lines: Vec<String> = chunk.iter().map(|(service, ts, d)| request(service, *ts, *d)).collect();
            assert!(feed(&query, &mut s, &lines, i64::MIN).await.is_empty());
            if rng.random_bool(0.3) {
                let state = s.snapshot().unwrap().unwrap();
                s = sessions(&query);
                s.restore(&state).unwrap();
            }
        }
        let actual = emitted(&s.close_until(i64::MAX).unwrap().unwrap());
        assert_eq!(actual.len(), expected.len());
        for (key, (end, n, total)) in &expected {
            let (a_end, a_n, a_total) = actual[key];
            assert_eq!((a_end, a_n), (*end, *n), "{key:?}");
            assert!((a_total - total).abs() < 1e-6, "{key:?}");
        }
    }

    /// saga_coordination_data: the outcome is the status of the last step by time,
    /// ties going to the higher step_index and then to the later message, whatever
    /// order the steps arrive in and wherever checkpoints restore the state.
    #[tokio::test]
    async fn the_last_step_by_time_and_index_decides_a_saga_whatever_the_order() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sql/integration/event_bus/saga_coordination_data.sql");
        let file = SqlFile { path: path.clone(), table: TablePath::new("integration/event_bus/saga_coordination_data").unwrap(), sql: std::fs::read_to_string(&path).unwrap() };
        let query = plan(&file, &crate::runtime::input_tables(&registry()), &Default::default()).await.unwrap();
        let Shape::Windowed { window, input, .. } = &query.shape else { panic!("not windowed") };
        let mut rng = SmallRng::seed_from_u64(3);
        let statuses = ["started", "completed", "failed", "compensated"];
        let mut steps: Vec<(u32, i64, i32, &str)> = Vec::new();
        for saga in 0..60u32 {
            let mut t = T0 + i64::from(saga) * 20 * MINUTE;
            for index in 0..rng.random_range(2..7) {
                // Ties: a step's events at the instant of the previous one, now and
                // then; and a step started and ended within a truncated second.
                if !rng.random_bool(0.3) {
                    t += rng.random_range(1..120) * 1_000_000;
                }
                steps.push((saga, t, index, statuses[rng.random_range(0..4)]));
                if rng.random_bool(0.3) {
                    steps.push((saga, t, index, statuses[rng.random_range(0..4)]));
                }
            }
        }
        for i in (1..steps.len()).rev() {
            steps.swap(i, rng.random_range(0..=i));
        }
        // A step's offset is its place in the stream (raw() starts at 10).
        let mut expected: BTreeMap<String, (i64, String)> = BTreeMap::new();
        for saga in 0..60u32 {
            let mine = steps.iter().enumerate().filter(|(_, s)| s.0 == saga);
            let last = mine.clone().max_by_key(|(offset, (_, t, i, _))| (*t, *i, *offset)).unwrap().1;
            expected.insert(format!("saga-{saga}"), (mine.count() as i64, last.3.to_string()));
        }
        let decoder = TopicDecoder::new(registry().get("eventbus.saga_steps").unwrap().clone());
        let mut sessions = Sessions::new(window.clone(), window.session_gap.unwrap()).unwrap();
        for (offset, chunk) in steps.chunks(37).enumerate() {
            let lines: Vec<String> = chunk
                .iter()
                .map(|(saga, t, index, status)| {
                    let iso = chrono::DateTime::from_timestamp_micros(*t).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                    format!(r#"{{"event_id":"e","ts":"{iso}","saga_id":"saga-{saga}","saga_type":"grading","step":"s{index}","step_index":{index},"status":"{status}","service":"assessment","correlation_id":"c"}}"#)
                })
                .collect();
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let mut raw = raw("eventbus.saga_steps", &lines);
            for m in raw.messages.iter_mut() {
                m.offset += (offset * 37) as i64;
            }
            query.inputs[0].1.fill(vec![decoder.decode(&raw).unwrap().batch]);
            for b in collect(input.clone(), query.task_ctx.clone()).await.unwrap() {
                assert!(sessions.update(&b, |_| i64::MIN).unwrap().is_empty());
            }
            if rng.random_bool(0.5) {
                let state = sessions.snapshot().unwrap().unwrap();
                sessions = Sessions::new(window.clone(), window.session_gap.unwrap()).unwrap();
                sessions.restore(&state).unwrap();
            }
        }
        let out = sessions.close_until(i64::MAX).unwrap().unwrap();
        // The aggregate's columns: window, saga_id, saga_type, count(*), the two FILTERed counts, last_value, ...
        let (ids, steps_col, outcomes) = (out.column(1).clone(), out.column(3).clone(), out.column(6).clone());
        let ids = arrow::compute::cast(&ids, &DataType::Utf8).unwrap();
        let outcomes = arrow::compute::cast(&outcomes, &DataType::Utf8).unwrap();
        assert_eq!(out.num_rows(), expected.len());
        for r in 0..out.num_rows() {
            let id = ids.as_string::<i32>().value(r);
            assert_eq!((steps_col.as_primitive::<Int64Type>().value(r), outcomes.as_string::<i32>().value(r).to_string()), expected[id].clone(), "{id}");
        }
    }

    #[tokio::test]
    async fn a_bridging_event_merges_two_sessions_and_an_event_for_an_emitted_session_is_late() {
        let query = planned().await;
        let mut s = sessions(&query);
        let at = |minutes: i64| T0 + minutes * MINUTE;
        // Two sessions of auth: [0, 30) and [50, 80), then an event at 25 bridges them.
        feed(&query, &mut s, &[request("auth", at(0), 1.0), request("auth", at(50), 2.0)], at(0)).await;
        feed(&query, &mut s, &[request("auth", at(25), 4.0)], at(20)).await;
        assert!(s.close_until(at(79)).unwrap().is_none(), "the merged session ends at 80");
        let out = emitted(&s.close_until(at(80)).unwrap().unwrap());
        assert_eq!(out[&("auth".to_string(), at(0))], (at(80), 3, 7.0));
        // At 81 an event at 70 would extend the emitted session (70 + 30 > 81, but
        // before its end): late. One at 85 starts a new session.
        let late = feed(&query, &mut s, &[request("auth", at(70), 1.0), request("auth", at(85), 1.0)], at(81)).await;
        assert_eq!(late, [10]);
        // Before an emission, an event joining a session that has ended by its
        // watermark is late too: the session [85, 115) has ended at 116.
        let late = feed(&query, &mut s, &[request("auth", at(100), 1.0), request("devlab", at(100), 1.0)], at(116)).await;
        assert_eq!(late, [10]);
    }
}
