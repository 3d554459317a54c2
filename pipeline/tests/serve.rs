//! `sluice serve` against real clients on loopback: psql (`postgresql-client`)
//! and psycopg 3 (`tests/serve/clients.py`, which also holds an independent model
//! of the row-level security rules over the lake read with delta-rs's Python
//! reader, and calls the analytics API), over a lake built from generated traffic.
//!
//! The Python side comes from `SLUICE_PYCLIENTS` (a python with psycopg and
//! deltalake, set by infra/test.sh from infra/pyclients.sh).

mod common;

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const SECRET: &str = "serve-test-secret-0123456789";

fn sluice() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    command
}

/// A table's row count, read with deltalake's own reader.
fn rows(lake: &Path, table: &str) -> usize {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(common::read_table(lake, table)).unwrap().rows.len()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A lake from generated traffic: 200 users over 30 hours, every SQL file.
fn demo_lake(dir: &Path) -> PathBuf {
    let lake = dir.join("lake");
    let out = sluice()
        .args(["demo", "--users", "200", "--hours", "30", "--lake"])
        .arg(&lake)
        .arg("--input")
        .arg(dir.join("input"))
        .output()
        .unwrap();
    assert!(out.status.success(), "demo failed: {}", String::from_utf8_lossy(&out.stderr));
    lake
}

struct Served {
    child: Child,
    pg: u16,
    http: u16,
    log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn start(lake: &Path, extra: &[&str]) -> Served {
        Served::start_on(lake, "127.0.0.1", extra)
    }

    /// With the Postgres listener on `host` (0.0.0.0 to take non-loopback clients too).
    fn start_on(lake: &Path, host: &str, extra: &[&str]) -> Served {
        let (pg, http) = (free_port(), free_port());
        let log = lake.with_extension(format!("serve-{pg}.log"));
        let child = sluice()
            .args(["serve", "--lake"])
            .arg(lake)
            .args(["--pg-addr", &format!("{host}:{pg}"), "--http-addr", &format!("127.0.0.1:{http}")])
            .args(extra)
            .env("SLUICE_JWT_SECRET", SECRET)
            .env("RUST_LOG", "sluice=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut served = Served { child, pg, http, log };
        served.wait_listening(pg);
        served.wait_listening(http);
        served
    }

    fn wait_listening(&mut self, port: u16) {
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sluice serve exited ({status}):\n{}", self.log());
            }
            assert!(started.elapsed() < Duration::from_secs(60), "sluice serve did not listen on {port}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// psql, unaligned and tuples-only, as `user` with `token` as the password.
    fn psql(&self, host: &str, user: &str, token: &str, sslmode: &str, script: &str) -> Output {
        psql_at(host, self.pg, user, token, sslmode, script)
    }
}

fn psql_at(host: &str, port: u16, user: &str, token: &str, sslmode: &str, script: &str) -> Output {
    Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", &port.to_string(), "-U", user, "-d", "sluice"])
        .env("PGPASSWORD", token)
        .env("PGSSLMODE", sslmode)
        .env("PGCONNECT_TIMEOUT", "10")
        .arg("-c")
        .arg(script)
        .output()
        .expect("psql (postgresql-client) is installed by .ci/run")
}

fn token(sub: &str, role: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    encode(&Header::new(Algorithm::HS256), &serde_json::json!({"sub": sub, "role": role, "exp": exp}), &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn python() -> String {
    std::env::var("SLUICE_PYCLIENTS").unwrap_or_else(|_| {
        let out = Command::new("bash").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/pyclients.sh")).output().unwrap();
        assert!(out.status.success(), "infra/pyclients.sh: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string()
    })
}

fn clients(args: &[&str]) -> Output {
    Command::new(python()).arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/clients.py")).args(args).output().unwrap()
}

fn assert_clients(args: &[&str], served: &Served) {
    let out = clients(args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "clients.py {}:\n{stdout}\n{stderr}\n--- server log ---\n{}", args.join(" "), served.log());
}

/// A local address that is not loopback (for the plain-TCP refusal), if the machine has one.
fn outside_address() -> Option<String> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").or_else(|_| socket.connect("10.255.255.1:9")).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

#[test]
fn psql_lists_describes_and_queries_tables_by_their_lake_names() {
    let dir = tempfile::tempdir().unwrap();
    let lake = demo_lake(dir.path());
    let served = Served::start(&lake, &[]);
    let analyst = token("ana", "analyst");

    let listing = served.psql("127.0.0.1", "ana", &analyst, "disable", "\\dt");
    let (stdout, stderr) = text(&listing);
    assert!(listing.status.success(), "\\dt: {stderr}");
    for table in ["analytics.learner|engagement_daily", "monitoring.api_performance|request_response_times", "services.directory|users"] {
        assert!(stdout.contains(table), "\\dt lists {table}:\n{stdout}");
    }

    let described = served.psql("127.0.0.1", "ana", &analyst, "disable", "\\d \"analytics.learner\".engagement_daily");
    let (stdout, stderr) = text(&described);
    assert!(described.status.success(), "\\d: {stderr}");
    for column in ["window_start|timestamp with time zone", "date|date", "interactions|bigint", "avg_latency_ms|double precision", "user_id|text"] {
        assert!(stdout.contains(column), "\\d shows {column}:\n{stdout}");
    }

    // The same table by its three-part name and by the name \dt gives it, with the lake's row count.
    let expected = rows(&lake, "analytics/learner/engagement_daily");
    for name in ["analytics.learner.engagement_daily", "\"analytics.learner\".engagement_daily"] {
        let counted = served.psql("127.0.0.1", "ana", &analyst, "disable", &format!("SELECT count(*) FROM {name}"));
        let (stdout, stderr) = text(&counted);
        assert!(counted.status.success(), "{name}: {stderr}");
        assert_eq!(stdout.trim(), expected.to_string(), "{name}");
    }

    // A learner's catalog holds only what they may read.
    let learner = token("nobody", "learner");
    let (stdout, _) = text(&served.psql("127.0.0.1", "nobody", &learner, "disable", "\\dt"));
    assert!(stdout.contains("analytics.learner|engagement_daily"), "{stdout}");
    assert!(!stdout.contains("monitoring") && !stdout.contains("dead_letters"), "a learner sees no analysts-only table:\n{stdout}");
    let hidden = served.psql("127.0.0.1", "nobody", &learner, "disable", "SELECT count(*) FROM monitoring.integration_health.dead_letters");
    let (_, stderr) = text(&hidden);
    assert!(!hidden.status.success() && stderr.contains("not found"), "{stderr}");
}

#[test]
fn psycopg_and_the_api_agree_with_an_independent_model_of_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let lake = demo_lake(dir.path());
    let served = Served::start(&lake, &[]);
    let (pg, http) = (served.pg.to_string(), served.http.to_string());
    let lake_arg = lake.to_string_lossy().into_owned();
    assert_clients(&["matrix", "--lake", &lake_arg, "--pg-port", &pg, "--http-port", &http, "--secret", SECRET], &served);
    assert_clients(&["refusals", "--pg-port", &pg, "--secret", SECRET], &served);
    assert_clients(&["isolation", "--pg-port", &pg, "--secret", SECRET], &served);
}

#[test]
fn tokens_connections_time_and_memory_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let lake = demo_lake(dir.path());
    let served = Served::start(&lake, &["--query-timeout", "2s", "--query-memory", "2MiB", "--max-connections", "2"]);
    let analyst = token("ana", "analyst");

    // Every bad password is refused, saying why.
    let expired = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "ana", "role": "analyst", "exp": chrono::Utc::now().timestamp() - 3600}),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    for (user, password, reason) in [
        ("ana", "not-a-token".to_string(), "malformed token"),
        ("ana", expired, "token expired"),
        ("ana", token("ana", "root"), "role `root` is unknown"),
        ("someone", analyst.clone(), "is not the token's sub"),
    ] {
        let out = served.psql("127.0.0.1", user, &password, "disable", "SELECT 1");
        let (_, stderr) = text(&out);
        assert!(!out.status.success() && stderr.contains(reason), "{reason}: {stderr}");
        assert!(!stderr.contains(&password) || password.len() < 20, "the token is never echoed");
    }

    // Over the time limit: stopped with 57014.
    let slow = served.psql("127.0.0.1", "ana", &analyst, "disable", "SELECT count(*) FROM generate_series(1, 100000000000)");
    let (_, stderr) = text(&slow);
    assert!(!slow.status.success() && stderr.contains("statement timeout"), "{stderr}");

    // Over the memory limit: a clear error, and the session goes on.
    let hungry = served.psql(
        "127.0.0.1",
        "ana",
        &analyst,
        "disable",
        "SELECT user_id, array_agg(payload) FROM integration.event_bus.event_publication_logs GROUP BY user_id ORDER BY user_id",
    );
    let (_, stderr) = text(&hungry);
    assert!(!hungry.status.success() && stderr.contains("more memory than a query may use"), "{stderr}");

    // Two connections held open: a third is refused.
    let hold = || {
        let mut child = Command::new("psql")
            .args(["-X", "-h", "127.0.0.1", "-p", &served.pg.to_string(), "-U", "ana", "-d", "sluice"])
            .env("PGPASSWORD", &analyst)
            .env("PGSSLMODE", "disable")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.as_mut().unwrap().write_all(b"SELECT 1;\n").unwrap();
        child
    };
    let mut held = vec![hold(), hold()];
    std::thread::sleep(Duration::from_secs(2));
    let third = served.psql("127.0.0.1", "ana", &analyst, "disable", "SELECT 1");
    let (_, stderr) = text(&third);
    assert!(!third.status.success() && stderr.contains("too many connections"), "{stderr}");
    for child in &mut held {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_token_travels_only_over_tls_or_loopback() {
    let Some(outside) = outside_address() else {
        eprintln!("no non-loopback address on this machine: the plain-TCP refusal is not exercised");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed by .ci/run");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let served = Served::start_on(&lake, "0.0.0.0", &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let pg = served.pg;
    let analyst = token("ana", "analyst");
    let plain = psql_at(&outside, pg, "ana", &analyst, "disable", "SELECT 1");
    let (_, stderr) = text(&plain);
    assert!(!plain.status.success() && stderr.contains("unencrypted connection is refused"), "{stderr}");
    let secure = psql_at(&outside, pg, "ana", &analyst, "require", "SELECT 41 + 1");
    let (stdout, stderr) = text(&secure);
    assert!(secure.status.success(), "over TLS: {stderr}\n{}", served.log());
    assert_eq!(stdout.trim(), "42");
}

#[test]
fn a_table_committed_while_serving_is_visible_to_the_next_query() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let input = dir.path().join("input");
    let made = sluice().args(["generate", "--users", "100", "--hours", "26", "--out"]).arg(&input).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let served = Served::start(&lake, &[]);
    let analyst = token("ana", "analyst");
    let sql = "SELECT count(*) FROM analytics.learner.engagement_daily";
    let before = served.psql("127.0.0.1", "ana", &analyst, "disable", sql);
    assert!(!before.status.success() && text(&before).1.contains("not found"), "{}", text(&before).1);

    let run = sluice().args(["run", "--input"]).arg(&input).arg("--lake").arg(&lake).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let expected = rows(&lake, "analytics/learner/engagement_daily");
    assert!(expected > 0);
    // The table list is re-read at most a second later.
    std::thread::sleep(Duration::from_millis(1100));
    let after = served.psql("127.0.0.1", "ana", &analyst, "disable", sql);
    let (stdout, stderr) = text(&after);
    assert!(after.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), expected.to_string());
}
