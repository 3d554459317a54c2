//! Exactly once under SIGKILL (contract §4): traffic is preloaded into a real broker,
//! the pipeline is killed with SIGKILL at random moments and restarted, again and
//! again, then run to the end; every table must equal the one an uninterrupted run
//! over the same messages makes: no row lost, none duplicated.
//!
//! The uninterrupted run reads the same traffic from files. Every topic has one
//! partition here, so for a query over one topic which events are late depends on
//! nothing but the messages. For a query over several topics (or partitions) it also
//! depends on the order they are read, in any run, killed or not; for those the test
//! checks that every event is counted once, in its window or in late_events (tables
//! joined with mirrors are compared whole when their late events agree, which they
//! nearly always do for daily windows). `pipeline_throughput` counts by processing time and
//! is left out, as are `_ingested_at` and the ingest lags computed from it.
//!
//! `SLUICE_KILLS` sets the number of kills (default 20; more for a soak).

mod broker;
mod stores;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use support::{repo, sluice, SLUICE};

/// Every table of a lake: its rows as text, sorted, `_ingested_at` left out.
async fn lake_rows(lake: &Path) -> BTreeMap<String, Vec<String>> {
    let mut tables = BTreeMap::new();
    for a in std::fs::read_dir(lake).unwrap().flatten() {
        if a.file_name().to_string_lossy().starts_with('_') {
            continue;
        }
        for b in std::fs::read_dir(a.path()).unwrap().flatten() {
            for c in std::fs::read_dir(b.path()).unwrap().flatten() {
                let name = format!(
                    "{}/{}/{}",
                    a.file_name().to_string_lossy(),
                    b.file_name().to_string_lossy(),
                    c.file_name().to_string_lossy()
                );
                let url = url::Url::from_directory_path(c.path()).expect("absolute path").to_string();
                tables.insert(name, stores::table_rows(&url, &Default::default(), stores::by_processing_time).await);
            }
        }
    }
    tables
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_and_restarted_runs_land_what_an_uninterrupted_run_lands() {
    let kills: u32 = std::env::var("SLUICE_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(20);
    let broker = broker::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    support::schemas_with_partitions(&schemas, 1);
    let schemas = schemas.to_str().unwrap().to_string();
    let sql = repo("sql");
    let input = dir.path().join("in");
    let traffic = ["--seed", "23", "--users", "1500", "--hours", "24", "--schemas", &schemas];
    sluice(&[&["generate", "--out", input.to_str().unwrap()][..], &traffic[..]].concat());
    sluice(&[&["generate", "--kafka", &broker.address][..], &traffic[..]].concat());

    let reference = dir.path().join("lake-reference");
    sluice(&["run", "--input", input.to_str().unwrap(), "--lake", reference.to_str().unwrap(), "--schemas", &schemas, "--sql", &sql]);

    let lake = dir.path().join("lake-killed");
    let run = |lake: &Path| {
        Command::new(SLUICE)
            .args(["run", "--kafka", &broker.address, "--stop-when-idle", "2s", "--commit-interval", "200ms"])
            .args(["--lake", lake.to_str().unwrap(), "--schemas", &schemas, "--sql", &sql])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice starts")
    };
    // Every other kill comes at a random moment, the others as soon as one table has
    // committed an epoch, while the others are still committing: the moment that
    // matters most.
    let log = lake.join("integration/api_gateway/request_logs/_delta_log");
    let commits = || std::fs::read_dir(&log).map(|d| d.count()).unwrap_or(0);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let (mut killed, mut finished) = (0, 0);
    for attempt in 0.. {
        if killed == kills {
            break;
        }
        assert!(attempt < 3 * kills, "runs keep finishing before they can be killed: more traffic needed");
        let mut child = run(&lake);
        let at_commit = attempt % 2 == 1;
        let before = commits();
        let deadline = Instant::now() + Duration::from_millis(rng.random_range(100..1000));
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                assert!(status.success(), "a run failed:\n{}", String::from_utf8_lossy(&out.stderr));
                finished += 1;
                break;
            }
            let now = if at_commit { commits() > before } else { Instant::now() >= deadline };
            if now || Instant::now() >= deadline + Duration::from_secs(3) {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(if at_commit { 1 } else { 10 }));
        }
    }
    let last = run(&lake).wait_with_output().unwrap();
    assert!(last.status.success(), "the last run failed:\n{}", String::from_utf8_lossy(&last.stderr));
    eprintln!("{killed} kills, {finished} runs that finished before their kill");

    let expected = lake_rows(&reference).await;
    let actual = lake_rows(&lake).await;
    assert_eq!(actual.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "the same tables");
    for (table, want) in &expected {
        let got = &actual[table];
        if table.ends_with("pipeline_throughput") {
            continue;
        }
        if ORDER_DEPENDENT.contains(&table.as_str()) {
            // Which events are late depends on the order the topics were read, but
            // each is counted exactly once: in its window or in late_events.
            let counted = |tables: &BTreeMap<String, Vec<String>>| {
                let events: u64 = tables[table].iter().map(|r| column(r, "events").parse::<u64>().unwrap()).sum();
                events + tables[LATE_EVENTS].iter().filter(|r| column(r, "table") == table).count() as u64
            };
            assert_eq!(counted(&actual), counted(&expected), "{table}: events in windows + late, after kills");
            continue;
        }
        if JOINS.contains(&table.as_str()) && late_for(&actual, table) != late_for(&expected, table) {
            // Read order moved an event between its window and late_events: the
            // windows then differ by that event; the rest of the lake still must not.
            eprintln!("{table}: late events differ with read order; its rows are not compared");
            continue;
        }
        let (got, want) = if table == LATE_EVENTS {
            let keep = |rows: &Vec<String>| -> Vec<String> {
                rows.iter().filter(|r| !ORDER_DEPENDENT.contains(&column(r, "table")) && !JOINS.contains(&column(r, "table"))).cloned().collect()
            };
            (keep(got), keep(want))
        } else {
            (got.clone(), want.clone())
        };
        if got != want {
            let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(2).collect();
            let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(2).collect();
            panic!("{table}: {} rows after kills, {} uninterrupted; missing e.g. {missing:?}; extra e.g. {extra:?}", got.len(), want.len());
        }
    }
    let landed: usize = expected.values().map(Vec::len).sum();
    assert!(landed > 100_000, "the traffic is big enough to be killed mid-way ({landed} rows)");
}

const LATE_EVENTS: &str = "monitoring/integration_health/late_events";
/// Windowed tables over several topics: see the module comment.
const ORDER_DEPENDENT: [&str; 1] = ["integration/event_bus/event_processing_logs"];

/// Windowed tables joined with mirrors: they wait for CDC topics' watermarks too,
/// so which of their events are late depends on read order like the above.
const JOINS: [&str; 3] =
    ["analytics/learner/skill_gaps_daily", "analytics/trainer/student_progress_daily", "analytics/organization/kpis_daily"];

/// The messages recorded late for `table` (their watermarks depend on read order).
fn late_for<'a>(tables: &'a BTreeMap<String, Vec<String>>, table: &str) -> Vec<[&'a str; 3]> {
    let rows = tables[LATE_EVENTS].iter().filter(|r| column(r, "table") == table);
    let mut messages: Vec<[&str; 3]> = rows.map(|r| [column(r, "_topic"), column(r, "_partition"), column(r, "_offset")]).collect();
    messages.sort_unstable();
    messages
}

/// A column's value in a row as [`table_rows`] writes it.
fn column<'a>(row: &'a str, name: &str) -> &'a str {
    row.split(';').find_map(|cell| cell.strip_prefix(name)?.strip_prefix('=')).unwrap_or_else(|| panic!("no {name} in {row}"))
}
