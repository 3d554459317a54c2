//! How Sluice writes: the properties of every Parquet file and every Delta commit,
//! shared by the epochs' commits ([`super::delta`]) and maintenance ([`super::maintain`]).

use deltalake::kernel::transaction::CommitProperties;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;

/// How every commit of Sluice's is made: no Delta checkpoint and no listing of
/// `_delta_log` for expired logs after it; the maintenance step does both on its
/// own schedule, so a commit's cost does not grow with the log.
pub fn commit_properties() -> CommitProperties {
    // A conflict is another shard's append to a shared table (late_events), which
    // delta-rs retries at the next version, or a commit with this `txn` app id
    // (this one having landed without its answer, or a zombie's), which fails.
    CommitProperties::default().with_create_checkpoint(false).with_cleanup_expired_logs(Some(false)).with_max_retries(20)
}

/// Identifiers and raw messages are unique per row: dictionary-encoding them costs
/// time and saves nothing, so only the other columns get dictionaries.
pub fn writer_properties(schema: &arrow::datatypes::Schema) -> WriterProperties {
    let unique = |name: &str| name.ends_with("_id") || matches!(name, "payload" | "raw" | "_raw" | "_offset");
    schema
        .fields()
        .iter()
        .filter(|f| unique(f.name()))
        .fold(WriterProperties::builder().set_compression(Compression::SNAPPY), |b, f| b.set_column_dictionary_enabled(ColumnPath::from(f.name().as_str()), false))
        .build()
}
