//! The analytics API's query strings, parsed and checked: every parameter known,
//! dates as dates, ids of a sane length. Whatever a client puts after `?` ends
//! here as a value or as one line saying what is wrong with it.

use chrono::NaiveDate;
use serde::Deserialize;

/// The longest id (`user_id`, `trainer_id`, `org_id`) taken.
pub const MAX_ID_BYTES: usize = 256;

/// `?from=&to=&user_id=&trainer_id=&org_id=` of `/api/v1/analytics/*`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AnalyticsParams {
    /// Inclusive dates, `from` not after `to`.
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub ids: Ids,
}

/// Whose data: the token's own unless one of these is given.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct Ids {
    pub user_id: Option<String>,
    pub trainer_id: Option<String>,
    pub org_id: Option<String>,
}

/// The dashboard's time range, relative to each table's latest row.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Hour,
    #[default]
    Day,
    All,
}

/// `?range=&section=&user_id=&trainer_id=&org_id=` of `/api/v1/dashboard/charts`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DashboardParams {
    pub range: Range,
    /// Only this section's charts (as given; the dashboard knows its sections).
    pub section: Option<String>,
    pub ids: Ids,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalytics {
    from: Option<String>,
    to: Option<String>,
    user_id: Option<String>,
    trainer_id: Option<String>,
    org_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDashboard {
    range: Option<String>,
    section: Option<String>,
    user_id: Option<String>,
    trainer_id: Option<String>,
    org_id: Option<String>,
}

/// The query string (without `?`) of an analytics endpoint.
pub fn analytics(query: &str) -> Result<AnalyticsParams, String> {
    let raw: RawAnalytics = decode(query)?;
    let (from, to) = (date("from", raw.from.as_deref())?, date("to", raw.to.as_deref())?);
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(format!("from {f} is after to {t}"));
        }
    }
    Ok(AnalyticsParams { from, to, ids: ids(raw.user_id, raw.trainer_id, raw.org_id)? })
}

/// The query string (without `?`) of the dashboard's charts.
pub fn dashboard(query: &str) -> Result<DashboardParams, String> {
    let raw: RawDashboard = decode(query)?;
    let range = match raw.range.as_deref() {
        None | Some("day") => Range::Day,
        Some("hour") => Range::Hour,
        Some("all") => Range::All,
        Some(other) => return Err(format!("range `{}`: use hour, day or all", shown(other))),
    };
    if let Some(section) = &raw.section {
        if section.len() > 64 || !section.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("section `{}`: a section's name is a word (pipeline, platform, learning, ...)", shown(section)));
        }
    }
    Ok(DashboardParams { range, section: raw.section, ids: ids(raw.user_id, raw.trainer_id, raw.org_id)? })
}

fn decode<T: for<'de> Deserialize<'de>>(query: &str) -> Result<T, String> {
    serde_urlencoded::from_str(query).map_err(|e| format!("query string: {}", shown(&e.to_string())))
}

fn date(name: &str, value: Option<&str>) -> Result<Option<NaiveDate>, String> {
    value
        .map(|v| NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| format!("{name}: `{}` is not a date (YYYY-MM-DD)", shown(v))))
        .transpose()
}

fn ids(user_id: Option<String>, trainer_id: Option<String>, org_id: Option<String>) -> Result<Ids, String> {
    for (name, value) in [("user_id", &user_id), ("trainer_id", &trainer_id), ("org_id", &org_id)] {
        if let Some(value) = value {
            if value.is_empty() || value.len() > MAX_ID_BYTES || value.chars().any(char::is_control) {
                return Err(format!("{name}: an id is 1 to {MAX_ID_BYTES} bytes of text without control characters"));
            }
        }
    }
    Ok(Ids { user_id, trainer_id, org_id })
}

/// A value as an error message may quote it: controls escaped, at most 64
/// characters of the escaped text (an escape is up to ten of them).
fn shown(value: &str) -> String {
    let escaped: String = value.chars().flat_map(char::escape_debug).take(65).collect();
    if escaped.chars().count() > 64 {
        return escaped.chars().take(64).chain(['…']).collect();
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analytics_parameters_are_dates_and_ids() {
        let ok = analytics("from=2026-11-01&to=2026-11-02&user_id=u-1").unwrap();
        assert_eq!(ok.from, NaiveDate::from_ymd_opt(2026, 11, 1));
        assert_eq!(ok.ids.user_id.as_deref(), Some("u-1"));
        assert_eq!(analytics("").unwrap(), AnalyticsParams::default());
        assert!(analytics("from=yesterday").unwrap_err().contains("`yesterday` is not a date"));
        assert!(analytics("from=2026-11-02&to=2026-11-01").unwrap_err().contains("after"));
        assert!(analytics("limit=5").unwrap_err().contains("unknown field `limit`"));
        assert!(analytics(&format!("user_id={}", "u".repeat(300))).unwrap_err().contains("1 to 256 bytes"));
        assert!(analytics("user_id=a%00b").unwrap_err().contains("control"));
        assert!(analytics("from=%ff%fe").is_err());
    }

    #[test]
    fn dashboard_parameters_name_what_is_wrong() {
        assert_eq!(dashboard("range=hour").unwrap().range, Range::Hour);
        assert_eq!(dashboard("").unwrap().range, Range::Day);
        assert!(dashboard("range=week").unwrap_err().contains("range `week`"));
        assert!(dashboard("section=a'b").unwrap_err().contains("section `a\\'b`"));
        let long = dashboard(&format!("range={}", "x".repeat(1000))).unwrap_err();
        assert!(long.len() < 200, "{long}");
        let controls = analytics(&format!("from={}", "%12".repeat(500))).unwrap_err();
        assert!(controls.len() < 200, "escapes count against the quote's length: {controls}");
    }
}
