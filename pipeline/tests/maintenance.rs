//! Tables that maintain themselves (compaction, Delta checkpoints, vacuum) change
//! files, never rows: a run committing every batch, compacted all along, lands
//! what a run with a few large commits lands, with few files per partition; vacuum
//! deletes orphans and expired files and never a live one.

mod stores;
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use stores::{assert_lakes_equal, local_tables};
use support::{repo, sluice};

/// Live files per `date` partition (or the whole table), from the Delta log.
async fn live_files(table: &Path) -> HashMap<String, usize> {
    let url = url::Url::from_directory_path(table).unwrap();
    let delta = deltalake::open_table(url).await.unwrap();
    let mut counts = HashMap::new();
    for file in delta.snapshot().unwrap().log_data().iter() {
        let partition = file.partition_values_map().get("date").cloned().flatten().unwrap_or_default();
        *counts.entry(partition).or_default() += 1;
    }
    counts
}

fn parquet_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.ends_with("_delta_log") {
            files.extend(parquet_files(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_row_and_few_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let (schemas, sql) = (repo("schemas"), repo("sql"));
    sluice(&["generate", "--out", input.to_str().unwrap(), "--seed", "3", "--users", "300", "--hours", "8", "--schemas", &schemas]);
    let reference = dir.path().join("reference");
    let input = input.to_str().unwrap();
    sluice(&["run", "--input", input, "--lake", reference.to_str().unwrap(), "--batch-size", "40", "--schemas", &schemas, "--sql", &sql]);
    let lake = dir.path().join("compacted");
    // No time for maintenance after an epoch: one table is maintained per epoch,
    // in turn, its compaction two files at a time, and what is left when the
    // input ends is done before the run stops.
    sluice(&[
        "run", "--input", input, "--lake", lake.to_str().unwrap(), "--batch-size", "40", "--commit-interval", "1ms",
        "--max-small-files", "4", "--checkpoint-every", "20", "--maintenance-budget", "0ms", "--schemas", &schemas, "--sql", &sql,
    ]);
    let lake_url = url::Url::from_directory_path(&lake).unwrap().to_string();
    assert_lakes_equal(&reference, lake_url.trim_end_matches('/'), &HashMap::new(), stores::by_processing_time).await;

    let request_logs = lake.join("integration/api_gateway/request_logs");
    let versions = std::fs::read_dir(request_logs.join("_delta_log")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json")).count();
    assert!(versions > 100, "the run committed often ({versions} versions of request_logs)");
    for table in local_tables(&lake) {
        for (partition, files) in live_files(&lake.join(&table)).await {
            assert!(files <= 4, "{table} {partition}: {files} live files, compaction keeps at most 4");
        }
    }
    assert!(request_logs.join("_delta_log/_last_checkpoint").is_file(), "Delta checkpoints are written");
    // Compacted files stay on disk until vacuumed: far more files than live ones.
    assert!(parquet_files(&request_logs).len() > 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_deletes_orphans_and_removed_files_but_never_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let (schemas, sql) = (repo("schemas"), repo("sql"));
    sluice(&["generate", "--out", input.to_str().unwrap(), "--seed", "4", "--users", "300", "--hours", "8", "--schemas", &schemas]);
    let lake = dir.path().join("lake");
    let lake_str = lake.to_str().unwrap();
    sluice(&[
        "run", "--input", input.to_str().unwrap(), "--lake", lake_str, "--batch-size", "100", "--commit-interval", "1ms",
        "--max-small-files", "3", "--schemas", &schemas, "--sql", &sql,
    ]);
    let table = lake.join("monitoring/api_performance/request_response_times");
    let url = url::Url::from_directory_path(&table).unwrap().to_string();
    let before = stores::table_rows(&url, &HashMap::new(), |_| false).await;
    assert!(!before.is_empty());

    // Orphans, as an epoch killed before its checkpoint leaves them: one old, one new.
    let partition = std::fs::read_dir(&table).unwrap().flatten().map(|e| e.path()).find(|p| p.is_dir() && !p.ends_with("_delta_log")).unwrap();
    let some_file = parquet_files(&partition)[0].clone();
    let (old_orphan, new_orphan) = (partition.join("part-old-orphan.parquet"), partition.join("part-new-orphan.parquet"));
    std::fs::copy(&some_file, &old_orphan).unwrap();
    std::fs::copy(&some_file, &new_orphan).unwrap();
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
    std::fs::File::options().write(true).open(&old_orphan).unwrap().set_modified(two_days_ago).unwrap();

    let on_disk = parquet_files(&table).len();
    let live: usize = live_files(&table).await.values().sum();
    assert!(on_disk > live + 2, "compaction left removed files behind ({on_disk} on disk, {live} live)");

    // A dry run names what it would delete and deletes nothing.
    let table_name = "monitoring.api_performance.request_response_times";
    let dry = std::process::Command::new(support::SLUICE)
        .args(["maintain", "--lake", lake_str, "--table", table_name, "--vacuum", "--vacuum-retention", "1d", "--dry-run"])
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would delete 1 files"), "{}", String::from_utf8_lossy(&dry.stdout));
    assert!(old_orphan.exists());

    // Retention 1 day: the old orphan goes; the new one and removed files (removed
    // minutes ago) stay.
    sluice(&["maintain", "--lake", lake_str, "--table", table_name, "--vacuum", "--vacuum-retention", "1d"]);
    assert!(!old_orphan.exists(), "an orphan older than the retention is deleted");
    assert!(new_orphan.exists(), "an orphan younger than the retention stays");
    assert_eq!(parquet_files(&table).len(), on_disk - 1);

    // Retention 0: every file no version references goes; every live one stays.
    sluice(&["maintain", "--lake", lake_str, "--table", table_name, "--vacuum", "--vacuum-retention", "0s"]);
    assert!(!new_orphan.exists());
    assert_eq!(parquet_files(&table).len(), live, "only the live files are left");
    let after = stores::table_rows(&url, &HashMap::new(), |_| false).await;
    assert_eq!(after, before, "the table reads whole after vacuum");
}
