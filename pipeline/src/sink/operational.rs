//! The operational tables of contract §3.4: dead letters and late events.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::catalog::TablePath;
use crate::decode::DeadLetter;
use crate::error::Result;
use crate::schema::{lineage_fields, timestamp_type, EVENT_TIME, LINEAGE, RAW};
use crate::source::RawBatch;

pub const DEAD_LETTERS: &str = "monitoring/integration_health/dead_letters";
pub const LATE_EVENTS: &str = "monitoring/integration_health/late_events";

pub fn dead_letter_schema() -> SchemaRef {
    let mut fields = lineage_fields();
    fields.push(Field::new("error", DataType::Utf8, false));
    fields.push(Field::new("raw", DataType::Utf8, false));
    Arc::new(nullable(fields))
}

pub fn late_event_schema() -> SchemaRef {
    let mut fields = lineage_fields();
    fields.push(Field::new("ts", timestamp_type(), false));
    fields.push(Field::new("watermark", timestamp_type(), false));
    fields.push(Field::new("table", DataType::Utf8, false));
    fields.push(Field::new("raw", DataType::Utf8, false));
    Arc::new(nullable(fields))
}

/// Delta tables written here keep every column nullable, like query results.
fn nullable(fields: Vec<Field>) -> Schema {
    Schema::new(fields.into_iter().map(|f| f.with_nullable(true)).collect::<Vec<_>>())
}

pub fn dead_letters_batch(raw: &RawBatch, dead: &[DeadLetter]) -> Result<RecordBatch> {
    let n = dead.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(&*raw.partition.topic, n))),
        Arc::new(Int32Array::from_value(raw.partition.partition, n)),
        Arc::new(Int64Array::from_iter_values(dead.iter().map(|d| d.offset))),
        Arc::new(TimestampMicrosecondArray::from_value(raw.ingested_at, n).with_timezone("UTC")),
        Arc::new(StringArray::from_iter_values(dead.iter().map(|d| d.error.as_str()))),
        Arc::new(StringArray::from_iter_values(dead.iter().map(|d| d.raw.as_str()))),
    ];
    Ok(RecordBatch::try_new(dead_letter_schema(), columns)?)
}

/// Collects the late rows of one decoded batch, for every table they were late for.
#[derive(Default)]
pub struct LateEvents {
    rows: Vec<u32>,
    watermarks: Vec<i64>,
    tables: Vec<Arc<str>>,
}

impl LateEvents {
    pub fn push(&mut self, row: usize, watermark: i64, table: &TablePath) {
        if self.tables.last().is_none_or(|t| &**t != table.as_str()) {
            self.tables.push(Arc::from(table.as_str()));
        } else if let Some(last) = self.tables.last().cloned() {
            self.tables.push(last);
        }
        self.rows.push(row as u32);
        self.watermarks.push(watermark);
    }

    /// `other`'s rows after these (another query's, of the same batch).
    pub fn append(&mut self, other: LateEvents) {
        self.rows.extend(other.rows);
        self.watermarks.extend(other.watermarks);
        self.tables.extend(other.tables);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The late-events rows, taking lineage, `ts` and `_raw` from the decoded batch.
    pub fn to_batch(&self, decoded: &RecordBatch) -> Result<RecordBatch> {
        let indices = UInt32Array::from(self.rows.clone());
        let pick = |name: &str| -> Result<ArrayRef> {
            let column = decoded
                .column_by_name(name)
                .ok_or_else(|| crate::error::Error::Internal(format!("decoded batch lacks `{name}`")))?;
            Ok(take(column, &indices, None)?)
        };
        let mut columns = Vec::with_capacity(8);
        for name in LINEAGE {
            columns.push(pick(name)?);
        }
        columns.push(pick(EVENT_TIME)?);
        columns.push(Arc::new(TimestampMicrosecondArray::from(self.watermarks.clone()).with_timezone("UTC")) as ArrayRef);
        columns.push(Arc::new(StringArray::from_iter_values(self.tables.iter().map(|t| &**t))));
        columns.push(pick(RAW)?);
        Ok(RecordBatch::try_new(late_event_schema(), columns)?)
    }
}
