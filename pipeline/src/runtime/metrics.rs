//! The pipeline's own metrics as a stream: one row per input batch on the virtual
//! topic `sluice.metrics`, so SQL files (such as `pipeline_throughput`) aggregate
//! them like any topic. Its event time is processing time.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Result;
use crate::schema::timestamp_type;

pub const METRICS_TOPIC: &str = "sluice.metrics";

pub fn metrics_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", timestamp_type(), false),
        Field::new("source_topic", DataType::Utf8, false),
        Field::new("records", DataType::Int64, false),
        Field::new("bad_records", DataType::Int64, false),
        Field::new("late_records", DataType::Int64, false),
        Field::new("max_lag_ms", DataType::Float64, true),
    ]))
}

/// What one input batch did.
#[derive(Debug, Clone)]
pub struct BatchMetrics {
    /// When the batch was read (`_ingested_at`), µs.
    pub ingested_at: i64,
    pub topic: Arc<str>,
    /// Messages read, tombstones and bad ones included.
    pub records: i64,
    pub bad_records: i64,
    /// Valid events that were late for at least one table.
    pub late_records: i64,
    /// Largest ingestion time minus event time, ms.
    pub max_lag_ms: Option<f64>,
}

impl BatchMetrics {
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMicrosecondArray::from(vec![self.ingested_at]).with_timezone("UTC")),
            Arc::new(StringArray::from(vec![&*self.topic])),
            Arc::new(Int64Array::from(vec![self.records])),
            Arc::new(Int64Array::from(vec![self.bad_records])),
            Arc::new(Int64Array::from(vec![self.late_records])),
            Arc::new(Float64Array::from(vec![self.max_lag_ms])),
        ];
        Ok(RecordBatch::try_new(metrics_schema(), columns)?)
    }
}
