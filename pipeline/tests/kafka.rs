//! The Kafka path against a real broker: the same generated traffic, once through
//! files and once produced into Kafka and consumed back, must land the same rows.
//!
//! Needs a Kafka-protocol broker; `infra/test.sh` starts one (Tansu, in memory) and
//! sets `SLUICE_KAFKA_BROKERS`.

mod support;

use support::{assert_same_rows, repo, rows, sluice};

#[tokio::test]
async fn kafka_lands_the_same_rows_as_files() {
    let brokers = std::env::var("SLUICE_KAFKA_BROKERS")
        .expect("SLUICE_KAFKA_BROKERS is unset: run the suite with infra/test.sh, which starts a broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    let schemas = repo("schemas");
    let traffic = ["--seed", "11", "--users", "150", "--hours", "6", "--schemas", &schemas];

    sluice(&[&["generate", "--out", input.to_str().unwrap()][..], &traffic[..]].concat());
    sluice(&[&["generate", "--kafka", &brokers][..], &traffic[..]].concat());

    let files_lake = dir.path().join("lake-files");
    let kafka_lake = dir.path().join("lake-kafka");
    sluice(&["run", "--input", input.to_str().unwrap(), "--lake", files_lake.to_str().unwrap(), "--schemas", &schemas, "--sql", &repo("sql")]);
    sluice(&[
        "run", "--kafka", &brokers, "--stop-when-idle", "3s", "--lake", kafka_lake.to_str().unwrap(), "--schemas", &schemas, "--sql", &repo("sql"),
    ]);

    for table in [
        "integration/api_gateway/request_logs",
        "integration/external_services/service_call_logs",
        "integration/event_bus/event_publication_logs",
        "real_time/connection_management/connection_events",
        "monitoring/integration_health/dead_letters",
    ] {
        let expected = rows(&files_lake, table).await;
        assert!(!expected.is_empty(), "{table}: the file run landed nothing");
        assert_same_rows(table, &rows(&kafka_lake, table).await, &expected);
    }
}
