//! The raw archive (bronze): every message of every topic as it was read, bad
//! ones and tombstones included, with its lineage. Kafka keeps days; the lake
//! keeps this, so that a table can be computed again from its input long after
//! the broker let the messages go.
//!
//! One Delta table per topic at `archive/raw/<topic>` (dots and dashes become
//! `_`), partitioned by the UTC date the message was read, committed in the
//! same epoch as every other table. A retention drops whole dates.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, BinaryBuilder, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::{TableLayout, DATE};
use crate::catalog::TablePath;
use crate::error::{Error, Result};
use crate::schema::{lineage_fields, timestamp_type, LINEAGE};
use crate::source::RawBatch;

/// Where the archive's tables live: `archive/raw/<topic>`.
pub const ARCHIVE: &str = "archive/raw";

/// The broker's timestamp of the message (Kafka's `CreateTime` or `LogAppendTime`).
pub const KAFKA_TIMESTAMP: &str = "_kafka_timestamp";
/// The message's bytes as read; null for a tombstone.
pub const VALUE: &str = "value";

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// How long the archive keeps a day's messages (`--archive-retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveRetention {
    /// No archive is written.
    Off,
    /// Every message is kept (the default: the lake is the system of record).
    #[default]
    Forever,
    /// Days older than this are dropped at vacuum time.
    For(std::time::Duration),
}

impl ArchiveRetention {
    /// `off`, `forever`, or a duration (`30d`, `12w`).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "off" => Ok(ArchiveRetention::Off),
            "forever" => Ok(ArchiveRetention::Forever),
            other => crate::schema::parse_duration(other)
                .map(ArchiveRetention::For)
                .map_err(|e| format!("{e}; or `forever` (keep everything) or `off` (no archive)")),
        }
    }

    /// What the archive's tables keep: `None` is everything.
    pub fn keep(&self) -> Option<std::time::Duration> {
        match self {
            ArchiveRetention::For(keep) => Some(*keep),
            _ => None,
        }
    }
}

/// The archive table of `topic`.
pub fn archive_table(topic: &str) -> Result<TablePath> {
    let name: String = topic.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    TablePath::new(&format!("{ARCHIVE}/{name}")).map_err(|e| Error::Config(format!("topic `{topic}` has no archive table: {e}")))
}

/// The archive's columns: lineage, the broker's timestamp, the bytes, and the
/// partition column `date` (of `_ingested_at`).
pub fn archive_layout() -> TableLayout {
    TableLayout::partitioned_by_date_of(archive_schema().clone(), LINEAGE[3])
}

/// Built once: every raw batch's archive rows carry it.
fn archive_schema() -> &'static SchemaRef {
    static SCHEMA: std::sync::LazyLock<SchemaRef> = std::sync::LazyLock::new(|| {
        let mut fields = lineage_fields();
        fields.push(Field::new(KAFKA_TIMESTAMP, timestamp_type(), true));
        fields.push(Field::new(VALUE, DataType::Binary, true));
        fields.push(Field::new(DATE, DataType::Date32, true));
        Arc::new(Schema::new(fields.into_iter().map(|f| f.with_nullable(true)).collect::<Vec<_>>()))
    });
    &SCHEMA
}

/// One raw batch's archive rows.
pub fn archive_batch(raw: &RawBatch) -> Result<RecordBatch> {
    let n = raw.messages.len();
    let date = raw.ingested_at.div_euclid(MICROS_PER_DAY) as i32;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(&*raw.partition.topic, n))),
        Arc::new(Int32Array::from_value(raw.partition.partition, n)),
        Arc::new(Int64Array::from_iter_values(raw.messages.iter().map(|m| m.offset))),
        Arc::new(TimestampMicrosecondArray::from_value(raw.ingested_at, n).with_timezone("UTC")),
        Arc::new(TimestampMicrosecondArray::from_iter(raw.messages.iter().map(|m| m.timestamp.map(|ms| ms * 1000))).with_timezone("UTC")),
        Arc::new(payloads(raw)),
        Arc::new(Date32Array::from_value(date, n)),
    ];
    Ok(RecordBatch::try_new(archive_schema().clone(), columns)?)
}

/// The messages' payloads, in a buffer made once at its final size.
fn payloads(raw: &RawBatch) -> BinaryArray {
    let bytes = raw.messages.iter().filter_map(|m| m.payload.as_ref()).map(|r| r.len()).sum();
    let mut values = BinaryBuilder::with_capacity(raw.messages.len(), bytes);
    for m in &raw.messages {
        values.append_option(raw.payload(m));
    }
    values.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{PartitionId, RawMessage};
    use arrow::array::{Array, AsArray};

    #[test]
    fn every_message_is_archived_as_read_with_its_lineage() {
        let data = b"{\"a\":1}not json".to_vec();
        let raw = RawBatch {
            partition: PartitionId { topic: Arc::from("cdc.directory.users"), partition: 3 },
            ingested_at: 86_400_000_000 + 5,
            data,
            messages: vec![
                RawMessage { offset: 10, payload: Some(0..7), timestamp: Some(1_000) },
                RawMessage { offset: 11, payload: None, timestamp: None },
                RawMessage { offset: 12, payload: Some(7..15), timestamp: Some(2_000) },
            ],
            next_offset: 13,
            end_of_partition: false,
        };
        assert_eq!(archive_table("cdc.directory.users").unwrap().as_str(), "archive/raw/cdc_directory_users");
        let batch = archive_batch(&raw).unwrap();
        assert_eq!(batch.num_rows(), 3);
        let values = batch.column_by_name(VALUE).unwrap().as_binary::<i32>();
        assert_eq!(values.value(0), b"{\"a\":1}");
        assert!(values.is_null(1), "a tombstone is a null value");
        assert_eq!(values.value(2), b"not json", "a bad message is kept as it came");
        let offsets: Vec<i64> = batch.column_by_name("_offset").unwrap().as_primitive::<arrow::datatypes::Int64Type>().values().to_vec();
        assert_eq!(offsets, [10, 11, 12]);
        let dates = batch.column_by_name(DATE).unwrap().as_primitive::<arrow::datatypes::Date32Type>();
        assert_eq!(dates.value(0), 1, "1970-01-02, the day it was read");
        let kafka = batch.column_by_name(KAFKA_TIMESTAMP).unwrap().as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!((kafka.value(0), kafka.is_null(1)), (1_000_000, true));
    }

    #[tokio::test]
    async fn days_past_the_retention_are_dropped_and_the_others_kept() {
        use crate::catalog::{Lake, StorageOptions};
        use crate::sink::{MaintenancePolicy, TableSink};
        const DAY: i64 = 86_400_000_000;

        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::connect(dir.path().to_str().unwrap(), true, StorageOptions::default()).await.unwrap();
        let table = archive_table("t").unwrap();
        let keep = std::time::Duration::from_secs(2 * 86_400);
        let mut sink = TableSink::open(&lake, table.clone(), archive_layout(), "test").await.unwrap().keeping_for(Some(keep));
        let now = crate::time::now_micros();
        for (epoch, days_ago) in [5, 3, 1, 0].into_iter().enumerate() {
            let raw = RawBatch {
                partition: PartitionId { topic: Arc::from("t"), partition: 0 },
                ingested_at: now - days_ago * DAY,
                data: b"{}".to_vec(),
                messages: vec![RawMessage { offset: epoch as i64, payload: Some(0..2), timestamp: None }],
                next_offset: epoch as i64 + 1,
                end_of_partition: false,
            };
            sink.push_table_rows(archive_batch(&raw).unwrap());
            let staged = sink.stage().await.unwrap();
            sink.commit(epoch as i64 + 1, staged).await.unwrap();
        }
        let done = sink.maintain(&MaintenancePolicy::default(), false, None).await.unwrap();
        assert_eq!(done.expired, 0, "only at vacuum time");
        let done = sink.maintain(&MaintenancePolicy::default(), true, None).await.unwrap();
        assert_eq!(done.expired, 2, "the days 5 and 3 days ago");

        let url = format!("{}/{}", dir.path().display(), table.as_str());
        let reopened = deltalake::open_table(deltalake::ensure_table_uri(&url).unwrap()).await.unwrap();
        let days: Vec<Option<String>> = crate::sink::maintain::files_by_partition(&reopened, Some(DATE)).unwrap().into_keys().collect();
        let date = |days_ago: i64| Some(chrono::DateTime::from_timestamp_micros(now - days_ago * DAY).unwrap().format("%Y-%m-%d").to_string());
        assert_eq!(days, vec![date(1), date(0)]);
    }
}
