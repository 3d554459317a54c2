//! The 17 tables of contract §3.5, computed here from the raw input: landing tables
//! by lineage, windowed tables through the watermark simulation of the parent
//! module, and `active_connections` by replaying each connection's events in event
//! time, as §3.5 defines it, whatever order they arrived in.

use super::*;

const SERVICE_ROUTING: &str = "integration/api_gateway/service_routing_data";
const PHONETIC_LOGS: &str = "integration/external_services/phonetic_analysis_api_logs";
const THIRD_PARTY_LOGS: &str = "integration/external_services/third_party_integration_logs";
const REPLAY_DATA: &str = "integration/event_bus/event_replay_data";
const INTEGRATION_ERRORS: &str = "monitoring/integration_health/integration_error_logs";
const FEEDBACK_LOGS: &str = "real_time/interaction_logs/feedback_delivery_logs";
const NOTIFICATION_LOGS: &str = "real_time/interaction_logs/notification_delivery_logs";
const ACTIVE_CONNECTIONS: &str = "real_time/connection_management/active_connections";

/// The tables this module reads besides the windowed ones of `WIN_TABLES`.
pub const PATHS: [&str; 8] = [
    SERVICE_ROUTING,
    PHONETIC_LOGS,
    THIRD_PARTY_LOGS,
    REPLAY_DATA,
    INTEGRATION_ERRORS,
    FEEDBACK_LOGS,
    NOTIFICATION_LOGS,
    ACTIVE_CONNECTIONS,
];

pub fn check(
    report: &mut Report,
    tables: &HashMap<&str, TableData>,
    input: &Input,
    sims: &[Sessions],
    run: (i64, i64),
) {
    check_landings(report, tables, input, run);
    check_external_calls(report, tables, input);
    check_health_and_gateway(report, tables, input);
    check_connections(report, tables, input);
    check_session_tables(report, tables, input, sims);
    check_active_connections(report, tables, input);
}

// ---------------------------------------------------------------------------
// Landing tables
// ---------------------------------------------------------------------------

fn check_landings(report: &mut Report, tables: &HashMap<&str, TableData>, input: &Input, run: (i64, i64)) {
    let all_fields = |fields: &'static [Fd]| -> Vec<(&'static str, DataType)> {
        let mut c: Vec<(&str, DataType)> = fields.iter().map(|f| (f.name, arrow_type(f.ty))).collect();
        c.extend(lineage_columns());
        c
    };
    let whole = |e: &Ev| -> Vec<(&'static str, V)> {
        e.file.fields.unwrap().iter().zip(&e.e.vals).map(|(f, v)| (f.name, v.clone())).collect()
    };
    let rows = |topic: &str, keep: &dyn Fn(&Ev) -> bool, cells: &dyn Fn(&Ev) -> Vec<(&'static str, V)>| {
        let mut m: HashMap<Lineage, Vec<(&str, V)>> = HashMap::new();
        for e in events(input, &[topic]).filter(|e| keep(e)) {
            m.insert(e.lineage(), cells(&e));
        }
        m
    };
    let routing_fields = ["request_id", "ts", "service", "route", "upstream_instance", "status", "duration_ms"];
    let mut routing_cols: Vec<(&str, DataType)> = routing_fields
        .iter()
        .map(|n| (*n, arrow_type(GATEWAY_REQUESTS.iter().find(|f| f.name == *n).unwrap().ty)))
        .collect();
    routing_cols.extend(lineage_columns());

    // integration_error_logs: failed calls of both topics, columns computed per branch.
    let mut error_cols: Vec<(&str, DataType)> = ["source", "call_id"].map(|c| (c, DataType::Utf8)).to_vec();
    error_cols.push(("ts", ts_utc()));
    error_cols.extend(["service", "target", "operation", "error", "correlation_id"].map(|c| (c, DataType::Utf8)));
    error_cols.extend(lineage_columns());
    let mut errors = rows(T_CALLS, &|e| !e.b("success"), &|e| {
        vec![
            ("source", V::S("service_call".into())),
            ("call_id", e.v("call_id").clone()),
            ("ts", V::Ts(e.e.ts)),
            ("service", e.v("caller").clone()),
            ("target", e.v("service").clone()),
            ("operation", e.v("operation").clone()),
            ("error", e.v("error").clone()),
            ("correlation_id", e.v("correlation_id").clone()),
        ]
    });
    errors.extend(rows(T_EXT, &|e| !e.b("success"), &|e| {
        let error = match (e.v("error"), e.v("status")) {
            (V::Null, V::I(status)) => V::S(format!("HTTP {status}")),
            (error, _) => error.clone(),
        };
        vec![
            ("source", V::S("external_call".into())),
            ("call_id", e.v("call_id").clone()),
            ("ts", V::Ts(e.e.ts)),
            ("service", e.v("service").clone()),
            ("target", e.v("provider").clone()),
            ("operation", e.v("operation").clone()),
            ("error", error),
            ("correlation_id", e.v("correlation_id").clone()),
        ]
    }));
    let no_error_text = events(input, &[T_EXT]).filter(|e| !e.b("success") && e.v("error").is_null()).count();
    assert!(no_error_text > 0, "no failed external call without its error text: `HTTP <status>` is untested");

    let provider = |p: &'static str| move |e: &Ev| e.str("provider") == p;
    let kind = |k: &'static str| move |e: &Ev| e.str("kind") == k;
    let specs = [
        (SERVICE_ROUTING, routing_cols, rows(T_GATEWAY, &|_| true, &|e| {
            routing_fields.iter().map(|n| (*n, if *n == "ts" { V::Ts(e.e.ts) } else { e.v(n).clone() })).collect()
        })),
        (PHONETIC_LOGS, all_fields(EXTERNAL_CALLS), rows(T_EXT, &provider("phonetic_analysis"), &whole)),
        (THIRD_PARTY_LOGS, all_fields(EXTERNAL_CALLS), rows(T_EXT, &provider("third_party"), &whole)),
        (REPLAY_DATA, all_fields(REPLAYS), rows(T_REPLAY, &|_| true, &whole)),
        (INTEGRATION_ERRORS, error_cols, errors),
        (FEEDBACK_LOGS, all_fields(DELIVERIES), rows(T_DELIVER, &kind("feedback"), &whole)),
        (NOTIFICATION_LOGS, all_fields(DELIVERIES), rows(T_DELIVER, &kind("notification"), &whole)),
    ];
    for (path, cols, expected) in specs {
        assert!(!expected.is_empty(), "expected no row in {path}");
        let Some(t) = table(report, tables, path) else { continue };
        check_schema(report, t, &cols, false, true);
        compare_by_lineage(report, t, &expected, run);
    }
}

// ---------------------------------------------------------------------------
// Windowed tables
// ---------------------------------------------------------------------------

fn sum(values: &[f64]) -> f64 {
    values.iter().sum()
}

fn check_external_calls(report: &mut Report, tables: &HashMap<&str, TableData>, input: &Input) {
    #[derive(Default)]
    struct Usage {
        calls: i64,
        failures: i64,
        prompt: i64,
        completion: i64,
        audio: Vec<f64>,
        cost: Vec<f64>,
        durations: Vec<f64>,
    }
    impl Usage {
        fn add(&mut self, e: &Ev) {
            self.calls += 1;
            self.failures += i64::from(!e.b("success"));
            self.prompt += e.v("prompt_tokens").as_i64().unwrap_or(0);
            self.completion += e.v("completion_tokens").as_i64().unwrap_or(0);
            self.audio.extend(e.f("audio_seconds"));
            self.cost.extend(e.f("cost_usd"));
            self.durations.push(e.f("duration_ms").unwrap());
        }
    }
    let window = |t: usize, e: &Ev| window_start(e.e.ts, WIN_TABLES[t].size);
    // `on_time` gives the topic's events: a filtered table counts its provider's.
    let usage = |t: usize, keys: &dyn Fn(&Ev) -> Vec<K>| {
        let (field, value) = WIN_TABLES[t].only.unwrap_or(("provider", ""));
        let mut acc: BTreeMap<(i64, Vec<K>), Usage> = BTreeMap::new();
        for e in on_time(input, t).filter(|e| value.is_empty() || e.str(field) == value) {
            acc.entry((window(t, &e), keys(&e))).or_default().add(&e);
        }
        acc
    };

    let expected: Expected = usage(AOU, &|e| ks(&[e.s("service"), e.s("model"), e.s("org_id")]))
        .into_iter()
        .map(|(k, u)| {
            let cells = vec![
                ("calls", Exp::Int(u.calls)),
                ("failures", Exp::Int(u.failures)),
                ("prompt_tokens", Exp::Int(u.prompt)),
                ("completion_tokens", Exp::Int(u.completion)),
                ("total_tokens", Exp::Int(u.prompt + u.completion)),
                ("cost_usd", Exp::Float(Some(sum(&u.cost)))),
                ("p95_duration_ms", Exp::Approx(p95(&u.durations))),
            ];
            (k, cells)
        })
        .collect();
    assert!(expected.keys().any(|(_, k)| k[2] == K::Null), "no AI call without an organisation");
    let metrics = [
        ("calls", I64),
        ("failures", I64),
        ("prompt_tokens", I64),
        ("completion_tokens", I64),
        ("total_tokens", I64),
        ("cost_usd", F64),
        ("p95_duration_ms", F64),
    ];
    check_windowed(report, tables, AOU, &["service", "model", "org_id"], &metrics, &expected);

    let expected: Expected = usage(SSU, &|e| ks(&[e.s("service"), e.s("operation")]))
        .into_iter()
        .map(|(k, u)| {
            let cells = vec![
                ("calls", Exp::Int(u.calls)),
                ("failures", Exp::Int(u.failures)),
                ("audio_seconds", Exp::Float(Some(sum(&u.audio)))),
                ("cost_usd", Exp::Float(Some(sum(&u.cost)))),
                ("p95_duration_ms", Exp::Approx(p95(&u.durations))),
            ];
            (k, cells)
        })
        .collect();
    let metrics = [
        ("calls", I64),
        ("failures", I64),
        ("audio_seconds", F64),
        ("cost_usd", F64),
        ("p95_duration_ms", F64),
    ];
    check_windowed(report, tables, SSU, &["service", "operation"], &metrics, &expected);

    let expected: Expected = usage(ESS, &|e| ks(&[e.s("provider")]))
        .into_iter()
        .map(|(k, u)| {
            let cells = vec![
                ("calls", Exp::Int(u.calls)),
                ("failures", Exp::Int(u.failures)),
                ("availability", Exp::Float(Some((u.calls - u.failures) as f64 / u.calls as f64))),
                ("p95_duration_ms", Exp::Approx(p95(&u.durations))),
            ];
            (k, cells)
        })
        .collect();
    let metrics = [("calls", I64), ("failures", I64), ("availability", F64), ("p95_duration_ms", F64)];
    check_windowed(report, tables, ESS, &["provider"], &metrics, &expected);
}

fn check_health_and_gateway(report: &mut Report, tables: &HashMap<&str, TableData>, input: &Input) {
    let mut acc: BTreeMap<(i64, Vec<K>), ([i64; 3], Vec<f64>)> = BTreeMap::new();
    for e in on_time(input, DHC) {
        let a = acc.entry((window_start(e.e.ts, MINUTE_US), ks(&[e.s("service"), e.s("dependency")]))).or_default();
        let status = ["healthy", "degraded", "unhealthy"].iter().position(|s| *s == e.str("status")).unwrap();
        a.0[status] += 1;
        a.1.push(e.f("latency_ms").unwrap());
    }
    let expected: Expected = acc
        .into_iter()
        .map(|(k, (n, latency))| {
            let worst = ["unhealthy", "degraded", "healthy"].into_iter().zip([n[2], n[1], 1]).find(|(_, c)| *c > 0).unwrap().0;
            let cells = vec![
                ("checks", Exp::Int(n.iter().sum())),
                ("healthy", Exp::Int(n[0])),
                ("degraded", Exp::Int(n[1])),
                ("unhealthy", Exp::Int(n[2])),
                ("p95_latency_ms", Exp::Approx(p95(&latency))),
                ("worst_status", Exp::Is(V::S(worst.into()))),
            ];
            (k, cells)
        })
        .collect();
    let metrics = [
        ("checks", I64),
        ("healthy", I64),
        ("degraded", I64),
        ("unhealthy", I64),
        ("p95_latency_ms", F64),
        ("worst_status", DataType::Utf8),
    ];
    check_windowed(report, tables, DHC, &["service", "dependency"], &metrics, &expected);

    let mut acc: BTreeMap<(i64, Vec<K>), (Vec<f64>, i64)> = BTreeMap::new();
    for e in on_time(input, POD) {
        let a = acc.entry((window_start(e.e.ts, HOUR_US), ks(&[e.s("service"), e.s("route")]))).or_default();
        a.0.push(e.f("duration_ms").unwrap());
        a.1 += e.i("bytes_out");
    }
    let expected: Expected = acc
        .into_iter()
        .map(|(k, (d, bytes))| {
            let slow = d.iter().filter(|x| **x > 100.0).count();
            let cells = vec![
                ("requests", Exp::Int(d.len() as i64)),
                ("p50_duration_ms", Exp::Approx(percentile(&d, 0.5))),
                ("p95_duration_ms", Exp::Approx(percentile(&d, 0.95))),
                ("p99_duration_ms", Exp::Approx(percentile(&d, 0.99))),
                ("slow_share", Exp::Float(Some(slow as f64 / d.len() as f64))),
                ("bytes_out", Exp::Int(bytes)),
            ];
            (k, cells)
        })
        .collect();
    let metrics = [
        ("requests", I64),
        ("p50_duration_ms", F64),
        ("p95_duration_ms", F64),
        ("p99_duration_ms", F64),
        ("slow_share", F64),
        ("bytes_out", I64),
    ];
    check_windowed(report, tables, POD, &["service", "route"], &metrics, &expected);
}

fn check_connections(report: &mut Report, tables: &HashMap<&str, TableData>, input: &Input) {
    #[derive(Default)]
    struct Hub<'a> {
        opens: i64,
        users: BTreeSet<&'a str>,
        messages: i64,
        delivery: Vec<f64>,
    }
    let mut acc: BTreeMap<(i64, Vec<K>), Hub> = BTreeMap::new();
    for e in on_time(input, SUD).filter(|e| e.str("transport") == "signalr") {
        let a = acc.entry((window_start(e.e.ts, HOUR_US), ks(&[e.s("hub")]))).or_default();
        a.opens += i64::from(e.str("action") == "open");
        a.messages += i64::from(e.str("action") == "message");
        a.users.insert(e.str("user_id"));
        a.delivery.extend(e.f("delivery_ms"));
    }
    assert!(acc.keys().any(|(_, k)| k[0] == K::Null), "no SignalR event without its hub");
    let expected: Expected = acc
        .into_iter()
        .map(|(k, h)| {
            let cells = vec![
                ("opens", Exp::Int(h.opens)),
                ("users", Exp::Int(h.users.len() as i64)),
                ("messages", Exp::Int(h.messages)),
                ("p95_delivery_ms", Exp::Approx(p95(&h.delivery))),
            ];
            (k, cells)
        })
        .collect();
    let metrics = [("opens", I64), ("users", I64), ("messages", I64), ("p95_delivery_ms", F64)];
    check_windowed(report, tables, SUD, &["hub"], &metrics, &expected);
}

// ---------------------------------------------------------------------------
// Session windows
// ---------------------------------------------------------------------------

/// A session table's on-time events per key, split where the next comes a gap or
/// more after the last; checked against what the simulation emitted.
fn split_sessions<'a>(input: &'a Input, t: usize, sims: &[Sessions]) -> Vec<(Vec<K>, Vec<Ev<'a>>)> {
    let w = &WIN_TABLES[t];
    let mut per_key: BTreeMap<Vec<Option<&str>>, Vec<Ev>> = BTreeMap::new();
    for e in on_time(input, t) {
        per_key.entry(w.session_key.iter().map(|k| e.s(k)).collect()).or_default().push(e);
    }
    let mut split = Vec::new();
    let mut summary: Vec<(String, Session)> = Vec::new();
    for (key, mut evs) in per_key {
        evs.sort_by_key(|e| e.e.ts);
        let mut current: Vec<Ev> = Vec::new();
        for e in evs {
            if current.last().is_some_and(|last| e.e.ts - last.e.ts >= w.size) {
                split.push((ks(&key), std::mem::take(&mut current)));
            }
            current.push(e);
        }
        split.push((ks(&key), current));
    }
    for (key, evs) in &split {
        let name = key.iter().map(|k| if let K::S(s) = k { s.as_str() } else { "" }).collect::<Vec<_>>().join("\u{1f}");
        summary.push((name, (evs[0].e.ts, evs[evs.len() - 1].e.ts, evs.len() as i64)));
    }
    summary.sort();
    let mut emitted = sims[t].emitted.clone();
    emitted.sort();
    assert!(summary == emitted, "{}: the sessions emitted while simulating are not the on-time events split at gaps", w.path);
    split
}

fn session_cells(t: usize, evs: &[Ev], mut cells: Vec<(&'static str, Exp)>) -> (i64, Vec<(&'static str, Exp)>) {
    let (first, last) = (evs[0].e.ts, evs[evs.len() - 1].e.ts);
    cells.insert(0, ("window_end", Exp::Is(V::Ts(last + WIN_TABLES[t].size))));
    (first, cells)
}

fn count(evs: &[Ev], field: &str, value: &str) -> Exp {
    Exp::Int(evs.iter().filter(|e| e.str(field) == value).count() as i64)
}

fn distinct(evs: &[Ev], field: &str) -> Exp {
    Exp::Int(evs.iter().map(|e| e.str(field)).collect::<BTreeSet<_>>().len() as i64)
}

fn check_session_tables(report: &mut Report, tables: &HashMap<&str, TableData>, input: &Input, sims: &[Sessions]) {
    // saga_coordination_data: the outcome is the status of the last step by ts, ties
    // broken by the higher step_index, then by the later message (partition, offset).
    let mut ties = 0;
    let mut compensated = 0;
    let expected: Expected = split_sessions(input, SAGA, sims)
        .into_iter()
        .map(|(key, evs)| {
            let last = evs.iter().max_by_key(|e| (e.e.ts, e.i("step_index"), e.file.partition, e.msg.offset)).unwrap();
            ties += usize::from(evs.iter().filter(|e| e.e.ts == last.e.ts).count() > 1);
            compensated += usize::from(last.str("status") == "compensated");
            let (first_ts, last_ts) = (evs[0].e.ts, evs[evs.len() - 1].e.ts);
            let (ws, cells) = session_cells(
                SAGA,
                &evs,
                vec![
                    ("steps", Exp::Int(evs.len() as i64)),
                    ("failed_steps", count(&evs, "status", "failed")),
                    ("compensated_steps", count(&evs, "status", "compensated")),
                    ("outcome", Exp::Is(V::S(last.str("status").into()))),
                    ("duration_ms", Exp::Float(Some((last_ts - first_ts) as f64 / 1000.0))),
                ],
            );
            ((ws, key), cells)
        })
        .collect();
    assert!(ties > 0, "no saga whose last steps tie on ts: the step_index tie-break is untested");
    assert!(compensated > 0, "no saga that ends compensating");
    let metrics = [
        ("steps", I64),
        ("failed_steps", I64),
        ("compensated_steps", I64),
        ("outcome", DataType::Utf8),
        ("duration_ms", F64),
    ];
    check_windowed(report, tables, SAGA, &["saga_id", "saga_type"], &metrics, &expected);

    let expected: Expected = split_sessions(input, SCD, sims)
        .into_iter()
        .map(|(key, evs)| {
            let delivery: Vec<f64> = evs.iter().filter_map(|e| e.f("delivery_ms")).collect();
            let (ws, cells) = session_cells(
                SCD,
                &evs,
                vec![
                    ("connections", distinct(&evs, "connection_id")),
                    ("users", distinct(&evs, "user_id")),
                    ("messages", count(&evs, "action", "message")),
                    ("p95_delivery_ms", Exp::Approx(p95(&delivery))),
                ],
            );
            ((ws, key), cells)
        })
        .collect();
    let metrics = [("connections", I64), ("users", I64), ("messages", I64), ("p95_delivery_ms", F64)];
    check_windowed(report, tables, SCD, &["session_id"], &metrics, &expected);

    let mut resumed: HashMap<Vec<K>, usize> = HashMap::new();
    let expected: Expected = split_sessions(input, CSL, sims)
        .into_iter()
        .map(|(key, evs)| {
            *resumed.entry(key.clone()).or_default() += 1;
            let minutes = (evs[evs.len() - 1].e.ts - evs[0].e.ts) as f64 / MINUTE_US as f64;
            let (ws, cells) = session_cells(
                CSL,
                &evs,
                vec![
                    ("participants", distinct(&evs, "user_id")),
                    ("edits", count(&evs, "kind", "edit")),
                    ("chats", count(&evs, "kind", "chat")),
                    ("audio", count(&evs, "kind", "audio")),
                    ("active_minutes", Exp::Float(Some(minutes))),
                ],
            );
            ((ws, key), cells)
        })
        .collect();
    assert!(resumed.values().any(|n| *n > 1), "no collaboration resumed after the gap under the same id");
    let metrics = [("participants", I64), ("edits", I64), ("chats", I64), ("audio", I64), ("active_minutes", F64)];
    check_windowed(report, tables, CSL, &["collab_session_id"], &metrics, &expected);
}

// ---------------------------------------------------------------------------
// Current state: active_connections
// ---------------------------------------------------------------------------

/// A connection's row as §3.5 defines it.
#[derive(Debug, Clone, PartialEq)]
struct Open {
    user_id: V,
    session_id: V,
    transport: V,
    hub: V,
    opened_at: Option<i64>,
    last_event_at: i64,
    messages: i64,
}

/// Every connection's events in `ts` order, a close after the other events of its
/// instant: a close removes the row, a later event starts it afresh.
fn active_connections(input: &Input) -> BTreeMap<String, Open> {
    let mut per_connection: BTreeMap<&str, Vec<Ev>> = BTreeMap::new();
    for e in events(input, &[T_CONN]) {
        per_connection.entry(e.str("connection_id")).or_default().push(e);
    }
    let mut rows = BTreeMap::new();
    for (id, mut evs) in per_connection {
        evs.sort_by_key(|e| (e.e.ts, e.str("action") == "close"));
        let mut row: Option<Open> = None;
        for e in evs {
            if e.str("action") == "close" {
                row = None;
                continue;
            }
            let r = row.get_or_insert(Open {
                user_id: V::Null,
                session_id: V::Null,
                transport: V::Null,
                hub: V::Null,
                opened_at: None,
                last_event_at: e.e.ts,
                messages: 0,
            });
            r.user_id = e.v("user_id").clone();
            r.session_id = e.v("session_id").clone();
            r.transport = e.v("transport").clone();
            if !e.v("hub").is_null() {
                r.hub = e.v("hub").clone();
            }
            if e.str("action") == "open" && r.opened_at.is_none() {
                r.opened_at = Some(e.e.ts);
            }
            r.last_event_at = e.e.ts;
            r.messages += i64::from(e.str("action") == "message");
        }
        if let Some(r) = row {
            rows.insert(id.to_string(), r);
        }
    }
    rows
}

fn check_active_connections(report: &mut Report, tables: &HashMap<&str, TableData>, input: &Input) {
    let expected = active_connections(input);
    for (id, want) in [
        ("c-edge-reopened", Some((None, 1, V::Null))),
        ("c-edge-disorder", Some((Some(0), 2, V::S("learningHub".into())))),
        ("c-edge-close-ties", None),
        ("c-edge-close-first", None),
    ] {
        let got = expected.get(id).map(|r| (r.opened_at.map(|_| 0), r.messages, r.hub.clone()));
        assert_eq!(got, want, "the model's row of {id}");
    }
    let Some(t) = table(report, tables, ACTIVE_CONNECTIONS) else { return };
    let cols = [
        ("connection_id", DataType::Utf8),
        ("user_id", DataType::Utf8),
        ("session_id", DataType::Utf8),
        ("transport", DataType::Utf8),
        ("hub", DataType::Utf8),
        ("opened_at", ts_utc()),
        ("last_event_at", ts_utc()),
        ("messages", I64),
    ];
    check_schema(report, t, &cols, false, true);
    let mut seen = BTreeSet::new();
    for row in &t.rows {
        let Some(id) = t.get(row, "connection_id").and_then(V::as_str) else {
            report.diff(ACTIVE_CONNECTIONS, format!("row without connection_id: {}", t.describe_row(row)));
            continue;
        };
        if !seen.insert(id.to_string()) {
            report.diff(ACTIVE_CONNECTIONS, format!("{id}: more than one row"));
            continue;
        }
        let Some(want) = expected.get(id) else {
            report.diff(ACTIVE_CONNECTIONS, format!("{id}: closed or unknown, yet a row: {}", t.describe_row(row)));
            continue;
        };
        let cells = [
            ("user_id", want.user_id.clone()),
            ("session_id", want.session_id.clone()),
            ("transport", want.transport.clone()),
            ("hub", want.hub.clone()),
            ("opened_at", want.opened_at.map_or(V::Null, V::Ts)),
            ("last_event_at", V::Ts(want.last_event_at)),
            ("messages", V::I(want.messages)),
        ];
        for (c, v) in cells {
            if let Some(a) = t.get(row, c) {
                if let Err(why) = check_cell(&Exp::Is(v), a) {
                    report.diff(ACTIVE_CONNECTIONS, format!("{id}: column `{c}`: {why}"));
                }
            }
        }
    }
    for id in expected.keys().filter(|id| !seen.contains(*id)) {
        report.diff(ACTIVE_CONNECTIONS, format!("{id}: open, yet no row"));
    }
    eprintln!("end_to_end: {ACTIVE_CONNECTIONS}: {} open connections expected", expected.len());
}

/// Connections whose events arrive out of order around a close, appended to the last
/// partition of `realtime.connections` in this order (arrival), a second apart in
/// event time from just after the partition's last event.
pub fn append_cases(in_dir: &Path) {
    let files = list_files(in_dir);
    let (_, _, path) = files.iter().rfind(|f| f.0 == T_CONN).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let last = split_lines(&bytes)
        .into_iter()
        .filter_map(|l| match classify_line(T_CONN, l).1 {
            Kind::Event(e) => Some(e.ts),
            _ => None,
        })
        .max()
        .unwrap();
    let t0 = window_start(last, 1_000_000) + 1_000_000;
    // (connection, action, seconds after t0, hub)
    let cases: [(&str, &str, i64, Option<&str>); 17] = [
        // A close, then older and same-instant events (dropped), then a later one:
        // the row starts afresh without the old open, hub or messages.
        ("c-edge-reopened", "open", 0, Some("chatHub")),
        ("c-edge-reopened", "message", 1, Some("chatHub")),
        ("c-edge-reopened", "close", 3, Some("chatHub")),
        ("c-edge-reopened", "message", 2, Some("chatHub")),
        ("c-edge-reopened", "message", 3, Some("chatHub")),
        ("c-edge-reopened", "message", 10, None),
        // Out of order within the allowance, never closed.
        ("c-edge-disorder", "message", 3, None),
        ("c-edge-disorder", "open", 0, Some("learningHub")),
        ("c-edge-disorder", "message", 2, None),
        // A message of the close's instant: the close comes after it.
        ("c-edge-close-ties", "open", 0, Some("chatHub")),
        ("c-edge-close-ties", "close", 1, Some("chatHub")),
        ("c-edge-close-ties", "message", 1, Some("chatHub")),
        // The close read first, the events it ends after it.
        ("c-edge-close-first", "close", 4, None),
        ("c-edge-close-first", "open", 0, None),
        ("c-edge-close-first", "message", 1, None),
        ("c-edge-close-first", "message", 4, None),
        ("c-edge-close-first", "message", 2, None),
    ];
    let lines: Vec<Vec<u8>> = cases
        .iter()
        .enumerate()
        .map(|(i, (id, action, s, hub))| {
            let ts = fmt_rfc3339(t0 + s * 1_000_000, 0, "", 'T', 'Z');
            let mut o = json!({
                "event_id": format!("edge-{T_CONN}-{i}"), "ts": ts, "connection_id": id,
                "user_id": "u-1", "session_id": format!("s-{id}"), "transport": "signalr", "action": action,
            });
            if let Some(hub) = hub {
                o["hub"] = json!(hub);
            }
            match *action {
                "open" => o["setup_ms"] = json!(12.5),
                "message" => o["delivery_ms"] = json!(8.25),
                _ => {}
            }
            serde_json::to_vec(&o).unwrap()
        })
        .collect();
    append_lines(path, &lines);
    append_late_ai_call(&files);
}

/// An Azure OpenAI call two hours late, so that a filtered table has a late event.
fn append_late_ai_call(files: &[(String, i32, PathBuf)]) {
    let (_, _, path) = files.iter().rfind(|f| f.0 == T_EXT).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let valid: Vec<(i64, Map<String, Value>)> = split_lines(&bytes)
        .into_iter()
        .filter(|l| matches!(classify_line(T_EXT, l).1, Kind::Event(_)))
        .filter_map(|l| serde_json::from_slice::<Map<String, Value>>(l).ok())
        .filter_map(|o| Some((parse_rfc3339_us(o.get("ts")?.as_str()?)?, o)))
        .collect();
    let last = valid.iter().map(|(ts, _)| *ts).max().unwrap();
    let template = &valid.iter().find(|(_, o)| o["provider"] == "azure_openai").expect("an Azure OpenAI call").1;
    let ts = fmt_rfc3339(window_start(last, 1_000_000) - 2 * HOUR_US, 0, "", 'T', 'Z');
    let late = set(template, &[("call_id", json!("edge-late-ai-call")), ("ts", json!(ts))]);
    append_lines(path, &[line(&late)]);
}
