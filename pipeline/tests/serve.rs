//! `sluice serve` against real clients on loopback: psql (`postgresql-client`)
//! and psycopg 3 (`tests/serve/clients.py`, which also holds an independent model
//! of the row-level security rules over the lake read with delta-rs's Python
//! reader, and calls the analytics API), over a lake built from generated traffic.
//!
//! The Python side comes from `SLUICE_PYCLIENTS` (a python with psycopg and
//! deltalake, set by infra/test.sh from infra/pyclients.sh).

mod common;
mod served;
mod stores;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

use served::*;

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
fn psycopg_the_api_and_client_introspection_agree_with_an_independent_model_of_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let lake = demo_lake(dir.path());
    let served = Served::start(&lake, &[]);
    let (pg, http) = (served.pg.to_string(), served.http.to_string());
    let lake_arg = lake.to_string_lossy().into_owned();
    assert_clients(&["matrix", "--lake", &lake_arg, "--pg-port", &pg, "--http-port", &http, "--secret", SECRET], &served);
    assert_clients(&["refusals", "--pg-port", &pg, "--secret", SECRET], &served);
    assert_clients(&["isolation", "--pg-port", &pg, "--secret", SECRET], &served);
    assert_clients(&["introspection", "--pg-port", &pg, "--secret", SECRET, "--lake", &lake_arg], &served);
    // Last: it commits to the lake.
    assert_clients(&["repeat", "--lake", &lake_arg, "--pg-port", &pg, "--secret", SECRET], &served);
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
    assert!(!hungry.status.success() && stderr.contains("out of memory") && stderr.contains("--query-memory"), "{stderr}");

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

    // The HTTP API has no TLS of its own: a token from another machine is refused there too.
    let (status, body) = http_get(&outside, served.http, "/api/v1/analytics/learner", Some(&analyst));
    assert!(status == 401 && body.contains("unencrypted HTTP from another machine"), "{status} {body}");
    assert_eq!(http_get(&outside, served.http, "/api/v1/health", None).0, 200, "health needs no token");
    assert_eq!(http_get("127.0.0.1", served.http, "/api/v1/analytics/learner", Some(&analyst)).0, 200, "loopback is fine");
}

/// Two `sluice serve` processes over one lake, sharing nothing but the lake (how
/// serving scales): a table committed while they serve is visible to the next
/// query of each.
#[test]
fn a_table_committed_while_two_servers_serve_is_visible_to_the_next_query_of_each() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let input = dir.path().join("input");
    let made = sluice().args(["generate", "--users", "100", "--hours", "26", "--out"]).arg(&input).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let servers = [Served::start(&lake, &[]), Served::start(&lake, &[])];
    let analyst = token("ana", "analyst");
    let sql = "SELECT count(*) FROM analytics.learner.engagement_daily";
    for served in &servers {
        let before = served.psql("127.0.0.1", "ana", &analyst, "disable", sql);
        assert!(!before.status.success() && text(&before).1.contains("not found"), "{}", text(&before).1);
    }

    let run = sluice().args(["run", "--input"]).arg(&input).arg("--lake").arg(&lake).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let expected = rows(&lake, "analytics/learner/engagement_daily");
    assert!(expected > 0);
    // The table list is re-read at most a second later.
    std::thread::sleep(Duration::from_millis(1100));
    for served in &servers {
        let after = served.psql("127.0.0.1", "ana", &analyst, "disable", sql);
        let (stdout, stderr) = text(&after);
        assert!(after.status.success(), "{stderr}");
        assert_eq!(stdout.trim(), expected.to_string(), "server on port {}", served.pg);
    }
}

/// The server keeps an unnamed statement parsed on its connection, since psycopg
/// and pgjdbc send its text again with every execution: each execution must still
/// bind its own parameter and read the latest commit.
#[test]
fn an_unnamed_statement_sent_again_binds_its_parameter_and_reads_new_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (full, part, lake) = (dir.path().join("full"), dir.path().join("part"), dir.path().join("lake"));
    let made = sluice().args(["generate", "--users", "60", "--hours", "60", "--out"]).arg(&full).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let run = |lake: &Path| {
        let out = sluice().args(["run", "--input"]).arg(&part).arg("--lake").arg(lake).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    // Dead letters per topic, read with deltalake: each run appends its own.
    let per_topic = |lake: &Path| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let table = runtime.block_on(common::read_table(lake, "monitoring/integration_health/dead_letters")).unwrap();
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for row in &table.rows {
            if let Some(common::V::S(topic)) = table.get(row, "_topic") {
                *counts.entry(topic.clone()).or_default() += 1;
            }
        }
        counts
    };
    copy_lines(&full, &part, 2);
    run(&lake);
    let before = per_topic(&lake);
    assert!(before.len() >= 3, "{before:?}");

    let served = Served::start(&lake, &[]);
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/unnamed.py");
    let sql = "SELECT count(*) FROM monitoring.integration_health.dead_letters WHERE _topic = %s";
    let mut client = Command::new(common::python())
        .arg(helper)
        .args(["--port", &served.pg.to_string(), "--user", "ana", "--token", &token("ana", "analyst"), "--sql", sql])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut answers = std::io::BufRead::lines(std::io::BufReader::new(client.stdout.take().unwrap()));
    let mut stdin = client.stdin.take().unwrap();
    let mut ask = |topic: &str| {
        writeln!(stdin, "{topic}").unwrap();
        answers.next().unwrap_or_else(|| panic!("unnamed.py ended; server log:\n{}", served.log())).unwrap()
    };
    for (topic, rows) in &before {
        assert_eq!(ask(topic), rows.to_string(), "{topic}, first half");
    }
    assert_eq!(ask("no.such.topic"), "0");

    // The rest of every file: the next run appends that part's dead letters.
    copy_lines(&full, &part, 1);
    run(&lake);
    let after = per_topic(&lake);
    assert!(after.iter().any(|(topic, rows)| before.get(topic) != Some(rows)), "the second half added no dead letters");
    for (topic, rows) in &after {
        assert_eq!(ask(topic), rows.to_string(), "{topic}, after the second run");
    }
    drop(stdin);
    let _ = client.wait();
}

/// Copies every file under `from` to the same place under `to`, its first
/// 1/`fraction` of lines (the whole file again for 1: a file source carries on
/// from the line it stopped at).
fn copy_lines(from: &Path, to: &Path, fraction: usize) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_lines(&path, &target, fraction);
        } else {
            let text = std::fs::read(&path).unwrap();
            let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
            std::fs::write(&target, lines[..lines.len() / fraction].concat()).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// The dashboard, in headless Chromium
// ---------------------------------------------------------------------------

/// Where screenshots go: `$SLUICE_ARTEFACTS`, else `<target>/test-artefacts`.
fn artefacts() -> PathBuf {
    let dir = std::env::var("SLUICE_ARTEFACTS").map(PathBuf::from).unwrap_or_else(|_| {
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        target.join("test-artefacts")
    });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn chromium() -> String {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new("which").arg(name).output().is_ok_and(|o| o.status.success()) {
            return name.to_string();
        }
    }
    panic!("no chromium: .ci/run installs Debian's chromium");
}

/// The page after its scripts ran (DOM), with what the browser logged, and a screenshot
/// tall enough to hold the whole page, for a person to look at.
fn browse(served: &Served, fragment: &str, shot: &str) -> (String, String) {
    browse_at(served, fragment, shot, "1280,7200")
}

fn browse_at(served: &Served, fragment: &str, shot: &str, size: &str) -> (String, String) {
    let url = format!("http://127.0.0.1:{}/#{fragment}", served.http);
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[String]| {
        Command::new(chromium())
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"])
            .arg(format!("--window-size={size}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let dom = run(&["--dump-dom".to_string()]);
    let shot = artefacts().join(shot);
    let picture = run(&[format!("--screenshot={}", shot.display())]);
    assert!(shot.is_file(), "no screenshot: {}", String::from_utf8_lossy(&picture.stderr));
    let mut log = String::from_utf8_lossy(&dom.stderr).into_owned();
    log.push_str(&String::from_utf8_lossy(&picture.stderr));
    (String::from_utf8_lossy(&dom.stdout).into_owned(), log)
}

/// The HTML of one chart's figure.
fn figure_of<'a>(dom: &'a str, chart: &str) -> &'a str {
    let start = dom.find(&format!("id=\"chart-{chart}\"")).unwrap_or_else(|| panic!("no chart {chart} on the page"));
    let end = dom[start..].find("</figure>").map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

fn attribute<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let start = html.find(&format!("{name}=\""))? + name.len() + 2;
    Some(&html[start..start + html[start..].find('"')?])
}

fn no_page_errors(dom: &str, log: &str) {
    let errors = dom.find("id=\"errors\"").map(|i| &dom[i..i + dom[i..].find("</div>").unwrap_or(0)]).unwrap_or_default();
    assert!(errors.contains("hidden"), "the page reported errors: {errors}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE") && (l.contains("Uncaught") || l.contains("Error"))).collect();
    assert!(console.is_empty(), "console errors:\n{}", console.join("\n"));
}

#[test]
fn the_dashboard_draws_every_chart_with_the_lakes_numbers_and_a_learner_sees_only_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let lake = demo_lake(dir.path());
    let served = Served::start(&lake, &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // Independently: over the whole lake the chart draws hours, each service's worst
    // route's p95 at its worst minute of the hour. Read it for the service with the
    // highest peak (kept among the few lines drawn) in the busiest minute's hour.
    let times = runtime.block_on(common::read_table(&lake, "monitoring/api_performance/request_response_times")).unwrap();
    let (ws, svc, p95) = (times.col("window_start").unwrap(), times.col("service").unwrap(), times.col("p95_duration_ms").unwrap());
    let mut per_minute: std::collections::BTreeMap<i64, usize> = Default::default();
    for row in &times.rows {
        *per_minute.entry(row[ws].as_ts().unwrap()).or_default() += 1;
    }
    let minute = per_minute.iter().max_by_key(|(t, n)| (**n, -**t)).map(|(t, _)| *t).unwrap();
    let hour = minute.div_euclid(3_600_000_000) * 3_600_000_000;
    let peak = |service: &str| {
        times.rows.iter().filter(|r| r[svc].as_str() == Some(service)).filter_map(|r| r[p95].as_f64()).fold(f64::MIN, f64::max)
    };
    let in_hour: Vec<&Vec<common::V>> = times.rows.iter().filter(|r| r[ws].as_ts().is_some_and(|t| t.div_euclid(3_600_000_000) * 3_600_000_000 == hour)).collect();
    let service = in_hour
        .iter()
        .filter_map(|r| r[svc].as_str())
        .max_by(|a, b| peak(a).total_cmp(&peak(b)))
        .unwrap()
        .to_string();
    let expected = in_hour
        .iter()
        .filter(|r| r[svc].as_str() == Some(service.as_str()))
        .filter_map(|r| r[p95].as_f64())
        .fold(f64::MIN, f64::max);
    let at = chrono::DateTime::from_timestamp_micros(hour).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string();

    let (dom, log) = browse(&served, &format!("token={}&range=all&at={at}", token("ana", "analyst")), "dashboard-analyst.png");
    no_page_errors(&dom, &log);
    for chart in ["tables", "throughput", "lag", "bad_and_late", "dead_letter_reasons", "late_event_reasons", "api_p95", "api_errors", "breakers", "ingest_lag", "ws_delivery", "ai_tokens", "ai_spend", "external_availability", "dependency_health", "saga_outcomes"] {
        let figure = figure_of(&dom, chart);
        assert_eq!(attribute(figure, "data-state"), Some("drawn"), "{chart} drawn: {}", common::short(figure, 400));
        let source = if chart == "tables" { "sluice tables --lake" } else { "SELECT" };
        assert!(figure.contains("show SQL") && figure.contains(source), "{chart} offers its SQL");
    }
    let figure = figure_of(&dom, "api_p95");
    let shown = figure
        .split(&format!("data-series=\"{service}\">"))
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no readout for {service} at {at}: {}", common::short(figure, 600)));
    let shown: f64 = shown.parse().unwrap_or_else(|_| panic!("readout `{shown}`"));
    assert!(common::close(expected, shown, 1e-9), "{service} at {at}: page {shown}, lake {expected}");

    // The shorter ranges: quarter hours over the last day, minutes over the last hour
    // (a range ends at the table's latest time, inclusive, so one bucket more).
    for (range, most) in [("day", 24 * 4 + 1), ("hour", 60 + 1)] {
        let (dom, log) = browse(&served, &format!("token={}&range={range}", token("ana", "analyst")), &format!("dashboard-analyst-{range}.png"));
        no_page_errors(&dom, &log);
        let figure = figure_of(&dom, "api_p95");
        let points: usize = attribute(figure, "data-points").and_then(|p| p.parse().ok()).unwrap_or(0);
        assert!((2..=most).contains(&points), "{range}: {points} points, at most {most}: {}", common::short(figure, 400));
    }

    // A learner: only the learning charts, with their own rows.
    let velocity = runtime.block_on(common::read_table(&lake, "analytics/learner/velocity_daily")).unwrap();
    let (user_col, vws) = (velocity.col("user_id").unwrap(), velocity.col("window_start").unwrap());
    let learner = velocity.rows[0][user_col].as_str().unwrap().to_string();
    let days: std::collections::BTreeSet<i64> = velocity.rows.iter().filter(|r| r[user_col].as_str() == Some(learner.as_str())).map(|r| r[vws].as_ts().unwrap()).collect();
    let (dom, log) = browse(&served, &format!("token={}&range=all", token(&learner, "learner")), "dashboard-learner.png");
    let (_, phone) = browse_at(&served, &format!("token={}&range=all", token(&learner, "learner")), "dashboard-learner-phone.png", "390,1600");
    no_page_errors("<div id=\"errors\" hidden></div>", &phone);
    no_page_errors(&dom, &log);
    assert!(!dom.contains("section-platform") && !dom.contains("section-pipeline"), "a learner sees no operator charts");
    // A single day is drawn with an empty half hour each side.
    let points = if days.len() == 1 { 3 } else { days.len() };
    assert_eq!(attribute(figure_of(&dom, "velocity"), "data-points"), Some(points.to_string().as_str()), "{learner}'s days");
    for other in velocity.rows.iter().filter_map(|r| r[user_col].as_str()).filter(|u| *u != learner) {
        assert!(!dom.contains(&format!("({other})")), "another learner's id on the page: {other}");
    }
}

#[test]
fn the_dashboards_json_is_the_sql_it_shows_for_the_same_token() {
    let dir = tempfile::tempdir().unwrap();
    let lake = demo_lake(dir.path());
    let served = Served::start(&lake, &[]);
    let get = |path: &str, token: Option<&str>| {
        let (status, body) = http_get("127.0.0.1", served.http, path, token);
        (status, serde_json::from_str::<serde_json::Value>(&body).unwrap_or(serde_json::Value::Null))
    };
    assert_eq!(get("/api/v1/dashboard/charts", None).0, 401);
    assert_eq!(get("/api/v1/dashboard/charts", Some("garbage")).0, 401);
    assert_eq!(get("/api/v1/dashboard/charts?range=week", Some(&token("ana", "analyst"))).0, 400);
    assert_eq!(get("/api/v1/dashboard/charts?section=bogus", Some(&token("ana", "analyst"))).0, 400);
    let (status, body) = get("/api/v1/dashboard/charts?section=platform", Some(&token("u-2", "learner")));
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("role learner may not see the platform section"), "{body}");
    let (status, body) = get("/api/v1/dashboard/charts?section=learning", Some(&token("u-2", "learner")));
    assert_eq!(status, 200);
    assert!(body["charts"].as_array().unwrap().iter().all(|c| c["section"] == "Learning"), "{body}");

    let users = rows(&lake, "services/directory/users");
    assert!(users > 0);
    for (sub, role) in [("ana", "analyst"), ("u-1", "org_admin"), ("u-2", "learner")] {
        let token = token(sub, role);
        let (status, body) = get("/api/v1/dashboard/charts?range=all", Some(&token));
        assert_eq!(status, 200, "{role}: {body}");
        for chart in body["charts"].as_array().unwrap() {
            let sql = chart["sql"].as_str().unwrap();
            if sql.starts_with("--") {
                assert_eq!(chart["id"], "tables", "only the Delta-log table is not SQL");
                assert_eq!(chart["rows"].as_array().unwrap().len(), delta_tables(&lake), "one row per table of the lake");
                continue;
            }
            let out = served.psql("127.0.0.1", sub, &token, "disable", &format!("SELECT count(*) FROM ({sql}) AS chart"));
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "{role} {}: {stderr}", chart["id"]);
            assert_eq!(stdout.trim(), chart["rows"].as_array().unwrap().len().to_string(), "{role} {}: psql and the page agree", chart["id"]);
        }
    }
}

#[test]
fn rs256_tokens_verify_with_the_public_key_and_an_hs256_token_signed_with_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let (private, public) = (dir.path().join("private.pem"), dir.path().join("public.pem"));
    let made = Command::new("openssl").args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"]).arg(&private).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let made = Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&private).arg("-out").arg(&public).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let served = Served::start(&lake, &["--jwt-public-key-file", public.to_str().unwrap()]);
    let claims = serde_json::json!({"sub": "ana", "role": "analyst", "exp": chrono::Utc::now().timestamp() + 600});

    let signed = encode(&Header::new(Algorithm::RS256), &claims, &EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap()).unwrap();
    let out = served.psql("127.0.0.1", "ana", &signed, "disable", "SELECT 1");
    assert!(out.status.success(), "RS256: {}", text(&out).1);

    // The classic confusion: HS256 "signed" with the public key as the secret.
    let confused = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&std::fs::read(&public).unwrap()).unwrap()).unwrap();
    let out = served.psql("127.0.0.1", "ana", &confused, "disable", "SELECT 1");
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("token algorithm `HS256` is refused"), "{stderr}");
    // The server's HS256 secret is not a key here either.
    let out = served.psql("127.0.0.1", "ana", &token("ana", "analyst"), "disable", "SELECT 1");
    assert!(!out.status.success(), "an HS256 token on an RS256 server");
}

#[test]
fn a_lake_on_s3_is_served_and_each_new_commit_shows_at_the_next_query() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let made = sluice().args(["generate", "--users", "150", "--hours", "26", "--out"]).arg(&input).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let s3 = stores::Server::moto("lake");
    let env = s3.s3_env();
    let lake = "s3://lake/platform";
    let table = format!("{lake}/integration/api_gateway/request_logs");
    let served = Served::launch(lake, "127.0.0.1", &[], &env);
    let analyst = token("ana", "analyst");
    let count = || {
        let out = served.psql("127.0.0.1", "ana", &analyst, "disable", "SELECT count(*) FROM integration.api_gateway.request_logs");
        assert!(out.status.success(), "psql: {}\n{}", text(&out).1, served.log());
        text(&out).0.trim().parse::<u64>().unwrap()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let in_the_lake = || runtime.block_on(stores::table_rows(&table, &stores::options(&env), |_| false)).len() as u64;

    // Two bounded runs, the second over the same files grown by their second
    // half, with the server up throughout: each run's commits must show at the
    // next query, with no restart. Only the table asked about, without the
    // archive (every table on moto costs each commit requests).
    let sql = dir.path().join("sql/integration/api_gateway");
    std::fs::create_dir_all(&sql).unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/integration/api_gateway/request_logs.sql"), sql.join("request_logs.sql")).unwrap();
    let mut wholes = Vec::new();
    for file in std::fs::read_dir(input.join("gateway.requests")).unwrap() {
        let path = file.unwrap().path();
        let whole = std::fs::read_to_string(&path).unwrap();
        let half: String = whole.lines().take(whole.lines().count() / 2).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, half).unwrap();
        wholes.push((path, whole));
    }
    // A run, and if `asking`, committing every batch of 1,000 rows while the
    // count is asked again and again.
    let run = |name: &str, asking: bool| {
        let log = dir.path().join(name);
        let commit_interval = if asking { "1ms" } else { "1s" };
        let mut child = sluice()
            .args(["run", "--batch-size", "1000", "--commit-interval", commit_interval, "--archive-retention", "off", "--lake", lake, "--input"])
            .arg(&input)
            .arg("--sql")
            .arg(dir.path().join("sql"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut seen = Vec::new();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if asking {
                seen.push(count());
            } else {
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        assert!(status.success(), "{name}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        seen
    };

    run("first.log", false);
    // The table is new to the server: it appears within a listing's lifetime.
    std::thread::sleep(Duration::from_millis(1100));
    let first = in_the_lake();
    assert!(first > 0, "the first run committed rows");
    assert_eq!(count(), first, "served count against the lake after the first run");

    for (path, whole) in &wholes {
        std::fs::write(path, whole).unwrap();
    }
    let seen = run("second.log", true);
    let last = in_the_lake();
    assert!(last > first, "the second run committed more rows: {first} then {last}");
    assert_eq!(count(), last, "served count against the lake at the next query after the second run");
    // Queries while it committed saw the count only grow, between the two runs' ends.
    assert!(seen.windows(2).all(|w| w[0] <= w[1]) && seen.iter().all(|n| (first..=last).contains(n)), "{first}, then {seen:?}, then {last}");
}

/// pgjdbc's `key=value` observations (tests/serve/Jdbc.java).
fn jdbc(served: &Served, user: &str, token: &str) -> std::collections::BTreeMap<String, String> {
    let out = Command::new("java")
        .args(["-cp", "/usr/share/java/postgresql.jar"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/Jdbc.java"))
        .args([&served.pg.to_string(), user, token])
        .output()
        .expect("java (default-jre-headless) and pgjdbc (libpostgresql-jdbc-java) are installed by infra/setup.sh --tests");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "Jdbc.java as {user}: {stderr}\n{stdout}\n{}", served.log());
    stdout.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn pgjdbc_introspects_queries_and_cancels_as_dbeaver_and_metabase_do() {
    let dir = tempfile::tempdir().unwrap();
    let lake = demo_lake(dir.path());
    let served = Served::start(&lake, &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let engagement = runtime.block_on(common::read_table(&lake, "analytics/learner/engagement_daily")).unwrap();
    let (user_col, interactions) = (engagement.col("user_id").unwrap(), engagement.col("interactions").unwrap());
    let sum = |rows: &mut dyn Iterator<Item = &Vec<common::V>>| rows.map(|r| r[interactions].as_i64().unwrap_or(0)).sum::<i64>();

    let seen = jdbc(&served, "ana", &token("ana", "analyst"));
    assert_eq!(seen["product"], "PostgreSQL 16");
    assert!(seen["tables"].contains("analytics.learner|engagement_daily") && seen["tables"].contains("monitoring.api_performance|request_response_times"), "{}", seen["tables"]);
    for column in ["window_start:timestamptz", "date:date", "interactions:int8", "avg_latency_ms:float8", "user_id:text"] {
        assert!(seen["columns"].contains(column), "{column} in {}", seen["columns"]);
    }
    assert_eq!(seen["count"], engagement.rows.len().to_string());
    assert_eq!(seen["sum"], sum(&mut engagement.rows.iter()).to_string());
    assert_eq!(seen["labels"], "count,sum", "columns named as Postgres names them");
    assert_eq!(seen["types"], "timestamptz,date,int8,float8,text");
    assert!(seen["cancel"].starts_with("57014") && seen["cancel"].contains("user request"), "Statement.cancel(): {}", seen["cancel"]);
    assert!(seen["cancel_ms"].parse::<u64>().unwrap() < 3000, "cancelled after {} ms", seen["cancel_ms"]);
    assert!(seen["query_timeout"].starts_with("57014"), "setQueryTimeout(2): {}", seen["query_timeout"]);
    assert!(seen["query_timeout_ms"].parse::<u64>().unwrap() < 4000, "stopped after {} ms", seen["query_timeout_ms"]);
    assert!(seen["insert"].starts_with("25006"), "{}", seen["insert"]);
    assert_eq!(seen["after"], "42", "the connection goes on after a cancel and a refusal");

    let learner = engagement.rows[0][user_col].as_str().unwrap().to_string();
    let seen = jdbc(&served, &learner, &token(&learner, "learner"));
    let own: Vec<&Vec<common::V>> = engagement.rows.iter().filter(|r| r[user_col].as_str() == Some(learner.as_str())).collect();
    assert_eq!(seen["count"], own.len().to_string(), "a learner counts their own rows");
    assert_eq!(seen["own_count"], own.len().to_string(), "a prepared statement with the learner's id");
    assert_eq!(seen["sum"], sum(&mut own.into_iter()).to_string());
    assert!(!seen["tables"].contains("monitoring"), "a learner's metadata lists no analysts-only table: {}", seen["tables"]);
    assert!(seen["cancel"].starts_with("42P01"), "an analysts-only table does not exist for a learner: {}", seen["cancel"]);
}
