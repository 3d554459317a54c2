//! What the tests that run the `sluice` binary share: the binary, the repository's
//! directories, and landed rows keyed by their lineage.
#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use deltalake::arrow::array::{AsArray, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int32Type, Int64Type};

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A directory of the repository (`schemas`, `sql`).
pub fn repo(dir: &str) -> String {
    format!("{}/../{dir}", env!("CARGO_MANIFEST_DIR"))
}

/// The project's schemas, copied to `dir` with `partitions` partitions per topic.
pub fn schemas_with_partitions(dir: &Path, partitions: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(repo("schemas")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text: Vec<String> = text
            .lines()
            .map(|l| if l.trim_start().starts_with("partitions") { format!("partitions = {partitions}") } else { l.to_string() })
            .collect();
        std::fs::write(dir.join(path.file_name().unwrap()), text.join("\n")).unwrap();
    }
}

/// Runs `sluice` with `args`, failing the test with its stderr unless it succeeds.
pub fn sluice(args: &[&str]) {
    let out = Command::new(SLUICE).args(args).output().expect("sluice runs");
    assert!(out.status.success(), "sluice {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

pub type Lineage = (String, i32, i64);

/// One landed row: its columns as text, lineage and `_ingested_at` left out.
#[derive(Debug, Clone)]
pub struct Row {
    pub text: String,
    pub ingested_at: i64,
}

/// Every row of a table by lineage; more than one row under a lineage is a duplicate.
pub async fn rows(lake: &Path, table: &str) -> BTreeMap<Lineage, Vec<Row>> {
    let url = url::Url::from_directory_path(lake.join(table)).expect("absolute path");
    let table = deltalake::open_table(url).await.expect("table opens");
    let (_, stream) = table.scan_table().await.expect("scan");
    let batches: Vec<RecordBatch> = deltalake::operations::collect_sendable_stream(stream).await.expect("read");
    let mut out: BTreeMap<Lineage, Vec<Row>> = BTreeMap::new();
    for b in batches {
        let topic = cast(b.column_by_name("_topic").expect("_topic"), &DataType::Utf8).expect("utf8");
        let partition = b.column_by_name("_partition").expect("_partition").as_primitive::<Int32Type>().clone();
        let offset = b.column_by_name("_offset").expect("_offset").as_primitive::<Int64Type>().clone();
        let ingested = cast(b.column_by_name("_ingested_at").expect("_ingested_at"), &DataType::Int64).expect("micros");
        let ingested = ingested.as_primitive::<Int64Type>();
        let skip = ["_topic", "_partition", "_offset", "_ingested_at"];
        for r in 0..b.num_rows() {
            let mut text = String::new();
            for (i, f) in b.schema().fields().iter().enumerate() {
                if !skip.contains(&f.name().as_str()) {
                    let v = deltalake::arrow::util::display::array_value_to_string(b.column(i), r).expect("display");
                    text.push_str(&format!("{}={v};", f.name()));
                }
            }
            let key = (topic.as_string::<i32>().value(r).to_string(), partition.value(r), offset.value(r));
            out.entry(key).or_default().push(Row { text, ingested_at: ingested.value(r) });
        }
    }
    out
}

/// Fails unless `actual` holds every row of `expected` once, and nothing else.
pub fn assert_same_rows(table: &str, actual: &BTreeMap<Lineage, Vec<Row>>, expected: &BTreeMap<Lineage, Vec<Row>>) {
    let duplicated: Vec<_> = actual.iter().filter(|(_, rows)| rows.len() > 1).map(|(k, rows)| (k, rows.len())).collect();
    let missing: Vec<_> = expected.keys().filter(|k| !actual.contains_key(*k)).collect();
    let extra: Vec<_> = actual.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        duplicated.is_empty() && missing.is_empty() && extra.is_empty(),
        "{table}: {} lineages landed, {} expected; {} duplicated (e.g. {:?}), {} missing (e.g. {:?}), {} unexpected (e.g. {:?})",
        actual.len(),
        expected.len(),
        duplicated.len(),
        &duplicated[..duplicated.len().min(3)],
        missing.len(),
        &missing[..missing.len().min(3)],
        extra.len(),
        &extra[..extra.len().min(3)],
    );
    let differing: Vec<_> = expected.iter().filter(|(k, want)| actual[*k][0].text != want[0].text).map(|(k, _)| k).take(3).collect();
    assert!(differing.is_empty(), "{table}: rows differ from the expected ones, e.g. at {differing:?}");
}
