//! The Kafka source when the broker misbehaves: a broker that goes away for a while
//! and comes back, and topics that appear while the pipeline reads. Each test has a
//! broker of its own (Tansu, in memory), since it changes or interrupts it.
//!
//! Each compares landing tables with a run over the same traffic from files: the
//! same (`_topic`, `_partition`, `_offset`) lineage, each once, with the same columns
//! (`_ingested_at` aside).

mod broker;
mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::{assert_same_rows, repo, rows, sluice, Lineage, Row, SLUICE};

/// The landing tables: one row per valid message, with its lineage.
const LANDING: [&str; 5] = [
    "integration/api_gateway/request_logs",
    "integration/external_services/service_call_logs",
    "integration/event_bus/event_publication_logs",
    "real_time/connection_management/connection_events",
    "monitoring/integration_health/dead_letters",
];
const REQUEST_LOGS: &str = "integration/api_gateway/request_logs";
const REQUESTS: &str = "gateway.requests";

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

/// `sluice run --kafka` in the background with `extra` arguments, its stderr (with
/// the source's info log) to `log`.
fn spawn_run(brokers: &str, idle: &str, extra: &[&str], lake: &Path, log: &Path) -> Child {
    Command::new(SLUICE)
        .args(["run", "--kafka", brokers, "--stop-when-idle", idle, "--commit-interval", "200ms"])
        .args(extra)
        .args(["--lake", lake.to_str().unwrap(), "--schemas", &repo("schemas"), "--sql", &repo("sql")])
        .env("SLUICE_LOG", "warn,buoyant_kernel=off,delta_kernel=off,sluice::source=info")
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("log file"))
        .spawn()
        .expect("sluice starts")
}

/// Waits until `table` of `lake` has landed rows, failing if the run ends first.
fn wait_for_rows(child: &mut Child, lake: &Path, table: &str, log: &Path) {
    let started = Instant::now();
    while !has_parquet(&lake.join(table)) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before landing anything in {table}:\n{}", tail(log));
        assert!(started.elapsed() < Duration::from_secs(30), "nothing landed in {table} in 30 s:\n{}", tail(log));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a background run, killing it (and failing) after `limit`.
fn finish(mut child: Child, limit: Duration, log: &Path) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the run did not end within {limit:?}:\n{}", tail(log));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The end of a run's log, for failure messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Whether a data file is under `dir`.
fn has_parquet(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|d| {
        d.flatten().any(|e| {
            let path = e.path();
            path.extension().is_some_and(|x| x == "parquet") || (path.is_dir() && has_parquet(&path))
        })
    })
}

/// Generates traffic: `to` is `--out DIR` or `--kafka BROKERS`.
fn generate(to: &[&str], seed: &str, users: &str, hours: &str, schemas: &str) {
    sluice(&[&["generate"][..], to, &["--seed", seed, "--users", users, "--hours", hours, "--schemas", schemas][..]].concat());
}

/// The pipeline over generated files: what a run must land.
fn file_run(input: &Path, lake: &Path) {
    let (input, lake) = (input.to_str().unwrap(), lake.to_str().unwrap());
    sluice(&["run", "--input", input, "--lake", lake, "--schemas", &repo("schemas"), "--sql", &repo("sql")]);
}

/// All the traffic is in the broker before the run. Once the run has landed rows,
/// the broker goes away for 10 s (every connection dropped, new ones refused), then
/// comes back with its data. The run must carry on where it was and land every
/// message once.
///
/// The consumer may queue only ~1 MB ahead (`queued.max.messages.kbytes`, which
/// also bounds what the source reads ahead of the loop), so most of the traffic has
/// to come over the network after the outage rather than from what was fetched
/// before it; 24 hours of traffic, since reading ahead made 12 (36 MB) end before
/// the outage in one run of three. The run's `--stop-when-idle` (5 s) is shorter
/// than the outage: time without a broker must not count as idle.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_away_for_ten_seconds_loses_nothing() {
    let broker = broker::Broker::start_behind_proxy();
    let proxy = broker.proxy();
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, reference) = (dir.path().join("in"), dir.path().join("lake-files"));
    let started = Instant::now();
    let (seed, users, hours, schemas) = ("42", "1000", "24", repo("schemas"));
    generate(&["--out", input.to_str().unwrap()], seed, users, hours, &schemas);
    generate(&["--kafka", &broker.address], seed, users, hours, &schemas);
    file_run(&input, &reference);
    let prepared = started.elapsed();

    let lake = dir.path().join("lake-kafka");
    let log = dir.path().join("run.log");
    let run_started = Instant::now();
    let settings = [
        "-X", "queued.max.messages.kbytes=1024", "-X", "fetch.queue.backoff.ms=10",
    ];
    let mut child = spawn_run(&broker.address, "5s", &settings, &lake, &log);
    wait_for_rows(&mut child, &lake, REQUEST_LOGS, &log);
    eprintln!("rows landed {:?} into the run", run_started.elapsed());

    let connections_before = proxy.connections();
    let down_at = now_micros();
    let outage = Instant::now();
    proxy.down();
    std::thread::sleep(Duration::from_millis(100)); // for relays that were mid-write
    let before_outage = proxy.bytes_to_clients();
    let mut ended_during_outage = None;
    while outage.elapsed() < Duration::from_secs(10) {
        if ended_during_outage.is_none() {
            ended_during_outage = child.try_wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.up();
    let up_at = now_micros();
    let after_outage = proxy.bytes_to_clients();
    assert_eq!(after_outage, before_outage, "nothing is relayed while the proxy is down");
    assert!(ended_during_outage.is_none(), "the run ended during the outage ({ended_during_outage:?}):\n{}", tail(&log));

    let status = finish(child, Duration::from_secs(60), &log);
    let run_took = run_started.elapsed();
    assert!(status.success(), "the run failed after the outage:\n{}", tail(&log));
    let reconnections = proxy.connections() - connections_before;
    let resumed = proxy.bytes_to_clients() - after_outage;
    eprintln!(
        "traffic and file run in {prepared:?}; kafka run {run_took:?}; {before_outage} bytes relayed to clients before the outage, \
         {resumed} after it, over {reconnections} new connections"
    );

    for table in LANDING {
        let expected = rows(&reference, table).await;
        let actual = rows(&lake, table).await;
        assert!(!expected.is_empty(), "{table}: the file run landed nothing");
        assert_same_rows(table, &actual, &expected);
    }

    // The outage overlapped the reading: rows were read before the broker went away
    // and after it came back (a tenth at least), fetched over the wire after it.
    let landed = rows(&lake, REQUEST_LOGS).await;
    let before = landed.values().filter(|r| r[0].ingested_at < down_at).count();
    let after = landed.values().filter(|r| r[0].ingested_at > up_at).count();
    let last = landed.values().map(|r| r[0].ingested_at).max().unwrap_or(up_at);
    eprintln!(
        "{REQUEST_LOGS}: {} rows, {before} read before the outage, {after} after it, the last {:.1} s after it",
        landed.len(),
        (last - up_at) as f64 / 1e6
    );
    assert!(before > 0, "nothing was read before the outage");
    assert!(reconnections > 0, "the run never connected again after the outage:\n{}", tail(&log));
    assert!(
        after * 10 > landed.len() && resumed > 1_000_000,
        "the reading was (nearly) over before the outage ({after} of {} rows read after it; {resumed} bytes fetched after it, \
         {before_outage} before): more traffic needed",
        landed.len()
    );
}

/// A topic that appears while the pipeline runs is picked up and read from its
/// beginning. A partition added to a topic takes the same path in the source
/// (partitions are listed again every 5 s), but neither Tansu 0.6 nor librdkafka's
/// mock cluster implements CreatePartitions, so this is what can be tested here.
///
/// The run starts with every topic but `gateway.requests` on the broker; once it has
/// landed rows, the test creates `gateway.requests` (3 partitions) and produces the
/// generated requests into it, each line into its partition, in order. The run must
/// land them as the file run does: same lineage, same rows, bad ones in dead_letters.
#[tokio::test(flavor = "multi_thread")]
async fn a_topic_created_while_running_is_read() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::ClientConfig;

    let broker = broker::Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, reference) = (dir.path().join("in"), dir.path().join("lake-files"));
    let (seed, users, hours) = ("43", "150", "6");
    generate(&["--out", input.to_str().unwrap()], seed, users, hours, &repo("schemas"));
    file_run(&input, &reference);
    // Every other topic, with traffic, on the broker.
    let others = dir.path().join("schemas-without-requests");
    std::fs::create_dir_all(&others).unwrap();
    for entry in std::fs::read_dir(repo("schemas")).unwrap().flatten() {
        if entry.file_name() != format!("{REQUESTS}.toml").as_str() {
            std::fs::copy(entry.path(), others.join(entry.file_name())).unwrap();
        }
    }
    generate(&["--kafka", &broker.address], seed, users, hours, others.to_str().unwrap());

    let lake = dir.path().join("lake-kafka");
    let log = dir.path().join("run.log");
    let run_started = Instant::now();
    let mut child = spawn_run(&broker.address, "15s", &[], &lake, &log);
    wait_for_rows(&mut child, &lake, "integration/external_services/service_call_logs", &log);
    let created_at = now_micros();

    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &broker.address);
    let admin: AdminClient<DefaultClientContext> = config.create().expect("admin client");
    let results = admin
        .create_topics(&[NewTopic::new(REQUESTS, 3, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .expect("CreateTopics request");
    assert!(results.iter().all(|r| r.is_ok()), "the broker did not create {REQUESTS}: {results:?}");

    let producer: FutureProducer = config
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut deliveries = Vec::new();
    let mut produced = 0;
    for partition in 0..3 {
        let text = std::fs::read_to_string(input.join(REQUESTS).join(format!("{partition}.jsonl"))).expect("a partition's file");
        for (line, payload) in text.lines().enumerate() {
            let mut record = FutureRecord::<(), str>::to(REQUESTS).partition(partition);
            if payload != "null" {
                record = record.payload(payload);
            }
            let delivery = producer.send_result(record).map_err(|(e, _)| e).expect("queued");
            deliveries.push((partition, line as i64, delivery));
            produced += 1;
        }
    }
    for (partition, line, delivery) in deliveries {
        let delivery = delivery.await.expect("delivery report").map_err(|(e, _)| e).expect("produced");
        assert_eq!((delivery.partition, delivery.offset), (partition, line), "offsets follow the lines");
    }
    assert!(child.try_wait().unwrap().is_none(), "the run ended before {REQUESTS} was written:\n{}", tail(&log));

    let status = finish(child, Duration::from_secs(60), &log);
    eprintln!("kafka run {:?}; {produced} messages produced into the new topic", run_started.elapsed());
    assert!(status.success(), "the run failed:\n{}", tail(&log));

    let expected = rows(&reference, REQUEST_LOGS).await;
    let actual = rows(&lake, REQUEST_LOGS).await;
    assert!(!expected.is_empty(), "the file run landed no requests");
    assert_same_rows(REQUEST_LOGS, &actual, &expected);
    assert!(actual.values().all(|r| r[0].ingested_at > created_at), "requests read before their topic existed");
    let dead_letters = "monitoring/integration_health/dead_letters";
    let bad = |rows: BTreeMap<Lineage, Vec<Row>>| -> BTreeMap<Lineage, Vec<Row>> {
        rows.into_iter().filter(|((topic, _, _), _)| topic == REQUESTS).collect()
    };
    let expected = bad(rows(&reference, dead_letters).await);
    assert!(!expected.is_empty(), "the file run found no bad requests");
    assert_same_rows(&format!("{dead_letters} ({REQUESTS})"), &bad(rows(&lake, dead_letters).await), &expected);
}

/// A second pipeline started on a lake another one writes refuses at once, naming
/// the holder, and writes nothing, as does `sluice maintain`; once the first is
/// killed, a restart takes its lease over at once and carries on from its
/// checkpoint, and gives the lease up when it ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_pipeline_on_a_held_lake_refuses_and_a_killed_ones_lease_is_taken_over() {
    let broker = broker::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let (lake, log, input) = (dir.path().join("lake"), dir.path().join("first.log"), dir.path().join("in"));
    let schemas = repo("schemas");
    generate(&["--kafka", &broker.address], "53", "40", "2", &schemas);
    generate(&["--out", input.to_str().unwrap()], "53", "40", "2", &schemas);
    let mut first = spawn_run(&broker.address, "60s", &[], &lake, &log);
    wait_for_rows(&mut first, &lake, REQUEST_LOGS, &log);

    let second = Command::new(SLUICE)
        .args(["run", "--input", input.to_str().unwrap(), "--lake", lake.to_str().unwrap(), "--schemas", &schemas, "--sql", &repo("sql")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another pipeline holds the lake") && stderr.contains(&format!("process {}", first.id())), "{stderr}");
    assert!(!stderr.contains("rows written") && second.stdout.is_empty(), "the refused run read or wrote: {stderr}");
    // Nor may maintenance rewrite the files of a lake a pipeline writes.
    let maintain = Command::new(SLUICE).args(["maintain", "--lake", lake.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&maintain.stderr);
    assert!(maintain.status.code() == Some(1) && stderr.contains("another pipeline holds the lake"), "{stderr}");

    first.kill().unwrap();
    first.wait().unwrap();
    let third = Command::new(SLUICE)
        .args(["run", "--kafka", &broker.address, "--stop-when-idle", "3s", "--lake", lake.to_str().unwrap(), "--schemas", &schemas, "--sql", &repo("sql")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&third.stderr);
    assert!(third.status.success() && stderr.contains("carried on from the lake's checkpoint"), "{stderr}");
    // A run that ended gave its lease up: maintenance may run, and a run elsewhere need not wait.
    assert!(!lake.join("_sluice/sluice/lease.json").exists(), "the ended run kept its lease");
    let maintain = Command::new(SLUICE).args(["maintain", "--lake", lake.to_str().unwrap()]).output().unwrap();
    assert!(maintain.status.success(), "{}", String::from_utf8_lossy(&maintain.stderr));
}
