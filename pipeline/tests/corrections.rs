//! A SQL file that asks for corrections: late events within the declared time
//! update their emitted window, whose row in the Delta table is replaced in place
//! (read back with deltalake's reader); later ones still go to `late_events`.
//!
//! Every message is its own batch, and every batch with rows commits, so each
//! correction rewrites files committed before it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{read_table, V};
use sluice::catalog::Lake;
use sluice::plan::load_sql_dir;
use sluice::runtime::{Pipeline, RunOptions};
use sluice::sink::MaintenancePolicy;
use sluice::schema::SchemaRegistry;
use sluice::source::FileSource;

const SQL: &str = "-- sluice: late events update windows for 10 minutes
SELECT tumble(interval '1 minute') AS window, service, count(*) AS requests, sum(duration_ms) AS total_ms
FROM gateway.requests
GROUP BY window, service";

/// A request at `2026-03-01T<time>Z`.
fn request(id: usize, time: &str, service: &str, duration_ms: f64) -> String {
    format!(
        r#"{{"request_id":"r{id}","correlation_id":"c","ts":"2026-03-01T{time}Z","service":"{service}","upstream_instance":"x","method":"GET","route":"/","status":200,"duration_ms":{duration_ms},"auth_outcome":"ok","rate_limited":false,"bytes_out":1}}"#
    )
}

/// The rows every run below must land, whatever its maintenance did to the files.
const EXPECTED: [(&str, &str, i64, f64); 7] = [
    ("10:00", "auth", 3, 130.0),
    ("10:00", "devlab", 1, 5.0),
    ("10:00", "directory", 1, 7.0),
    ("10:02", "auth", 1, 1.0),
    ("10:03", "auth", 1, 2.0),
    ("10:15", "auth", 1, 3.0),
    ("10:20", "auth", 1, 1.0),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_event_within_the_corrections_replaces_its_windows_row() {
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = run(dir.path(), MaintenancePolicy::default()).await;

    // Each correction removed the one file holding the window's earlier rows, and
    // left the file of 10:02 alone.
    let log = lake_dir.join("monitoring/test/requests_per_minute/_delta_log");
    let removes: Vec<usize> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .map(|commit| commit.lines().filter(|action| action.starts_with("{\"remove\"")).count())
        .filter(|removed| *removed > 0)
        .collect();
    assert_eq!(removes, [1, 1]);
    assert_landed(&lake_dir).await;
}

/// Compaction after every commit: each correction then finds the window's rows in
/// a compacted file, which it rewrites without them; the rows are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_after_a_compaction_replaces_its_window_once() {
    let dir = tempfile::tempdir().unwrap();
    let policy = MaintenancePolicy { max_small_files: 1, checkpoint_interval: 3, ..MaintenancePolicy::default() };
    let lake_dir = run(dir.path(), policy).await;
    let log = lake_dir.join("monitoring/test/requests_per_minute/_delta_log");
    let compactions = std::fs::read_dir(&log)
        .unwrap()
        .filter(|e| std::fs::read_to_string(e.as_ref().unwrap().path()).unwrap_or_default().contains("\"operation\":\"OPTIMIZE\""))
        .count();
    assert!(compactions >= 2, "the table was compacted between corrections ({compactions} compactions)");
    assert!(log.join("_last_checkpoint").is_file(), "a Delta checkpoint every 3 versions");
    assert_landed(&lake_dir).await;
}

/// Runs the SQL over the requests below, a message per batch and a commit per batch.
async fn run(dir: &Path, maintenance: MaintenancePolicy) -> std::path::PathBuf {
    let sql_dir = dir.join("sql/monitoring/test");
    std::fs::create_dir_all(&sql_dir).unwrap();
    std::fs::write(sql_dir.join("requests_per_minute.sql"), SQL).unwrap();
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    // Out-of-orderness is 5 s: the watermark trails the newest request by that.
    let lines = [
        request(0, "10:00:10", "auth", 10.0),
        request(1, "10:00:20", "auth", 20.0),
        request(2, "10:00:30", "devlab", 5.0),
        request(3, "10:02:00", "auth", 1.0), // watermark 10:01:55: 10:00 is emitted
        request(4, "10:03:10", "auth", 2.0), // watermark 10:03:05: 10:02 is emitted, in a file of its own
        request(5, "10:00:40", "auth", 100.0), // corrects 10:00 (kept until 10:11)
        request(6, "10:00:50", "directory", 7.0), // a new key in the corrected window
        request(7, "10:20:00", "auth", 1.0), // watermark 10:19:55: 10:00 is dropped
        request(8, "10:00:55", "auth", 1000.0), // too late: to late_events
        request(9, "10:15:00", "auth", 3.0), // after its window's end, which never had rows
    ];
    std::fs::write(input.join("gateway.requests.jsonl"), lines.join("\n") + "\n").unwrap();

    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let registry = SchemaRegistry::load(&schemas).unwrap();
    let lake_dir = dir.join("lake");
    let lake = Lake::open(lake_dir.to_str().unwrap(), true, Default::default()).unwrap();
    let sql = load_sql_dir(&dir.join("sql")).unwrap();
    let options = RunOptions { max_pending_rows: 1, commit_interval: Duration::from_secs(3600), maintenance, ..RunOptions::default() };
    let mut pipeline = Pipeline::new(&lake, &registry, &sql, &Default::default(), options).await.unwrap();
    let mut source = FileSource::open(&input, 1, |t| registry.get(t).is_some()).unwrap();
    pipeline.run(&mut source).await.unwrap();
    lake_dir
}

async fn assert_landed(lake_dir: &Path) {
    let table = read_table(lake_dir, "monitoring/test/requests_per_minute").await.unwrap();
    let mut rows: Vec<(String, String, i64, f64)> = table
        .rows
        .iter()
        .map(|r| {
            let at = |c: &str| table.get(r, c).unwrap().clone();
            let V::Ts(start) = at("window_start") else { panic!("window_start {:?}", at("window_start")) };
            let time = chrono::DateTime::from_timestamp_micros(start).unwrap().format("%H:%M").to_string();
            (time, at("service").as_str().unwrap().to_string(), at("requests").as_i64().unwrap(), at("total_ms").as_f64().unwrap())
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let expected = EXPECTED.map(|(t, s, n, total)| (t.to_string(), s.to_string(), n, total));
    assert_eq!(rows, expected);

    let dead = read_table(lake_dir, "monitoring/integration_health/dead_letters").await.unwrap();
    assert!(dead.rows.is_empty(), "every request is valid: {:?}", dead.rows);
    let late = read_table(lake_dir, "monitoring/integration_health/late_events").await.unwrap();
    let late: Vec<(i64, String)> = late
        .rows
        .iter()
        .map(|r| (late.get(r, "_offset").unwrap().as_i64().unwrap(), late.get(r, "table").unwrap().as_str().unwrap().to_string()))
        .collect();
    assert_eq!(late, [(8, "monitoring/test/requests_per_minute".to_string())]);
}
