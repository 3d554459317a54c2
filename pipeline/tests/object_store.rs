//! The lake on object storage (contract §3): S3 (moto's server) and Azure Blob
//! (Azurite), both real servers on loopback. A run on either lands exactly the
//! tables a run on the local disk lands from the same input (which `end_to_end`
//! checks against its model); so does a run killed with SIGKILL and restarted, and
//! one whose store goes away for 30 s mid-run. A store that is missing, refuses us
//! or cannot commit atomically is one line naming the lake.

mod broker;
mod stores;
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use stores::{assert_lakes_equal, options, Server};
use support::{repo, sluice, SLUICE};

/// Generated traffic in `dir/in`, and the lake a local run makes of it in `dir/reference`.
fn traffic_and_reference(dir: &Path, hours: &str, batch: &str) -> (String, std::path::PathBuf) {
    let input = dir.join("in");
    sluice(&["generate", "--out", input.to_str().unwrap(), "--seed", "5", "--users", "200", "--hours", hours, "--schemas", &repo("schemas")]);
    let reference = dir.join("reference");
    sluice(&[
        "run", "--input", input.to_str().unwrap(), "--lake", reference.to_str().unwrap(), "--batch-size", batch,
        "--schemas", &repo("schemas"), "--sql", &repo("sql"),
    ]);
    (input.to_str().unwrap().to_string(), reference)
}

/// A run committing every batch.
fn run_args(input: &str, lake: &str, batch: &str) -> Vec<String> {
    let (schemas, sql) = (repo("schemas"), repo("sql"));
    ["run", "--input", input, "--lake", lake, "--batch-size", batch, "--commit-interval", "1ms", "--schemas", &schemas, "--sql", &sql]
        .map(String::from)
        .to_vec()
}

fn sluice_with(args: &[impl AsRef<std::ffi::OsStr>], env: &[(&str, String)]) -> Output {
    let mut command = Command::new(SLUICE);
    command.args(args).stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("sluice runs")
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_on_s3_lands_what_a_local_lake_lands() {
    let dir = tempfile::tempdir().unwrap();
    let (input, reference) = traffic_and_reference(dir.path(), "6", "2000");
    let s3 = Server::moto("lake");
    let env = s3.s3_env();
    // Configured by the environment alone, as object_store's clients are.
    let out = sluice_with(&run_args(&input, "s3://lake/platform", "2000"), &env);
    assert_ok(&out, "run on s3");
    assert_lakes_equal(&reference, "s3://lake/platform", &options(&env), stores::by_processing_time).await;

    let tables = sluice_with(&["tables", "--lake", "s3://lake/platform"], &env);
    assert_ok(&tables, "tables on s3");
    let listing = String::from_utf8_lossy(&tables.stdout);
    assert!(listing.contains("analytics.learner.engagement_daily"), "{listing}");
    let query = sluice_with(
        &["query", "--lake", "s3a://lake/platform", "--format", "csv", "SELECT count(*) AS n FROM integration.api_gateway.request_logs"],
        &env,
    );
    assert_ok(&query, "query on s3a");
    let local = sluice_with(
        &["query", "--lake", reference.to_str().unwrap(), "--format", "csv", "SELECT count(*) AS n FROM integration.api_gateway.request_logs"],
        &[],
    );
    assert_eq!(String::from_utf8_lossy(&query.stdout), String::from_utf8_lossy(&local.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_on_azure_blob_lands_what_a_local_lake_lands() {
    let dir = tempfile::tempdir().unwrap();
    let (input, reference) = traffic_and_reference(dir.path(), "6", "2000");
    let azurite = Server::azurite("lake");
    let env = azurite.azure_env();
    // This test's own reads go through object_store's emulator mode too.
    std::env::set_var("AZURITE_BLOB_STORAGE_URL", azurite.endpoint());
    let out = sluice_with(&run_args(&input, "az://lake/platform", "2000"), &env);
    assert_ok(&out, "run on azurite");
    assert_lakes_equal(&reference, "az://lake/platform", &options(&env), stores::by_processing_time).await;
    let tables = sluice_with(&["tables", "--lake", "az://lake/platform"], &env);
    assert_ok(&tables, "tables on azurite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_runs_on_s3_land_what_an_uninterrupted_run_lands() {
    let dir = tempfile::tempdir().unwrap();
    let (input, reference) = traffic_and_reference(dir.path(), "6", "200");
    let s3 = Server::moto("lake");
    let env = s3.s3_env();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let kills = 4;
    let mut killed = 0;
    for attempt in 0..3 * kills {
        if killed == kills {
            break;
        }
        let mut command = Command::new(SLUICE);
        command.args(run_args(&input, "s3://lake/killed", "200")).env("SLUICE_LOG", "warn,sluice::runtime=info");
        let log = dir.path().join(format!("run-{attempt}.log"));
        command.envs(env.iter().map(|(k, v)| (k, v))).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        let mut child = command.spawn().expect("sluice starts");
        // Killed at a random moment after one of the run's first commits, counted in
        // its log, not timed: every restart then has a checkpoint to carry on from,
        // and a fast machine does not finish the traffic before the last kill.
        let commits = rng.random_range(1..=4);
        let mut deadline = None;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "run {attempt} failed:\n{}", std::fs::read_to_string(&log).unwrap());
                break;
            }
            if deadline.is_none() && std::fs::read_to_string(&log).unwrap_or_default().matches("committed epoch").count() >= commits {
                deadline = Some(Instant::now() + Duration::from_millis(rng.random_range(0..150)));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(killed, kills, "runs finished before they could be killed: more traffic needed");
    let last = sluice_with(&run_args(&input, "s3://lake/killed", "200"), &env);
    assert_ok(&last, "the last run");
    assert!(String::from_utf8_lossy(&last.stderr).contains("carried on from the lake's checkpoint"), "the last run resumed");
    assert_lakes_equal(&reference, "s3://lake/killed", &options(&env), stores::by_processing_time).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30s_outage_of_the_s3_store_is_waited_out() {
    let dir = tempfile::tempdir().unwrap();
    let (input, reference) = traffic_and_reference(dir.path(), "12", "2000");
    let s3 = Server::moto("lake");
    let proxy = broker::Proxy::start(&format!("127.0.0.1:{}", s3.port));
    let mut env = s3.s3_env();
    env[0].1 = format!("http://{}", proxy.address);
    let metrics = format!("127.0.0.1:{}", stores::free_port());
    let mut command = Command::new(SLUICE);
    command.args(run_args(&input, "s3://lake/outage", "2000")).args(["--metrics-addr", &metrics]);
    // Its log goes to a file: a pipe nobody reads until the end could fill up and block it.
    let log = dir.path().join("outage.log");
    command.envs(env.iter().map(|(k, v)| (k, v))).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let mut child = command.spawn().expect("sluice starts");
    // The outage starts once the run has committed, however long a loaded machine takes to get there.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while try_scrape(&metrics).and_then(|m| metric(&m, "sluice_commits_total")).unwrap_or(0.0) < 1.0 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the outage: more traffic needed");
        assert!(std::time::Instant::now() < deadline, "no commit within 120 s:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.down();
    std::thread::sleep(Duration::from_secs(15));
    let during = scrape(&metrics);
    std::thread::sleep(Duration::from_secs(15));
    proxy.up();
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success() && !stderr.contains("panicked"), "the run did not survive the outage:\n{stderr}");
    assert!(stderr.contains("unreachable; retrying"), "the outage is logged:\n{stderr}");
    assert!(metric(&during, "sluice_store_unavailable") == Some(1.0), "/metrics shows the outage:\n{during}");
    assert!(metric(&during, "sluice_store_retries_total").unwrap_or(0.0) >= 1.0, "/metrics counts retries:\n{during}");
    assert_lakes_equal(&reference, "s3://lake/outage", &options(&env), stores::by_processing_time).await;
}

fn scrape(addr: &str) -> String {
    try_scrape(addr).expect("the metrics server answers")
}

fn try_scrape(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `sluice tables` or `run` against a bad store: exit 1 and one line naming the lake.
fn refused(args: &[impl AsRef<std::ffi::OsStr> + std::fmt::Debug], env: &[(&str, String)]) -> String {
    let out = sluice_with(args, env);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn bad_storage_configuration_is_one_line_naming_the_lake() {
    let s3 = Server::moto("lake");
    let env = s3.s3_env();

    let missing = refused(&["tables", "--lake", "s3://no-such-bucket/x"], &env);
    assert!(missing.contains("s3://no-such-bucket/x") && missing.contains("does not exist"), "{missing}");

    let closed = stores::free_port();
    let mut away = env.clone();
    away[0].1 = format!("http://127.0.0.1:{closed}");
    let started = Instant::now();
    let unreachable = refused(&["tables", "--lake", "s3://lake/x"], &away);
    assert!(unreachable.contains("s3://lake/x") && unreachable.contains("cannot be reached"), "{unreachable}");
    assert!(started.elapsed() < Duration::from_secs(60), "an unreachable store is reported in seconds, not minutes");

    let azurite = Server::azurite("lake");
    let secret = "d3JvbmcgYWNjb3VudCBrZXkgZm9yIGEgdGVzdA==";
    let right = sluice_with(&["tables", "--lake", "az://lake/empty"], &azurite.azure_env_with_key(stores::AZURITE_KEY));
    assert_ok(&right, "tables with the right key");
    assert!(String::from_utf8_lossy(&right.stderr).contains("no tables"), "the right key gets in");
    let wrong_key = azurite.azure_env_with_key(secret);
    let denied = refused(&["tables", "--lake", "az://lake/x"], &wrong_key);
    assert!(denied.contains("az://lake/x") && denied.contains("access denied"), "{denied}");
    assert!(!denied.contains(secret), "the key is never printed: {denied}");

    // A store that ignores If-None-Match would let two commits overwrite each other.
    let forgetful = HeaderDropper::start(s3.port);
    let mut unsafe_env = env.clone();
    unsafe_env[0].1 = format!("http://127.0.0.1:{}", forgetful.port);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let no_cas = refused(&run_args(input.to_str().unwrap(), "s3://lake/x", "100"), &unsafe_env);
    assert!(no_cas.contains("s3://lake/x") && no_cas.contains("conditional put"), "{no_cas}");

    let scheme = refused(&["tables", "--lake", "gs://lake/x"], &[]);
    assert!(scheme.contains("unknown scheme"), "{scheme}");
}

/// A proxy to an S3 server that renames the `If-None-Match` header (same length,
/// so nothing else moves): the server then overwrites on a create-if-absent put.
struct HeaderDropper {
    port: u16,
}

impl HeaderDropper {
    fn start(upstream: u16) -> HeaderDropper {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = c_read.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut chunk = buf[..n].to_vec();
                        rename(&mut chunk, b"if-none-match:", b"x-not-a-match:");
                        if s_write.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                });
            }
        });
        HeaderDropper { port }
    }
}

fn rename(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if bytes[i..i + from.len()].eq_ignore_ascii_case(from) {
            bytes[i..i + from.len()].copy_from_slice(to);
        }
        i += 1;
    }
}
