//! The platform's analytics API (seed 000) over the lake: `GET
//! /api/v1/analytics/{learner,trainer,organization}`.
//!
//! Each answer is plain SQL run in the caller's own [`Session`], so it passes
//! through the same row-level security as the Postgres protocol: REST and SQL
//! agree for the same token by construction.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::NaiveDate;
use datafusion::arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use serde_json::{json, Value};
use sluice_gate::params::AnalyticsParams;
use sluice_gate::token::Role;

use super::http::{allow, authenticate, to_json, Api, Failure};
use super::session::Session;

/// A caller's session and the checked parameters of one request.
struct Request {
    session: Session,
    params: AnalyticsParams,
}

impl Request {
    async fn open(api: &Api, headers: &HeaderMap, query: Option<String>, endpoint: &str, roles: &[Role]) -> Result<Request, Failure> {
        let identity = authenticate(&api.verifier, headers)?;
        allow(&identity, endpoint, roles)?;
        let params = sluice_gate::params::analytics(query.as_deref().unwrap_or_default()).map_err(Failure::bad_request)?;
        let session = Session::new(api.lake.clone(), identity, &api.budget).await?;
        Ok(Request { session, params })
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
        if let Some(from) = self.params.from {
            sql.push_str(&format!(" AND date >= DATE '{from}'"));
        }
        if let Some(to) = self.params.to {
            sql.push_str(&format!(" AND date <= DATE '{to}'"));
        }
        sql.push_str(&format!(" ORDER BY {order}"));
        let batches = self.query(&sql, id).await?;
        to_json(&batches)
    }

    async fn query(&self, sql: &str, id: &str) -> Result<Vec<RecordBatch>, Failure> {
        let (_, batches) = self.session.answer(sql, vec![ScalarValue::Utf8(Some(id.to_string()))]).await?;
        Ok(batches)
    }

    fn range_json(&self) -> (Value, Value) {
        let date = |d: Option<NaiveDate>| json!(d.map(|d| d.to_string()));
        (date(self.params.from), date(self.params.to))
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

pub const LEARNER: &str = "/api/v1/analytics/learner";
pub const TRAINER: &str = "/api/v1/analytics/trainer";
pub const ORGANIZATION: &str = "/api/v1/analytics/organization";

const VELOCITY: &str = "analytics.learner.velocity_daily";
const MASTERY: &str = "analytics.learner.mastery_daily";
const SKILL_GAPS: &str = "analytics.learner.skill_gaps_daily";
const ENGAGEMENT: &str = "analytics.learner.engagement_daily";
const TEACHING: &str = "services.directory.teaching_assignments";
const PROGRESS: &str = "analytics.trainer.student_progress_daily";
const KPIS: &str = "analytics.organization.kpis_daily";

/// What each answer of the API reads: (endpoint, field of the answer, table).
const READS: &[(&str, &str, &str)] = &[
    (LEARNER, "velocity", VELOCITY),
    (LEARNER, "mastery", MASTERY),
    (LEARNER, "skillGaps", SKILL_GAPS),
    (LEARNER, "engagement", ENGAGEMENT),
    (TRAINER, "students", TEACHING),
    (TRAINER, "progress", PROGRESS),
    (ORGANIZATION, "kpis", KPIS),
];

/// The answers that read `table` (`catalog.schema.table`): "GET endpoint (field)".
pub fn answers_reading(table: &str) -> Vec<String> {
    READS.iter().filter(|(_, _, t)| *t == table).map(|(endpoint, field, _)| format!("GET {endpoint} ({field})")).collect()
}

/// A user's velocity, mastery, skill gaps and engagement (the token's user unless `user_id`).
pub async fn learner(State(api): State<Arc<Api>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Result<Json<Value>, Failure> {
    let request = Request::open(&api, &headers, query, LEARNER, &[Role::Learner, Role::Trainer, Role::OrgAdmin, Role::Analyst]).await?;
    let user = request.params.ids.user_id.clone().unwrap_or_else(|| request.session.identity.user.clone());
    let (from, to) = request.range_json();
    Ok(Json(json!({
        "userId": user,
        "from": from,
        "to": to,
        "velocity": request.rows(VELOCITY, "user_id", &user, "date, course_id").await?,
        "mastery": request.rows(MASTERY, "user_id", &user, "date, skill_id").await?,
        "skillGaps": request.rows(SKILL_GAPS, "user_id", &user, "date, skill_id").await?,
        "engagement": request.rows(ENGAGEMENT, "user_id", &user, "date, org_id").await?,
    })))
}

/// A trainer's students and their daily progress (the token's user unless `trainer_id`).
pub async fn trainer(State(api): State<Arc<Api>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Result<Json<Value>, Failure> {
    let request = Request::open(&api, &headers, query, TRAINER, &[Role::Trainer, Role::OrgAdmin, Role::Analyst]).await?;
    let trainer = request.params.ids.trainer_id.clone().unwrap_or_else(|| request.session.identity.user.clone());
    let students = match request.session.ctx.table(TEACHING).await {
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
        "progress": request.rows(PROGRESS, "trainer_id", &trainer, "date").await?,
    })))
}

/// An organisation's daily KPIs (the token user's organisation unless `org_id`).
pub async fn organization(State(api): State<Arc<Api>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Result<Json<Value>, Failure> {
    let request = Request::open(&api, &headers, query, ORGANIZATION, &[Role::OrgAdmin, Role::Analyst]).await?;
    let org = match &request.params.ids.org_id {
        Some(org) => org.clone(),
        None => match api.lake.scope(&request.session.identity).await?.org {
            Some(org) => org,
            None => return Err(Failure::bad_request("no organisation for this user in services/directory/users: pass ?org_id=")),
        },
    };
    let (from, to) = request.range_json();
    Ok(Json(json!({
        "orgId": org,
        "from": from,
        "to": to,
        "kpis": request.rows(KPIS, "org_id", &org, "date").await?,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_named_in_camel_case() {
        assert_eq!(camel("avg_latency_ms"), "avgLatencyMs");
        assert_eq!(camel("date"), "date");
    }
}
