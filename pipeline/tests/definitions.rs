//! A transformation's life on a running lake (issue 19): the raw archive every
//! table can be computed again from, and what happens to a table when its SQL
//! file goes away.

mod broker;
mod stores;
mod support;

use std::path::Path;
use std::process::Command;

use support::{repo, sluice, SLUICE};

/// A run in the background, killed when dropped: a failed assertion must not
/// leave it running.
struct Running(std::process::Child);

impl From<std::process::Child> for Running {
    fn from(child: std::process::Child) -> Self {
        Running(child)
    }
}

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies a directory tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Splits every partition file of `input` at half its lines: the first halves go to
/// `first`, and `input` keeps all of them (a file source resumes at its line).
fn first_halves(input: &Path, first: &Path) {
    for entry in std::fs::read_dir(input).unwrap().flatten() {
        let path = entry.path();
        let target = first.join(entry.file_name());
        if path.is_dir() {
            first_halves(&path, &target);
        } else {
            std::fs::create_dir_all(first).unwrap();
            // Bytes, not text: some bad messages are not UTF-8.
            let bytes = std::fs::read(&path).unwrap();
            let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
            std::fs::write(target, lines[..lines.len() / 2].concat()).unwrap();
        }
    }
}

/// `sluice tables`: each table's line, by its SQL name.
fn tables(lake: &Path, schemas: &str, sql: &Path) -> std::collections::BTreeMap<String, String> {
    let out = Command::new(SLUICE)
        .args(["tables", "--lake", lake.to_str().unwrap(), "--schemas", schemas, "--sql", sql.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().skip(1).filter_map(|l| Some((l.split_whitespace().next()?.to_string(), l.to_string()))).collect()
}

/// The `version` column of a `sluice tables` line.
fn version(line: &str) -> u64 {
    line.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no version in `{line}`"))
}

/// Two runs over one input, split in two halves: the first with every SQL file, the
/// second, over the rest of the input, after one file was deleted.
#[test]
fn a_removed_sql_file_leaves_its_table_as_it_was_and_the_run_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (input, first, lake, sql) = (dir.path().join("in"), dir.path().join("first"), dir.path().join("lake"), dir.path().join("sql"));
    let schemas = repo("schemas");
    sluice(&["generate", "--out", input.to_str().unwrap(), "--seed", "19", "--users", "200", "--hours", "6", "--schemas", &schemas]);
    first_halves(&input, &first);
    copy_tree(Path::new(&repo("sql")), &sql);
    let run = |input: &Path| {
        Command::new(SLUICE)
            .args(["run", "--input", input.to_str().unwrap(), "--lake", lake.to_str().unwrap(), "--schemas", &schemas, "--sql", sql.to_str().unwrap()])
            .output()
            .unwrap()
    };

    let out = run(&first);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = tables(&lake, &schemas, &sql);
    let removed = "analytics.learner.velocity_daily";
    // A landing table: a file run emits every window at its end, so only rows
    // without a window land from the second half.
    let kept = "integration.api_gateway.request_logs";
    assert!(before[removed].ends_with("analytics/learner/velocity_daily.sql"), "{}", before[removed]);
    assert!(before[kept].ends_with("integration/api_gateway/request_logs.sql"), "{}", before[kept]);
    assert!(before["monitoring.integration_health.dead_letters"].ends_with("  sluice"));
    assert!(before["services.directory.users"].ends_with("  mirror of cdc.directory.users"));

    std::fs::remove_file(sql.join("analytics/learner/velocity_daily.sql")).unwrap();
    let out = run(&input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let said: Vec<&str> = stderr.lines().filter(|l| l.contains("no SQL file defines this table any more")).collect();
    assert_eq!(said.len(), 1, "said once, for the one table: {stderr}");
    assert!(said[0].contains(removed), "{}", said[0]);

    let after = tables(&lake, &schemas, &sql);
    assert!(after[removed].ends_with("  none (no SQL file: no longer updated)"), "{}", after[removed]);
    let columns = |line: &str| line.split_whitespace().take(6).map(String::from).collect::<Vec<_>>();
    assert_eq!(columns(&after[removed]), columns(&before[removed]), "the table is as it was: rows, version, files, bytes");
    assert!(version(&after[kept]) > version(&before[kept]), "the other tables went on: {} then {}", before[kept], after[kept]);
}

/// What the archive must hold, read from the input files themselves: each
/// non-blank line of `<topic>/<partition>.jsonl` at its line number as offset,
/// its bytes as they are (bad ones too), `null` as a tombstone (no value).
fn archive_model(input: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut topics: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for topic in std::fs::read_dir(input).unwrap().flatten().filter(|e| e.path().is_dir()) {
        let topic_name = topic.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(topic.path()).unwrap().flatten() {
            let partition: i32 = file.path().file_stem().unwrap().to_string_lossy().parse().unwrap();
            let bytes = std::fs::read(file.path()).unwrap();
            for (offset, line) in bytes.split(|b| *b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let value: String = if line == b"null" { String::new() } else { line.iter().map(|b| format!("{b:02x}")).collect() };
                topics.entry(topic_name.clone()).or_default().push(format!("_topic={topic_name};_partition={partition};_offset={offset};value={value};"));
            }
        }
    }
    topics.values_mut().for_each(|rows| rows.sort());
    topics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_archived_once_as_it_came_and_the_archive_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let (input, lake, unarchived) = (dir.path().join("in"), dir.path().join("lake"), dir.path().join("unarchived"));
    let schemas = repo("schemas");
    sluice(&["generate", "--out", input.to_str().unwrap(), "--seed", "7", "--users", "100", "--hours", "4", "--schemas", &schemas]);
    // A tombstone, a blank line and bytes that are no UTF-8, beside the generator's bad messages.
    let users = input.join("cdc.directory.users/0.jsonl");
    let mut text = std::fs::read(&users).unwrap();
    text.extend_from_slice(b"null\n\n\xff\xfe not json\n");
    std::fs::write(&users, text).unwrap();
    let model = archive_model(&input);
    assert!(model.len() >= 20, "every topic has input: {:?}", model.keys());

    let run = |lake: &Path, extra: &[&str]| {
        let out = Command::new(SLUICE)
            .args(["run", "--input", input.to_str().unwrap(), "--lake", lake.to_str().unwrap(), "--schemas", &schemas, "--sql", &repo("sql"), "--batch-size", "500"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run(&lake, &[]);
    let listed = tables(&lake, &schemas, Path::new(&repo("sql")));
    let skip = |c: &str| matches!(c, "_ingested_at" | "_kafka_timestamp" | "date");
    for (topic, expected) in &model {
        let name: String = topic.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        let url = format!("file://{}/archive/raw/{name}", lake.display());
        let archived = stores::table_rows(&url, &Default::default(), skip).await;
        if &archived != expected {
            let missing: Vec<_> = expected.iter().filter(|r| !archived.contains(r)).take(2).collect();
            let extra: Vec<_> = archived.iter().filter(|r| !expected.contains(r)).take(2).collect();
            panic!("{topic}: {} archived, {} in the input; missing e.g. {missing:?}; extra e.g. {extra:?}", archived.len(), expected.len());
        }
        let line = &listed[&format!("archive.raw.{name}")];
        assert!(line.ends_with(&format!("  archive of {topic}")), "{line}");
    }

    run(&unarchived, &["--archive-retention", "off"]);
    assert!(!unarchived.join("archive").exists(), "--archive-retention off writes no archive");
    let refused = Command::new(SLUICE).args(["run", "--input", "x", "--lake", "y", "--archive-retention", "soon"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--archive-retention") && stderr.contains("forever"), "{stderr}");
}

/// A column's value in a row as `stores::table_rows` writes it.
fn field<'a>(row: &'a str, name: &str) -> &'a str {
    row.split(';').find_map(|cell| cell.strip_prefix(name)?.strip_prefix('=')).unwrap_or_else(|| panic!("no {name} in {row}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_tests_pass_on_a_sound_lake_and_each_failure_lists_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (input, lake, broken) = (dir.path().join("in"), dir.path().join("lake"), dir.path().join("broken"));
    let schemas = repo("schemas");
    sluice(&["generate", "--out", input.to_str().unwrap(), "--seed", "5", "--users", "150", "--hours", "6", "--schemas", &schemas]);
    sluice(&["run", "--input", input.to_str().unwrap(), "--lake", lake.to_str().unwrap(), "--schemas", &schemas, "--sql", &repo("sql")]);
    let test = |sql: &str| Command::new(SLUICE).args(["test", "--lake", lake.to_str().unwrap(), "--sql", sql]).output().unwrap();

    // The fixtures and data tests shipped beside sql/ hold, the latter on a lake the pipeline made.
    let out = test(&repo("sql"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let passed = stdout.lines().filter(|l| l.starts_with("PASS  ")).count();
    assert!(passed >= 19 && stdout.contains(&format!("{passed} tests: {passed} passed, 0 failed")), "{stdout}");
    assert!(stdout.contains("request_response_times  fixture late_and_bad"), "{stdout}");

    // Expectations the data breaks; what breaks them is counted here from the table
    // as deltalake reads it.
    let requests = stores::table_rows(&format!("file://{}/integration/api_gateway/request_logs", lake.display()), &Default::default(), |_| false).await;
    let unheard = requests.iter().filter(|r| field(r, "auth_outcome") == "missing").count();
    let server_errors = requests.iter().filter(|r| field(r, "status").parse::<i64>().unwrap() >= 500).count();
    let mut per_service: std::collections::BTreeMap<&str, usize> = Default::default();
    requests.iter().for_each(|r| *per_service.entry(field(r, "service")).or_default() += 1);
    let repeated_services = per_service.values().filter(|n| **n > 1).count();
    assert!(unheard > 0 && server_errors > 0 && repeated_services > 1, "the traffic has what the tests look for");

    let declared = broken.join("integration/api_gateway");
    std::fs::create_dir_all(&declared).unwrap();
    std::fs::copy(Path::new(&repo("sql")).join("integration/api_gateway/request_logs.sql"), declared.join("request_logs.sql")).unwrap();
    // A fixture whose expected row is wrong: its status is 200, not 201.
    let fixture = declared.join("request_logs.fixtures/wrong_status");
    std::fs::create_dir_all(fixture.join("input")).unwrap();
    let request = r#"{"request_id":"r1","correlation_id":"c1","ts":"2026-03-01T10:00:05Z","service":"auth","upstream_instance":"auth-1","method":"POST","route":"/login","status":200,"duration_ms":50,"user_id":"u-1","org_id":"org-1","auth_outcome":"ok","rate_limited":false,"bytes_out":100}"#;
    std::fs::write(fixture.join("input/gateway.requests.jsonl"), format!("{request}\n")).unwrap();
    std::fs::write(fixture.join("expected.jsonl"), "{\"request_id\":\"r1\",\"status\":201}\n").unwrap();
    std::fs::write(
        declared.join("request_logs.tests.toml"),
        r#"
        not_null = ["no_such_column"]
        unique = ["service"]
        accepted_values = { auth_outcome = ["ok", "denied", "expired"] }
        relationships = [{ column = "user_id", to = "services.directory.nowhere" }]
        no_rows = [{ name = "no server errors", sql = "SELECT request_id, status FROM {table} WHERE status >= 500" }]
        "#,
    )
    .unwrap();
    let out = test(broken.to_str().unwrap());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("6 of 6 failed"), "{stderr}");
    let line = |name: &str| stdout.lines().find(|l| l.starts_with("FAIL  ") && l.contains(name)).unwrap_or_else(|| panic!("no FAIL line for {name}:\n{stdout}"));
    assert!(line("fixture wrong_status").contains("1 expected rows missing, 1 rows not expected"), "{stdout}");
    assert!(stdout.contains(r#"      - {"request_id":"r1","status":201}"#) && stdout.contains(r#"      + {"request_id":"r1","status":200}"#), "{stdout}");
    assert!(line("not_null(no_such_column)").contains("could not run") && line("not_null(no_such_column)").contains("no_such_column"), "{stdout}");
    assert!(line("relationships(user_id").contains("could not run") && line("relationships(user_id").contains("nowhere"), "{stdout}");
    let failing = |n: usize| format!(": {n} failing {}", if n == 1 { "row" } else { "rows" });
    assert!(line("unique(service)").contains(&failing(repeated_services)), "{stdout}");
    assert!(line("no server errors").contains(&failing(server_errors)), "{stdout}");
    assert!(line("accepted_values(auth_outcome)").ends_with(": 1 failing row"), "one value is not accepted: {stdout}");
    let shown = stdout.lines().find(|l| l.contains("| missing")).unwrap_or_else(|| panic!("the failing value and its rows are shown:\n{stdout}"));
    assert!(shown.contains(&format!("| {unheard} ")), "{shown}");

    std::fs::write(declared.join("request_logs.tests.toml"), "not_nul = [\"x\"]\n").unwrap();
    let out = test(broken.to_str().unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("request_logs.tests.toml") && stderr.contains("not_nul"), "{stderr}");
}

/// Sends SIGHUP to the run and waits until its log has `count` lines containing `marker`.
fn hang_up_and_wait(child: &mut std::process::Child, log: &Path, marker: &str, count: usize) -> String {
    Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().filter(|l| l.contains(marker)).count() >= count {
            return text;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended:\n{text}");
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "no `{marker}` in the log after SIGHUP:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A running pipeline (through Kafka) takes up SQL files on SIGHUP: a file that does
/// not plan and a changed stateful file are refused with their message while the
/// rest goes on; then an added file computes its table from the next message on, a
/// removed one leaves its table as it was, and a comment changes nothing. The
/// gateway's requests are produced only after that reload, so the added table must
/// hold all of them, as a fresh run over the same traffic does, and the removed none.
#[tokio::test(flavor = "multi_thread")]
async fn sql_files_are_taken_up_on_sighup_without_a_restart() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::ClientConfig;
    const REQUESTS: &str = "gateway.requests";
    let (added, removed, kept) = ("integration/api_gateway/authentication_logs", "integration/api_gateway/service_routing_data", "integration/api_gateway/request_logs");

    let broker = broker::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let (input, reference, lake, sql, log) =
        (dir.path().join("in"), dir.path().join("reference"), dir.path().join("lake"), dir.path().join("sql"), dir.path().join("run.log"));
    let schemas = repo("schemas");
    let traffic = ["--seed", "29", "--users", "120", "--hours", "4"];
    sluice(&[&["generate", "--out", input.to_str().unwrap(), "--schemas", &schemas][..], &traffic[..]].concat());
    sluice(&["run", "--input", input.to_str().unwrap(), "--lake", reference.to_str().unwrap(), "--schemas", &schemas, "--sql", &repo("sql")]);
    // Every topic but the requests on the broker before the run.
    let others = dir.path().join("schemas-without-requests");
    std::fs::create_dir_all(&others).unwrap();
    for entry in std::fs::read_dir(&schemas).unwrap().flatten() {
        if entry.file_name() != format!("{REQUESTS}.toml").as_str() {
            std::fs::copy(entry.path(), others.join(entry.file_name())).unwrap();
        }
    }
    sluice(&[&["generate", "--kafka", &broker.address, "--schemas", others.to_str().unwrap()][..], &traffic[..]].concat());

    copy_tree(Path::new(&repo("sql")), &sql);
    let added_sql = std::fs::read_to_string(sql.join(format!("{added}.sql"))).unwrap();
    std::fs::remove_file(sql.join(format!("{added}.sql"))).unwrap();
    let mut child = Running::from(Command::new(SLUICE)
        .args(["run", "--kafka", &broker.address, "--stop-when-idle", "10s", "--commit-interval", "200ms"])
        .args(["--lake", lake.to_str().unwrap(), "--schemas", &schemas, "--sql", sql.to_str().unwrap()])
        .env("SLUICE_LOG", "warn,buoyant_kernel=off,delta_kernel=off,sluice::runtime=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap());
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("committed") {
        assert!(started.elapsed() < std::time::Duration::from_secs(60) && child.try_wait().unwrap().is_none(), "no commit:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Refused: a file that does not plan, then a changed windowed file.
    let broken = sql.join("analytics/learner/broken.sql");
    std::fs::write(&broken, "SELECT no_such_column FROM gateway.requests\n").unwrap();
    let text = hang_up_and_wait(&mut child, &log, "not taken up", 1);
    let refusal = text.lines().find(|l| l.contains("not taken up")).unwrap();
    assert!(refusal.contains("broken.sql") && refusal.contains("no_such_column"), "{refusal}");
    std::fs::remove_file(&broken).unwrap();
    let times = sql.join("monitoring/api_performance/request_response_times.sql");
    let original = std::fs::read_to_string(&times).unwrap();
    std::fs::write(&times, original.replace("count(*) AS requests,", "count(*) AS requests, min(duration_ms) AS min_duration_ms,")).unwrap();
    let text = hang_up_and_wait(&mut child, &log, "not taken up", 2);
    let refusal = text.lines().filter(|l| l.contains("not taken up")).nth(1).unwrap();
    assert!(refusal.contains("request_response_times.sql") && refusal.contains("keeps state"), "{refusal}");

    // Taken up: one added, one removed, a comment.
    std::fs::write(&times, original).unwrap();
    std::fs::write(sql.join(format!("{added}.sql")), &added_sql).unwrap();
    std::fs::remove_file(sql.join(format!("{removed}.sql"))).unwrap();
    let kept_sql = std::fs::read_to_string(sql.join(format!("{kept}.sql"))).unwrap();
    std::fs::write(sql.join(format!("{kept}.sql")), format!("-- a comment changes nothing\n{kept_sql}\n\n")).unwrap();
    let text = hang_up_and_wait(&mut child, &log, "SQL files read again", 1);
    let summary = text.lines().find(|l| l.contains("SQL files read again")).unwrap();
    assert!(summary.contains("added=1") && summary.contains("removed=1") && summary.contains("changed=0"), "{summary}");

    // Now the requests.
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &broker.address).set("linger.ms", "20").create().unwrap();
    let mut deliveries = Vec::new();
    for entry in std::fs::read_dir(input.join(REQUESTS)).unwrap().flatten() {
        let partition: i32 = entry.path().file_stem().unwrap().to_string_lossy().parse().unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let mut record = FutureRecord::<(), [u8]>::to(REQUESTS).partition(partition);
            if line != b"null" {
                record = record.payload(line);
            }
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
    }
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{text}");

    let expected = support::rows(&reference, added).await;
    assert!(!expected.is_empty(), "the traffic has requests that were not authenticated");
    support::assert_same_rows(added, &support::rows(&lake, added).await, &expected);
    support::assert_same_rows(kept, &support::rows(&lake, kept).await, &support::rows(&reference, kept).await);
    assert!(support::rows(&lake, removed).await.is_empty(), "the removed file's table got rows after its removal");
}

/// `sluice run` over files with the repository's schemas, logging at `log`; its stderr.
fn run_logged(input: &Path, lake: &Path, sql: &Path, log: &str) -> String {
    let out = Command::new(SLUICE)
        .args(["run", "--input", input.to_str().unwrap(), "--lake", lake.to_str().unwrap(), "--schemas", &repo("schemas"), "--sql", sql.to_str().unwrap()])
        .env("SLUICE_LOG", log)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// `table` holds the same rows in both lakes (processing times aside), and some.
async fn assert_same_table(lake: &Path, reference: &Path, table: &str, here: &str, there: &str) {
    let options = std::collections::HashMap::new();
    let got = stores::table_rows(&format!("file://{}/{table}", lake.display()), &options, stores::by_processing_time).await;
    let want = stores::table_rows(&format!("file://{}/{table}", reference.display()), &options, stores::by_processing_time).await;
    assert!(!want.is_empty(), "{table}: the traffic gives it rows");
    if got != want {
        let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(2).collect();
        let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(2).collect();
        panic!("{table}: {} rows {here}, {} {there}; missing e.g. {missing:?}; extra e.g. {extra:?}", got.len(), want.len());
    }
}

/// A lake runs over the first half of the traffic without three SQL files; then they
/// are added and the run goes on over the rest. Each added table is backfilled from
/// the archive, so it holds what a lake that had the file from the start holds: a
/// landing table (`authentication_logs`), keyed current state (`active_connections`)
/// and daily windows (`velocity_daily`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_to_a_lake_with_history_is_backfilled_from_the_archive() {
    let added = ["integration/api_gateway/authentication_logs", "real_time/connection_management/active_connections", "analytics/learner/velocity_daily"];
    let dir = tempfile::tempdir().unwrap();
    let (input, first, reference, lake, sql, without) =
        (dir.path().join("in"), dir.path().join("first"), dir.path().join("reference"), dir.path().join("lake"), dir.path().join("sql"), dir.path().join("without"));
    let schemas = repo("schemas");
    sluice(&["generate", "--out", input.to_str().unwrap(), "--seed", "31", "--users", "150", "--hours", "6", "--schemas", &schemas]);
    first_halves(&input, &first);
    copy_tree(Path::new(&repo("sql")), &sql);
    copy_tree(Path::new(&repo("sql")), &without);
    for table in added {
        std::fs::remove_file(without.join(format!("{table}.sql"))).unwrap();
    }
    let run = |input: &Path, lake: &Path, sql: &Path| run_logged(input, lake, sql, "warn,sluice::runtime=info");
    // The same two runs, with every file from the start.
    run(&first, &reference, &sql);
    run(&input, &reference, &sql);
    run(&first, &lake, &without);
    let stderr = run(&input, &lake, &sql);
    for table in added {
        let name = table.replace('/', ".");
        assert!(stderr.lines().any(|l| l.contains("backfilled: the table joins the live stream") && l.contains(&name)), "{name} was not backfilled:\n{stderr}");
    }
    for table in added {
        assert_same_table(&lake, &reference, table, "backfilled and carried on", "from the start").await;
    }
}

/// A lake runs over the first half of the traffic; then one SQL file's aggregate
/// changes and it gets a column, a landing file loses a column and gets a computed
/// one, another gets a comment, and the run goes on over the rest. The changed
/// tables are rebuilt from the archive, in their new columns, so they equal those
/// of a lake that had the new definitions from the start; the commented one is not
/// rebuilt; a third run with the same files rebuilds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_sql_file_is_rebuilt_from_the_archive_and_a_comment_changes_nothing() {
    let (changed, commented) = ("analytics/learner/velocity_daily", "integration/api_gateway/request_logs");
    let new_columns = "integration/api_gateway/authentication_logs";
    let dir = tempfile::tempdir().unwrap();
    let (input, first, reference, lake, old_sql, new_sql) =
        (dir.path().join("in"), dir.path().join("first"), dir.path().join("reference"), dir.path().join("lake"), dir.path().join("old"), dir.path().join("new"));
    let schemas = repo("schemas");
    sluice(&["generate", "--out", input.to_str().unwrap(), "--seed", "37", "--users", "150", "--hours", "6", "--schemas", &schemas]);
    first_halves(&input, &first);
    copy_tree(Path::new(&repo("sql")), &old_sql);
    copy_tree(Path::new(&repo("sql")), &new_sql);
    let file = new_sql.join(format!("{changed}.sql"));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("sum(minutes_spent) AS minutes_spent"), "{text}");
    std::fs::write(&file, text.replace("sum(minutes_spent) AS minutes_spent", "max(minutes_spent) AS minutes_spent, count(DISTINCT topic_id) AS topics")).unwrap();
    let file = new_sql.join(format!("{new_columns}.sql"));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("upstream_instance, ") && text.contains("bytes_out,"), "{text}");
    std::fs::write(&file, text.replace("upstream_instance, ", "").replace("bytes_out,", "bytes_out, status >= 500 AS server_error,")).unwrap();
    let file = new_sql.join(format!("{commented}.sql"));
    std::fs::write(&file, format!("-- a comment\n{}", std::fs::read_to_string(&file).unwrap())).unwrap();
    let run = |input: &Path, lake: &Path, sql: &Path| run_logged(input, lake, sql, "warn");
    run(&first, &reference, &new_sql);
    run(&input, &reference, &new_sql);
    run(&first, &lake, &old_sql);
    let stderr = run(&input, &lake, &new_sql);
    let rebuilt: Vec<&str> = stderr.lines().filter(|l| l.contains("rebuilding the table from the archive")).collect();
    assert_eq!(rebuilt.len(), 2, "{stderr}");
    for (table, why) in [(changed, "its aggregates and columns changed"), (new_columns, "its columns changed")] {
        assert!(rebuilt.iter().any(|l| l.contains(&table.replace('/', ".")) && l.contains(why) && l.contains("plan ")), "{rebuilt:?}");
    }
    for table in [changed, new_columns, commented] {
        assert_same_table(&lake, &reference, table, "after the change", "with the new file from the start").await;
    }
    let again = run(&input, &lake, &new_sql);
    assert!(!again.contains("rebuilding"), "the fingerprint was kept: nothing to rebuild\n{again}");
}

/// A large backfill beside the live stream is killed (SIGKILL) after a commit, twice;
/// each restart resumes it where its last commit left it, and the added tables, a
/// landing (`authentication_logs`) and one-minute windows with percentiles
/// (`request_response_times`), equal those of a lake that had the files from the
/// start. The run commits every 200 ms, so the other tables commit while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_resumes_where_its_last_commit_left_it() {
    let added = ["integration/api_gateway/authentication_logs", "monitoring/api_performance/request_response_times"];
    let dir = tempfile::tempdir().unwrap();
    let (input, first, reference, lake, sql, without, log) = (
        dir.path().join("in"),
        dir.path().join("first"),
        dir.path().join("reference"),
        dir.path().join("lake"),
        dir.path().join("sql"),
        dir.path().join("without"),
        dir.path().join("run.log"),
    );
    let schemas = repo("schemas");
    sluice(&["generate", "--out", input.to_str().unwrap(), "--seed", "7", "--users", "3000", "--hours", "12", "--schemas", &schemas]);
    first_halves(&input, &first);
    copy_tree(Path::new(&repo("sql")), &sql);
    copy_tree(Path::new(&repo("sql")), &without);
    for table in added {
        std::fs::remove_file(without.join(format!("{table}.sql"))).unwrap();
    }
    let run = |input: &Path, lake: &Path, sql: &Path| run_logged(input, lake, sql, "warn");
    run(&first, &reference, &sql);
    run(&input, &reference, &sql);
    run(&first, &lake, &without);

    let start = || {
        let file = std::fs::File::create(&log).unwrap();
        Running::from(Command::new(SLUICE)
            .args(["run", "--input", input.to_str().unwrap(), "--lake", lake.to_str().unwrap(), "--schemas", &schemas, "--sql", sql.to_str().unwrap()])
            .args(["--commit-interval", "200ms"])
            .env("SLUICE_LOG", "warn,buoyant_kernel=off,delta_kernel=off,sluice::runtime=info")
            .stderr(file)
            .spawn()
            .unwrap())
    };
    let mut resumed = 0;
    for _ in 0..2 {
        let mut child = start();
        // Killed at the second commit after a backfill (begun or resumed) is under way.
        let started = std::time::Instant::now();
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let under_way = text.lines().position(|l| l.contains("backfilling a new table") || l.contains("resuming the backfill"));
            if under_way.is_some_and(|at| text.lines().skip(at).filter(|l| l.contains("committed")).count() >= 2) || child.try_wait().unwrap().is_some() {
                break text;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(120), "no backfill under way:\n{text}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let _ = child.kill();
        let _ = child.wait();
        resumed += text.lines().filter(|l| l.contains("resuming the backfill")).count();
        assert!(!text.contains("backfilled: the table joins") || text.contains("backfilling a new table"), "{text}");
    }
    let stderr = run_logged(&input, &lake, &sql, "warn,buoyant_kernel=off,delta_kernel=off,sluice::runtime=info");
    resumed += stderr.lines().filter(|l| l.contains("resuming the backfill")).count();
    assert!(resumed >= 2, "the backfill was not resumed after a kill ({resumed} times):\n{stderr}");
    for table in added {
        assert_same_table(&lake, &reference, table, "backfilled through kills", "from the start").await;
    }
}

/// Produces each partition file's lines of `dir` (`<topic>/<partition>.jsonl`) to
/// its partition, `null` as a tombstone.
async fn produce_files(address: &str, dir: &Path) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::ClientConfig;
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", address).set("linger.ms", "20").create().unwrap();
    let mut deliveries = Vec::new();
    for topic in std::fs::read_dir(dir).unwrap().flatten() {
        let name = topic.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(topic.path()).unwrap().flatten() {
            let partition: i32 = file.path().file_stem().unwrap().to_string_lossy().parse().unwrap();
            let bytes = std::fs::read(file.path()).unwrap();
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let mut record = FutureRecord::<(), [u8]>::to(&name).partition(partition);
                if line != b"null" {
                    record = record.payload(line);
                }
                deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
            }
        }
    }
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// The second half of each partition file of `input` into `second` (as `first_halves`).
fn second_halves(input: &Path, second: &Path) {
    for entry in std::fs::read_dir(input).unwrap().flatten() {
        let (path, target) = (entry.path(), second.join(entry.file_name()));
        if path.is_dir() {
            second_halves(&path, &target);
        } else {
            std::fs::create_dir_all(second).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
            std::fs::write(target, lines[lines.len() / 2..].concat()).unwrap();
        }
    }
}

/// Waits until the log at `log` has a line containing `marker` after its `after`th
/// line; returns the log. The run must not end meanwhile.
fn wait_for(child: &mut std::process::Child, log: &Path, marker: &str, after: usize) -> String {
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().skip(after).any(|l| l.contains(marker)) {
            return text;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before `{marker}`:\n{text}");
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "no `{marker}` in the log:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits until the run has committed and then not committed for two seconds: it
/// has read what there was to read.
fn wait_until_quiet(child: &mut std::process::Child, log: &Path) {
    let started = std::time::Instant::now();
    let (mut commits, mut since) = (0, std::time::Instant::now());
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let now = text.lines().filter(|l| l.contains("committed")).count();
        if now != commits {
            (commits, since) = (now, std::time::Instant::now());
        } else if commits > 0 && since.elapsed() > std::time::Duration::from_secs(2) {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended:\n{text}");
        assert!(started.elapsed() < std::time::Duration::from_secs(180), "the run never went quiet:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The line number of the first line containing `marker`.
fn line_of(text: &str, marker: &str) -> usize {
    text.lines().position(|l| l.contains(marker)).unwrap_or_else(|| panic!("no `{marker}`:\n{text}"))
}

/// Through Kafka, on a lake built by a first half of traffic: two SQL files added
/// while the pipeline runs (a landing and daily windows) are backfilled, the run is
/// killed during the backfill and the restart resumes it while the second half
/// arrives; then a windowed file's aggregate changes, and the run is killed during
/// its rebuild, before the swap's commit (the old rows stay), and the next run
/// rebuilds it again and swaps. The three tables equal those of one fresh run over
/// all the traffic with the final files. (Minute windows would not: which events
/// are late depends on how the reads of partitions interleave, and a Kafka run's
/// differ from a file run's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_kafka_an_added_and_a_changed_file_land_what_a_fresh_run_lands_through_kills() {
    let (added, changed) = (["integration/api_gateway/authentication_logs", "analytics/learner/engagement_daily"], "analytics/learner/velocity_daily");
    let broker = broker::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let (input, first, second, lake, reference, sql, log) = (path("in"), path("first"), path("second"), path("lake"), path("reference"), path("sql"), path("run.log"));
    let schemas = repo("schemas");
    sluice(&["generate", "--out", input.to_str().unwrap(), "--seed", "43", "--users", "1500", "--hours", "24", "--schemas", &schemas]);
    first_halves(&input, &first);
    second_halves(&input, &second);
    copy_tree(Path::new(&repo("sql")), &sql);
    let added_sql = added.map(|table| std::fs::read_to_string(sql.join(format!("{table}.sql"))).unwrap());
    for table in added {
        std::fs::remove_file(sql.join(format!("{table}.sql"))).unwrap();
    }
    produce_files(&broker.address, &first).await;

    let start = |extra: &[&str]| {
        Running::from(Command::new(SLUICE)
            .args(["run", "--kafka", &broker.address, "--commit-interval", "200ms", "--lake", lake.to_str().unwrap(), "--schemas", &schemas, "--sql", sql.to_str().unwrap()])
            .args(extra)
            .env("SLUICE_LOG", "warn,buoyant_kernel=off,delta_kernel=off,sluice::runtime=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::options().append(true).create(true).open(&log).unwrap())
            .spawn()
            .unwrap())
    };
    let lines = || std::fs::read_to_string(&log).unwrap_or_default().lines().count();
    // The first half, read live; then the file is added and taken up on SIGHUP.
    let mut child = start(&[]);
    wait_until_quiet(&mut child, &log);
    for (table, text) in added.iter().zip(&added_sql) {
        std::fs::write(sql.join(format!("{table}.sql")), text).unwrap();
    }
    let at = lines();
    Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    let text = wait_for(&mut child, &log, "backfilling a new table", at);
    // Killed at a commit of the backfill, before it joins.
    wait_for(&mut child, &log, "committed", line_of(&text[..], "backfilling a new table") + 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let joined = |text: &str, table: &str| text.contains(&format!("joins the live stream table=\"{}\"", table.replace('/', ".")));
    // A small table joins at once; the landing's backfill is cut short.
    let cut: Vec<&str> = added.into_iter().filter(|t| !joined(&text, t)).collect();
    assert!(!cut.is_empty(), "every backfill ended before the kill: make them longer\n{text}");

    // The restart resumes it while the second half arrives.
    let at = lines();
    let mut child = start(&[]);
    produce_files(&broker.address, &second).await;
    let started = std::time::Instant::now();
    let text = loop {
        let text = wait_for(&mut child, &log, "backfilled: the table joins", at);
        let after: String = text.lines().skip(at).collect::<Vec<_>>().join("\n");
        if cut.iter().all(|t| joined(&after, t)) {
            break text;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(text.lines().skip(at).any(|l| l.contains("resuming the backfill")), "{text}");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success(), "{}", std::fs::read_to_string(&log).unwrap());

    // A changed aggregate: killed while it is rebuilt, before the swap's commit.
    let file = sql.join(format!("{changed}.sql"));
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("sum(minutes_spent) AS minutes_spent", "max(minutes_spent) AS minutes_spent")).unwrap();
    let before = stores::table_rows(&format!("file://{}/{changed}", lake.display()), &Default::default(), stores::by_processing_time).await;
    let at = lines();
    let mut child = start(&[]);
    wait_for(&mut child, &log, "rebuilding the table from the archive", at);
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    if !text.lines().skip(at).any(|l| l.contains("committed")) {
        let after = stores::table_rows(&format!("file://{}/{changed}", lake.display()), &Default::default(), stores::by_processing_time).await;
        assert_eq!(after, before, "killed before the swap: readers still see the old rows");
    }
    let at = lines();
    let mut child = start(&["--stop-when-idle", "3s"]);
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success() && text.lines().skip(at).any(|l| l.contains("rebuilding the table from the archive")), "{text}");

    // One fresh run over all the traffic with the final files (from the files: a
    // fresh Kafka run may read a partition before it knows the others, and then
    // find their first events late).
    sluice(&["run", "--input", input.to_str().unwrap(), "--lake", reference.to_str().unwrap(), "--schemas", &schemas, "--sql", sql.to_str().unwrap()]);
    for table in added.into_iter().chain([changed]) {
        assert_same_table(&lake, &reference, table, "through the kills", "in one fresh run").await;
    }
}

/// A UDF whose code changes is taken up on SIGHUP: the running pipeline builds it
/// again and swaps in the landing file that calls it, from the next message on.
/// Requests read before the reload carry the old function's value, those after the
/// new one's, and none is lost or landed twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_udf_is_taken_up_on_sighup() {
    const REQUESTS: &str = "gateway.requests";
    let broker = broker::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let (input, first, second, lake, sql, udfs, log) = (path("in"), path("first"), path("second"), path("lake"), path("sql"), path("udfs"), path("run.log"));
    let schemas = repo("schemas");
    sluice(&["generate", "--out", input.to_str().unwrap(), "--seed", "47", "--users", "60", "--hours", "2", "--schemas", &schemas]);
    for entry in std::fs::read_dir(&input).unwrap().flatten() {
        if entry.file_name() != REQUESTS {
            std::fs::remove_dir_all(entry.path()).unwrap();
        }
    }
    first_halves(&input, &first);
    second_halves(&input, &second);
    std::fs::create_dir_all(sql.join("monitoring/api_performance")).unwrap();
    std::fs::write(sql.join("monitoring/api_performance/bumped.sql"), "SELECT status, bump(status) AS bumped, _topic, _partition, _offset, _ingested_at FROM gateway.requests\n").unwrap();
    std::fs::create_dir_all(&udfs).unwrap();
    let bump = |by: i32| format!("use arroyo_udf_plugin::udf;\n\n#[udf]\nfn bump(x: i32) -> i32 {{\n    x + {by}\n}}\n");
    std::fs::write(udfs.join("bump.rs"), bump(1)).unwrap();

    let mut child = Running::from(Command::new(SLUICE)
        .args(["run", "--kafka", &broker.address, "--stop-when-idle", "10s", "--commit-interval", "200ms", "--lake", lake.to_str().unwrap()])
        .args(["--schemas", &schemas, "--sql", sql.to_str().unwrap(), "--udfs", udfs.to_str().unwrap()])
        .env("SLUICE_LOG", "warn,buoyant_kernel=off,delta_kernel=off,sluice::runtime=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap());
    produce_files(&broker.address, &first).await;
    // Everything produced so far is committed before the reload.
    let first_count: usize = std::fs::read_dir(first.join(REQUESTS)).unwrap().flatten().map(|f| std::fs::read(f.path()).unwrap().split(|b| *b == b'\n').filter(|l| !l.is_empty()).count()).sum();
    let started = std::time::Instant::now();
    let landed = || async {
        match lake.join("monitoring/api_performance/bumped/_delta_log").is_dir() {
            true => support::rows(&lake, "monitoring/api_performance/bumped").await.values().map(Vec::len).sum::<usize>(),
            false => 0,
        }
    };
    while landed().await < first_count * 9 / 10 {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "{}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    std::fs::write(udfs.join("bump.rs"), bump(2)).unwrap();
    let text = hang_up_and_wait(&mut child, &log, "SQL files read again", 1);
    let summary = text.lines().find(|l| l.contains("SQL files read again")).unwrap();
    assert!(summary.contains("changed=1"), "{text}");
    assert!(text.contains("the code of the UDF it calls changed (bump)"), "{text}");
    produce_files(&broker.address, &second).await;
    assert!(child.wait().unwrap().success(), "{}", std::fs::read_to_string(&log).unwrap());

    // Per partition, the offsets of the first half got +1, the rest +2.
    let mut boundary = std::collections::HashMap::new();
    for file in std::fs::read_dir(first.join(REQUESTS)).unwrap().flatten() {
        let partition: i32 = file.path().file_stem().unwrap().to_string_lossy().parse().unwrap();
        boundary.insert(partition, std::fs::read(file.path()).unwrap().split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as i64);
    }
    let rows = stores::table_rows(&format!("file://{}/monitoring/api_performance/bumped", lake.display()), &Default::default(), stores::by_processing_time).await;
    let (mut old, mut new) = (0, 0);
    for row in &rows {
        let (status, bumped): (i32, i32) = (field(row, "status").parse().unwrap(), field(row, "bumped").parse().unwrap());
        let (partition, offset): (i32, i64) = (field(row, "_partition").parse().unwrap(), field(row, "_offset").parse().unwrap());
        let by = if offset < boundary[&partition] { old += 1; 1 } else { new += 1; 2 };
        assert_eq!(bumped - status, by, "{row}");
    }
    let offsets: std::collections::BTreeSet<(String, String)> = rows.iter().map(|r| (field(r, "_partition").to_string(), field(r, "_offset").to_string())).collect();
    assert_eq!(offsets.len(), rows.len(), "a request landed twice");
    assert!(old > 0 && new > 0, "{old} rows before the reload, {new} after");
}
