//! Sinks: query results and operational rows into Delta tables.
//!
//! [`TableSink`] buffers a table's rows between commits and writes them as one Delta
//! commit carrying an application transaction (`txn`): app id `sluice:<table>` with
//! the pipeline's epoch as version, the bookkeeping exactly-once recovery reads back.

mod append;
mod archive;
mod delta;
mod encoder;
pub mod maintain;
mod operational;
mod properties;

pub use archive::{archive_batch, archive_layout, archive_table, ArchiveRetention, ARCHIVE};
pub use delta::{committed_epoch, Staged, TableSink};
pub use maintain::{Maintained, MaintenancePolicy};
pub use properties::{commit_properties, writer_properties};
pub use operational::{dead_letter_schema, dead_letters_batch, late_event_schema, LateEvents, DEAD_LETTERS, LATE_EVENTS};

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Date32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMicrosecondType};

use crate::error::Result;
use crate::schema::timestamp_type;

/// The partition column of every windowed table (the UTC date of `window_start`)
/// and of the archive (of `_ingested_at`).
pub const DATE: &str = "date";

/// How a query's result rows are laid out in its Delta table.
#[derive(Debug, Clone)]
pub struct TableLayout {
    pub schema: SchemaRef,
    pub partition_columns: Vec<String>,
    /// Index of the result's `window` struct column, if windowed.
    window: Option<usize>,
    /// The timestamp column whose UTC date is the partition column `date`.
    date_of: Option<&'static str>,
}

impl TableLayout {
    /// A windowed result's `window` column (at index `window`, a struct of start
    /// and end) becomes `window_start`, `window_end` (first) and `date` (last, the
    /// partition column); types become ones Delta stores.
    pub fn for_result(result: &Schema, window: Option<usize>) -> Self {
        let mut fields = Vec::new();
        if window.is_some() {
            fields.push(Field::new("window_start", timestamp_type(), true));
            fields.push(Field::new("window_end", timestamp_type(), true));
        }
        for (i, f) in result.fields().iter().enumerate() {
            if Some(i) != window {
                fields.push(Field::new(f.name(), delta_type(f.data_type()), true));
            }
        }
        let mut partition_columns = Vec::new();
        if window.is_some() {
            fields.push(Field::new(DATE, DataType::Date32, true));
            partition_columns.push(DATE.to_string());
        }
        let date_of = window.map(|_| "window_start");
        TableLayout { schema: Arc::new(Schema::new(fields)), partition_columns, window, date_of }
    }

    /// A fixed-schema table (the operational ones), not partitioned.
    pub fn fixed(schema: SchemaRef) -> Self {
        TableLayout { schema, partition_columns: vec![], window: None, date_of: None }
    }

    /// A fixed-schema table partitioned by `date`, the UTC date of `column`.
    pub fn partitioned_by_date_of(schema: SchemaRef, column: &'static str) -> Self {
        TableLayout { schema, partition_columns: vec![DATE.to_string()], window: None, date_of: Some(column) }
    }

    /// Converts a result batch to the table's layout.
    pub fn to_table(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        let mut date = None;
        if let Some(w) = self.window {
            let window = batch.column(w).as_struct();
            let start = window.column(0).clone();
            date = Some(dates(&start));
            columns.push(start);
            columns.push(window.column(1).clone());
        }
        for (i, column) in batch.columns().iter().enumerate() {
            if Some(i) != self.window {
                columns.push(column.clone());
            }
        }
        if let Some(date) = date {
            columns.push(Arc::new(date));
        }
        let columns = columns
            .into_iter()
            .zip(self.schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { Ok(arrow::compute::cast(&c, f.data_type())?) })
            .collect::<Result<Vec<_>>>()?;
        let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        Ok(RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?)
    }
}

impl TableLayout {
    /// Rows read back from one of the table's Parquet files, which leave the
    /// partition column out, in the table's layout again.
    pub fn with_partition_column(&self, stored: &RecordBatch) -> Result<RecordBatch> {
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| match stored.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
                Some(c) => Ok(arrow::compute::cast(c, f.data_type())?),
                None => match self.date_of.filter(|_| f.name() == DATE) {
                    Some(of) => {
                        let timestamps = stored
                            .column_by_name(of)
                            .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("a file of a table partitioned by the date of {of} lacks {of}")))?;
                        Ok(Arc::new(dates(timestamps)) as ArrayRef)
                    }
                    None => Err(arrow::error::ArrowError::SchemaError(format!("a file of the table lacks column `{}`", f.name())).into()),
                },
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// The UTC dates of µs timestamps.
fn dates(timestamps: &ArrayRef) -> Date32Array {
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    timestamps
        .as_primitive::<TimestampMicrosecondType>()
        .iter()
        .map(|t| t.map(|t| t.div_euclid(MICROS_PER_DAY) as i32))
        .collect()
}

/// The type Delta stores for a result column's type.
fn delta_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Timestamp(_, _) => timestamp_type(),
        DataType::Dictionary(_, value) => delta_type(value),
        DataType::Float32 | DataType::Float16 => DataType::Float64,
        DataType::UInt8 | DataType::UInt16 | DataType::Int8 | DataType::Int16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        other => other.clone(),
    }
}

