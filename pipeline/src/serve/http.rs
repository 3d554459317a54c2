//! The platform's analytics API (seed 000) over the lake: `GET
//! /api/v1/analytics/{learner,trainer,organization}` and `/api/v1/health`.
//!
//! Each answer is plain SQL run in the caller's own [`Session`], so it passes
//! through the same row-level security as the Postgres protocol: REST and SQL
//! agree for the same token by construction.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::middleware::Next;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::NaiveDate;
use datafusion::arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Identity, Role, Verifier};
use super::lake::ServedLake;
use super::session::{Limits, Session, Unanswered};

pub struct Api {
    pub lake: Arc<ServedLake>,
    pub verifier: Verifier,
    pub limits: Limits,
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/analytics/learner", get(learner))
        .route("/api/v1/analytics/trainer", get(trainer))
        .route("/api/v1/analytics/organization", get(organization))
        .route("/", get(super::dashboard::index))
        .route("/static/{name}", get(super::dashboard::asset))
        .route("/api/v1/dashboard/charts", get(super::dashboard::charts))
        .route("/api/v1/dashboard/version", get(super::dashboard::version))
        .fallback(|| async { Failure::new(StatusCode::NOT_FOUND, "no such endpoint (see /api/v1/health, /api/v1/analytics/{learner,trainer,organization})") })
        .layer(axum::middleware::from_fn(tokens_stay_local))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(api)
}

/// A bearer token over plain HTTP from another machine is refused, as over
/// Postgres: put the API behind a TLS proxy on this machine to expose it.
async fn tokens_stay_local(ConnectInfo(peer): ConnectInfo<SocketAddr>, request: axum::extract::Request, next: Next) -> Response {
    if request.headers().contains_key(header::AUTHORIZATION) && !peer.ip().is_loopback() {
        let why = "a token over unencrypted HTTP from another machine is refused: reach the API through a TLS proxy on the server, or over loopback";
        return Failure::new(StatusCode::UNAUTHORIZED, why).into_response();
    }
    next.run(request).await
}

/// The seed's security headers, on every answer.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("x-xss-protection", HeaderValue::from_static("1; mode=block"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An error answer: its status and `{"error": "..."}`.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<crate::error::Error> for Failure {
    fn from(e: crate::error::Error) -> Self {
        let message = crate::catalog::storage::redact(&e.to_string());
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

async fn health(State(api): State<Arc<Api>>) -> Response {
    match api.lake.tables().await {
        Ok(tables) => Json(json!({ "status": "ok", "lake": api.lake.lake().root().as_str().split('?').next(), "tables": tables.len() })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "error": Failure::from(e).message }))).into_response(),
    }
}

/// The bearer token's identity, or 401 naming what is wrong with it.
pub fn authenticate(verifier: &Verifier, headers: &HeaderMap) -> Result<Identity, Failure> {
    let unauthorized = |why: String| Failure::new(StatusCode::UNAUTHORIZED, why);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(super::auth::Refusal::Missing.to_string()));
    };
    let value = value.to_str().map_err(|_| unauthorized("the Authorization header is not text".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`".into()))?;
    verifier.verify(token).map_err(|r| unauthorized(r.to_string()))
}

fn allow(identity: &Identity, endpoint: &str, roles: &[Role]) -> Result<(), Failure> {
    if roles.contains(&identity.role) {
        return Ok(());
    }
    let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
    Err(Failure::new(StatusCode::FORBIDDEN, format!("role {} may not call {endpoint} (roles that may: {})", identity.role.name(), names.join(", "))))
}

/// `?from=&to=` (inclusive dates) and whose data.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    from: Option<String>,
    to: Option<String>,
    user_id: Option<String>,
    trainer_id: Option<String>,
    org_id: Option<String>,
}

/// The date range, checked: each a `YYYY-MM-DD` date, `from` not after `to`.
fn range(params: &Params) -> Result<(Option<NaiveDate>, Option<NaiveDate>), Failure> {
    let date = |name: &str, value: &Option<String>| -> Result<Option<NaiveDate>, Failure> {
        value
            .as_deref()
            .map(|v| NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| Failure::new(StatusCode::BAD_REQUEST, format!("{name}: `{v}` is not a date (YYYY-MM-DD)"))))
            .transpose()
    };
    let (from, to) = (date("from", &params.from)?, date("to", &params.to)?);
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(Failure::new(StatusCode::BAD_REQUEST, format!("from {f} is after to {t}")));
        }
    }
    Ok((from, to))
}

/// A caller's session and the date range of one request.
struct Request {
    session: Session,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
}

impl Request {
    async fn open(api: &Api, headers: &HeaderMap, params: &Params, endpoint: &str, roles: &[Role]) -> Result<Request, Failure> {
        let identity = authenticate(&api.verifier, headers)?;
        allow(&identity, endpoint, roles)?;
        let (from, to) = range(params)?;
        let session = Session::new(api.lake.clone(), identity, &api.limits).await?;
        Ok(Request { session, from, to })
    }

    /// The rows of `table` whose `key` is `id`, in the range, as JSON objects with
    /// camelCase keys (without the window bounds and the key itself).
    async fn rows(&self, table: &str, key: &str, id: &str, order: &str) -> Result<Value, Failure> {
        let ctx = &self.session.ctx;
        let Ok(frame) = ctx.table(table).await else {
            return Ok(json!([])); // not in the lake (yet)
        };
        let columns: Vec<String> = frame
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|c| c != key && c != "window_start" && c != "window_end")
            .map(|c| format!("\"{c}\" AS \"{}\"", camel(&c)))
            .collect();
        let mut sql = format!("SELECT {} FROM {table} WHERE \"{key}\" = $1", columns.join(", "));
        if let Some(from) = self.from {
            sql.push_str(&format!(" AND date >= DATE '{from}'"));
        }
        if let Some(to) = self.to {
            sql.push_str(&format!(" AND date <= DATE '{to}'"));
        }
        sql.push_str(&format!(" ORDER BY {order}"));
        let batches = self.query(&sql, id).await?;
        to_json(&batches)
    }

    async fn query(&self, sql: &str, id: &str) -> Result<Vec<RecordBatch>, Failure> {
        match self.session.answer(sql, vec![ScalarValue::Utf8(Some(id.to_string()))]).await {
            Ok((_, batches)) => Ok(batches),
            Err(e @ Unanswered::TimedOut) => Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
            Err(e) => Err(Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
    }

    fn range_json(&self) -> (Value, Value) {
        (json!(self.from.map(|d| d.to_string())), json!(self.to.map(|d| d.to_string())))
    }
}

fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

pub fn to_json(batches: &[RecordBatch]) -> Result<Value, Failure> {
    let mut writer = datafusion::arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, datafusion::arrow::json::writer::JsonArray>(Vec::new());
    for batch in batches {
        writer.write(batch).map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    writer.finish().map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(json!([]));
    }
    serde_json::from_slice(&bytes).map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

const LEARNER: &str = "/api/v1/analytics/learner";
const TRAINER: &str = "/api/v1/analytics/trainer";
const ORGANIZATION: &str = "/api/v1/analytics/organization";

/// A user's velocity, mastery, skill gaps and engagement (the token's user unless `user_id`).
async fn learner(State(api): State<Arc<Api>>, headers: HeaderMap, Query(params): Query<Params>) -> Result<Json<Value>, Failure> {
    let request = Request::open(&api, &headers, &params, LEARNER, &[Role::Learner, Role::Trainer, Role::OrgAdmin, Role::Analyst]).await?;
    let user = params.user_id.clone().unwrap_or_else(|| request.session.identity.user.clone());
    let (from, to) = request.range_json();
    Ok(Json(json!({
        "userId": user,
        "from": from,
        "to": to,
        "velocity": request.rows("analytics.learner.velocity_daily", "user_id", &user, "date, course_id").await?,
        "mastery": request.rows("analytics.learner.mastery_daily", "user_id", &user, "date, skill_id").await?,
        "skillGaps": request.rows("analytics.learner.skill_gaps_daily", "user_id", &user, "date, skill_id").await?,
        "engagement": request.rows("analytics.learner.engagement_daily", "user_id", &user, "date, org_id").await?,
    })))
}

/// A trainer's students and their daily progress (the token's user unless `trainer_id`).
async fn trainer(State(api): State<Arc<Api>>, headers: HeaderMap, Query(params): Query<Params>) -> Result<Json<Value>, Failure> {
    let request = Request::open(&api, &headers, &params, TRAINER, &[Role::Trainer, Role::OrgAdmin, Role::Analyst]).await?;
    let trainer = params.trainer_id.clone().unwrap_or_else(|| request.session.identity.user.clone());
    let students = match request.session.ctx.table("services.directory.teaching_assignments").await {
        Ok(_) => {
            let sql = "SELECT DISTINCT student_id AS \"studentId\" FROM services.directory.teaching_assignments WHERE trainer_id = $1 AND student_id IS NOT NULL ORDER BY 1";
            let rows = to_json(&request.query(sql, &trainer).await?)?;
            rows.as_array().map(|rows| rows.iter().filter_map(|r| r.get("studentId").cloned()).collect()).unwrap_or_default()
        }
        Err(_) => Vec::new(),
    };
    let (from, to) = request.range_json();
    Ok(Json(json!({
        "trainerId": trainer,
        "from": from,
        "to": to,
        "students": students,
        "progress": request.rows("analytics.trainer.student_progress_daily", "trainer_id", &trainer, "date").await?,
    })))
}

/// An organisation's daily KPIs (the token user's organisation unless `org_id`).
async fn organization(State(api): State<Arc<Api>>, headers: HeaderMap, Query(params): Query<Params>) -> Result<Json<Value>, Failure> {
    let request = Request::open(&api, &headers, &params, ORGANIZATION, &[Role::OrgAdmin, Role::Analyst]).await?;
    let org = match &params.org_id {
        Some(org) => org.clone(),
        None => match api.lake.scope(&request.session.identity).await?.org {
            Some(org) => org,
            None => return Err(Failure::new(StatusCode::BAD_REQUEST, "no organisation for this user in services/directory/users: pass ?org_id=")),
        },
    };
    let (from, to) = request.range_json();
    Ok(Json(json!({
        "orgId": org,
        "from": from,
        "to": to,
        "kpis": request.rows("analytics.organization.kpis_daily", "org_id", &org, "date").await?,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_dates_are_taken_as_the_api_says() {
        assert_eq!(camel("avg_latency_ms"), "avgLatencyMs");
        assert_eq!(camel("date"), "date");
        let ok = Params { from: Some("2026-11-01".into()), to: Some("2026-11-02".into()), ..Params::default() };
        assert!(range(&ok).is_ok());
        let bad = Params { from: Some("yesterday".into()), ..Params::default() };
        assert!(range(&bad).unwrap_err().message.contains("`yesterday` is not a date"));
        let backwards = Params { from: Some("2026-11-02".into()), to: Some("2026-11-01".into()), ..Params::default() };
        assert!(range(&backwards).unwrap_err().message.contains("after"));
    }
}
