//! `sluice serve` against clients that mean harm or do not care: statements that
//! used to abort the whole server, work that must stop when its time is up or its
//! client leaves, one user trying to take the server from the others, sockets that
//! never log in or send garbage, HTTP requests that are too big or play with
//! paths; then the SQL and wire-protocol fuzzers (`tests/serve/fuzz_sql.py`,
//! `tests/serve/fuzz_wire.py`) for `SLUICE_FUZZ_SECONDS` each (45 by default).
//!
//! Every check ends by asking the same server a plain question: it must still be
//! there and answer.

mod common;
mod served;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use served::*;

/// The request_response_times table, a few thousand rows in the demo lake.
const TIMES: &str = "monitoring.api_performance.request_response_times";

/// psql running a script from a file (a statement of megabytes does not fit in argv),
/// verbose, so that each error shows its SQLSTATE (`ERROR:  54001: ...`).
fn psql_file(served: &Served, user: &str, token: &str, sql: &str) -> Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), sql).unwrap();
    Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-h", "127.0.0.1", "-p", &served.pg.to_string(), "-U", user, "-d", "lake", "-f"])
        .arg(file.path())
        .env("PGPASSWORD", token)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("psql (postgresql-client) is installed by infra/setup.sh --tests")
}

/// The server still answers a plain question.
fn answers(served: &mut Served) {
    assert!(served.alive(), "the server died:\n{}", served.log());
    let out = served.psql("127.0.0.1", "ana", &token("ana", "analyst"), "disable", "SELECT 41 + 1");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success() && stdout.trim() == "42", "the server does not answer: {stderr}\n{}", served.log());
}

#[test]
fn statements_that_aborted_the_server_are_refused_and_those_near_the_limits_answered() {
    let dir = tempfile::tempdir().unwrap();
    let lake = demo_lake(dir.path());
    let mut served = Served::start(&lake, &["--query-timeout", "5s"]);
    let chain = |n: usize| format!("SELECT 1{}", "+1".repeat(n));
    let ors = |n: usize| format!("SELECT count(*) FROM {TIMES} WHERE {}", (0..n).map(|i| format!("route = 'r{i}'")).collect::<Vec<_>>().join(" OR "));
    let refused = [
        // The three of the report, and more of the same kind.
        (chain(2000), "54001", "nesting of about 2000 levels"),
        (ors(2000), "54001", "more than the limit of 1000"),
        (format!("SELECT '{}'", "x".repeat(4 << 20)), "54000", "this server takes at most"),
        (chain(200_000), "54001", "nesting"),
        (vec!["SELECT 1"; 3000].join(" UNION ALL "), "54001", "nesting"),
        (format!("SELECT count(*) FROM {TIMES} t0{}", (1..1500).map(|i| format!(" JOIN {TIMES} t{i} ON true")).collect::<String>()), "54001", "nesting"),
        (format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000)), "54001", "nesting"),
        (format!("SELECT 1{}", " + CASE WHEN true THEN 1 END".repeat(3000)), "54001", "nesting"),
        (format!("SELECT length('{}')", "x".repeat(100_000)), "54001", "a literal of 100000 bytes"),
        // Results that would grow far beyond the statement.
        ("SELECT length(repeat('ab', 1000000000))".to_string(), "22023", "more than the 64 MiB one call may make"),
        ("SELECT cardinality(range(1, 10000000000))".to_string(), "22023", "more than the 64 MiB one call may make"),
    ];
    let answered = [
        chain(990),
        ors(490),
        // An IN list of 100,000: flat, so admitted; kept from delta-rs's recursive predicate walk.
        format!("SELECT count(*) FROM {TIMES} WHERE route IN ({})", (0..100_000).map(|i| format!("'r{i}'")).collect::<Vec<_>>().join(",")),
        vec!["SELECT 1 AS x"; 900].join(" UNION ALL "),
        format!("SELECT {}1{}", "(".repeat(45), ")".repeat(45)),
    ];
    for (role, user) in [("learner", "u-1"), ("analyst", "ana")] {
        let token = token(user, role);
        for (sql, code, why) in &refused {
            let out = psql_file(&served, user, &token, sql);
            let (_, stderr) = text(&out);
            assert!(!out.status.success() && stderr.contains(code) && stderr.contains(why), "{role}: {}…: {stderr}", &sql[..sql.len().min(80)]);
            assert!(served.alive(), "{role}: {}… killed the server:\n{}", &sql[..sql.len().min(80)], served.log());
        }
        for sql in &answered {
            let out = psql_file(&served, user, &token, sql);
            let (_, stderr) = text(&out);
            // A learner may not read TIMES ("not found"); anything else must answer.
            let hidden = role == "learner" && sql.contains(TIMES) && stderr.contains("not found");
            assert!(out.status.success() || hidden, "{role}: {}…: {stderr}", &sql[..sql.len().min(80)]);
        }
    }
    answers(&mut served);
}

/// The server's CPU over `seconds` from now.
fn cpu_over(served: &Served, seconds: f64) -> f64 {
    let before = served.cpu_seconds();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    served.cpu_seconds() - before
}

#[test]
fn a_statement_stopped_by_its_time_limit_a_cancel_or_its_client_leaving_stops_using_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let lake = demo_lake(dir.path());
    let mut served = Served::start(&lake, &[]);
    let analyst = token("ana", "analyst");
    let cross = format!("SELECT count(*), max(a.requests + b.requests + c.requests) FROM {TIMES} a, {TIMES} b, {TIMES} c");

    // The time limit: the client hears 57014 when it is up, and the work stops with it.
    let started = Instant::now();
    let out = served.psql("127.0.0.1", "ana", &analyst, "disable", &format!("SET statement_timeout = 3000; {cross}"));
    let (_, stderr) = text(&out);
    assert!(stderr.contains("statement timeout (3000 ms)"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(6), "answered after {:?}", started.elapsed());
    let after = cpu_over(&served, 2.0);
    assert!(after < 0.3, "the server used {after:.2} s of CPU in the 2 s after the statement was stopped");

    // A CancelRequest (psql sends one on SIGINT), and a client that goes away (SIGKILL):
    // each stops the statement within a second, and its CPU with it. Other users: Ana
    // ran long, so her statements now run behind everyone's (below).
    for (signal, what, user) in [("INT", "a cancel request", "ben"), ("KILL", "the client leaving", "cy")] {
        let mut psql = Command::new("psql")
            .args(["-X", "-h", "127.0.0.1", "-p", &served.pg.to_string(), "-U", user, "-d", "lake", "-c", &cross])
            .env("PGPASSWORD", token(user, "analyst"))
            .env("PGSSLMODE", "disable")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        // The other tests run beside this one, so the statement may get well under a
        // core (0.41 s in 1 s was seen in CI); over 2 s it shows it runs.
        let busy = cpu_over(&served, 2.0);
        assert!(busy > 0.5, "the statement was running ({busy:.2} s of CPU in 2 s)");
        Command::new("kill").args([&format!("-{signal}"), &psql.id().to_string()]).status().unwrap();
        let ended = Instant::now();
        let mut stderr = String::new();
        psql.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        psql.wait().unwrap();
        if signal == "INT" {
            assert!(stderr.contains("canceling statement due to user request"), "{what}: {stderr}");
            assert!(ended.elapsed() < Duration::from_secs(2), "{what}: answered after {:?}", ended.elapsed());
        }
        std::thread::sleep(Duration::from_secs(1));
        let after = cpu_over(&served, 2.0);
        assert!(after < 0.3, "{what}: the server used {after:.2} s of CPU in 2 s, a second after it");
    }

    // Ana's statement ran past a second: her next one runs on the low-priority threads,
    // and stops there at its time limit as well.
    let heavy_before = served.thread_cpu_seconds("sluice-heavy");
    let out = served.psql("127.0.0.1", "ana", &analyst, "disable", &format!("SET statement_timeout = 3000; {cross}"));
    assert!(text(&out).1.contains("statement timeout (3000 ms)"), "{}", text(&out).1);
    let heavy = served.thread_cpu_seconds("sluice-heavy") - heavy_before;
    assert!(heavy > 0.0, "a heavy user's statement runs on the sluice-heavy threads");
    let after = cpu_over(&served, 2.0);
    assert!(after < 0.3, "a heavy user's statement: the server used {after:.2} s of CPU in the 2 s after it was stopped");
    answers(&mut served);
}

#[test]
fn one_user_cannot_take_the_server_from_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let lake = demo_lake(dir.path());
    let mut served = Served::start(&lake, &["--max-statements-per-user", "1", "--max-connections-per-user", "2"]);
    let (ana, bob) = (token("ana", "analyst"), token("bob", "analyst"));
    let cross = format!("SET statement_timeout = 8000; SELECT count(*), max(a.requests + b.requests + c.requests) FROM {TIMES} a, {TIMES} b, {TIMES} c");
    let spawn = |user: &str, token: &str, sql: &str| {
        Command::new("psql")
            .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &served.pg.to_string(), "-U", user, "-d", "lake", "-c", sql])
            .env("PGPASSWORD", token)
            .env("PGSSLMODE", "disable")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut running = spawn("ana", &ana, &cross);
    std::thread::sleep(Duration::from_secs(1));

    // Ana's second statement waits for her first, within its own time limit.
    let waiting = served.psql("127.0.0.1", "ana", &ana, "disable", "SET statement_timeout = 1000; SELECT 1");
    let (_, stderr) = text(&waiting);
    assert!(!waiting.status.success() && stderr.contains("already runs 1 statements at once"), "{stderr}");
    // Bob is not held up by Ana.
    let started = Instant::now();
    let other = served.psql("127.0.0.1", "bob", &bob, "disable", "SELECT 2");
    assert_eq!(text(&other).0.trim(), "2", "{}", text(&other).1);
    assert!(started.elapsed() < Duration::from_secs(3), "bob waited {:?}", started.elapsed());
    // Ana may hold two connections, not three.
    let mut held = Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-p", &served.pg.to_string(), "-U", "ana", "-d", "lake"])
        .env("PGPASSWORD", &ana)
        .env("PGSSLMODE", "disable")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let third = served.psql("127.0.0.1", "ana", &ana, "disable", "SELECT 3");
    let (_, stderr) = text(&third);
    assert!(!third.status.success() && stderr.contains("too many connections for user `ana`"), "{stderr}");
    let _ = held.kill();
    let _ = held.wait();
    let _ = running.kill();
    let _ = running.wait();
    answers(&mut served);
}

/// Raw TCP to the Postgres port: sends `bytes`, then reads until the server closes
/// the connection or `within` passes; what it answered, and whether it closed.
fn raw(port: u16, bytes: &[u8], within: Duration) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let _ = stream.write_all(bytes);
    let (mut got, started) = (Vec::new(), Instant::now());
    let mut buffer = [0u8; 4096];
    while started.elapsed() < within {
        match stream.read(&mut buffer) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

fn startup(user: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", "lake")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    message.extend(body);
    message
}

fn password(token: &str) -> Vec<u8> {
    let mut message = vec![b'p'];
    message.extend_from_slice(&((token.len() + 5) as u32).to_be_bytes());
    message.extend_from_slice(token.as_bytes());
    message.push(0);
    message
}

#[test]
fn connections_that_never_log_in_or_send_garbage_are_closed_and_keep_no_one_out() {
    let dir = tempfile::tempdir().unwrap();
    let lake = demo_lake(dir.path());
    let mut served = Served::start(&lake, &["--auth-timeout", "1s"]);
    let baseline = served.rss_mib();
    let pg = served.pg;
    let within = Duration::from_secs(3);
    let ssl_request = [0, 0, 0, 8, 4, 210, 22, 47];

    let (_, closed) = raw(pg, b"", within);
    assert!(closed, "a silent socket is closed after the login time");
    let (_, closed) = raw(pg, &startup("ana"), within);
    assert!(closed, "a startup without a password is closed after the login time");
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (_, closed) = raw(pg, &garbage, within);
    assert!(closed, "garbage is closed");
    let mut oversized = 20_000u32.to_be_bytes().to_vec();
    oversized.extend(std::iter::repeat_n(b'x', 100));
    let (answer, closed) = raw(pg, &oversized, within);
    assert!(closed && String::from_utf8_lossy(&answer).contains("this server takes at most 10000"), "{}", String::from_utf8_lossy(&answer));
    let (answer, closed) = raw(pg, &[ssl_request, ssl_request].concat(), within);
    assert!(closed && answer.first() == Some(&b'N'), "a second SSLRequest ends the connection after one 'N'");
    // A query frame claiming 500 MiB, after a real login: refused by its header, before any of its body.
    let mut huge = [startup("ana"), password(&token("ana", "analyst"))].concat();
    huge.push(b'Q');
    huge.extend_from_slice(&(500u32 << 20).to_be_bytes());
    huge.extend_from_slice(b"SELECT ");
    let (answer, closed) = raw(pg, &huge, within);
    assert!(closed && String::from_utf8_lossy(&answer).contains("54000"), "closed {closed}: {:?}", String::from_utf8_lossy(&answer));
    // A Bind that lies about its parameters (pgwire's decoder panics on it): that connection only.
    let mut lying = [startup("ana"), password(&token("ana", "analyst"))].concat();
    lying.extend_from_slice(b"P\x00\x00\x00\x10s\x00SELECT $1\x00\x00\x00");
    lying.extend_from_slice(b"B\x00\x00\x00\x0a\x00s\x00\x00\x00\xff\xff");
    lying.extend_from_slice(b"S\x00\x00\x00\x04");
    let (_, closed) = raw(pg, &lying, within);
    assert!(closed, "a malformed Bind ends its connection");

    // 300 silent sockets at once: a real client still gets in, and they are all closed.
    let silent: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(("127.0.0.1", pg)).unwrap()).collect();
    let started = Instant::now();
    answers(&mut served);
    assert!(started.elapsed() < Duration::from_secs(3), "a real client waited {:?} behind 300 silent sockets", started.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    for mut socket in silent {
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        assert!(matches!(socket.read(&mut [0u8; 16]), Ok(0) | Err(_)), "a silent socket is closed");
    }
    let grown = served.rss_mib() - baseline;
    assert!(grown < 200.0, "resident memory grew {grown:.0} MiB");
    answers(&mut served);
}

/// One raw HTTP request (request line and headers as given); the status and the body.
fn http_raw(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}

#[test]
fn http_bounds_headers_bodies_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let lake = demo_lake(dir.path());
    let mut served = Served::start(&lake, &[]);
    let http = served.http;
    let analyst = token("ana", "analyst");

    let (status, body) = http_get("127.0.0.1", http, "/api/v1/health", None);
    assert_eq!(status, 200);
    assert!(!body.contains(lake.to_str().unwrap()) && !body.contains("file://") && !body.contains("\"lake\""), "health names no location: {body}");

    let big_header = format!("GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "a".repeat(200 << 10));
    let (status, _) = http_raw(http, big_header.as_bytes());
    assert!(status == 431 || status == 0, "a 200 KiB header: {status}");
    let body = format!("POST /api/v1/analytics/learner HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {analyst}\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n");
    assert_eq!(http_raw(http, body.as_bytes()).0, 413, "a request body is refused before it is read");
    let chunked = "GET /api/v1/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n";
    assert_eq!(http_raw(http, chunked.as_bytes()).0, 413);
    for path in ["/static/../Cargo.toml", "/static/..%2fCargo.toml", "/static/%2e%2e%2f%2e%2e%2fCargo.toml", "//etc/passwd", "/static/app.js%00.txt", "/static/", "/%2e%2e/%2e%2e/etc/passwd"] {
        let (status, body) = http_get("127.0.0.1", http, path, None);
        assert!((400..500).contains(&status), "{path}: {status}");
        assert!(!body.contains("[workspace]") && !body.contains("root:x:0"), "{path} served a file: {body}");
    }
    for query in ["from=yesterday", "user_id=a%00b", "limit=1", "from=2026-01-02&to=2026-01-01"] {
        let (status, body) = http_get("127.0.0.1", http, &format!("/api/v1/analytics/learner?{query}"), Some(&analyst));
        assert!(status == 400 && body.contains("error"), "{query}: {status} {body}");
    }
    // A client that sends half its headers and stops is disconnected.
    let started = Instant::now();
    let (status, _) = http_raw(http, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n");
    assert!(started.elapsed() < Duration::from_secs(9), "a half-sent request held its connection {:?} (status {status})", started.elapsed());
    answers(&mut served);
}

#[test]
fn fuzzers_find_no_crash_hang_leak_or_policy_breach() {
    let seconds = std::env::var("SLUICE_FUZZ_SECONDS").unwrap_or_else(|_| "45".into());
    let seed = std::env::var("SLUICE_FUZZ_SEED").unwrap_or_else(|_| chrono::Utc::now().timestamp().to_string());
    let dir = tempfile::tempdir().unwrap();
    let lake = demo_lake(dir.path());
    let mut served = Served::start(&lake, &["--auth-timeout", "1s"]);
    let (pg, pid, lake_arg) = (served.pg.to_string(), served.pid().to_string(), lake.to_string_lossy().into_owned());
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/regressions");
    let findings = dir.path().join("findings");
    let sql = script(
        "fuzz_sql.py",
        &["--lake", &lake_arg, "--pg-port", &pg, "--secret", SECRET, "--pid", &pid, "--seconds", &seconds, "--seed", &seed,
          "--replay", regressions.to_str().unwrap(), "--save", findings.to_str().unwrap()],
    );
    let (stdout, stderr) = text(&sql);
    assert!(sql.status.success(), "fuzz_sql (seed {seed}; findings in {}):\n{stdout}\n{stderr}\n--- server log ---\n{}", findings.display(), served.log());
    let wire = script("fuzz_wire.py", &["--pg-port", &pg, "--secret", SECRET, "--pid", &pid, "--seconds", &seconds, "--seed", &seed, "--auth-timeout", "1"]);
    let (stdout, stderr) = text(&wire);
    assert!(wire.status.success(), "fuzz_wire (seed {seed}):\n{stdout}\n{stderr}\n--- server log ---\n{}", served.log());
    answers(&mut served);
}
