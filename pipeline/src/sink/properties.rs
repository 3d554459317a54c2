//! How Sluice writes: the properties of every Parquet file and every Delta commit,
//! shared by the epochs' commits ([`super::delta`]) and maintenance ([`super::maintain`]).

use arrow::datatypes::{DataType, Field};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;

/// Versions a commit tries before it gives up, the next each time another
/// writer took one.
pub const MAX_COMMIT_ATTEMPTS: usize = 20;

/// How every commit of Sluice's is made: no Delta checkpoint and no listing of
/// `_delta_log` for expired logs after it; the maintenance step does both on its
/// own schedule, so a commit's cost does not grow with the log.
pub fn commit_properties() -> CommitProperties {
    // A conflict is another shard's append to a shared table (late_events), which
    // delta-rs retries at the next version, or a commit with this `txn` app id
    // (this one having landed without its answer, or a zombie's), which fails.
    CommitProperties::default().with_create_checkpoint(false).with_cleanup_expired_logs(Some(false)).with_max_retries(MAX_COMMIT_ATTEMPTS)
}

/// Identifiers and raw messages are unique per row, and so nearly are event times
/// (`ts`, to the microsecond) and measurements (floats): dictionary-encoding them
/// costs time and saves nothing, so only the other columns get dictionaries. Raw messages
/// get no statistics either (no query prunes by a message's bytes), and a table of
/// them (the raw archive, every message as read) is compressed with LZ4, which
/// compresses JSON about as well as Snappy in less time; readers of Parquet
/// (DuckDB, polars, Spark 3.3 and later) read both.
pub fn writer_properties(schema: &arrow::datatypes::Schema) -> WriterProperties {
    // The archive's messages are bytes as read; dead letters and late events keep them as text.
    let raw = |f: &Field| *f.data_type() == DataType::Binary || matches!(f.name().as_str(), "payload" | "raw" | "_raw");
    let unique = |f: &Field| {
        raw(f) || f.name().ends_with("_id") || matches!(f.name().as_str(), "_offset" | "ts") || f.data_type().is_floating()
    };
    let raw_messages = schema.fields().iter().any(|f| raw(f));
    let compression = if raw_messages { Compression::LZ4_RAW } else { Compression::SNAPPY };
    schema.fields().iter().fold(WriterProperties::builder().set_compression(compression), |b, f| {
        let column = ColumnPath::from(f.name().as_str());
        match (raw(f), unique(f)) {
            (true, _) => b.set_column_dictionary_enabled(column.clone(), false).set_column_statistics_enabled(column, EnabledStatistics::None),
            (false, true) => b.set_column_dictionary_enabled(column, false),
            (false, false) => b,
        }
    })
    .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Schema, TimeUnit};

    #[test]
    fn only_columns_whose_values_repeat_get_dictionaries() {
        let field = |name: &str, t: DataType| Field::new(name, t, true);
        let schema = Schema::new(vec![
            field("request_id", DataType::Utf8),
            field("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))),
            field("duration_ms", DataType::Float64),
            field("service", DataType::Utf8),
            field("status", DataType::Int32),
            field("window_start", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))),
            field("_offset", DataType::Int64),
        ]);
        let properties = writer_properties(&schema);
        let dictionary = |name: &str| properties.dictionary_enabled(&ColumnPath::from(name));
        for unique in ["request_id", "ts", "duration_ms", "_offset"] {
            assert!(!dictionary(unique), "{unique} has no dictionary");
        }
        for repeating in ["service", "status", "window_start"] {
            assert!(dictionary(repeating), "{repeating} has a dictionary");
        }
        assert_eq!(properties.compression(&ColumnPath::from("service")), Compression::SNAPPY);
    }
}
