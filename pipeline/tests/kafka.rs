//! The Kafka path against a real broker: the same generated traffic, once through
//! files and once produced into Kafka and consumed back, must land the same rows.
//!
//! Needs a Kafka-protocol broker; `infra/test.sh` starts one (Tansu, in memory) and
//! sets `SLUICE_KAFKA_BROKERS`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use deltalake::arrow::array::{AsArray, RecordBatch};
use deltalake::arrow::datatypes::{Int32Type, Int64Type};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn repo(dir: &str) -> String {
    format!("{}/../{dir}", env!("CARGO_MANIFEST_DIR"))
}

fn sluice(args: &[&str]) {
    let out = Command::new(SLUICE)
        .args(args)
        .args(["--schemas", &repo("schemas")])
        .output()
        .expect("sluice runs");
    assert!(out.status.success(), "sluice {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// (`_topic`, `_partition`, `_offset`) -> the row's `raw`/`payload`-free columns as text.
async fn rows(lake: &Path, table: &str) -> BTreeMap<(String, i32, i64), String> {
    let url = url::Url::from_directory_path(lake.join(table)).expect("absolute path");
    let table = deltalake::open_table(url).await.expect("table opens");
    let (_, stream) = table.scan_table().await.expect("scan");
    let batches: Vec<RecordBatch> = deltalake::operations::collect_sendable_stream(stream).await.expect("read");
    let mut out = BTreeMap::new();
    for b in batches {
        let topic = b.column_by_name("_topic").expect("_topic");
        let topic = deltalake::arrow::compute::cast(topic, &deltalake::arrow::datatypes::DataType::Utf8).expect("utf8");
        let partition = b.column_by_name("_partition").expect("_partition").as_primitive::<Int32Type>().clone();
        let offset = b.column_by_name("_offset").expect("_offset").as_primitive::<Int64Type>().clone();
        let skip = ["_ingested_at"];
        for r in 0..b.num_rows() {
            let mut text = String::new();
            for (i, f) in b.schema().fields().iter().enumerate() {
                if !skip.contains(&f.name().as_str()) {
                    let v = deltalake::arrow::util::display::array_value_to_string(b.column(i), r).expect("display");
                    text.push_str(&format!("{}={v};", f.name()));
                }
            }
            let key = (topic.as_string::<i32>().value(r).to_string(), partition.value(r), offset.value(r));
            assert!(out.insert(key.clone(), text).is_none(), "duplicate lineage {key:?}");
        }
    }
    out
}

#[tokio::test]
async fn kafka_lands_the_same_rows_as_files() {
    let brokers = std::env::var("SLUICE_KAFKA_BROKERS")
        .expect("SLUICE_KAFKA_BROKERS is unset: run the suite with infra/test.sh, which starts a broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    let traffic = ["--seed", "11", "--users", "150", "--hours", "6"];

    sluice(&[&["generate", "--out", input.to_str().unwrap()][..], &traffic[..]].concat());
    sluice(&[&["generate", "--kafka", &brokers][..], &traffic[..]].concat());

    let files_lake = dir.path().join("lake-files");
    let kafka_lake = dir.path().join("lake-kafka");
    sluice(&["run", "--input", input.to_str().unwrap(), "--lake", files_lake.to_str().unwrap(), "--sql", &repo("sql")]);
    sluice(&[
        "run", "--kafka", &brokers, "--stop-when-idle", "3s", "--lake", kafka_lake.to_str().unwrap(), "--sql", &repo("sql"),
    ]);

    for table in [
        "integration/api_gateway/request_logs",
        "integration/external_services/service_call_logs",
        "integration/event_bus/event_publication_logs",
        "real_time/connection_management/connection_events",
        "monitoring/integration_health/dead_letters",
    ] {
        let expected = rows(&files_lake, table).await;
        let actual = rows(&kafka_lake, table).await;
        assert!(!expected.is_empty(), "{table}: the file run landed nothing");
        assert_eq!(actual.len(), expected.len(), "{table}: row count through Kafka");
        let differing: Vec<_> = expected.iter().filter(|(k, v)| actual.get(*k) != Some(*v)).take(3).collect();
        assert!(differing.is_empty(), "{table}: rows differ through Kafka, e.g. {differing:?}");
    }
}
