//! User-defined functions end to end: Rust files in the Arroyo plugin's form, built
//! into libraries, called from SQL files, their results landed in Delta tables and
//! read back with deltalake's reader, against values computed here.
//!
//! The UDFs live in `tests/udfs/{good,panics,broken}`; builds go to the shared
//! cache (`~/.cache/sluice/udfs`, or `$SLUICE_CACHE/udfs`), so only the first
//! build on a machine compiles the plugin's dependencies.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{read_table, V};
use sluice::catalog::Lake;
use sluice::plan::load_sql_dir;
use sluice::runtime::{Pipeline, RunOptions};
use sluice::schema::SchemaRegistry;
use sluice::source::FileSource;
use sluice::udf::{build, load_dir, Udfs};

/// One request: id, minute and second after 10:00, route, method, status,
/// duration, user.
type Request = (usize, (u32, u32), &'static str, &'static str, i32, f64, Option<&'static str>);

const REQUESTS: [Request; 8] = [
    (0, (0, 5), "/courses", "GET", 200, 12.5, Some("u-1")),
    (1, (0, 9), "/courses", "POST", 201, 40.0, Some("u-22")),
    (2, (0, 30), "/labs", "GET", 200, 7.0, None),
    (3, (0, 41), "/courses", "GET", 404, 3.5, Some("u-333")),
    (4, (1, 2), "/labs", "DELETE", 204, 99.0, Some("u-4")),
    (5, (1, 20), "/labs", "GET", 200, 1.0, Some("u-1")),
    (6, (1, 45), "/courses", "GET", 503, 250.0, Some("u-22")),
    (7, (2, 0), "/courses", "GET", 200, 5.0, None),
];

fn line(&(id, (minute, second), route, method, status, duration, user): &Request) -> String {
    let user = user.map_or("null".to_string(), |u| format!("\"{u}\""));
    format!(
        r#"{{"request_id":"r{id}","correlation_id":"c","ts":"2026-03-01T10:{minute:02}:{second:02}Z","service":"devlab","upstream_instance":"x","method":"{method}","route":"{route}","status":{status},"duration_ms":{duration},"user_id":{user},"auth_outcome":"ok","rate_limited":false,"bytes_out":1}}"#
    )
}

fn udf_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/udfs").join(name)
}

/// The UDFs in `dir`, built and loaded, or the build's message.
fn build_and_load(dir: &Path) -> Result<Udfs, String> {
    let files = load_dir(dir).map_err(|e| e.to_string())?;
    Udfs::build_and_load(&files, &build::cache_dir(), &indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden()))
        .map_err(|e| e.to_string())
}

/// Runs `sql` (table path → query) over REQUESTS with `udfs`; returns the lake.
async fn run(dir: &Path, sql: &[(&str, &str)], udfs: &Udfs) -> sluice::error::Result<PathBuf> {
    for (table, query) in sql {
        let file = dir.join("sql").join(format!("{table}.sql"));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, query).unwrap();
    }
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    let lines: Vec<String> = REQUESTS.iter().map(line).collect();
    std::fs::write(input.join("gateway.requests.jsonl"), lines.join("\n") + "\n").unwrap();
    let registry = SchemaRegistry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")).unwrap();
    let lake_dir = dir.join("lake");
    let lake = Lake::open(lake_dir.to_str().unwrap(), true, Default::default())?;
    let files = load_sql_dir(&dir.join("sql"))?;
    let options = RunOptions { commit_interval: Duration::from_secs(3600), ..RunOptions::default() };
    let mut pipeline = Pipeline::new(&lake, &registry, &files, udfs, options).await?;
    let mut source = FileSource::open(&input, 3, |t| registry.get(t).is_some())?;
    pipeline.run(&mut source).await?;
    Ok(lake_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalar_aggregate_and_async_udfs_land_their_values() {
    let udfs = build_and_load(&udf_dir("good")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sql = [
        (
            "test/udfs/tagged",
            "SELECT request_id, tag(route, CAST(method AS BYTEA), CAST(3 AS INT)) AS tag, \
             tag(route, CAST(NULL AS BYTEA), CAST(3 AS INT)) AS no_tag, tier_of(user_id) AS tier FROM gateway.requests",
        ),
        (
            "test/udfs/spread",
            "SELECT tumble(interval '1 minute') AS window, route, count(*) AS requests, spread(duration_ms) AS spread_ms \
             FROM gateway.requests GROUP BY window, route",
        ),
        // Hopping windows merge their panes' states: the values kept per pane.
        (
            "test/udfs/spread_hopping",
            "SELECT hop(interval '1 minute', interval '2 minutes') AS window, route, count(*) AS requests, \
             spread(duration_ms) AS spread_ms FROM gateway.requests GROUP BY window, route",
        ),
        // Sessions run the aggregate over a session's rows when it closes.
        (
            "test/udfs/spread_sessions",
            "SELECT session(interval '1 minute') AS window, route, count(*) AS requests, \
             spread(duration_ms) AS spread_ms FROM gateway.requests GROUP BY window, route",
        ),
    ];
    let lake = run(dir.path(), &sql, &udfs).await.unwrap();

    // Scalar and async, per row.
    let tagged = read_table(&lake, "test/udfs/tagged").await.unwrap();
    assert_eq!(tagged.rows.len(), REQUESTS.len());
    let tag_type = tagged.schema.iter().find(|(name, _)| name == "tag").map(|(_, t)| t.clone());
    assert_eq!(tag_type, Some(arrow::datatypes::DataType::Binary), "Vec<u8> lands as binary");
    for row in &tagged.rows {
        let id = tagged.get(row, "request_id").unwrap().as_str().unwrap();
        let r = REQUESTS.iter().find(|r| format!("r{}", r.0) == id).unwrap();
        let hex: String = r.3.bytes().take(3).map(|b| format!("{b:02x}")).collect();
        let expected_tag = format!("{}#{hex}", r.2);
        let tag = tagged.get(row, "tag").unwrap();
        assert_eq!(tag, &V::S(expected_tag.clone()), "tag of {id} (binary read back as text)");
        assert_eq!(tagged.get(row, "no_tag").unwrap(), &V::Null, "a null argument where the UDF takes Option");
        let expected_tier = r.6.map(|u| if u.bytes().map(u64::from).sum::<u64>() % 2 == 0 { "gold" } else { "silver" });
        let tier = tagged.get(row, "tier").unwrap();
        assert_eq!(tier.as_str(), expected_tier, "tier of {id}: null user, null tier without a call");
    }

    // The aggregate, per window and route: tumbling, then hopping.
    for (table, width) in [("test/udfs/spread", 1), ("test/udfs/spread_hopping", 2)] {
        let mut expected: Vec<(i64, String, i64, f64)> = Vec::new();
        let starts: BTreeSet<i64> = REQUESTS.iter().flat_map(|r| (0..width).map(move |k| i64::from(r.1 .0) - k)).collect();
        for start in starts {
            for route in ["/courses", "/labs"] {
                let durations: Vec<f64> = REQUESTS
                    .iter()
                    .filter(|r| r.2 == route && (start..start + width).contains(&i64::from(r.1 .0)))
                    .map(|r| r.5)
                    .collect();
                if !durations.is_empty() {
                    let spread = durations.iter().cloned().fold(f64::MIN, f64::max) - durations.iter().cloned().fold(f64::MAX, f64::min);
                    expected.push((start, route.to_string(), durations.len() as i64, spread));
                }
            }
        }
        assert_eq!(spreads(&lake, table, 60).await, expected, "{table}");
    }

    // Sessions: per route, runs of requests less than a minute apart, by first second.
    let mut expected: Vec<(i64, String, i64, f64)> = Vec::new();
    for route in ["/courses", "/labs"] {
        let mut times: Vec<(i64, f64)> =
            REQUESTS.iter().filter(|r| r.2 == route).map(|r| (i64::from(r.1 .0 * 60 + r.1 .1), r.5)).collect();
        times.sort_by_key(|t| t.0);
        let mut session: Vec<(i64, f64)> = Vec::new();
        for t in times.into_iter().map(Some).chain([None]) {
            if let (Some(last), Some(next)) = (session.last(), t) {
                if next.0 - last.0 < 60 {
                    session.push(next);
                    continue;
                }
            }
            if let Some(first) = session.first() {
                let durations: Vec<f64> = session.iter().map(|s| s.1).collect();
                let spread = durations.iter().cloned().fold(f64::MIN, f64::max) - durations.iter().cloned().fold(f64::MAX, f64::min);
                expected.push((first.0, route.to_string(), session.len() as i64, spread));
            }
            session = t.into_iter().collect();
        }
    }
    expected.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    assert!(expected.len() >= 3, "more than one session per route somewhere: {expected:?}");
    assert_eq!(spreads(&lake, "test/udfs/spread_sessions", 1).await, expected, "sessions");
}

/// A spread table's rows, sorted: window start (in `unit` seconds after 10:00),
/// route, requests, spread.
async fn spreads(lake: &Path, table: &str, unit: i64) -> Vec<(i64, String, i64, f64)> {
    let t0 = 1_772_359_200_000_000i64; // 2026-03-01T10:00Z
    let landed = read_table(lake, table).await.unwrap();
    let mut rows: Vec<(i64, String, i64, f64)> = landed
        .rows
        .iter()
        .map(|row| {
            let cell = |c: &str| landed.get(row, c).unwrap();
            (
                (cell("window_start").as_ts().unwrap() - t0).div_euclid(unit * 1_000_000),
                cell("route").as_str().unwrap().to_string(),
                cell("requests").as_i64().unwrap(),
                cell("spread_ms").as_f64().unwrap(),
            )
        })
        .collect();
    rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_udf_stops_the_run_naming_the_function_and_the_row() {
    let udfs = build_and_load(&udf_dir("panics")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sql = [("test/udfs/exploded", "SELECT request_id, explode(status) AS status FROM gateway.requests")];
    let err = run(dir.path(), &sql, &udfs).await.unwrap_err().to_string();
    // Batches of 3: the 503 is the first row of the third batch.
    assert!(err.contains("UDF explode panicked on row 0") && err.contains("(503)"), "{err}");
    // Nothing of the failed epoch reached the table.
    let table = read_table(&dir.path().join("lake"), "test/udfs/exploded").await.unwrap();
    assert!(table.rows.is_empty(), "{:?}", table.rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_udf_past_its_timeout_stops_the_run_naming_it() {
    let udfs = build_and_load(&udf_dir("slow")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sql = [("test/udfs/slow", "SELECT request_id, too_slow(user_id) AS answer FROM gateway.requests")];
    let started = std::time::Instant::now();
    let err = run(dir.path(), &sql, &udfs).await.unwrap_err().to_string();
    assert!(err.contains("UDF too_slow") && err.contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "gave up after {:?}", started.elapsed());
    let table = read_table(&dir.path().join("lake"), "test/udfs/slow").await.unwrap();
    assert!(table.rows.is_empty(), "{:?}", table.rows);
}

#[test]
fn a_udf_that_does_not_build_shows_the_compiler_error() {
    let err = build_and_load(&udf_dir("broken")).unwrap_err();
    assert!(err.contains("broken.rs") && err.contains("does not build") && err.contains("error[E0277]"), "{err}");
}

#[test]
fn a_build_is_reused_until_its_source_changes() {
    let dir = tempfile::tempdir().unwrap();
    let source = std::fs::read_to_string(udf_dir("panics").join("explode.rs")).unwrap();
    // A name of its own, so concurrent tests do not share its crate.
    let source = source.replace("fn explode(", "fn explode_cached(");
    let path = dir.path().join("explode_cached.rs");
    // A fresh marker, so the first build here is a real one.
    let marker = format!("// built at {:?}\n", std::time::SystemTime::now());
    std::fs::write(&path, format!("{marker}{source}")).unwrap();
    let cache = build::cache_dir();
    let first = load_dir(dir.path()).unwrap().remove(0);
    let library = build::library_path(&cache, &first);
    assert!(!library.exists());
    assert_eq!(build::build(&cache, &first).unwrap(), library);
    let built_at = std::fs::metadata(&library).unwrap().modified().unwrap();

    let again = load_dir(dir.path()).unwrap().remove(0);
    assert_eq!(build::build(&cache, &again).unwrap(), library, "the same source, the same library");
    assert_eq!(std::fs::metadata(&library).unwrap().modified().unwrap(), built_at, "not rebuilt");

    std::fs::write(&path, format!("{marker}// changed\n{source}")).unwrap();
    let changed = load_dir(dir.path()).unwrap().remove(0);
    let rebuilt = build::build(&cache, &changed).unwrap();
    assert_ne!(rebuilt, library, "a changed source is built anew");
    assert!(rebuilt.is_file());
    assert!(!library.exists(), "the cache keeps only the latest build of a function");
    let _ = std::fs::remove_file(rebuilt);
}
