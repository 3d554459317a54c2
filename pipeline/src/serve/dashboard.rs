//! The lake at a glance: a page served by `sluice serve` at `/`, whose every
//! chart is one SQL query over the lake run in the caller's own session, so the
//! page, psql and the REST API agree for the same token, row-level security
//! included. Each chart's SQL is returned with its rows, runnable as is in psql.
//!
//! The page is static (`dashboard/` at the repository root: our HTML, CSS and
//! JavaScript, embedded at build time) and draws with uPlot, vendored in
//! `dashboard/vendor` and embedded too: nothing comes from a CDN or needs npm,
//! so the page works offline and from a plain `cargo build`.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sluice_gate::params::Range;
use sluice_gate::token::Role;

use super::http::{authenticate, to_json, Api, Failure};
use super::session::Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A time series: the first column is the time, an optional `series` column
    /// splits lines, every other column is a value.
    Lines,
    /// Rows as a table.
    Table,
}

/// Whose data a learning chart shows: the id filled into `{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    None,
    User,
    Trainer,
    Org,
}

struct Chart {
    id: &'static str,
    section: &'static str,
    title: &'static str,
    kind: Kind,
    roles: &'static [Role],
    subject: Subject,
    /// The table and time column the range picker restricts.
    table: &'static str,
    time: &'static str,
    /// `{table}`, `{range}` and `{id}` are filled in.
    sql: &'static str,
    unit: &'static str,
    /// A target line (an SLO), in the chart's unit.
    target: Option<f64>,
}

const ANALYST: &[Role] = &[Role::Analyst];
const EVERYONE: &[Role] = &[Role::Learner, Role::Trainer, Role::OrgAdmin, Role::Analyst];
const TRAINERS: &[Role] = &[Role::Trainer, Role::OrgAdmin, Role::Analyst];
const ADMINS: &[Role] = &[Role::OrgAdmin, Role::Analyst];

const CHARTS: &[Chart] = &[
    Chart {
        id: "throughput",
        section: "Pipeline",
        title: "Records per second, per topic",
        kind: Kind::Lines,
        roles: ANALYST,
        subject: Subject::None,
        table: "monitoring.integration_health.pipeline_throughput",
        time: "window_start",
        sql: "SELECT window_start, source_topic AS series, records / 60.0 AS records_per_s FROM {table} WHERE {range} ORDER BY 1, 2",
        unit: "records/s",
        target: None,
    },
    Chart {
        id: "lag",
        section: "Pipeline",
        title: "Most lag behind event time, per topic",
        kind: Kind::Lines,
        roles: ANALYST,
        subject: Subject::None,
        table: "monitoring.integration_health.pipeline_throughput",
        time: "window_start",
        sql: "SELECT window_start, source_topic AS series, max_lag_ms FROM {table} WHERE {range} ORDER BY 1, 2",
        unit: "ms",
        target: None,
    },
    Chart {
        id: "bad_and_late",
        section: "Pipeline",
        title: "Dead letters and late events per minute",
        kind: Kind::Lines,
        roles: ANALYST,
        subject: Subject::None,
        table: "monitoring.integration_health.pipeline_throughput",
        time: "window_start",
        sql: "SELECT window_start, sum(bad_records) AS dead_letters, sum(late_records) AS late_events FROM {table} WHERE {range} GROUP BY 1 ORDER BY 1",
        unit: "per minute",
        target: None,
    },
    Chart {
        id: "dead_letter_reasons",
        section: "Pipeline",
        title: "Latest dead letters",
        kind: Kind::Table,
        roles: ANALYST,
        subject: Subject::None,
        table: "monitoring.integration_health.dead_letters",
        time: "_ingested_at",
        sql: "SELECT _ingested_at, _topic, _partition, _offset, error FROM {table} WHERE {range} ORDER BY _ingested_at DESC, _topic, _partition, _offset LIMIT 10",
        unit: "",
        target: None,
    },
    Chart {
        id: "late_event_reasons",
        section: "Pipeline",
        title: "Latest late events",
        kind: Kind::Table,
        roles: ANALYST,
        subject: Subject::None,
        table: "monitoring.integration_health.late_events",
        time: "_ingested_at",
        sql: "SELECT _ingested_at, _topic, \"table\", ts, watermark FROM {table} WHERE {range} ORDER BY _ingested_at DESC, _topic, _partition, _offset LIMIT 10",
        unit: "",
        target: None,
    },
    Chart {
        id: "api_p95",
        section: "Platform",
        title: "API p95 latency per service (worst route), against the 100 ms SLO",
        kind: Kind::Lines,
        roles: ANALYST,
        subject: Subject::None,
        table: "monitoring.api_performance.request_response_times",
        time: "window_start",
        sql: "SELECT {bucket} AS window_start, service AS series, max(p95_duration_ms) AS p95_ms FROM {table} WHERE {range} GROUP BY 1, 2 ORDER BY 1, 2",
        unit: "ms",
        target: Some(100.0),
    },
    Chart {
        id: "api_errors",
        section: "Platform",
        title: "Error rate per service (4xx and 5xx over requests)",
        kind: Kind::Lines,
        roles: ANALYST,
        subject: Subject::None,
        table: "monitoring.api_performance.request_response_times",
        time: "window_start",
        sql: "SELECT {bucket} AS window_start, service AS series, sum(errors_4xx + errors_5xx) * 1.0 / sum(requests) AS error_rate FROM {table} WHERE {range} GROUP BY 1, 2 ORDER BY 1, 2",
        unit: "share",
        target: None,
    },
    Chart {
        id: "breakers",
        section: "Platform",
        title: "Calls through an open circuit breaker, per service",
        kind: Kind::Lines,
        roles: ANALYST,
        subject: Subject::None,
        table: "monitoring.api_performance.circuit_breaker_logs",
        time: "window_start",
        sql: "SELECT {bucket} AS window_start, service AS series, sum(CASE WHEN breaker_state = 'OPEN' THEN calls ELSE 0 END) * 1.0 / sum(calls) AS open_share FROM {table} WHERE {range} GROUP BY 1, 2 ORDER BY 1, 2",
        unit: "share",
        target: None,
    },
    Chart {
        id: "ingest_lag",
        section: "Platform",
        title: "Event-bus ingest lag p95, per event type",
        kind: Kind::Lines,
        roles: ANALYST,
        subject: Subject::None,
        table: "integration.event_bus.event_processing_logs",
        time: "window_start",
        sql: "SELECT window_start, event_type AS series, p95_ingest_lag_ms FROM {table} WHERE {range} ORDER BY 1, 2",
        unit: "ms",
        target: None,
    },
    Chart {
        id: "ws_delivery",
        section: "Platform",
        title: "Websocket delivery p95 (worst in each bucket), against 50 ms",
        kind: Kind::Lines,
        roles: ANALYST,
        subject: Subject::None,
        table: "real_time.connection_management.websocket_performance",
        time: "window_start",
        sql: "SELECT {bucket} AS window_start, transport AS series, max(p95_delivery_ms) AS p95_delivery_ms FROM {table} WHERE {range} GROUP BY 1, 2 ORDER BY 1, 2",
        unit: "ms",
        target: Some(50.0),
    },
    Chart {
        id: "ai_tokens",
        section: "Platform",
        title: "Azure OpenAI tokens per hour, per model",
        kind: Kind::Lines,
        roles: ANALYST,
        subject: Subject::None,
        table: "integration.external_services.azure_openai_usage",
        time: "window_start",
        sql: "SELECT window_start, coalesce(model, '(none)') AS series, sum(total_tokens) AS tokens FROM {table} WHERE {range} GROUP BY 1, 2 ORDER BY 1, 2",
        unit: "tokens",
        target: None,
    },
    Chart {
        id: "ai_spend",
        section: "Platform",
        title: "AI spend and failed calls per hour (Azure OpenAI and Speech)",
        kind: Kind::Lines,
        roles: ANALYST,
        subject: Subject::None,
        table: "integration.external_services.azure_openai_usage",
        time: "window_start",
        sql: "SELECT window_start, sum(cost_usd) AS cost_usd, sum(failures) AS failed_calls FROM (SELECT window_start, cost_usd, failures FROM {table} UNION ALL SELECT window_start, cost_usd, failures FROM integration.external_services.speech_service_usage) AS usage WHERE {range} GROUP BY 1 ORDER BY 1",
        unit: "USD, calls",
        target: None,
    },
    Chart {
        id: "external_availability",
        section: "Platform",
        title: "Availability of external services (calls that succeed)",
        kind: Kind::Lines,
        roles: ANALYST,
        subject: Subject::None,
        table: "monitoring.integration_health.external_service_status",
        time: "window_start",
        sql: "SELECT {bucket} AS window_start, provider AS series, sum(calls - failures) * 1.0 / sum(calls) AS availability FROM {table} WHERE {range} GROUP BY 1, 2 ORDER BY 1, 2",
        unit: "share",
        target: None,
    },
    Chart {
        id: "dependency_health",
        section: "Platform",
        title: "Dependency checks not healthy, per service and dependency",
        kind: Kind::Lines,
        roles: ANALYST,
        subject: Subject::None,
        table: "monitoring.integration_health.dependency_health_checks",
        time: "window_start",
        sql: "SELECT {bucket} AS window_start, service || ' → ' || dependency AS series, sum(degraded + unhealthy) * 1.0 / sum(checks) AS not_healthy FROM {table} WHERE {range} GROUP BY 1, 2 ORDER BY 1, 2",
        unit: "share",
        target: None,
    },
    Chart {
        id: "saga_outcomes",
        section: "Platform",
        title: "Saga runs by outcome",
        kind: Kind::Lines,
        roles: ANALYST,
        subject: Subject::None,
        table: "integration.event_bus.saga_coordination_data",
        time: "window_start",
        sql: "SELECT {bucket} AS window_start, outcome AS series, count(*) AS runs FROM {table} WHERE {range} GROUP BY 1, 2 ORDER BY 1, 2",
        unit: "runs",
        target: None,
    },
    Chart {
        id: "velocity",
        section: "Learning",
        title: "Learning velocity: topics completed and minutes spent per day",
        kind: Kind::Lines,
        roles: EVERYONE,
        subject: Subject::User,
        table: "analytics.learner.velocity_daily",
        time: "window_start",
        sql: "SELECT window_start, sum(topics_completed) AS topics_completed, sum(minutes_spent) AS minutes_spent FROM {table} WHERE user_id = {id} AND {range} GROUP BY 1 ORDER BY 1",
        unit: "per day",
        target: None,
    },
    Chart {
        id: "engagement",
        section: "Learning",
        title: "Engagement: interactions and sessions per day",
        kind: Kind::Lines,
        roles: EVERYONE,
        subject: Subject::User,
        table: "analytics.learner.engagement_daily",
        time: "window_start",
        sql: "SELECT window_start, sum(interactions) AS interactions, sum(sessions) AS sessions FROM {table} WHERE user_id = {id} AND {range} GROUP BY 1 ORDER BY 1",
        unit: "per day",
        target: None,
    },
    Chart {
        id: "mastery",
        section: "Learning",
        title: "Mastery per skill",
        kind: Kind::Table,
        roles: EVERYONE,
        subject: Subject::User,
        table: "analytics.learner.mastery_daily",
        time: "window_start",
        sql: "SELECT skill_id, sum(attempts) AS attempts, sum(passes) AS passes, max(best_score) AS best_score, avg(mastery) AS mastery FROM {table} WHERE user_id = {id} AND {range} GROUP BY skill_id ORDER BY skill_id",
        unit: "",
        target: None,
    },
    Chart {
        id: "skill_gaps",
        section: "Learning",
        title: "Skill gaps (required level above the best score)",
        kind: Kind::Table,
        roles: EVERYONE,
        subject: Subject::User,
        table: "analytics.learner.skill_gaps_daily",
        time: "window_start",
        sql: "SELECT skill_id, max(required_level) AS required_level, max(best_score) AS best_score, max(gap) AS gap FROM {table} WHERE user_id = {id} AND {range} GROUP BY skill_id ORDER BY gap DESC, skill_id",
        unit: "",
        target: None,
    },
    Chart {
        id: "feedback_deliveries",
        section: "Learning",
        title: "Latest feedback deliveries",
        kind: Kind::Table,
        roles: EVERYONE,
        subject: Subject::User,
        table: "real_time.interaction_logs.feedback_delivery_logs",
        time: "ts",
        sql: "SELECT ts, source_service, channel, status, latency_ms, error FROM {table} WHERE user_id = {id} AND {range} ORDER BY ts DESC, delivery_id LIMIT 10",
        unit: "",
        target: None,
    },
    Chart {
        id: "notification_deliveries",
        section: "Learning",
        title: "Latest notifications",
        kind: Kind::Table,
        roles: EVERYONE,
        subject: Subject::User,
        table: "real_time.interaction_logs.notification_delivery_logs",
        time: "ts",
        sql: "SELECT ts, source_service, channel, status, latency_ms, error FROM {table} WHERE user_id = {id} AND {range} ORDER BY ts DESC, delivery_id LIMIT 10",
        unit: "",
        target: None,
    },
    Chart {
        id: "students",
        section: "Learning",
        title: "A trainer's students: active, topics completed, average score per day",
        kind: Kind::Lines,
        roles: TRAINERS,
        subject: Subject::Trainer,
        table: "analytics.trainer.student_progress_daily",
        time: "window_start",
        sql: "SELECT window_start, students_active, topics_completed, avg_score FROM {table} WHERE trainer_id = {id} AND {range} ORDER BY 1",
        unit: "per day",
        target: None,
    },
    Chart {
        id: "kpis",
        section: "Learning",
        title: "Organisation KPIs: active learners, topics completed, assessments per day",
        kind: Kind::Lines,
        roles: ADMINS,
        subject: Subject::Org,
        table: "analytics.organization.kpis_daily",
        time: "window_start",
        sql: "SELECT window_start, active_learners, topics_completed, assessments, active_enrollments FROM {table} WHERE org_id = {id} AND {range} ORDER BY 1",
        unit: "per day",
        target: None,
    },
];

/// A SQL string literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The range picker's choice as a condition on the table's time column, relative
/// to the table's latest time (a lake of last month's traffic still shows its last hour).
fn range_condition(range: Range, table: &str, time: &str) -> String {
    let span = match range {
        Range::All => return "TRUE".into(),
        Range::Hour => "1 hour",
        Range::Day => "1 day",
    };
    format!("{time} >= (SELECT max({time}) FROM {table}) - INTERVAL '{span}'")
}

/// The time bucket a per-minute chart is drawn in: minutes over an hour, a
/// quarter of an hour over a day, hours over the whole lake, so that a chart has
/// tens of points, not thousands.
fn bucket(range: Range, time: &str) -> String {
    let width = match range {
        Range::Hour => "1 minute",
        Range::Day => "15 minutes",
        Range::All => "1 hour",
    };
    format!("date_bin(INTERVAL '{width}', {time}, TIMESTAMP '2000-01-01T00:00:00Z')")
}

fn range_name(range: Range) -> &'static str {
    match range {
        Range::Hour => "hour",
        Range::Day => "day",
        Range::All => "all",
    }
}

/// The charts that read `table` (`catalog.schema.table`): "section: title".
pub fn charts_reading(table: &str) -> Vec<String> {
    CHARTS.iter().filter(|c| c.table == table).map(|c| format!("{}: {}", c.section, c.title)).collect()
}

/// Every chart the token may see, with its SQL, columns and rows.
pub async fn charts(State(api): State<Arc<Api>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Result<Json<Value>, Failure> {
    let identity = authenticate(&api.verifier, &headers)?;
    let params = sluice_gate::params::dashboard(query.as_deref().unwrap_or_default()).map_err(Failure::bad_request)?;
    let range = params.range;
    let session = Session::new(api.lake.clone(), identity.clone(), &api.budget).await?;
    let scope = api.lake.scope(&identity).await?;
    let wanted = |chart: &Chart| params.section.as_deref().is_none_or(|s| s.eq_ignore_ascii_case(chart.section));
    if let Some(section) = &params.section {
        if !CHARTS.iter().any(|c| c.section.eq_ignore_ascii_case(section)) {
            return Err(Failure::new(StatusCode::BAD_REQUEST, format!("section `{section}`: use pipeline, platform or learning")));
        }
        if !CHARTS.iter().any(|c| wanted(c) && c.roles.contains(&identity.role)) {
            return Err(Failure::new(StatusCode::FORBIDDEN, format!("role {} may not see the {section} section", identity.role.name())));
        }
    }
    let mut out = Vec::new();
    if identity.role == Role::Analyst && params.section.as_deref().is_none_or(|s| s.eq_ignore_ascii_case("pipeline")) {
        out.push(tables_chart(&api, &session).await?);
    }
    for chart in CHARTS.iter().filter(|c| wanted(c) && c.roles.contains(&identity.role)) {
        let id = match chart.subject {
            Subject::None => None,
            Subject::User => Some(params.ids.user_id.clone().unwrap_or_else(|| identity.user.clone())),
            Subject::Trainer => Some(params.ids.trainer_id.clone().unwrap_or_else(|| identity.user.clone())),
            Subject::Org => match params.ids.org_id.clone().or_else(|| scope.org.clone()) {
                Some(org) => Some(org),
                None => continue,
            },
        };
        let sql = chart
            .sql
            .replace("{range}", &range_condition(range, chart.table, chart.time))
            .replace("{bucket}", &bucket(range, chart.time))
            .replace("{table}", chart.table)
            .replace("{id}", &id.as_deref().map(literal).unwrap_or_default());
        let (columns, rows, error) = match run(&session, &sql).await {
            Ok((columns, rows)) => (columns, rows, None),
            Err(e) => (Vec::new(), json!([]), Some(e)),
        };
        out.push(json!({
            "id": chart.id,
            "section": chart.section,
            "title": chart.title,
            "kind": if chart.kind == Kind::Lines { "lines" } else { "table" },
            "unit": chart.unit,
            "target": chart.target,
            "subject": id,
            "sql": sql,
            "columns": columns,
            "rows": rows,
            "error": error,
        }));
    }
    Ok(Json(json!({ "user": identity.user, "role": identity.role.name(), "range": range_name(range), "charts": out })))
}

/// The lake's tables as their Delta logs say: version, live files, bytes, the
/// last Delta checkpoint (what `sluice tables` prints).
async fn tables_chart(api: &Api, session: &Session) -> Result<Value, Failure> {
    let mut rows = Vec::new();
    for table in session.tables() {
        let loaded = api.lake.latest(&table).await?;
        let snapshot = loaded.delta.snapshot().map_err(|e| crate::error::Error::delta(table.as_str(), e))?;
        let bytes: i64 = snapshot.log_data().iter().map(|f| f.size()).sum();
        let checkpoint = crate::sink::maintain::last_checkpoint(&loaded.delta).await;
        rows.push(json!({
            "table": table.sql_name(),
            "version": loaded.delta.version(),
            "live_files": snapshot.log_data().num_files(),
            "bytes": bytes,
            "checkpoint": checkpoint,
        }));
    }
    Ok(json!({
        "id": "tables",
        "section": "Pipeline",
        "title": "Tables: Delta version, live files, bytes, last Delta checkpoint",
        "kind": "table",
        "unit": "",
        "target": null,
        "subject": null,
        "sql": "-- not SQL: each table's Delta log, as `sluice tables --lake LAKE` prints it",
        "columns": ["table", "version", "live_files", "bytes", "checkpoint"],
        "rows": rows,
        "error": null,
    }))
}

async fn run(session: &Session, sql: &str) -> Result<(Vec<String>, Value), String> {
    match session.answer(sql, Vec::new()).await {
        Err(e) if e.to_string().contains("not found") => Err("no data yet: the table is not in the lake".into()),
        Err(e) => Err(e.to_string()),
        Ok((columns, batches)) => Ok((columns, to_json(&batches).map_err(|f| f.message().to_string())?)),
    }
}

/// A fingerprint of the Delta versions of the tables the token's charts draw: the
/// page polls it and redraws when it changes. Only those: bringing every table of
/// the lake forward at each poll made a poll's cost grow with the lake.
pub async fn version(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Json<Value>, Failure> {
    let identity = authenticate(&api.verifier, &headers)?;
    let drawn: std::collections::BTreeSet<&str> = CHARTS.iter().filter(|c| c.roles.contains(&identity.role)).map(|c| c.table).collect();
    let session = Session::new(api.lake.clone(), identity, &api.budget).await?;
    let mut versions = Vec::new();
    for table in session.tables().into_iter().filter(|t| drawn.contains(t.sql_name().as_str())) {
        let loaded = api.lake.latest(&table).await?;
        versions.push(format!("{}@{}", table.sql_name(), loaded.delta.version().unwrap_or_default()));
    }
    Ok(Json(json!({ "version": versions.join(",") })))
}

/// The page and its assets.
pub async fn asset(path: axum::extract::Path<String>) -> Response {
    file(&path.0)
}

pub async fn index() -> Response {
    file("index.html")
}

fn file(name: &str) -> Response {
    let (body, kind): (&'static [u8], &str) = match name {
        "index.html" => (include_bytes!("../../../dashboard/index.html"), "text/html; charset=utf-8"),
        "app.js" => (include_bytes!("../../../dashboard/app.js"), "text/javascript; charset=utf-8"),
        "style.css" => (include_bytes!("../../../dashboard/style.css"), "text/css; charset=utf-8"),
        "uplot.js" => (include_bytes!("../../../dashboard/vendor/uPlot.iife.min.js"), "text/javascript; charset=utf-8"),
        "uplot.css" => (include_bytes!("../../../dashboard/vendor/uPlot.min.css"), "text/css; charset=utf-8"),
        _ => return Failure::new(StatusCode::NOT_FOUND, format!("no file {name}")).into_response(),
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(kind).unwrap_or(HeaderValue::from_static("application/octet-stream")));
    // Everything the page loads comes from here: no CDN, no inline script.
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'self'; img-src 'self' data:; style-src 'self'"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_relative_to_the_latest_time_and_ids_are_quoted() {
        assert_eq!(range_condition(Range::All, "a.b.c", "window_start"), "TRUE");
        assert_eq!(range_condition(Range::Hour, "a.b.c", "window_start"), "window_start >= (SELECT max(window_start) FROM a.b.c) - INTERVAL '1 hour'");
        assert_eq!(literal("o'brien"), "'o''brien'");
        for chart in CHARTS {
            assert!(chart.sql.contains("{range}") && chart.sql.contains("{table}"), "{}", chart.id);
            assert_eq!(chart.sql.contains("{id}"), chart.subject != Subject::None, "{}", chart.id);
        }
    }
}
