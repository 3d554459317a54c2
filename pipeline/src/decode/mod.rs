//! Decoding: raw JSON messages to Arrow batches against a topic's schema.
//!
//! One pass per message with a borrowing serde visitor that fills a slot per schema
//! field (no `serde_json::Value`, no allocation for plain strings), then checks the
//! slots and appends them to column builders. A message that fails any check becomes
//! a [`DeadLetter`] whose reason names the field; nothing is appended for it.

mod json;
pub mod rfc3339;

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Array, Int32Builder, Int64Array, Int64Builder,
    StringArray, StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::schema::{FieldSpec, FieldType, TopicKind, TopicSchema, EVENT_TIME};
use crate::source::RawBatch;
use json::{Envelope, Text, Value};

/// A message that could not be decoded, with the reason.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub offset: i64,
    pub error: String,
    pub raw: String,
}

/// The outcome of decoding one [`RawBatch`].
#[derive(Debug)]
pub struct Decoded {
    /// The valid messages, in the topic's Arrow schema (possibly empty).
    pub batch: RecordBatch,
    pub dead_letters: Vec<DeadLetter>,
    /// Null messages (Kafka tombstones): skipped, neither rows nor dead letters.
    pub tombstones: usize,
}

/// Decodes the messages of one topic (cheap to clone: the schema is shared).
#[derive(Clone)]
pub struct TopicDecoder {
    schema: Arc<TopicSchema>,
}

/// A checked field value, ready to append; strings stay in their slot.
#[derive(Debug, Clone, Copy)]
enum Cell {
    Null,
    Str,
    I32(i32),
    I64(i64),
    F64(f64),
    Bool(bool),
    Ts(i64),
}

/// The envelope columns of a checked change.
struct Change {
    op: &'static str,
    lsn: i64,
    ts: i64,
    /// A delete: the entity's fields come from `before`.
    from_before: bool,
}

impl TopicDecoder {
    pub fn new(schema: Arc<TopicSchema>) -> Self {
        TopicDecoder { schema }
    }

    pub fn schema(&self) -> &Arc<TopicSchema> {
        &self.schema
    }

    pub fn decode(&self, raw: &RawBatch) -> Result<Decoded> {
        self.decode_columns(raw, None)
    }

    /// Decodes `raw`, building only the columns `wanted` marks (by position in the
    /// topic's Arrow schema; `None`: all): the others are placeholders of the right
    /// length (zeros, empty strings) for what nothing reads. Every message is
    /// checked all the same, so bad ones are dead letters whatever is built.
    pub fn decode_columns(&self, raw: &RawBatch, wanted: Option<&[bool]>) -> Result<Decoded> {
        let fields = &self.schema.fields;
        let n_messages = raw.messages.len();
        let wants = |i: usize| wanted.is_none_or(|w| w.get(i).copied().unwrap_or(true));
        let mut columns = Columns::new(fields, n_messages, wants);
        // The raw message is the schema's last column.
        let raw_column = self.schema.arrow_schema.fields().len() - 1;
        let raw_wanted = wants(raw_column);
        let mut changes = (self.schema.kind == TopicKind::Cdc).then(|| ChangeColumns::new(n_messages));
        let mut dead_letters = Vec::new();
        let mut tombstones = 0;
        let mut offsets = Vec::with_capacity(n_messages);
        let mut raws = StringBuilder::with_capacity(n_messages, raw.data.len());
        let mut cells: Vec<Cell> = Vec::with_capacity(fields.len());
        let mut after: Vec<Value> = Vec::with_capacity(fields.len());
        let mut before: Vec<Value> = Vec::with_capacity(fields.len());

        // One UTF-8 check for the whole batch; line boundaries are char boundaries.
        let text = std::str::from_utf8(&raw.data).ok();
        for message in &raw.messages {
            let Some(bytes) = raw.payload(message) else {
                tombstones += 1;
                continue;
            };
            cells.clear();
            let message_text = match (text, &message.payload) {
                (Some(text), Some(range)) => Text::Str(&text[range.clone()]),
                // A batch with a message that is not UTF-8: the others are checked one by one.
                _ => std::str::from_utf8(bytes).map_or(Text::Bytes(bytes), Text::Str),
            };
            let checked = match changes {
                Some(_) => self.check_change(message_text, &mut after, &mut before, &mut cells).map(Some),
                None => json::parse_object(message_text, fields, &mut after)
                    .and_then(|()| check_fields(fields, &after, "", true, &mut cells))
                    .map(|()| None),
            };
            match checked {
                Ok(change) => {
                    let slots = match &change {
                        Some(c) if c.from_before => &before,
                        _ => &after,
                    };
                    columns.append(&cells, slots);
                    if let (Some(columns), Some(change)) = (changes.as_mut(), change) {
                        columns.append(&change);
                    }
                    offsets.push(message.offset);
                    match message_text {
                        _ if !raw_wanted => {}
                        Text::Str(text) => raws.append_value(text),
                        Text::Bytes(bytes) => raws.append_value(String::from_utf8_lossy(bytes)),
                    }
                }
                Err(error) => dead_letters.push(DeadLetter {
                    offset: message.offset,
                    error,
                    raw: String::from_utf8_lossy(bytes).into_owned(),
                }),
            }
        }

        let n = offsets.len();
        let mut arrays = columns.finish(&self.schema.arrow_schema, n)?;
        if let Some(changes) = changes {
            arrays.extend(changes.finish());
        }
        arrays.push(Arc::new(StringArray::from_iter_values(std::iter::repeat_n(&*raw.partition.topic, n))));
        arrays.push(Arc::new(Int32Array::from_value(raw.partition.partition, n)));
        arrays.push(Arc::new(Int64Array::from(offsets)));
        arrays.push(Arc::new(TimestampMicrosecondArray::from_value(raw.ingested_at, n).with_timezone("UTC")));
        arrays.push(match raw_wanted {
            true => Arc::new(raws.finish()),
            false => placeholder(self.schema.arrow_schema.field(raw_column).data_type(), n)?,
        });
        let batch = RecordBatch::try_new(self.schema.arrow_schema.clone(), arrays)?;
        Ok(Decoded { batch, dead_letters, tombstones })
    }

    /// A Debezium envelope: the entity's fields from `after` (from `before` on a delete).
    fn check_change<'a>(
        &self,
        text: Text<'a>,
        after: &mut Vec<Value<'a>>,
        before: &mut Vec<Value<'a>>,
        cells: &mut Vec<Cell>,
    ) -> std::result::Result<Change, String> {
        let fields = &self.schema.fields;
        let env: Envelope = json::parse_envelope(text, fields, after, before)?;
        let op = match &env.op {
            Value::Str(op) => match &**op {
                "c" => "c",
                "u" => "u",
                "d" => "d",
                "r" => "r",
                _ => return Err(format!("field `op`: {} is not one of c, u, d, r", env.op.describe())),
            },
            Value::Missing | Value::Null => return Err("missing required field `op`".into()),
            other => return Err(format!("field `op`: expected one of c, u, d, r, found {}", other.describe())),
        };
        let ts_ms = required_int(&env.ts_ms, "ts_ms")?;
        let lsn = required_int(&env.lsn, "source.lsn")?;
        let from_before = op == "d";
        if from_before {
            if !env.before_present {
                return Err("a delete (`op` d) needs `before` with the primary key".into());
            }
            if env.after_present {
                return Err("field `after`: a delete (`op` d) has `after` null".into());
            }
            check_fields(fields, before, "before.", false, cells)?;
            let pk = self.schema.primary_key.as_deref().unwrap_or_default();
            if let Some(i) = fields.iter().position(|f| f.name == pk) {
                if matches!(cells[i], Cell::Null) {
                    return Err(format!("missing required field `before.{pk}` (the primary key of a delete)"));
                }
            }
        } else {
            if !env.after_present {
                return Err(format!("missing required field `after` (`op` {op} carries the new row)"));
            }
            check_fields(fields, after, "after.", true, cells)?;
        }
        let ts = ts_ms.checked_mul(1000).ok_or("field `ts_ms`: out of range")?;
        Ok(Change { op, lsn, ts, from_before })
    }
}

fn required_int(value: &Value, name: &str) -> std::result::Result<i64, String> {
    match value {
        Value::Int(i) => Ok(*i),
        Value::Missing | Value::Null => Err(format!("missing required field `{name}`")),
        other => Err(format!("field `{name}`: expected an integer, found {}", other.describe())),
    }
}

/// Checks every field's slot against the schema and converts it to a [`Cell`].
fn check_fields(
    fields: &[FieldSpec],
    slots: &[Value],
    prefix: &str,
    enforce_required: bool,
    cells: &mut Vec<Cell>,
) -> std::result::Result<(), String> {
    for (field, value) in fields.iter().zip(slots) {
        let cell = match value {
            Value::Missing | Value::Null => {
                if enforce_required && !field.nullable {
                    let what = if matches!(value, Value::Missing) { "missing required field" } else { "null in required field" };
                    return Err(format!("{what} `{prefix}{}`", field.name));
                }
                Cell::Null
            }
            value => match check_value(&field.ty, value) {
                Some(cell) => cell,
                None => return Err(format!("field `{prefix}{}`: {}", field.name, why_not(&field.ty, value))),
            },
        };
        cells.push(cell);
    }
    Ok(())
}

/// The cell for a value of the field's type, `None` when it is not one. Kept apart
/// from the reason ([`why_not`]) so that the common case returns in registers: a
/// `Result<Cell, String>` went through memory and reading it back stalled (11 % of
/// a one-query run's CPU samples).
#[inline]
fn check_value(ty: &FieldType, value: &Value) -> Option<Cell> {
    Some(match (ty, value) {
        (FieldType::String, Value::Str(_)) => Cell::Str,
        (FieldType::Enum(values), Value::Str(s)) if values.iter().any(|v| v == &**s) => Cell::Str,
        (FieldType::Int, Value::Int(i)) => Cell::I32(i32::try_from(*i).ok()?),
        (FieldType::Int64, Value::Int(i)) => Cell::I64(*i),
        (FieldType::Double, Value::Int(i)) => Cell::F64(*i as f64),
        (FieldType::Double, Value::Float(f)) => Cell::F64(*f),
        (FieldType::Bool, Value::Bool(b)) => Cell::Bool(*b),
        (FieldType::Timestamp, Value::Str(s)) => Cell::Ts(rfc3339::parse_micros(s)?),
        _ => return None,
    })
}

/// Why [`check_value`] refused a (non-null) value.
#[cold]
fn why_not(ty: &FieldType, value: &Value) -> String {
    match (ty, value) {
        (FieldType::Enum(values), Value::Str(_)) => format!("{} is not one of {}", value.describe(), values.join(", ")),
        (FieldType::Timestamp, Value::Str(_)) => format!("{} is not an RFC 3339 timestamp with a zone", value.describe()),
        _ => format!("expected {}, found {}", ty.describe(), value.describe()),
    }
}

/// One builder per schema field.
enum Builder {
    /// A column nothing reads: a placeholder at the end.
    Skip,
    Str(StringBuilder),
    I32(Int32Builder),
    I64(Int64Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMicrosecondBuilder),
}

struct Columns {
    builders: Vec<Builder>,
}

impl Columns {
    fn new(fields: &[FieldSpec], capacity: usize, wanted: impl Fn(usize) -> bool) -> Self {
        let builders = fields
            .iter()
            .enumerate()
            .map(|(i, f)| match f.ty {
                _ if !wanted(i) && f.name != EVENT_TIME => Builder::Skip,
                FieldType::String | FieldType::Enum(_) => Builder::Str(StringBuilder::with_capacity(capacity, capacity * 16)),
                FieldType::Int => Builder::I32(Int32Builder::with_capacity(capacity)),
                FieldType::Int64 => Builder::I64(Int64Builder::with_capacity(capacity)),
                FieldType::Double => Builder::F64(Float64Builder::with_capacity(capacity)),
                FieldType::Bool => Builder::Bool(BooleanBuilder::with_capacity(capacity)),
                FieldType::Timestamp => {
                    Builder::Ts(TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"))
                }
            })
            .collect();
        Columns { builders }
    }

    fn append(&mut self, cells: &[Cell], slots: &[Value]) {
        for ((builder, cell), slot) in self.builders.iter_mut().zip(cells).zip(slots) {
            match (builder, *cell) {
                (Builder::Skip, _) => {}
                (Builder::Str(b), Cell::Str) => b.append_value(slot.as_str()),
                (Builder::I32(b), Cell::I32(v)) => b.append_value(v),
                (Builder::I64(b), Cell::I64(v)) => b.append_value(v),
                (Builder::F64(b), Cell::F64(v)) => b.append_value(v),
                (Builder::Bool(b), Cell::Bool(v)) => b.append_value(v),
                (Builder::Ts(b), Cell::Ts(v)) => b.append_value(v),
                (Builder::Str(b), _) => b.append_null(),
                (Builder::I32(b), _) => b.append_null(),
                (Builder::I64(b), _) => b.append_null(),
                (Builder::F64(b), _) => b.append_null(),
                (Builder::Bool(b), _) => b.append_null(),
                (Builder::Ts(b), _) => b.append_null(),
            }
        }
    }

    /// The columns of `rows` rows, in the order of `schema`'s first fields.
    fn finish(self, schema: &arrow::datatypes::Schema, rows: usize) -> Result<Vec<ArrayRef>> {
        self.builders
            .into_iter()
            .zip(schema.fields())
            .map(|(b, field)| -> Result<ArrayRef> {
                Ok(match b {
                    Builder::Skip => placeholder(field.data_type(), rows)?,
                    Builder::Str(mut b) => Arc::new(b.finish()),
                    Builder::I32(mut b) => Arc::new(b.finish()),
                    Builder::I64(mut b) => Arc::new(b.finish()),
                    Builder::F64(mut b) => Arc::new(b.finish()),
                    Builder::Bool(mut b) => Arc::new(b.finish()),
                    Builder::Ts(mut b) => Arc::new(b.finish()),
                })
            })
            .collect()
    }
}

/// `rows` rows of a column nothing reads, at next to no cost: zeros, empty
/// strings, false, and no nulls (a required column may not hold one). Each is a
/// slice of one such array per type and thread, grown as batches grow: every
/// query drops the columns it does not read from every batch, and building them
/// afresh each time was 4 % of a run.
pub fn placeholder(data_type: &arrow::datatypes::DataType, rows: usize) -> Result<ArrayRef> {
    thread_local! {
        static BLANKS: std::cell::RefCell<std::collections::HashMap<arrow::datatypes::DataType, ArrayRef>> = Default::default();
    }
    BLANKS.with_borrow_mut(|blanks| {
        if let Some(blank) = blanks.get(data_type).filter(|b| b.len() >= rows) {
            return Ok(blank.slice(0, rows));
        }
        let rows_made = rows.max(PLACEHOLDER_ROWS);
        let data = arrow::array::new_null_array(data_type, rows_made).to_data().into_builder().nulls(None).build()?;
        let blank = arrow::array::make_array(data);
        blanks.insert(data_type.clone(), blank.clone());
        Ok(blank.slice(0, rows))
    })
}

/// The fewest rows a thread's placeholder of a type is made with: a file batch's lines.
const PLACEHOLDER_ROWS: usize = 8192;

/// `_op`, `_lsn`, `ts` of change envelopes.
struct ChangeColumns {
    op: StringBuilder,
    lsn: Int64Builder,
    ts: TimestampMicrosecondBuilder,
}

impl ChangeColumns {
    fn new(capacity: usize) -> Self {
        ChangeColumns {
            op: StringBuilder::with_capacity(capacity, capacity),
            lsn: Int64Builder::with_capacity(capacity),
            ts: TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
        }
    }

    fn append(&mut self, change: &Change) {
        self.op.append_value(change.op);
        self.lsn.append_value(change.lsn);
        self.ts.append_value(change.ts);
    }

    fn finish(mut self) -> [ArrayRef; 3] {
        [Arc::new(self.op.finish()), Arc::new(self.lsn.finish()), Arc::new(self.ts.finish())]
    }
}

/// Decoding JSON lines in unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::schema::SchemaRegistry;
    use crate::source::{PartitionId, RawMessage};

    pub fn registry() -> SchemaRegistry {
        SchemaRegistry::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")).unwrap()
    }

    /// One batch of `lines` (the line `null` is a tombstone) from partition 2, offsets from 10.
    pub fn raw(topic: &str, lines: &[&str]) -> RawBatch {
        let payloads: Vec<Option<&[u8]>> = lines.iter().map(|line| (*line != "null").then_some(line.as_bytes())).collect();
        raw_payloads(topic, &payloads)
    }

    /// One batch of messages as a broker holds them (`None`: a tombstone), as [`raw`].
    pub fn raw_payloads(topic: &str, payloads: &[Option<&[u8]>]) -> RawBatch {
        let mut data = Vec::new();
        let mut messages = Vec::new();
        for (i, bytes) in payloads.iter().enumerate() {
            let start = data.len();
            let payload = bytes.map(|bytes| {
                data.extend_from_slice(bytes);
                start..data.len()
            });
            messages.push(RawMessage { offset: 10 + i as i64, payload, timestamp: None });
        }
        RawBatch {
            partition: PartitionId { topic: topic.into(), partition: 2 },
            ingested_at: 1_000,
            next_offset: 10 + payloads.len() as i64,
            data,
            messages,
            end_of_partition: false,
        }
    }

    pub fn decode(topic: &str, lines: &[&str]) -> Decoded {
        let registry = registry();
        TopicDecoder::new(registry.get(topic).unwrap().clone()).decode(&raw(topic, lines)).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::decode;
    use arrow::array::{AsArray, Array};
    use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};

    const GOOD: &str = r#"{"request_id":"r1","correlation_id":"c1","ts":"2026-03-01T09:15:02.125Z","service":"assessment","upstream_instance":"assessment-1","method":"GET","route":"/api/v1/exams/{id}","status":200,"duration_ms":41.5,"user_id":"u-1","org_id":null,"auth_outcome":"ok","rate_limited":false,"bytes_out":5120,"extra":{"ignored":[1,2]}}"#;

    #[test]
    fn decodes_a_valid_event_with_lineage() {
        let d = decode("gateway.requests", &[GOOD]);
        assert!(d.dead_letters.is_empty(), "{:?}", d.dead_letters);
        let b = &d.batch;
        assert_eq!(b.num_rows(), 1);
        let col = |name: &str| b.column_by_name(name).unwrap().clone();
        assert_eq!(col("service").as_string::<i32>().value(0), "assessment");
        assert_eq!(col("status").as_primitive::<Int32Type>().value(0), 200);
        assert_eq!(col("duration_ms").as_primitive::<Float64Type>().value(0), 41.5);
        assert!(col("org_id").is_null(0));
        assert_eq!(
            col("ts").as_primitive::<TimestampMicrosecondType>().value(0),
            chrono::DateTime::parse_from_rfc3339("2026-03-01T09:15:02.125Z").unwrap().timestamp_micros()
        );
        assert_eq!(col("_offset").as_primitive::<Int64Type>().value(0), 10);
        assert_eq!(col("_partition").as_primitive::<Int32Type>().value(0), 2);
        assert_eq!(col("_raw").as_string::<i32>().value(0), GOOD);
    }

    #[test]
    fn every_kind_of_bad_message_is_a_dead_letter_naming_the_problem() {
        let with = |from: &str, to: &str| GOOD.replacen(from, to, 1);
        let cases = [
            (GOOD[..40].to_string(), "invalid JSON"),
            ("[1,2]".to_string(), "expected a JSON object"),
            ("\"hello\"".to_string(), "expected a JSON object"),
            (with(r#""ts":"2026-03-01T09:15:02.125Z","#, ""), "missing required field `ts`"),
            (with(r#""status":200"#, r#""status":"200""#), "field `status`: expected a 32-bit integer, found the string \"200\""),
            (with(r#""status":200"#, r#""status":200.5"#), "field `status`"),
            (with(r#""duration_ms":41.5"#, r#""duration_ms":"fast""#), "field `duration_ms`"),
            (with(r#""rate_limited":false"#, r#""rate_limited":"yes""#), "field `rate_limited`"),
            (with(r#""auth_outcome":"ok""#, r#""auth_outcome":"maybe""#), "field `auth_outcome`: the string \"maybe\" is not one of ok, denied, expired, missing"),
            (with(r#""service":"assessment""#, r#""service":"billing""#), "field `service`"),
            (with("2026-03-01T09:15:02.125Z", "yesterday"), "field `ts`: the string \"yesterday\" is not an RFC 3339"),
            (with("2026-03-01T09:15:02.125Z", "2026-03-01 09:15:02"), "field `ts`"),
            (with(r#""method":"GET""#, r#""method":null"#), "null in required field `method`"),
            (format!("{GOOD} trailing"), "invalid JSON"),
        ];
        let lines: Vec<&str> = cases.iter().map(|(l, _)| l.as_str()).collect();
        let d = decode("gateway.requests", &lines);
        assert_eq!(d.batch.num_rows(), 0);
        assert_eq!(d.dead_letters.len(), cases.len());
        for ((line, want), dead) in cases.iter().zip(&d.dead_letters) {
            assert!(dead.error.contains(want), "{line}\n  error: {}\n  wanted: {want}", dead.error);
            assert_eq!(&dead.raw, line);
        }
    }

    #[test]
    fn columns_not_wanted_are_placeholders_and_bad_messages_are_found_all_the_same() {
        let bad = GOOD.replacen(r#""status":200"#, r#""status":"200""#, 1);
        let lines = [GOOD, bad.as_str(), GOOD];
        let raw = super::testing::raw("gateway.requests", &lines);
        let decoder = super::TopicDecoder::new(super::testing::registry().get("gateway.requests").unwrap().clone());
        let all = decoder.decode(&raw).unwrap();
        let schema = decoder.schema().arrow_schema.clone();
        let position = |name: &str| schema.index_of(name).unwrap();
        let mut wanted = vec![false; schema.fields().len()];
        wanted[position("service")] = true;
        let some = decoder.decode_columns(&raw, Some(&wanted)).unwrap();
        assert_eq!(some.dead_letters.len(), 1);
        assert_eq!(some.dead_letters[0].error, all.dead_letters[0].error);
        assert_eq!(some.batch.num_rows(), 2);
        let route = position("route");
        assert_ne!(some.batch.column(route), all.batch.column(route), "a string column is not built");
        for (i, field) in schema.fields().iter().enumerate() {
            let (built, full) = (some.batch.column(i), all.batch.column(i));
            // Built: what was wanted, the event time and the lineage.
            if wanted[i] || ["ts", "_topic", "_partition", "_offset", "_ingested_at"].contains(&field.name().as_str()) {
                assert_eq!(built, full, "{}", field.name());
            } else {
                let blank = super::placeholder(field.data_type(), 2).unwrap();
                assert_eq!(built, &blank, "{} is a placeholder", field.name());
            }
        }
    }

    #[test]
    fn a_placeholder_is_zeros_of_its_length_whatever_came_before() {
        use arrow::array::ArrayRef;
        use arrow::datatypes::{DataType, TimeUnit};
        use std::sync::Arc;
        let types = [DataType::Utf8, DataType::Int64, DataType::Boolean, DataType::Float64, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))];
        for data_type in &types {
            for rows in [3, 20_000, 0, 8192, 5] {
                let blank = super::placeholder(data_type, rows).unwrap();
                assert_eq!((blank.len(), blank.null_count()), (rows, 0), "{data_type}");
                let expected = match data_type {
                    DataType::Utf8 => Arc::new(arrow::array::StringArray::from(vec![""; rows])) as ArrayRef,
                    DataType::Int64 => Arc::new(arrow::array::Int64Array::from(vec![0; rows])),
                    DataType::Boolean => Arc::new(arrow::array::BooleanArray::from(vec![false; rows])),
                    DataType::Float64 => Arc::new(arrow::array::Float64Array::from(vec![0.0; rows])),
                    _ => Arc::new(arrow::array::TimestampMicrosecondArray::from(vec![0; rows]).with_timezone("UTC")),
                };
                assert_eq!(&blank, &expected, "{data_type}, {rows} rows");
            }
        }
    }

    #[test]
    fn a_message_that_is_not_utf8_is_a_dead_letter_and_spoils_none_of_its_batch() {
        let lines = [GOOD, "PLACEHOLDER", GOOD];
        let mut raw = super::testing::raw("gateway.requests", &lines);
        // The middle message: GOOD with one byte of its route that is not UTF-8.
        let mut bad_bytes = GOOD.as_bytes().to_vec();
        bad_bytes[GOOD.find("exams").unwrap() + 2] = 0xff;
        let (first_end, last_start) = (GOOD.len(), GOOD.len() + "PLACEHOLDER".len());
        raw.data = [&raw.data[..first_end], &bad_bytes[..], &raw.data[last_start..]].concat();
        raw.messages[1].payload = Some(first_end..first_end + bad_bytes.len());
        raw.messages[2].payload = Some(first_end + bad_bytes.len()..raw.data.len());
        let registry = super::testing::registry();
        let d = super::TopicDecoder::new(registry.get("gateway.requests").unwrap().clone()).decode(&raw).unwrap();
        assert_eq!(d.batch.num_rows(), 2, "{:?}", d.dead_letters);
        assert_eq!(d.dead_letters.len(), 1);
        assert!(d.dead_letters[0].error.contains("invalid unicode") || d.dead_letters[0].error.contains("UTF-8"), "{}", d.dead_letters[0].error);
        assert_eq!(d.dead_letters[0].offset, 11);
        let raws = d.batch.column_by_name("_raw").unwrap().as_string::<i32>().clone();
        assert_eq!((raws.value(0), raws.value(1)), (GOOD, GOOD));
    }

    #[test]
    fn change_envelopes_decode_and_tombstones_are_skipped() {
        let lines = [
            r#"{"op":"c","ts_ms":1772356502125,"before":null,"after":{"user_id":"u-17","org_id":"org-3","role":"learner","display_name":"Ana","locale":"pt-BR"},"source":{"service":"directory","entity":"users","lsn":4711}}"#,
            r#"{"op":"d","ts_ms":1772356503000,"before":{"user_id":"u-17"},"after":null,"source":{"lsn":4712}}"#,
            "null",
            r#"{"op":"x","ts_ms":1,"after":null,"source":{"lsn":1}}"#,
            r#"{"op":"u","ts_ms":1,"after":{"user_id":"u-1","org_id":"o","role":"boss","display_name":"B"},"source":{"lsn":1}}"#,
            r#"{"op":"d","ts_ms":1,"before":{"org_id":"o"},"source":{"lsn":1}}"#,
            r#"{"op":"c","ts_ms":1,"after":{"user_id":"u-1","org_id":"o","role":"learner","display_name":"B"}}"#,
            r#"{"op":"d","ts_ms":1,"before":{"user_id":"u-1"},"after":{"user_id":"u-1","org_id":"o","role":"learner","display_name":"B"},"source":{"lsn":2}}"#,
        ];
        let d = decode("cdc.directory.users", &lines);
        assert_eq!(d.tombstones, 1);
        assert_eq!(d.batch.num_rows(), 2);
        let b = &d.batch;
        assert_eq!(b.column_by_name("_op").unwrap().as_string::<i32>().value(1), "d");
        assert_eq!(b.column_by_name("user_id").unwrap().as_string::<i32>().value(1), "u-17");
        assert!(b.column_by_name("role").unwrap().is_null(1));
        assert_eq!(b.column_by_name("_lsn").unwrap().as_primitive::<Int64Type>().value(0), 4711);
        assert_eq!(
            b.column_by_name("ts").unwrap().as_primitive::<TimestampMicrosecondType>().value(0),
            1_772_356_502_125_000
        );
        let errors: Vec<&str> = d.dead_letters.iter().map(|d| d.error.as_str()).collect();
        assert!(errors[0].contains("field `op`"), "{errors:?}");
        assert!(errors[1].contains("field `after.role`"), "{errors:?}");
        assert!(errors[2].contains("`before.user_id`"), "{errors:?}");
        assert!(errors[3].contains("`source.lsn`"), "{errors:?}");
        assert!(errors[4].contains("field `after`"), "{errors:?}");
    }
}
