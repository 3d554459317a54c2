//! End-to-end correctness of `sluice`: generate traffic, add hand-written edge cases,
//! run the pipeline over it, then compare every table the pipeline wrote (read back
//! through deltalake's own reader) with an expectation this file computes on its own
//! from the raw input files: its own validator, its own watermark simulation, its own
//! aggregations. Nothing of the `sluice` crate is used for the expectation.
//!
//! The contract (`shared/contract.md`) is hard-coded here on purpose: topic fields,
//! types, enums, table paths and columns.
//!
//! Environment knobs: `SLUICE_E2E_KEEP=1` keeps the temporary directory (input and
//! lake) and prints its path; `SLUICE_E2E_TIMEOUT_SECS` bounds `sluice run` (default
//! 1800 s).

// The models keep their accumulators' shapes inline, where they are filled and read.
#![allow(clippy::type_complexity)]

mod common;
#[path = "end_to_end/rest_of_lake.rs"]
mod rest_of_lake;
mod stores;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use deltalake::arrow::datatypes::DataType;
use serde_json::{json, Map, Value};

const BATCH_SIZE: usize = 1000;
const OUT_OF_ORDERNESS_US: i64 = 5_000_000;
const SEED: &str = "7";
const USERS: &str = "150";
const HOURS: &str = "30";

// ===========================================================================
// The contract, hard-coded (§1)
// ===========================================================================

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Str,
    Int,
    Int64,
    Dbl,
    Bool,
    Ts,
    Enum(&'static [&'static str]),
}
use Ty::*;

#[derive(Debug)]
struct Fd {
    name: &'static str,
    ty: Ty,
    opt: bool,
}
const fn req(name: &'static str, ty: Ty) -> Fd {
    Fd {
        name,
        ty,
        opt: false,
    }
}
const fn opt(name: &'static str, ty: Ty) -> Fd {
    Fd {
        name,
        ty,
        opt: true,
    }
}

const SERVICES: &[&str] = &[
    "directory",
    "course_builder",
    "assessment",
    "skills_engine",
    "learner_ai",
    "content_studio",
    "devlab",
    "rag_assistant",
    "auth",
];

const GATEWAY_REQUESTS: &[Fd] = &[
    req("request_id", Str),
    req("correlation_id", Str),
    req("ts", Ts),
    req("service", Enum(SERVICES)),
    req("upstream_instance", Str),
    req("method", Str),
    req("route", Str),
    req("status", Int),
    req("duration_ms", Dbl),
    opt("user_id", Str),
    opt("org_id", Str),
    req(
        "auth_outcome",
        Enum(&["ok", "denied", "expired", "missing"]),
    ),
    req("rate_limited", Bool),
    req("bytes_out", Int64),
];
const SERVICE_CALLS: &[Fd] = &[
    req("call_id", Str),
    req("ts", Ts),
    req("caller", Str),
    req("service", Enum(SERVICES)),
    req("operation", Str),
    req("duration_ms", Dbl),
    req("success", Bool),
    opt("error", Str),
    req("breaker_state", Enum(&["CLOSED", "OPEN", "HALF_OPEN"])),
    req("attempt", Int),
    req("correlation_id", Str),
];
const LEARNING_PROGRESS: &[Fd] = &[
    req("event_id", Str),
    req("ts", Ts),
    req("user_id", Str),
    req("org_id", Str),
    req("course_id", Str),
    req("topic_id", Str),
    req("skill_id", Str),
    req("session_id", Str),
    req("progress_delta", Dbl),
    req("minutes_spent", Dbl),
    req("completed", Bool),
];
const ASSESSMENT_COMPLETIONS: &[Fd] = &[
    req("event_id", Str),
    req("ts", Ts),
    req("user_id", Str),
    req("org_id", Str),
    req("exam_id", Str),
    req("skill_id", Str),
    req("score", Dbl),
    req("passed", Bool),
    req("attempt", Int),
];
const INTERACTIONS: &[Fd] = &[
    req("event_id", Str),
    req("ts", Ts),
    req("user_id", Str),
    req("org_id", Str),
    req("session_id", Str),
    req("service", Enum(SERVICES)),
    req(
        "kind",
        Enum(&["chat", "lab_run", "content_view", "audio_practice"]),
    ),
    opt("topic_id", Str),
    opt("latency_ms", Dbl),
    opt("helpful", Bool),
];
const EXPOSURES: &[Fd] = &[
    req("event_id", Str),
    req("ts", Ts),
    req("user_id", Str),
    req("experiment_id", Str),
    req("variant", Str),
    req("outcome", Enum(&["exposed", "converted"])),
    opt("value", Dbl),
];
const CONNECTIONS: &[Fd] = &[
    req("event_id", Str),
    req("ts", Ts),
    req("connection_id", Str),
    req("user_id", Str),
    req("session_id", Str),
    req("transport", Enum(&["websocket", "signalr"])),
    req("action", Enum(&["open", "close", "message"])),
    opt("setup_ms", Dbl),
    opt("delivery_ms", Dbl),
    opt("hub", Str),
];
const EXTERNAL_CALLS: &[Fd] = &[
    req("call_id", Str),
    req("ts", Ts),
    req(
        "provider",
        Enum(&["azure_openai", "azure_speech", "phonetic_analysis", "third_party"]),
    ),
    req("service", Str),
    req("operation", Str),
    req("duration_ms", Dbl),
    req("status", Int),
    req("success", Bool),
    opt("error", Str),
    opt("model", Str),
    opt("prompt_tokens", Int64),
    opt("completion_tokens", Int64),
    opt("audio_seconds", Dbl),
    opt("cost_usd", Dbl),
    opt("user_id", Str),
    opt("org_id", Str),
    req("correlation_id", Str),
];
const SAGA_STEPS: &[Fd] = &[
    req("event_id", Str),
    req("ts", Ts),
    req("saga_id", Str),
    req("saga_type", Str),
    req("step", Str),
    req("step_index", Int),
    req(
        "status",
        Enum(&["started", "completed", "failed", "compensated"]),
    ),
    req("service", Str),
    opt("duration_ms", Dbl),
    req("correlation_id", Str),
];
const REPLAYS: &[Fd] = &[
    req("replay_id", Str),
    req("ts", Ts),
    req("requested_by", Str),
    req("event_type", Str),
    req("from_ts", Ts),
    req("to_ts", Ts),
    req("events_replayed", Int64),
    req("duration_ms", Dbl),
    req("status", Enum(&["completed", "failed"])),
];
const HEALTH_CHECKS: &[Fd] = &[
    req("check_id", Str),
    req("ts", Ts),
    req("service", Str),
    req("dependency", Str),
    req("status", Enum(&["healthy", "degraded", "unhealthy"])),
    req("latency_ms", Dbl),
];
const COLLABORATION: &[Fd] = &[
    req("event_id", Str),
    req("ts", Ts),
    req("collab_session_id", Str),
    req("user_id", Str),
    req("org_id", Str),
    req("kind", Enum(&["join", "leave", "edit", "chat", "audio"])),
    opt("topic_id", Str),
];
const DELIVERIES: &[Fd] = &[
    req("delivery_id", Str),
    req("ts", Ts),
    req("kind", Enum(&["feedback", "notification"])),
    req("user_id", Str),
    opt("org_id", Str),
    req("source_service", Str),
    req("channel", Enum(&["websocket", "signalr", "email", "push"])),
    req("status", Enum(&["sent", "delivered", "read", "failed"])),
    opt("latency_ms", Dbl),
    opt("error", Str),
];

const T_GATEWAY: &str = "gateway.requests";
const T_CALLS: &str = "integration.service_calls";
const T_PROGRESS: &str = "learning.progress";
const T_ASSESS: &str = "assessment.completions";
const T_INTER: &str = "interactions";
const T_EXPO: &str = "experiments.exposures";
const T_CONN: &str = "realtime.connections";
const T_EXT: &str = "integration.external_calls";
const T_SAGA: &str = "eventbus.saga_steps";
const T_REPLAY: &str = "eventbus.replays";
const T_HEALTH: &str = "monitoring.health_checks";
const T_COLLAB: &str = "realtime.collaboration";
const T_DELIVER: &str = "realtime.deliveries";
const DOMAIN_TOPICS: &[&str] = &[T_PROGRESS, T_ASSESS, T_INTER, T_EXPO];

const EVENT_TOPICS: &[(&str, &[Fd])] = &[
    (T_GATEWAY, GATEWAY_REQUESTS),
    (T_CALLS, SERVICE_CALLS),
    (T_PROGRESS, LEARNING_PROGRESS),
    (T_ASSESS, ASSESSMENT_COMPLETIONS),
    (T_INTER, INTERACTIONS),
    (T_EXPO, EXPOSURES),
    (T_CONN, CONNECTIONS),
    (T_EXT, EXTERNAL_CALLS),
    (T_SAGA, SAGA_STEPS),
    (T_REPLAY, REPLAYS),
    (T_HEALTH, HEALTH_CHECKS),
    (T_COLLAB, COLLABORATION),
    (T_DELIVER, DELIVERIES),
];

/// (topic, primary key, fields of `after`).
const CDC_TOPICS: &[(&str, &str, &[Fd])] = &[
    (
        "cdc.directory.users",
        "user_id",
        &[
            req("user_id", Str),
            req("org_id", Str),
            req("role", Enum(&["learner", "trainer", "org_admin"])),
            req("display_name", Str),
            opt("locale", Str),
        ],
    ),
    (
        "cdc.directory.organizations",
        "org_id",
        &[
            req("org_id", Str),
            req("name", Str),
            opt("target_completion_rate", Dbl),
        ],
    ),
    (
        "cdc.directory.teaching_assignments",
        "assignment_id",
        &[
            req("assignment_id", Str),
            req("trainer_id", Str),
            req("student_id", Str),
            req("course_id", Str),
        ],
    ),
    (
        "cdc.course_builder.enrollments",
        "enrollment_id",
        &[
            req("enrollment_id", Str),
            req("user_id", Str),
            req("course_id", Str),
            req("status", Enum(&["active", "completed", "dropped"])),
            req("enrolled_at", Ts),
        ],
    ),
    (
        "cdc.assessment.exams",
        "exam_id",
        &[
            req("exam_id", Str),
            req("skill_id", Str),
            req("pass_mark", Dbl),
        ],
    ),
    (
        "cdc.skills_engine.required_skills",
        "requirement_id",
        &[
            req("requirement_id", Str),
            req("org_id", Str),
            req("skill_id", Str),
            req("required_level", Dbl),
        ],
    ),
    (
        "cdc.learner_ai.learning_paths",
        "path_id",
        &[
            req("path_id", Str),
            req("user_id", Str),
            req("skill_id", Str),
            req("recommended_topic_id", Str),
        ],
    ),
    (
        "cdc.content_studio.content_items",
        "content_id",
        &[
            req("content_id", Str),
            req("topic_id", Str),
            req("creation_method", Enum(&["manual", "ai"])),
            req("status", Str),
        ],
    ),
    (
        "cdc.devlab.labs",
        "lab_id",
        &[
            req("lab_id", Str),
            req("topic_id", Str),
            req("difficulty", Int),
        ],
    ),
    (
        "cdc.rag_assistant.knowledge_sources",
        "source_id",
        &[
            req("source_id", Str),
            req("topic_id", Str),
            req("document_count", Int),
        ],
    ),
    (
        "cdc.auth.permissions",
        "permission_id",
        &[
            req("permission_id", Str),
            req("user_id", Str),
            req("scope", Str),
        ],
    ),
];

fn event_fields(topic: &str) -> Option<&'static [Fd]> {
    EVENT_TOPICS
        .iter()
        .find(|(t, _)| *t == topic)
        .map(|(_, f)| *f)
}
fn cdc_spec(topic: &str) -> Option<(&'static str, &'static [Fd])> {
    CDC_TOPICS
        .iter()
        .find(|(t, _, _)| *t == topic)
        .map(|(_, pk, f)| (*pk, *f))
}

// ===========================================================================
// The tables, hard-coded (§3)
// ===========================================================================

const REQUEST_LOGS: &str = "integration/api_gateway/request_logs";
const AUTH_LOGS: &str = "integration/api_gateway/authentication_logs";
const SERVICE_CALL_LOGS: &str = "integration/external_services/service_call_logs";
const EVENT_PUBLICATION_LOGS: &str = "integration/event_bus/event_publication_logs";
const RT_INTERACTIONS: &str = "real_time/interaction_logs/real_time_interactions";
const CONNECTION_EVENTS: &str = "real_time/connection_management/connection_events";
const DEAD_LETTERS: &str = "monitoring/integration_health/dead_letters";
const LATE_EVENTS: &str = "monitoring/integration_health/late_events";
const THROUGHPUT: &str = "monitoring/integration_health/pipeline_throughput";

/// A windowed analytics table: the topics of its events, and the CDC topics of the
/// mirrors it joins as of each window's end; the watermark that decides lateness is
/// the minimum over the partitions of both. Windows are `size` long and start every
/// `slide` (`slide == size`: tumbling; `slide == 0`: session windows, `size` the gap).
struct WinTable {
    path: &'static str,
    topics: &'static [&'static str],
    joins: &'static [&'static str],
    size: i64,
    slide: i64,
    /// How long after a window's end late events still correct it (0: they are late).
    corrections: i64,
    /// The table's `WHERE field = value`: other events are in none of its windows,
    /// so they are late for none.
    only: Option<(&'static str, &'static str)>,
    /// Session windows: the fields whose values make a session's key.
    session_key: &'static [&'static str],
}

const RRT: usize = 0;
const LBM: usize = 1;
const RLD: usize = 2;
const SHD: usize = 3;
const CBL: usize = 4;
const EPL: usize = 5;
const WSP: usize = 6;
const ENG: usize = 7;
const VEL: usize = 8;
const MAS: usize = 9;
const RES: usize = 10;
const LSL: usize = 11;
const SKG: usize = 12;
const SPD: usize = 13;
const KPI: usize = 14;
const ACT: usize = 15;
const EHR: usize = 16;
const SLO: usize = 17;
const SBD: usize = 18;
const AOU: usize = 19;
const SSU: usize = 20;
const SAGA: usize = 21;
const ESS: usize = 22;
const DHC: usize = 23;
const POD: usize = 24;
const SCD: usize = 25;
const SUD: usize = 26;
const CSL: usize = 27;
const MEMBERS: &str = "analytics/organization/members";
const HOUR_US: i64 = 60 * MINUTE_US;

const C_USERS: &str = "cdc.directory.users";
const C_TEACH: &str = "cdc.directory.teaching_assignments";
const C_ENROLL: &str = "cdc.course_builder.enrollments";
const C_REQ: &str = "cdc.skills_engine.required_skills";
const SESSION_GAP: i64 = 30 * MINUTE_US;

const WIN_TABLES: &[WinTable] = &[
    WinTable {
        path: "monitoring/api_performance/request_response_times",
        topics: &[T_GATEWAY],
        joins: &[],
        size: MINUTE_US,
        slide: MINUTE_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "monitoring/api_performance/load_balancing_metrics",
        topics: &[T_GATEWAY],
        joins: &[],
        size: MINUTE_US,
        slide: MINUTE_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "integration/api_gateway/rate_limiting_data",
        topics: &[T_GATEWAY],
        joins: &[],
        size: MINUTE_US,
        slide: MINUTE_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "monitoring/api_performance/service_health_data",
        topics: &[T_CALLS],
        joins: &[],
        size: MINUTE_US,
        slide: MINUTE_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "monitoring/api_performance/circuit_breaker_logs",
        topics: &[T_CALLS],
        joins: &[],
        size: MINUTE_US,
        slide: MINUTE_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "integration/event_bus/event_processing_logs",
        topics: DOMAIN_TOPICS,
        joins: &[],
        size: MINUTE_US,
        slide: MINUTE_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "real_time/connection_management/websocket_performance",
        topics: &[T_CONN],
        joins: &[],
        size: MINUTE_US,
        slide: MINUTE_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "analytics/learner/engagement_daily",
        topics: &[T_INTER],
        joins: &[],
        size: DAY_US,
        slide: DAY_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "analytics/learner/velocity_daily",
        topics: &[T_PROGRESS],
        joins: &[],
        size: DAY_US,
        slide: DAY_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "analytics/learner/mastery_daily",
        topics: &[T_ASSESS],
        joins: &[],
        size: DAY_US,
        slide: DAY_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "analytics/experiments/results_daily",
        topics: &[T_EXPO],
        joins: &[],
        size: DAY_US,
        slide: DAY_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "monitoring/api_performance/latency_5m_sliding",
        topics: &[T_GATEWAY],
        joins: &[],
        size: 5 * MINUTE_US,
        slide: MINUTE_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "analytics/learner/skill_gaps_daily",
        topics: &[T_ASSESS],
        joins: &[C_USERS, C_REQ],
        size: DAY_US,
        slide: DAY_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "analytics/trainer/student_progress_daily",
        topics: &[T_PROGRESS, T_ASSESS],
        joins: &[C_TEACH],
        size: DAY_US,
        slide: DAY_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "analytics/organization/kpis_daily",
        topics: &[T_PROGRESS, T_ASSESS, T_INTER],
        joins: &[C_ENROLL, C_USERS],
        size: DAY_US,
        slide: DAY_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "analytics/learner/activity_sessions",
        topics: &[T_INTER],
        joins: &[],
        size: SESSION_GAP,
        slide: 0,
        corrections: 0,
        only: None,
        session_key: &["user_id"],
    },
    WinTable {
        path: "monitoring/api_performance/errors_hourly",
        topics: &[T_GATEWAY],
        joins: &[],
        size: HOUR_US,
        slide: HOUR_US,
        corrections: HOUR_US,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "monitoring/api_performance/slo_classes_hourly",
        topics: &[T_GATEWAY],
        joins: &[],
        size: HOUR_US,
        slide: HOUR_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "analytics/learner/score_bands_daily",
        topics: &[T_ASSESS],
        joins: &[],
        size: DAY_US,
        slide: DAY_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "integration/external_services/azure_openai_usage",
        topics: &[T_EXT],
        joins: &[],
        size: HOUR_US,
        slide: HOUR_US,
        corrections: 0,
        only: Some(("provider", "azure_openai")),
        session_key: &[],
    },
    WinTable {
        path: "integration/external_services/speech_service_usage",
        topics: &[T_EXT],
        joins: &[],
        size: HOUR_US,
        slide: HOUR_US,
        corrections: 0,
        only: Some(("provider", "azure_speech")),
        session_key: &[],
    },
    WinTable {
        path: "integration/event_bus/saga_coordination_data",
        topics: &[T_SAGA],
        joins: &[],
        size: 5 * MINUTE_US,
        slide: 0,
        corrections: 0,
        only: None,
        session_key: &["saga_id", "saga_type"],
    },
    WinTable {
        path: "monitoring/integration_health/external_service_status",
        topics: &[T_EXT],
        joins: &[],
        size: MINUTE_US,
        slide: MINUTE_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "monitoring/integration_health/dependency_health_checks",
        topics: &[T_HEALTH],
        joins: &[],
        size: MINUTE_US,
        slide: MINUTE_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "monitoring/integration_health/performance_optimization_data",
        topics: &[T_GATEWAY],
        joins: &[],
        size: HOUR_US,
        slide: HOUR_US,
        corrections: 0,
        only: None,
        session_key: &[],
    },
    WinTable {
        path: "real_time/connection_management/session_coordination_data",
        topics: &[T_CONN],
        joins: &[],
        size: SESSION_GAP,
        slide: 0,
        corrections: 0,
        only: None,
        session_key: &["session_id"],
    },
    WinTable {
        path: "real_time/connection_management/signalr_usage_data",
        topics: &[T_CONN],
        joins: &[],
        size: HOUR_US,
        slide: HOUR_US,
        corrections: 0,
        only: Some(("transport", "signalr")),
        session_key: &[],
    },
    WinTable {
        path: "real_time/interaction_logs/collaborative_session_logs",
        topics: &[T_COLLAB],
        joins: &[],
        size: SESSION_GAP,
        slide: 0,
        corrections: 0,
        only: None,
        session_key: &["collab_session_id"],
    },
];

// ===========================================================================
// Reading and classifying the input
// ===========================================================================

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum BadKind {
    NotUtf8,
    NotJson,
    NotObject,
    Missing,
    WrongType,
    OutOfRange,
    NotInEnum,
    BadTimestamp,
    Envelope,
}

#[derive(Debug, Clone)]
struct Problem {
    field: Option<String>,
    kind: BadKind,
    msg: String,
}

fn problem(field: Option<&str>, kind: BadKind, msg: impl Into<String>) -> Problem {
    Problem {
        field: field.map(str::to_string),
        kind,
        msg: msg.into(),
    }
}

#[derive(Debug)]
struct Event {
    ts: i64,
    vals: Vec<V>,
    /// The tables (indices into WIN_TABLES) this event was late for, with the
    /// table's watermark just before it.
    late: Vec<(usize, i64)>,
    /// The tables whose emitted window this event corrected (it came after the
    /// window's end, within the table's corrections).
    corrected: Vec<usize>,
}

/// A valid change of a CDC topic.
#[derive(Debug)]
struct Change {
    key: String,
    lsn: i64,
    /// `ts_ms`, in µs.
    ts: i64,
    deleted: bool,
    /// The entity's fields and the values of `after` (none for a delete).
    fields: &'static [Fd],
    vals: Vec<V>,
}

impl Change {
    fn v(&self, name: &str) -> &V {
        &self.vals[self.fields.iter().position(|f| f.name == name).unwrap()]
    }
    fn s(&self, name: &str) -> &str {
        self.v(name).as_str().unwrap()
    }
}

#[derive(Debug)]
enum Kind {
    Blank,
    Tombstone,
    Bad(Vec<Problem>),
    Event(Event),
    Cdc(Change),
}

struct Msg {
    offset: i64,
    raw: String,
    kind: Kind,
}

struct InFile {
    topic: String,
    partition: i32,
    fields: Option<&'static [Fd]>,
    msgs: Vec<Msg>,
}

struct Input {
    /// Sorted by (topic, partition): the order the file source visits them.
    files: Vec<InFile>,
}

/// Checks one field of an object; returns its value (V::Null when absent and allowed).
fn check_field(obj: &Map<String, Value>, fd: &Fd, problems: &mut Vec<Problem>) -> V {
    let name = fd.name;
    let v = match obj.get(name) {
        None | Some(Value::Null) => {
            if !fd.opt {
                problems.push(problem(
                    Some(name),
                    BadKind::Missing,
                    format!("missing `{name}`"),
                ));
            }
            return V::Null;
        }
        Some(v) => v,
    };
    let wrong = |problems: &mut Vec<Problem>, what: &str| {
        problems.push(problem(
            Some(name),
            BadKind::WrongType,
            format!("`{name}` is not {what}: {v}"),
        ));
        V::Null
    };
    match fd.ty {
        Str => match v {
            Value::String(s) => V::S(s.clone()),
            _ => wrong(problems, "a string"),
        },
        Enum(values) => match v {
            Value::String(s) if values.contains(&s.as_str()) => V::S(s.clone()),
            Value::String(s) => {
                problems.push(problem(
                    Some(name),
                    BadKind::NotInEnum,
                    format!("`{name}` = {s:?} not in {values:?}"),
                ));
                V::Null
            }
            _ => wrong(problems, "a string"),
        },
        Int => match v.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => V::I(i),
            Some(_) => {
                problems.push(problem(
                    Some(name),
                    BadKind::OutOfRange,
                    format!("`{name}` = {v} does not fit 32 bits"),
                ));
                V::Null
            }
            None => wrong(problems, "an integer"),
        },
        Int64 => match v.as_i64() {
            Some(i) => V::I(i),
            None => wrong(problems, "a 64-bit integer"),
        },
        Dbl => match v {
            Value::Number(n) => V::F(n.as_f64().expect("a JSON number is an f64")),
            _ => wrong(problems, "a number"),
        },
        Bool => match v {
            Value::Bool(b) => V::B(*b),
            _ => wrong(problems, "a boolean"),
        },
        Ts => match v {
            Value::String(s) => match parse_rfc3339_us(s) {
                Some(t) => V::Ts(t),
                None => {
                    problems.push(problem(
                        Some(name),
                        BadKind::BadTimestamp,
                        format!("`{name}` = {s:?} is not RFC 3339"),
                    ));
                    V::Null
                }
            },
            _ => wrong(problems, "an RFC 3339 string"),
        },
    }
}

fn classify_event(obj: &Map<String, Value>, fields: &'static [Fd]) -> Kind {
    let mut problems = Vec::new();
    let vals: Vec<V> = fields
        .iter()
        .map(|fd| check_field(obj, fd, &mut problems))
        .collect();
    if !problems.is_empty() {
        return Kind::Bad(problems);
    }
    let ts_idx = fields.iter().position(|f| f.name == "ts").unwrap();
    let ts = vals[ts_idx].as_ts().unwrap();
    Kind::Event(Event {
        ts,
        vals,
        late: Vec::new(),
        corrected: Vec::new(),
    })
}

fn classify_cdc(obj: &Map<String, Value>, pk: &str, fields: &'static [Fd]) -> Kind {
    let mut p = Vec::new();
    let mut vals = Vec::new();
    let op = match obj.get("op") {
        Some(Value::String(s)) if ["c", "u", "d", "r"].contains(&s.as_str()) => Some(s.as_str()),
        None | Some(Value::Null) => {
            p.push(problem(Some("op"), BadKind::Envelope, "missing op"));
            None
        }
        Some(other) => {
            p.push(problem(
                Some("op"),
                BadKind::Envelope,
                format!("bad op {other}"),
            ));
            None
        }
    };
    let ts = obj.get("ts_ms").and_then(Value::as_i64);
    if ts.is_none() {
        p.push(problem(
            Some("ts_ms"),
            BadKind::Envelope,
            "ts_ms missing or not an integer",
        ));
    }
    let ts = ts.and_then(|ms| ms.checked_mul(1000));
    match obj.get("source") {
        Some(Value::Object(src)) => {
            if src.get("lsn").and_then(Value::as_i64).is_none() {
                p.push(problem(
                    Some("lsn"),
                    BadKind::Envelope,
                    "source.lsn missing or not an integer",
                ));
            }
        }
        _ => p.push(problem(
            Some("source"),
            BadKind::Envelope,
            "source missing or not an object",
        )),
    }
    match op {
        Some("d") => {
            if !matches!(obj.get("after"), None | Some(Value::Null)) {
                p.push(problem(
                    Some("after"),
                    BadKind::Envelope,
                    "a delete with a non-null after",
                ));
            }
            match obj.get("before") {
                Some(Value::Object(before)) => {
                    if !matches!(before.get(pk), Some(Value::String(_))) {
                        p.push(problem(
                            Some(pk),
                            BadKind::Envelope,
                            format!("before lacks the key `{pk}`"),
                        ));
                    }
                }
                _ => p.push(problem(
                    Some("before"),
                    BadKind::Envelope,
                    "a delete without a before object",
                )),
            }
        }
        Some(_) => match obj.get("after") {
            Some(Value::Object(after)) => {
                vals = fields
                    .iter()
                    .map(|fd| check_field(after, fd, &mut p))
                    .collect();
            }
            _ => p.push(problem(
                Some("after"),
                BadKind::Envelope,
                "after missing or not an object",
            )),
        },
        None => {}
    }
    if !p.is_empty() {
        return Kind::Bad(p);
    }
    let deleted = op == Some("d");
    let side = if deleted { "before" } else { "after" };
    let Some(ts) = ts else {
        return Kind::Bad(vec![problem(
            Some("ts_ms"),
            BadKind::OutOfRange,
            "ts_ms out of range",
        )]);
    };
    Kind::Cdc(Change {
        key: obj[side][pk].as_str().unwrap().to_string(),
        lsn: obj["source"]["lsn"].as_i64().unwrap(),
        ts,
        deleted,
        fields,
        vals,
    })
}

fn classify_line(topic: &str, bytes: &[u8]) -> (String, Kind) {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.to_string(),
        Err(_) => {
            let raw = String::from_utf8_lossy(bytes).into_owned();
            return (
                raw,
                Kind::Bad(vec![problem(None, BadKind::NotUtf8, "not UTF-8")]),
            );
        }
    };
    if text.trim().is_empty() {
        return (text, Kind::Blank);
    }
    let value: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            return (
                text,
                Kind::Bad(vec![problem(None, BadKind::NotJson, e.to_string())]),
            )
        }
    };
    let kind = match &value {
        Value::Null => Kind::Tombstone,
        Value::Object(obj) => {
            if let Some(fields) = event_fields(topic) {
                classify_event(obj, fields)
            } else if let Some((pk, fields)) = cdc_spec(topic) {
                classify_cdc(obj, pk, fields)
            } else {
                panic!("topic {topic} is not in the contract");
            }
        }
        _ => Kind::Bad(vec![problem(None, BadKind::NotObject, "not a JSON object")]),
    };
    (text, kind)
}

/// Splits a file into lines the way a line reader does: on `\n`, a final line
/// without newline counts, a final newline does not start another line.
fn split_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        lines.pop();
    }
    lines
}

/// `<dir>/<topic>/<partition>.jsonl`, sorted by (topic, partition).
fn list_files(dir: &Path) -> Vec<(String, i32, PathBuf)> {
    let mut out = Vec::new();
    for topic_dir in std::fs::read_dir(dir).expect("input dir") {
        let topic_dir = topic_dir.unwrap().path();
        if !topic_dir.is_dir() {
            continue;
        }
        let topic = topic_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for f in std::fs::read_dir(&topic_dir).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let Some(num) = name.strip_suffix(".jsonl") else {
                continue;
            };
            let partition: i32 = num
                .parse()
                .unwrap_or_else(|_| panic!("odd input file name {}", f.display()));
            out.push((topic.clone(), partition, f));
        }
    }
    out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    out
}

fn load_input(dir: &Path) -> Input {
    let mut files = Vec::new();
    for (topic, partition, path) in list_files(dir) {
        let bytes = std::fs::read(&path).unwrap();
        let msgs = split_lines(&bytes)
            .into_iter()
            .enumerate()
            .map(|(i, line)| {
                let (raw, kind) = classify_line(&topic, line);
                Msg {
                    offset: i as i64,
                    raw,
                    kind,
                }
            })
            .collect();
        let fields = event_fields(&topic);
        files.push(InFile {
            topic,
            partition,
            fields,
            msgs,
        });
    }
    Input { files }
}

// ===========================================================================
// Reading order and watermarks (§2, as the engine documents it)
// ===========================================================================

/// Visits the files in rounds of `batch` lines each, in (topic, partition) order,
/// tracks every partition's watermark (valid events' `ts`, valid changes' `ts_ms`)
/// and marks each valid event late for the windowed tables whose watermark (min over
/// the partitions of their event and CDC topics, just before the event) has reached
/// the end of the event's window; for session windows, see [`Sessions`].
fn simulate(input: &mut Input, batch: usize) -> Vec<Sessions> {
    let n = input.files.len();
    let mut max_ts: Vec<Option<i64>> = vec![None; n];
    let mut finished = vec![false; n];
    let mut pos = vec![0usize; n];
    // For each table, the files its watermark covers; for each file, the tables it feeds.
    let clock_files: Vec<Vec<usize>> = WIN_TABLES
        .iter()
        .map(|t| {
            (0..n)
                .filter(|&f| {
                    let topic = input.files[f].topic.as_str();
                    t.topics.contains(&topic) || t.joins.contains(&topic)
                })
                .collect()
        })
        .collect();
    let file_tables: Vec<Vec<usize>> = (0..n)
        .map(|f| {
            (0..WIN_TABLES.len())
                .filter(|&t| {
                    WIN_TABLES[t]
                        .topics
                        .contains(&input.files[f].topic.as_str())
                })
                .collect()
        })
        .collect();
    // Per file, the columns of each table's session key and of its filter's field.
    let column = |f: usize, name: &str| {
        input.files[f]
            .fields
            .and_then(|fs| fs.iter().position(|x| x.name == name))
    };
    let key_cols: Vec<Vec<Vec<usize>>> = (0..n)
        .map(|f| {
            WIN_TABLES
                .iter()
                .map(|w| w.session_key.iter().filter_map(|k| column(f, k)).collect())
                .collect()
        })
        .collect();
    let only_col: Vec<Vec<Option<(usize, &str)>>> = (0..n)
        .map(|f| {
            WIN_TABLES
                .iter()
                .map(|w| w.only.and_then(|(field, value)| Some((column(f, field)?, value))))
                .collect()
        })
        .collect();
    let wm_of = |f: usize, max_ts: &[Option<i64>], finished: &[bool]| -> i64 {
        if finished[f] {
            i64::MAX
        } else {
            max_ts[f].map_or(i64::MIN, |m| m - OUT_OF_ORDERNESS_US)
        }
    };
    let table_wm = |t: usize, max_ts: &[Option<i64>], finished: &[bool]| -> i64 {
        clock_files[t]
            .iter()
            .map(|&g| wm_of(g, max_ts, finished))
            .min()
            .unwrap_or(i64::MAX)
    };
    let mut sessions: Vec<Sessions> = WIN_TABLES.iter().map(|w| Sessions::new(w.size)).collect();
    let session_tables: Vec<usize> = (0..WIN_TABLES.len()).filter(|&t| WIN_TABLES[t].slide == 0).collect();
    loop {
        let mut visited = false;
        for f in 0..n {
            if finished[f] {
                continue;
            }
            visited = true;
            let file = &mut input.files[f];
            let len = file.msgs.len();
            let end = (pos[f] + batch).min(len);
            for i in pos[f]..end {
                let offset = file.msgs[i].offset;
                let ev = match &mut file.msgs[i].kind {
                    Kind::Event(ev) => ev,
                    Kind::Cdc(c) => {
                        max_ts[f] = Some(max_ts[f].map_or(c.ts, |m| m.max(c.ts)));
                        continue;
                    }
                    _ => continue,
                };
                for &t in &file_tables[f] {
                    let wm = table_wm(t, &max_ts, &finished);
                    let w = &WIN_TABLES[t];
                    if let Some((col, value)) = only_col[f][t] {
                        if ev.vals[col].as_str() != Some(value) {
                            continue;
                        }
                    }
                    let late = if w.slide == 0 {
                        let key = session_key(&key_cols[f][t].iter().map(|&c| ev.vals[c].as_str()).collect::<Vec<_>>());
                        let at = (file.topic.clone(), file.partition, offset);
                        let late = sessions[t].late(&key, ev.ts, wm, &at);
                        if !late {
                            sessions[t].add(&key, ev.ts, at);
                        }
                        late
                    } else {
                        // Late once the first window holding the event was emitted
                        // (hopping tables: the event then counts in none of its windows).
                        let first_end = window_start(ev.ts, w.slide) + w.slide;
                        if first_end <= wm && wm < first_end + w.corrections {
                            ev.corrected.push(t);
                        }
                        first_end + w.corrections <= wm
                    };
                    if late {
                        ev.late.push((t, wm));
                    }
                }
                max_ts[f] = Some(max_ts[f].map_or(ev.ts, |m| m.max(ev.ts)));
            }
            pos[f] = end;
            if pos[f] >= len {
                finished[f] = true;
            }
            // The engine emits windows after each batch.
            for &t in &session_tables {
                sessions[t].close(table_wm(t, &max_ts, &finished), None);
            }
        }
        if !visited {
            break;
        }
    }
    for s in &mut sessions {
        s.close(i64::MAX, None);
    }
    sessions
}

/// A session's key from its key fields' values (absent ones as the empty string).
fn session_key(parts: &[Option<&str>]) -> String {
    parts.iter().map(|p| p.unwrap_or("")).collect::<Vec<_>>().join("\u{1f}")
}

type Session = (i64, i64, i64); // first event, last event, events

/// A session table's windows by key, as the simulation goes.
/// A session is emitted once the watermark reaches its end (last event + gap). An
/// event is late when the table's watermark just before it has passed its time plus
/// the gap, or when it lies before the end of its user's latest emitted session (it
/// would have extended it). Otherwise it merges with every open session of its user
/// it is within the gap of.
///
/// The engine emits after each batch, but judges each event by the sessions that
/// have ended by that event's watermark, emitted yet or not, so that batch cuts do
/// not matter: the same as emitting per event, which is what this does (the user's
/// sessions are closed at the event's watermark before it is judged).
struct Sessions {
    gap: i64,
    open: BTreeMap<String, Vec<Session>>,
    emitted: Vec<(String, Session)>,
    emitted_end: HashMap<String, i64>,
    /// Events that merged two or more open sessions into one.
    bridges: Vec<Lineage>,
    /// Events late only because of their user's emitted session.
    late_after_emitted: Vec<Lineage>,
    /// Of those, the ones whose session ended after the last batch: emitting only
    /// after each batch, and judging by emitted sessions only, would take them in.
    ended_in_batch: Vec<Lineage>,
}

impl Sessions {
    fn new(gap: i64) -> Sessions {
        Sessions {
            gap,
            open: BTreeMap::new(),
            emitted: Vec::new(),
            emitted_end: HashMap::new(),
            bridges: Vec::new(),
            late_after_emitted: Vec::new(),
            ended_in_batch: Vec::new(),
        }
    }

    fn late(&mut self, user: &str, t: i64, wm: i64, at: &Lineage) -> bool {
        if t + self.gap <= wm {
            return true;
        }
        let after = |s: &Self| s.emitted_end.get(user).is_some_and(|&end| t < end);
        let after_batch = after(self);
        self.close(wm, Some(user));
        if !after(self) {
            return false;
        }
        self.late_after_emitted.push(at.clone());
        if !after_batch {
            self.ended_in_batch.push(at.clone());
        }
        true
    }

    fn add(&mut self, user: &str, t: i64, at: Lineage) {
        let open = self.open.entry(user.to_string()).or_default();
        let (mut s, mut merged, gap) = ((t, t, 1), 0, self.gap);
        open.retain(|&(first, last, n)| {
            let joins = first - gap < t && t < last + gap;
            if joins {
                s = (s.0.min(first), s.1.max(last), s.2 + n);
                merged += 1;
            }
            !joins
        });
        open.push(s);
        if merged >= 2 {
            self.bridges.push(at);
        }
    }

    /// Emits the open sessions (of `only` that user) that end by `wm`.
    fn close(&mut self, wm: i64, only: Option<&str>) {
        let users = self
            .open
            .iter_mut()
            .filter(|(u, _)| only.is_none_or(|o| o == u.as_str()));
        for (user, open) in users {
            let gap = self.gap;
            open.retain(|&s| {
                let end = s.1 + gap;
                if end > wm {
                    return true;
                }
                let e = self.emitted_end.entry(user.clone()).or_insert(end);
                *e = (*e).max(end);
                self.emitted.push((user.clone(), s));
                false
            });
        }
    }
}

// ===========================================================================
// Access to valid events
// ===========================================================================

struct Ev<'a> {
    file: &'a InFile,
    msg: &'a Msg,
    e: &'a Event,
}

impl<'a> Ev<'a> {
    fn v(&self, name: &str) -> &'a V {
        let fields = self.file.fields.unwrap();
        let i = fields
            .iter()
            .position(|f| f.name == name)
            .unwrap_or_else(|| panic!("{} has no field {name}", self.file.topic));
        &self.e.vals[i]
    }
    fn s(&self, name: &str) -> Option<&'a str> {
        self.v(name).as_str()
    }
    fn str(&self, name: &str) -> &'a str {
        self.s(name).unwrap()
    }
    fn i(&self, name: &str) -> i64 {
        self.v(name).as_i64().unwrap()
    }
    fn f(&self, name: &str) -> Option<f64> {
        self.v(name).as_f64()
    }
    fn b(&self, name: &str) -> bool {
        self.v(name).as_bool().unwrap()
    }
    fn lineage(&self) -> Lineage {
        (
            self.file.topic.clone(),
            self.file.partition,
            self.msg.offset,
        )
    }
    fn late_for(&self, table: usize) -> bool {
        self.e.late.iter().any(|(t, _)| *t == table)
    }
}

fn events<'a>(input: &'a Input, topics: &'a [&'a str]) -> impl Iterator<Item = Ev<'a>> + 'a {
    input
        .files
        .iter()
        .filter(move |f| topics.contains(&f.topic.as_str()))
        .flat_map(|file| {
            file.msgs.iter().filter_map(move |msg| match &msg.kind {
                Kind::Event(e) => Some(Ev { file, msg, e }),
                _ => None,
            })
        })
}

/// The events that count for a windowed table: its topics' valid events not late for it.
fn on_time<'a>(input: &'a Input, table: usize) -> impl Iterator<Item = Ev<'a>> + 'a {
    events(input, WIN_TABLES[table].topics).filter(move |e| !e.late_for(table))
}

/// A CDC topic's valid changes in the order they are read: by round, then partition.
fn changes<'a>(input: &'a Input, topic: &str) -> Vec<&'a Change> {
    let mut c: Vec<(usize, i32, i64, &Change)> = Vec::new();
    for f in input.files.iter().filter(|f| f.topic == topic) {
        for m in &f.msgs {
            if let Kind::Cdc(ch) = &m.kind {
                c.push((m.offset as usize / BATCH_SIZE, f.partition, m.offset, ch));
            }
        }
    }
    c.sort_by_key(|x| (x.0, x.1, x.2));
    c.into_iter().map(|x| x.3).collect()
}

/// The mirror as of `t` (µs) of `changes` (in the order read): per key, the change
/// with the highest lsn among those with `ts_ms` at or before `t`, unless a delete.
/// A change whose lsn was already read for its key is ignored: the first copy stands.
fn mirror_as_of<'a>(changes: &[&'a Change], t: i64) -> BTreeMap<&'a str, &'a Change> {
    let mut seen: HashSet<(&str, i64)> = HashSet::new();
    let mut win: BTreeMap<&str, &Change> = BTreeMap::new();
    for c in changes {
        if seen.insert((&c.key, c.lsn))
            && c.ts <= t
            && win.get(c.key.as_str()).is_none_or(|w| w.lsn < c.lsn)
        {
            win.insert(&c.key, c);
        }
    }
    win.retain(|_, c| !c.deleted);
    win
}

// ===========================================================================
// Hand-written edge cases, appended after generating
// ===========================================================================

fn append_lines(path: &Path, lines: &[Vec<u8>]) {
    let existing = std::fs::read(path).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    if !existing.is_empty() && !existing.ends_with(b"\n") {
        f.write_all(b"\n").unwrap();
    }
    for l in lines {
        f.write_all(l).unwrap();
        f.write_all(b"\n").unwrap();
    }
}

fn set(template: &Map<String, Value>, mods: &[(&str, Value)]) -> Map<String, Value> {
    let mut o = template.clone();
    for (k, v) in mods {
        o.insert(k.to_string(), v.clone());
    }
    o
}

fn without(template: &Map<String, Value>, names: &[&str]) -> Map<String, Value> {
    let mut o = template.clone();
    for n in names {
        o.remove(*n);
    }
    o
}

fn line(o: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(o).unwrap()
}

/// Appends valid and bad edge cases to the highest partition of every topic: offsets,
/// lower-case separators, nine fractional digits, integers in double fields, missing
/// nullable fields, unknown fields, events late by a day, and bad lines of every kind.
fn append_edge_cases(in_dir: &Path) {
    let files = list_files(in_dir);
    let mut by_topic: BTreeMap<String, Vec<(i32, PathBuf)>> = BTreeMap::new();
    for (t, p, path) in &files {
        by_topic
            .entry(t.clone())
            .or_default()
            .push((*p, path.clone()));
    }
    for (topic, parts) in &by_topic {
        // The highest partition: read after the topic's other partitions in each round,
        // so that an old event appended there is late even for a small topic.
        let target = &parts.last().unwrap().1;
        // A valid template from the target file, and the event-time range of the topic.
        let mut template: Option<Map<String, Value>> = None;
        let mut min_ts = i64::MAX;
        let mut max_ts_target = i64::MIN;
        for (_, path) in parts {
            let bytes = std::fs::read(path).unwrap();
            for l in split_lines(&bytes) {
                let (raw, kind) = classify_line(topic, l);
                let ok = match &kind {
                    Kind::Event(e) => {
                        min_ts = min_ts.min(e.ts);
                        if path == target {
                            max_ts_target = max_ts_target.max(e.ts);
                        }
                        true
                    }
                    Kind::Cdc(c) => !c.deleted,
                    _ => false,
                };
                if ok && path == target && template.is_none() {
                    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(&raw) {
                        template = Some(o);
                    }
                }
            }
        }
        let Some(tpl) = template else {
            eprintln!(
                "note: no valid message in {} to build edge cases from",
                target.display()
            );
            continue;
        };
        let mut lines: Vec<Vec<u8>> = Vec::new();
        if event_fields(topic).is_some() {
            let id = match topic.as_str() {
                T_GATEWAY => "request_id",
                T_CALLS => "call_id",
                _ => "event_id",
            };
            let eid = |s: &str| json!(format!("edge-{topic}-{s}"));
            let base = window_start(max_ts_target, 1_000_000); // whole second, ≤ the file's max
            let hour = base.rem_euclid(DAY_US) / 3_600_000_000;
            // An offset that puts the local date on another day than the UTC date.
            let far = if hour < 12 { -12 * 60 } else { 12 * 60 };
            let early = window_start(min_ts, 1_000_000);
            // Valid.
            lines.push(line(&set(
                &tpl,
                &[
                    (id, eid("offset")),
                    (
                        "ts",
                        json!(fmt_rfc3339(base + 125_000, far, "125", 'T', 'Z')),
                    ),
                ],
            )));
            lines.push(line(&set(
                &tpl,
                &[
                    (id, eid("nanos")),
                    (
                        "ts",
                        json!(fmt_rfc3339(base + 123_456, 0, "123456789", 't', 'z')),
                    ),
                    ("x_unknown", json!({"nested": [1, 2, {"a": null}]})),
                ],
            )));
            lines.push(line(&set(
                &tpl,
                &[
                    (id, eid("nofrac")),
                    ("ts", json!(fmt_rfc3339(base, -210, "", 'T', 'Z'))),
                ],
            )));
            lines.push(line(&set(
                &tpl,
                &[
                    (id, eid("late")),
                    ("ts", json!(fmt_rfc3339(early, 0, "", 'T', 'Z'))),
                ],
            )));
            lines.push(line(&set(
                &tpl,
                &[
                    (id, eid("late-offset")),
                    (
                        "ts",
                        json!(fmt_rfc3339(early + 7_000, 345, "007", 'T', '+')),
                    ),
                ],
            )));
            lines.push(Vec::new()); // a blank line
                                    // Bad timestamps.
            let no_offset = fmt_rfc3339(base + 125_000, 0, "125", 'T', 'Z');
            lines.push(line(&without(&tpl, &["ts"])));
            lines.push(line(&set(
                &tpl,
                &[("ts", json!(&no_offset[..no_offset.len() - 1]))],
            )));
            lines.push(line(&set(
                &tpl,
                &[(
                    "ts",
                    json!(fmt_rfc3339(base + 123_456, 0, "1234567891", 'T', 'Z')),
                )],
            )));
            lines.push(line(&set(
                &tpl,
                &[("ts", json!(fmt_rfc3339(base, 0, "", ' ', 'Z')))],
            )));
            lines.push(line(&set(&tpl, &[("ts", json!("2026-02-30T10:00:00Z"))])));
            lines.push(line(&set(&tpl, &[("ts", json!(base / 1000))])));
            lines.push(line(&set(
                &tpl,
                &[(
                    "ts",
                    json!(fmt_rfc3339(base, 0, "", 'T', 'Z').replace('Z', "") + "+2:00"),
                )],
            )));
            // Bad: a string field of another type.
            lines.push(line(&set(&tpl, &[(id, json!(12345))])));
            let bad_enum = json!("billing");
            // Valid lines below carry a time close to the file's last one (one fractional
            // digit), so that they count in the aggregates rather than being late.
            let recent = json!(fmt_rfc3339(base + 500_000, 0, "5", 'T', 'Z'));
            match topic.as_str() {
                T_GATEWAY => {
                    lines.push(line(&set(
                        &tpl,
                        &[
                            (id, eid("types")),
                            ("ts", recent.clone()),
                            ("duration_ms", json!(150)),
                            ("user_id", Value::Null),
                            ("bytes_out", json!(5_000_000_000i64)),
                            ("status", json!(503)),
                        ],
                    )));
                    lines.push(line(&without(
                        &set(&tpl, &[(id, eid("no-org")), ("ts", recent.clone())]),
                        &["org_id", "user_id"],
                    )));
                    lines.push(line(&set(&tpl, &[("status", json!("200"))])));
                    lines.push(line(&set(&tpl, &[("status", json!(200.5))])));
                    lines.push(line(&set(&tpl, &[("status", json!(3_000_000_000i64))])));
                    lines.push(line(&set(&tpl, &[("bytes_out", json!(1.5))])));
                    lines.push(line(&set(&tpl, &[("duration_ms", json!("12"))])));
                    lines.push(line(&set(&tpl, &[("user_id", json!(17))])));
                    lines.push(line(&set(&tpl, &[("auth_outcome", json!("bogus"))])));
                    lines.push(line(&set(&tpl, &[("service", bad_enum.clone())])));
                    lines.push(line(&set(&tpl, &[("rate_limited", json!("true"))])));
                    lines.push(line(&without(&tpl, &["route"])));
                    lines.push(b"[1,2]".to_vec());
                    lines.push(b"\"just a string\"".to_vec());
                    lines.push(b"42".to_vec());
                    lines.push(b"{\"request_id\": \"x\", ".to_vec());
                    lines.push(b"{}".to_vec());
                    lines.push(b"\xff\xfe{not utf-8".to_vec());
                    lines.push(Vec::new());
                }
                T_CALLS => {
                    lines.push(line(&set(
                        &tpl,
                        &[
                            (id, eid("null-error")),
                            ("ts", recent.clone()),
                            ("error", Value::Null),
                            ("attempt", json!(3)),
                            ("duration_ms", json!(0)),
                        ],
                    )));
                    lines.push(line(&without(
                        &set(&tpl, &[(id, eid("no-error")), ("ts", recent.clone())]),
                        &["error"],
                    )));
                    lines.push(line(&set(&tpl, &[("breaker_state", json!("closed"))])));
                    lines.push(line(&without(&tpl, &["attempt"])));
                    lines.push(line(&set(&tpl, &[("attempt", json!(1.0))])));
                    lines.push(line(&set(&tpl, &[("success", json!(1))])));
                    lines.push(line(&set(&tpl, &[("service", bad_enum.clone())])));
                    lines.push(line(&set(&tpl, &[("error", json!(5))])));
                }
                T_PROGRESS => {
                    lines.push(line(&set(
                        &tpl,
                        &[
                            (id, eid("int-delta")),
                            ("ts", recent.clone()),
                            ("progress_delta", json!(0)),
                            ("completed", json!(true)),
                        ],
                    )));
                    lines.push(line(&set(&tpl, &[("completed", json!(1))])));
                    lines.push(line(&set(&tpl, &[("minutes_spent", json!("3"))])));
                    lines.push(line(&set(&tpl, &[("user_id", Value::Null)])));
                }
                T_ASSESS => {
                    lines.push(line(&set(
                        &tpl,
                        &[
                            (id, eid("int-score")),
                            ("ts", recent.clone()),
                            ("score", json!(100)),
                            ("passed", json!(true)),
                        ],
                    )));
                    lines.push(line(&set(&tpl, &[("attempt", json!(1.0))])));
                    lines.push(line(&set(&tpl, &[("score", json!("90"))])));
                    lines.push(line(&set(&tpl, &[("attempt", json!(2_147_483_648i64))])));
                    lines.push(line(&set(&tpl, &[("passed", json!("true"))])));
                    // Blank lines up to the next round, then an old event: late for the
                    // tables joining CDC feeds too, which are read by then (in round 1
                    // they come after this topic and hold those tables back).
                    let n = split_lines(&std::fs::read(target).unwrap()).len() + lines.len();
                    lines.resize(
                        lines.len() + (BATCH_SIZE - n % BATCH_SIZE) % BATCH_SIZE,
                        Vec::new(),
                    );
                    lines.push(line(&set(
                        &tpl,
                        &[
                            (id, eid("late-round-2")),
                            ("ts", json!(fmt_rfc3339(early, 0, "", 'T', 'Z'))),
                        ],
                    )));
                }
                T_INTER => {
                    lines.push(line(&without(
                        &set(
                            &tpl,
                            &[
                                (id, eid("sparse")),
                                ("ts", recent.clone()),
                                ("helpful", Value::Null),
                            ],
                        ),
                        &["topic_id", "latency_ms"],
                    )));
                    lines.push(line(&set(
                        &tpl,
                        &[
                            (id, eid("int-latency")),
                            ("ts", recent.clone()),
                            ("latency_ms", json!(42)),
                        ],
                    )));
                    lines.push(line(&set(&tpl, &[("kind", json!("quiz"))])));
                    lines.push(line(&set(&tpl, &[("helpful", json!("yes"))])));
                    lines.push(line(&set(&tpl, &[("service", bad_enum.clone())])));
                    lines.push(line(&set(&tpl, &[("latency_ms", json!("fast"))])));
                    lines.push(b"{\"event_id\": \"e\", \"ts\": }".to_vec());
                    // Sessions of new users (in a new organisation). `a` and `b` (30 min
                    // 2 s apart) are two, both still open when `bridge` (between them)
                    // comes: it merges them (the watermark, at most `b` − 5 s by then,
                    // stays below `a`'s end); `exact`, a gap after `b`, starts another.
                    // `exact` takes the watermark past the end of `first`'s session, in
                    // the same batch: `late`, which would have extended it, is late.
                    let a = base - 29 * MINUTE_US;
                    let b = a + SESSION_GAP + 2_000_000;
                    let (u1, u2) = (EDGE_SESSION_USER, EDGE_SESSION_USER_2);
                    for (name, user, ts) in [
                        ("session-a", u1, a),
                        ("session-first", u2, base - 20 * MINUTE_US),
                        ("session-b", u1, b),
                        ("session-bridge", u1, a + 20 * MINUTE_US),
                        ("session-exact", u1, b + SESSION_GAP),
                        ("session-late", u2, base + 5 * MINUTE_US),
                    ] {
                        lines.push(line(&set(
                            &tpl,
                            &[
                                (id, eid(name)),
                                ("user_id", json!(user)),
                                ("org_id", json!("org-edge-sessions")), // no enrollments
                                ("ts", json!(fmt_rfc3339(ts, 0, "", 'T', 'Z'))),
                            ],
                        )));
                    }
                }
                T_EXPO => {
                    lines.push(line(&without(
                        &set(
                            &tpl,
                            &[
                                (id, eid("conv-novalue")),
                                ("ts", recent.clone()),
                                ("outcome", json!("converted")),
                            ],
                        ),
                        &["value"],
                    )));
                    lines.push(line(&set(
                        &tpl,
                        &[
                            (id, eid("conv-value")),
                            ("ts", recent.clone()),
                            ("outcome", json!("converted")),
                            ("value", json!(2.5)),
                        ],
                    )));
                    lines.push(line(&set(
                        &tpl,
                        &[
                            (id, eid("exp-null")),
                            ("ts", recent.clone()),
                            ("outcome", json!("exposed")),
                            ("value", Value::Null),
                        ],
                    )));
                    lines.push(line(&set(&tpl, &[("outcome", json!("clicked"))])));
                    lines.push(line(&set(&tpl, &[("value", json!("3"))])));
                    lines.push(line(&set(&tpl, &[("variant", json!(3))])));
                }
                T_CONN => {
                    lines.push(line(&without(
                        &set(
                            &tpl,
                            &[
                                (id, eid("open")),
                                ("ts", recent.clone()),
                                ("action", json!("open")),
                            ],
                        ),
                        &["setup_ms"],
                    )));
                    lines.push(line(&set(
                        &tpl,
                        &[
                            (id, eid("msg")),
                            ("ts", recent.clone()),
                            ("action", json!("message")),
                            ("delivery_ms", json!(12)),
                        ],
                    )));
                    lines.push(line(&set(&tpl, &[("transport", json!("grpc"))])));
                    lines.push(line(&set(&tpl, &[("action", json!("ping"))])));
                    lines.push(line(&set(&tpl, &[("setup_ms", json!("5"))])));
                }
                _ => {}
            }
        } else if let Some((pk, _)) = cdc_spec(topic) {
            let after = tpl
                .get("after")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let src = tpl.get("source").cloned().unwrap_or(Value::Null);
            let lsn = src["lsn"].as_i64().unwrap_or(0);
            let with_after = |mods: &[(&str, Value)], drop: &[&str]| -> Value {
                Value::Object(without(&set(&after, mods), drop))
            };
            let mut source = src.as_object().cloned().unwrap_or_default();
            source.insert("lsn".into(), json!(lsn + 1_000_000));
            let source = Value::Object(source);
            match topic.as_str() {
                "cdc.directory.users" => {
                    lines.push(b"null".to_vec());
                    lines.push(Vec::new());
                    // Valid.
                    lines.push(line(&set(
                        &tpl,
                        &[
                            ("op", json!("u")),
                            ("source", source.clone()),
                            ("after", with_after(&[("locale", Value::Null)], &[])),
                            ("x_extra", json!(1)),
                        ],
                    )));
                    lines.push(line(&set(
                        &tpl,
                        &[("op", json!("r")), ("after", with_after(&[], &["locale"]))],
                    )));
                    lines.push(line(&set(
                        &tpl,
                        &[
                            ("op", json!("d")),
                            ("after", Value::Null),
                            ("before", {
                                let mut b = Map::new();
                                b.insert(
                                    pk.to_string(),
                                    after.get(pk).cloned().unwrap_or(json!("u-x")),
                                );
                                Value::Object(b)
                            }),
                        ],
                    )));
                    // Bad envelopes.
                    lines.push(line(&set(&tpl, &[("op", json!("x"))])));
                    lines.push(line(&without(&tpl, &["op"])));
                    lines.push(line(&without(&tpl, &["ts_ms"])));
                    lines.push(line(&set(&tpl, &[("ts_ms", json!("123"))])));
                    lines.push(line(&set(&tpl, &[("ts_ms", json!(1.5))])));
                    lines.push(line(&set(
                        &tpl,
                        &[("source", json!({"service": "directory", "entity": "users"}))],
                    )));
                    lines.push(line(&without(&tpl, &["source"])));
                    lines.push(line(&set(
                        &tpl,
                        &[(
                            "source",
                            json!({"service": "directory", "entity": "users", "lsn": "7"}),
                        )],
                    )));
                    lines.push(line(&set(
                        &tpl,
                        &[("op", json!("c")), ("after", Value::Null)],
                    )));
                    lines.push(line(&set(
                        &tpl,
                        &[
                            ("op", json!("d")),
                            ("after", Value::Null),
                            ("before", json!({})),
                        ],
                    )));
                    lines.push(line(&without(
                        &set(&tpl, &[("op", json!("d")), ("after", Value::Null)]),
                        &["before"],
                    )));
                    // Bad entity fields.
                    lines.push(line(&set(&tpl, &[("after", with_after(&[], &["role"]))])));
                    lines.push(line(&set(
                        &tpl,
                        &[("after", with_after(&[("role", json!("admin"))], &[]))],
                    )));
                    lines.push(line(&set(
                        &tpl,
                        &[("after", with_after(&[("display_name", json!(5))], &[]))],
                    )));
                }
                "cdc.course_builder.enrollments" => {
                    lines.push(line(&set(
                        &tpl,
                        &[(
                            "after",
                            with_after(&[("enrolled_at", json!("yesterday"))], &[]),
                        )],
                    )));
                    lines.push(line(&set(
                        &tpl,
                        &[
                            ("op", json!("u")),
                            ("source", source.clone()),
                            (
                                "after",
                                with_after(
                                    &[("enrolled_at", json!("2026-03-01T11:15:02.5+02:00"))],
                                    &[],
                                ),
                            ),
                        ],
                    )));
                }
                "cdc.devlab.labs" => {
                    lines.push(line(&set(
                        &tpl,
                        &[("after", with_after(&[("difficulty", json!(2.5))], &[]))],
                    )));
                    lines.push(b"null".to_vec());
                }
                _ => {}
            }
        }
        append_lines(target, &lines);
    }
}

const EDGE_SESSION_USER: &str = "u-edge-sessions";
const EDGE_SESSION_USER_2: &str = "u-edge-sessions-2";
const EDGE_USER: &str = "u-edge-join";
const EDGE_ORG: &str = "org-edge";
const EDGE_SKILL: &str = "sk-edge";
const EDGE_TRAINER: &str = "u-edge-trainer";
/// Above the generated lsns and the edge cases' (a template's + 1 000 000).
const EDGE_LSN: i64 = 50_000_000;

/// Appends changes with a known outcome, on new keys. For the mirrors: out-of-order
/// lsns, a stale update after a delete, a re-create, a duplicate lsn. For the
/// temporal joins: two assessments of a new user on the first day, read in round 1
/// before the CDC topics, then the changes that place that user in an organisation
/// with requirements, a trainer and an enrollment, read after the events they affect;
/// some at exactly the window's end (so as of it), some just after (so not).
fn append_state_cases(in_dir: &Path) {
    let files = list_files(in_dir);
    let target = |topic: &str| &files.iter().rfind(|f| f.0 == topic).unwrap().2;
    let first_ts = files
        .iter()
        .filter(|f| f.0 == T_ASSESS)
        .flat_map(|f| {
            let bytes = std::fs::read(&f.2).unwrap();
            split_lines(&bytes)
                .into_iter()
                .filter_map(|l| match classify_line(T_ASSESS, l).1 {
                    Kind::Event(e) => Some(e.ts),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .min()
        .unwrap();
    let day = window_start(first_ts, DAY_US);
    let (d, end, h) = (day / 1000, (day + DAY_US) / 1000, 3_600_000); // ms
    let change = |topic: &str, op: &str, ts_ms: i64, lsn: i64, row: Value| {
        let (service, entity) = topic["cdc.".len()..].split_once('.').unwrap();
        let (before, after) = if op == "d" {
            (row, Value::Null)
        } else {
            (Value::Null, row)
        };
        let source = json!({"service": service, "entity": entity, "lsn": lsn});
        let o =
            json!({"op": op, "ts_ms": ts_ms, "before": before, "after": after, "source": source});
        serde_json::to_vec(&o).unwrap()
    };
    let l = EDGE_LSN;
    // (op, ts_ms, lsn − EDGE_LSN, user_id, org_id, display_name)
    let users = [
        // Out of order: the higher lsn first (and with the earlier ts_ms) stands.
        ("c", d + 10_000, 10, "u-edge-m1", "org-1", "m1 new"),
        ("u", d + 20_000, 5, "u-edge-m1", "org-1", "m1 stale"),
        // Deleted, then a stale update that must not bring it back.
        ("c", d, 20, "u-edge-m2", "org-1", "m2"),
        ("d", d + 1000, 22, "u-edge-m2", "", ""),
        ("u", d + 2000, 21, "u-edge-m2", "org-1", "m2 stale"),
        // Deleted, then created again.
        ("c", d, 30, "u-edge-m3", "org-1", "m3"),
        ("d", d + 1000, 31, "u-edge-m3", "", ""),
        ("c", d + 2000, 32, "u-edge-m3", "org-2", "m3 again"),
        // The same lsn twice: the first copy stands.
        ("c", d, 40, "u-edge-m4", "org-1", "m4 first"),
        ("c", d + 1000, 40, "u-edge-m4", "org-1", "m4 second"),
        // The join user: in EDGE_ORG as of the first day's end, elsewhere just after.
        ("c", end - h, 50, EDGE_USER, EDGE_ORG, "join"),
        ("u", end + 1, 51, EDGE_USER, "org-edge-later", "join"),
    ];
    let users = users.map(|(op, ts_ms, lsn, id, org, name)| {
        let row = match op {
            "d" => json!({ "user_id": id }),
            _ => json!({"user_id": id, "org_id": org, "role": "learner",
                "display_name": name, "locale": null}),
        };
        change(C_USERS, op, ts_ms, l + lsn, row)
    });
    append_lines(target(C_USERS), &users);
    let req = |id: &str, level: f64| {
        json!({"requirement_id": id, "org_id": EDGE_ORG, "skill_id": EDGE_SKILL,
            "required_level": level})
    };
    append_lines(
        target(C_REQ),
        &[
            change(C_REQ, "c", d + h, l + 1, req("rq-edge-a", 70.0)),
            // At the window's end: counts, and is the highest that does.
            change(C_REQ, "c", end, l + 2, req("rq-edge-b", 80.0)),
            change(C_REQ, "c", end + 1, l + 3, req("rq-edge-c", 90.0)),
        ],
    );
    let assignment = json!({"assignment_id": "ta-edge", "trainer_id": EDGE_TRAINER,
        "student_id": EDGE_USER, "course_id": "c-edge"});
    append_lines(
        target(C_TEACH),
        &[
            change(C_TEACH, "c", d + 2 * h, l + 1, assignment),
            change(
                C_TEACH,
                "d",
                end + 1,
                l + 2,
                json!({"assignment_id": "ta-edge"}),
            ),
        ],
    );
    let enrolled_at = fmt_rfc3339((d + 3 * h) * 1000, 0, "", 'T', 'Z');
    let enrollment = json!({"enrollment_id": "en-edge", "user_id": EDGE_USER,
        "course_id": "c-edge", "status": "active", "enrolled_at": enrolled_at});
    append_lines(
        target(C_ENROLL),
        &[change(C_ENROLL, "c", d + 3 * h, l + 1, enrollment)],
    );
    let assessment = |i: i64, score: f64| {
        let ts = fmt_rfc3339((d + 12 * h) * 1000 + i * MINUTE_US, 0, "", 'T', 'Z');
        serde_json::to_vec(&json!({"event_id": format!("edge-join-{i}"), "ts": ts,
            "user_id": EDGE_USER, "org_id": EDGE_ORG, "exam_id": "ex-edge",
            "skill_id": EDGE_SKILL, "score": score, "passed": score >= 50.0, "attempt": i}))
        .unwrap()
    };
    append_lines(
        target(T_ASSESS),
        &[assessment(1, 40.0), assessment(2, 60.0)],
    );
}

// ===========================================================================
// Running the binary
// ===========================================================================

fn run_sluice(args: &[&str], log_dir: &Path, name: &str, timeout: Duration) {
    run_sluice_with(args, &[], log_dir, name, timeout)
}

fn run_sluice_with(args: &[&str], env: &[(&str, String)], log_dir: &Path, name: &str, timeout: Duration) {
    let out_path = log_dir.join(format!("{name}.stdout"));
    let err_path = log_dir.join(format!("{name}.stderr"));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start sluice {name}: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            panic!(
                "sluice {name} did not finish within {timeout:?}; stderr:\n{}",
                tail(&stderr, 8000)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    eprintln!("sluice {name}: {status} after {:.1?}", started.elapsed());
    if !status.success() {
        panic!(
            "`sluice {}` failed with {status}; stderr:\n{}",
            args.join(" "),
            tail(&stderr, 8000)
        );
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

// ===========================================================================
// The test
// ===========================================================================

/// Where a run's lake lives: a directory of the test's, or a URL with the
/// environment its store needs and the options to read it back.
struct LakeAt {
    url: Option<String>,
    env: Vec<(&'static str, String)>,
}

#[test]
fn end_to_end() {
    end_to_end_at(LakeAt { url: None, env: Vec::new() });
}

/// The same checks with the lake on S3 (moto's server on loopback).
#[test]
fn end_to_end_on_s3() {
    let s3 = stores::Server::moto("lake");
    end_to_end_at(LakeAt { url: Some("s3://lake/e2e".into()), env: s3.s3_env() });
}

/// The same checks with the lake on Azure Blob (Azurite on loopback).
#[test]
fn end_to_end_on_azure_blob() {
    let azurite = stores::Server::azurite("lake");
    // The test's own reads go through object_store's emulator mode too.
    std::env::set_var("AZURITE_BLOB_STORAGE_URL", azurite.endpoint());
    end_to_end_at(LakeAt { url: Some("az://lake/e2e".into()), env: azurite.azure_env() });
}

fn end_to_end_at(at: LakeAt) {
    let test_start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (_guard, root) = if std::env::var_os("SLUICE_E2E_KEEP").is_some() {
        let root = tmp.keep();
        eprintln!("end_to_end: keeping input and lake in {}", root.display());
        (None, root)
    } else {
        let root = tmp.path().to_path_buf();
        (Some(tmp), root)
    };
    let in_dir = root.join("in");
    let local_lake = root.join("lake");
    let lake = at.url.clone().unwrap_or_else(|| local_lake.to_str().unwrap().to_string());
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let timeout = Duration::from_secs(
        std::env::var("SLUICE_E2E_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1800),
    );

    run_sluice(
        &[
            "generate",
            "--out",
            in_dir.to_str().unwrap(),
            "--seed",
            SEED,
            "--users",
            USERS,
            "--hours",
            HOURS,
            "--schemas",
            &format!("{repo}/schemas"),
        ],
        &root,
        "generate",
        timeout,
    );
    append_state_cases(&in_dir);
    append_edge_cases(&in_dir);
    rest_of_lake::append_cases(&in_dir);

    let run_start_us = now_us();
    run_sluice_with(
        &[
            "run",
            "--input",
            in_dir.to_str().unwrap(),
            "--lake",
            &lake,
            "--batch-size",
            &BATCH_SIZE.to_string(),
            "--schemas",
            &format!("{repo}/schemas"),
            "--sql",
            &format!("{repo}/sql"),
        ],
        &at.env,
        &root,
        "run",
        timeout,
    );
    let run_end_us = now_us();
    let pipeline_done = test_start.elapsed();

    let mut input = load_input(&in_dir);
    let sessions = simulate(&mut input, BATCH_SIZE);
    assert_expectation_not_vacuous(&input);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mirror_paths: Vec<String> = CDC_TOPICS.iter().map(|(t, _, _)| mirror_path(t)).collect();
    let mut paths: Vec<&str> = vec![
        REQUEST_LOGS,
        AUTH_LOGS,
        SERVICE_CALL_LOGS,
        EVENT_PUBLICATION_LOGS,
        RT_INTERACTIONS,
        CONNECTION_EVENTS,
        DEAD_LETTERS,
        LATE_EVENTS,
        THROUGHPUT,
        MEMBERS,
    ];
    paths.extend(WIN_TABLES.iter().map(|t| t.path));
    paths.extend(mirror_paths.iter().map(String::as_str));
    paths.extend(rest_of_lake::PATHS);
    let mut report = Report::default();
    let mut tables: HashMap<&str, TableData> = HashMap::new();
    for p in paths {
        let read = match &at.url {
            None => rt.block_on(read_table(&local_lake, p)),
            Some(url) => rt.block_on(read_table_at(&format!("{url}/{p}"), &stores::options(&at.env))),
        };
        match read {
            Ok(t) => {
                tables.insert(p, t);
            }
            Err(e) => report.diff(p, format!("cannot read the table: {e}")),
        }
    }
    let run = (run_start_us, run_end_us);

    check_landing(&mut report, &tables, &input, run);
    check_dead_letters(&mut report, &tables, &input, run);
    check_late_events(&mut report, &tables, &input, run);
    check_gateway_analytics(&mut report, &tables, &input);
    check_service_call_analytics(&mut report, &tables, &input);
    check_event_processing(&mut report, &tables, &input);
    check_websocket_performance(&mut report, &tables, &input);
    check_daily_analytics(&mut report, &tables, &input);
    check_mirrors(&mut report, &tables, &input);
    check_joins(&mut report, &tables, &input);
    check_sessions(&mut report, &tables, &input, &sessions);
    check_throughput(&mut report, &tables, &input);
    rest_of_lake::check(&mut report, &tables, &input, &sessions, run);
    if at.url.is_none() {
        check_outside_readers(&mut report, &tables, &local_lake);
    }

    eprintln!(
        "end_to_end: pipeline done after {:.1?}, checks done after {:.1?}",
        pipeline_done,
        test_start.elapsed()
    );
    report.finish();
}

/// Analysts read the lake with DuckDB and polars: each must read every table, row for
/// row, as delta-rs does (readers.py compares them), and delta-rs must see the rows this
/// test checked.
fn check_outside_readers(report: &mut Report, tables: &HashMap<&str, TableData>, lake: &Path) {
    let mut paths: Vec<&str> = tables.keys().copied().collect();
    paths.sort();
    let out = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/end_to_end/readers.py"))
        .arg(lake)
        .args(&paths)
        .output()
        .expect("python runs");
    for problem in String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.trim().is_empty()) {
        report.diff("DuckDB and polars", problem.to_string());
    }
    let mut read = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("readers.py printed {line:?}: {e}"));
        let (path, rows) = (v["path"].as_str().unwrap_or_default(), v["rows"].as_u64().unwrap_or(u64::MAX));
        if let Some(t) = tables.get(path) {
            read += 1;
            if rows != t.rows.len() as u64 {
                report.diff(path, format!("Python's deltalake reads {rows} rows, this test {}", t.rows.len()));
            }
        }
    }
    if read != paths.len() || !out.status.success() {
        report.diff("DuckDB and polars", format!("readers.py read {read} of {} tables (exit {:?})", paths.len(), out.status.code()));
    }
}

/// The expectation must exercise what the test is about: bad lines of every kind,
/// tombstones, blank lines, late events for every windowed table, several days.
fn assert_expectation_not_vacuous(input: &Input) {
    let mut bad_kinds: BTreeSet<BadKind> = BTreeSet::new();
    let (mut blanks, mut tombstones, mut valid, mut cdc) = (0, 0, 0, 0);
    let mut late_per_table = vec![0usize; WIN_TABLES.len()];
    let mut corrected = 0;
    let mut topics: BTreeSet<&str> = BTreeSet::new();
    for f in &input.files {
        topics.insert(&f.topic);
        for m in &f.msgs {
            match &m.kind {
                Kind::Blank => blanks += 1,
                Kind::Tombstone => tombstones += 1,
                Kind::Bad(ps) => bad_kinds.extend(ps.iter().map(|p| p.kind)),
                Kind::Event(e) => {
                    valid += 1;
                    for (t, _) in &e.late {
                        late_per_table[*t] += 1;
                    }
                    corrected += e.corrected.len();
                }
                Kind::Cdc(_) => cdc += 1,
            }
        }
    }
    eprintln!(
        "end_to_end: {} files, {} topics, {valid} valid events, {cdc} changes, {tombstones} tombstones, {blanks} blank lines, bad kinds {bad_kinds:?}",
        input.files.len(),
        topics.len()
    );
    for (t, n) in WIN_TABLES.iter().zip(&late_per_table) {
        eprintln!("end_to_end: expected late events for {}: {n}", t.path);
    }
    for (t, _) in EVENT_TOPICS {
        assert!(topics.contains(t), "the generator wrote no {t} topic");
    }
    assert!(
        topics.iter().any(|t| t.starts_with("cdc.")),
        "the generator wrote no CDC topic"
    );
    for k in [
        BadKind::NotUtf8,
        BadKind::NotJson,
        BadKind::NotObject,
        BadKind::Missing,
        BadKind::WrongType,
        BadKind::OutOfRange,
        BadKind::NotInEnum,
        BadKind::BadTimestamp,
        BadKind::Envelope,
    ] {
        assert!(
            bad_kinds.contains(&k),
            "no bad line of kind {k:?} in the input"
        );
    }
    assert!(blanks > 0 && tombstones > 0 && cdc > 0 && valid > 10_000);
    for (t, n) in WIN_TABLES.iter().zip(&late_per_table) {
        assert!(*n > 0, "no late event expected for {}", t.path);
    }
    eprintln!("end_to_end: expected corrections of emitted windows: {corrected}");
    assert!(corrected > 0, "no late event corrects an emitted window");
    let days: BTreeSet<i64> = events(input, DOMAIN_TOPICS)
        .map(|e| e.e.ts.div_euclid(DAY_US))
        .collect();
    assert!(days.len() >= 2, "the input spans {} UTC day(s)", days.len());
}

fn table<'a>(
    report: &mut Report,
    tables: &'a HashMap<&str, TableData>,
    path: &str,
) -> Option<&'a TableData> {
    let t = tables.get(path);
    if t.is_none() && report.count(path) == 0 {
        report.diff(path, "table not read");
    }
    t
}

fn arrow_type(ty: Ty) -> DataType {
    match ty {
        Str | Enum(_) => DataType::Utf8,
        Int => DataType::Int32,
        Int64 => DataType::Int64,
        Dbl => DataType::Float64,
        Bool => DataType::Boolean,
        Ts => ts_utc(),
    }
}

fn lineage_columns() -> Vec<(&'static str, DataType)> {
    vec![
        ("_topic", DataType::Utf8),
        ("_partition", DataType::Int32),
        ("_offset", DataType::Int64),
        ("_ingested_at", ts_utc()),
    ]
}

// ---------------------------------------------------------------------------
// Landing tables
// ---------------------------------------------------------------------------

fn check_landing(
    report: &mut Report,
    tables: &HashMap<&str, TableData>,
    input: &Input,
    run: (i64, i64),
) {
    let all_fields = |fields: &'static [Fd]| -> Vec<(&'static str, DataType)> {
        let mut c: Vec<(&str, DataType)> =
            fields.iter().map(|f| (f.name, arrow_type(f.ty))).collect();
        c.extend(lineage_columns());
        c
    };
    let field_cells = |e: &Ev| -> Vec<(&'static str, V)> {
        e.file
            .fields
            .unwrap()
            .iter()
            .zip(&e.e.vals)
            .map(|(f, v)| (f.name, v.clone()))
            .collect()
    };

    // (table, columns, rows)
    let mut specs: Vec<(
        &str,
        Vec<(&str, DataType)>,
        HashMap<Lineage, Vec<(&str, V)>>,
    )> = Vec::new();
    let collect = |topics: &[&str],
                   keep: &dyn Fn(&Ev) -> bool,
                   cells: &dyn Fn(&Ev) -> Vec<(&'static str, V)>| {
        let mut m: HashMap<Lineage, Vec<(&str, V)>> = HashMap::new();
        for e in events(input, topics) {
            if keep(&e) {
                m.insert(e.lineage(), cells(&e));
            }
        }
        m
    };
    specs.push((
        REQUEST_LOGS,
        all_fields(GATEWAY_REQUESTS),
        collect(&[T_GATEWAY], &|_| true, &field_cells),
    ));
    specs.push((
        AUTH_LOGS,
        all_fields(GATEWAY_REQUESTS),
        collect(
            &[T_GATEWAY],
            &|e| e.str("auth_outcome") != "ok",
            &field_cells,
        ),
    ));
    specs.push((
        SERVICE_CALL_LOGS,
        all_fields(SERVICE_CALLS),
        collect(&[T_CALLS], &|_| true, &field_cells),
    ));
    let mut epl_cols: Vec<(&str, DataType)> = vec![
        ("event_id", DataType::Utf8),
        ("event_type", DataType::Utf8),
        ("ts", ts_utc()),
        ("user_id", DataType::Utf8),
        ("payload", DataType::Utf8),
    ];
    epl_cols.extend(lineage_columns());
    specs.push((
        EVENT_PUBLICATION_LOGS,
        epl_cols,
        collect(DOMAIN_TOPICS, &|_| true, &|e| {
            vec![
                ("event_id", e.v("event_id").clone()),
                ("event_type", V::S(e.file.topic.clone())),
                ("ts", V::Ts(e.e.ts)),
                ("user_id", e.v("user_id").clone()),
                ("payload", V::S(e.msg.raw.clone())),
            ]
        }),
    ));
    specs.push((
        RT_INTERACTIONS,
        all_fields(INTERACTIONS),
        collect(&[T_INTER], &|_| true, &field_cells),
    ));
    specs.push((
        CONNECTION_EVENTS,
        all_fields(CONNECTIONS),
        collect(&[T_CONN], &|_| true, &field_cells),
    ));

    for (path, cols, expected) in specs {
        assert!(!expected.is_empty(), "expected no row in {path}");
        let Some(t) = table(report, tables, path) else {
            continue;
        };
        check_schema(report, t, &cols, false, true);
        compare_by_lineage(report, t, &expected, run);
    }
}

/// Rows keyed by (_topic, _partition, _offset): the key unique, the same key set,
/// every expected cell equal, `_ingested_at` within the run.
fn compare_by_lineage(
    report: &mut Report,
    t: &TableData,
    expected: &HashMap<Lineage, Vec<(&str, V)>>,
    run: (i64, i64),
) {
    let path = t.path.as_str();
    let mut actual: HashMap<Lineage, &Vec<V>> = HashMap::new();
    for row in &t.rows {
        let Some(l) = lineage_of(t, row) else {
            report.diff(
                path,
                format!("row without a usable lineage: {}", t.describe_row(row)),
            );
            continue;
        };
        check_ingested_at(report, t, row, &l, run.0, run.1);
        if actual.insert(l.clone(), row).is_some() {
            report.diff(
                path,
                format!(
                    "{}: more than one row for this (_topic, _partition, _offset)",
                    fmt_lineage(&l)
                ),
            );
        }
    }
    let mut missing: Vec<&Lineage> = expected
        .keys()
        .filter(|l| !actual.contains_key(*l))
        .collect();
    missing.sort();
    for l in missing {
        report.diff(path, format!("{}: row missing", fmt_lineage(l)));
    }
    let mut extra: Vec<(&Lineage, &&Vec<V>)> = actual
        .iter()
        .filter(|(l, _)| !expected.contains_key(*l))
        .collect();
    extra.sort_by(|a, b| a.0.cmp(b.0));
    for (l, row) in extra {
        report.diff(
            path,
            format!(
                "{}: unexpected row ({})",
                fmt_lineage(l),
                t.describe_row(row)
            ),
        );
    }
    let mut keys: Vec<&Lineage> = expected
        .keys()
        .filter(|l| actual.contains_key(*l))
        .collect();
    keys.sort();
    for l in keys {
        let row = actual[l];
        for (c, v) in &expected[l] {
            if let Some(a) = t.get(row, c) {
                if let Err(why) = check_cell(&Exp::Is(v.clone()), a) {
                    report.diff(path, format!("{}: column `{c}`: {why}", fmt_lineage(l)));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------

fn check_dead_letters(
    report: &mut Report,
    tables: &HashMap<&str, TableData>,
    input: &Input,
    run: (i64, i64),
) {
    let mut cols = lineage_columns();
    cols.push(("error", DataType::Utf8));
    cols.push(("raw", DataType::Utf8));
    let mut expected: HashMap<Lineage, (&str, &Vec<Problem>)> = HashMap::new();
    for f in &input.files {
        for m in &f.msgs {
            if let Kind::Bad(ps) = &m.kind {
                expected.insert(
                    (f.topic.clone(), f.partition, m.offset),
                    (m.raw.as_str(), ps),
                );
            }
        }
    }
    assert!(!expected.is_empty());
    let Some(t) = table(report, tables, DEAD_LETTERS) else {
        return;
    };
    check_schema(report, t, &cols, false, false);
    let rows: HashMap<Lineage, Vec<(&str, V)>> = expected
        .iter()
        .map(|(l, (raw, _))| (l.clone(), vec![("raw", V::S(raw.to_string()))]))
        .collect();
    compare_by_lineage(report, t, &rows, run);
    // The reason names the field when one field is the problem.
    let mut problems_checked = 0;
    for row in &t.rows {
        let Some(l) = lineage_of(t, row) else {
            continue;
        };
        let Some((_, ps)) = expected.get(&l) else {
            continue;
        };
        let error = t.get(row, "error").and_then(V::as_str).unwrap_or("");
        if error.trim().is_empty() {
            report.diff(DEAD_LETTERS, format!("{}: empty error", fmt_lineage(&l)));
            continue;
        }
        if let [Problem {
            field: Some(field),
            msg,
            ..
        }] = ps.as_slice()
        {
            problems_checked += 1;
            if !error.contains(field.as_str()) {
                report.diff(
                    DEAD_LETTERS,
                    format!("{}: error {error:?} does not name the field `{field}` (the problem: {msg})", fmt_lineage(&l)),
                );
            }
        }
    }
    eprintln!(
        "end_to_end: dead letters: {} expected, {problems_checked} field names checked",
        expected.len()
    );
}

// ---------------------------------------------------------------------------
// Late events
// ---------------------------------------------------------------------------

fn check_late_events(
    report: &mut Report,
    tables: &HashMap<&str, TableData>,
    input: &Input,
    run: (i64, i64),
) {
    let mut cols = lineage_columns();
    cols.push(("ts", ts_utc()));
    cols.push(("watermark", ts_utc()));
    cols.push(("table", DataType::Utf8));
    cols.push(("raw", DataType::Utf8));
    // (lineage, table) → (ts, watermark, raw)
    let mut expected: BTreeMap<(Lineage, &str), (i64, i64, &str)> = BTreeMap::new();
    let all_topics: Vec<&str> = EVENT_TOPICS.iter().map(|(t, _)| *t).collect();
    for e in events(input, &all_topics) {
        for (ti, wm) in &e.e.late {
            expected.insert(
                (e.lineage(), WIN_TABLES[*ti].path),
                (e.e.ts, *wm, e.msg.raw.as_str()),
            );
        }
    }
    assert!(!expected.is_empty());
    let Some(t) = table(report, tables, LATE_EVENTS) else {
        return;
    };
    check_schema(report, t, &cols, false, false);
    let mut actual: BTreeMap<(Lineage, String), &Vec<V>> = BTreeMap::new();
    for row in &t.rows {
        let (Some(l), Some(tab)) = (lineage_of(t, row), t.get(row, "table").and_then(V::as_str))
        else {
            report.diff(
                LATE_EVENTS,
                format!("row without lineage or table: {}", t.describe_row(row)),
            );
            continue;
        };
        check_ingested_at(report, t, row, &l, run.0, run.1);
        if !WIN_TABLES.iter().any(|w| w.path == tab) {
            report.diff(
                LATE_EVENTS,
                format!(
                    "{}: late for {tab:?}, which is no windowed table",
                    fmt_lineage(&l)
                ),
            );
            continue;
        }
        if actual.insert((l.clone(), tab.to_string()), row).is_some() {
            report.diff(
                LATE_EVENTS,
                format!("{} for {tab}: more than one row", fmt_lineage(&l)),
            );
        }
    }
    for ((l, tab), (ts, wm, raw)) in &expected {
        let key = format!("{} for {tab}", fmt_lineage(l));
        let Some(row) = actual.get(&(l.clone(), tab.to_string())) else {
            report.diff(
                LATE_EVENTS,
                format!(
                    "{key}: row missing (ts {}, watermark {})",
                    fmt_us(*ts),
                    fmt_us(*wm)
                ),
            );
            continue;
        };
        for (c, v) in [
            ("ts", V::Ts(*ts)),
            ("watermark", V::Ts(*wm)),
            ("raw", V::S(raw.to_string())),
        ] {
            if let Some(a) = t.get(row, c) {
                if let Err(why) = check_cell(&Exp::Is(v), a) {
                    report.diff(LATE_EVENTS, format!("{key}: column `{c}`: {why}"));
                }
            }
        }
    }
    for ((l, tab), row) in &actual {
        if !expected.contains_key(&(l.clone(), tab.as_str())) {
            report.diff(
                LATE_EVENTS,
                format!(
                    "{} for {tab}: unexpected row ({})",
                    fmt_lineage(l),
                    t.describe_row(row)
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Windowed analytics
// ---------------------------------------------------------------------------

fn windowed_columns(
    keys: &[(&'static str, DataType)],
    metrics: &[(&'static str, DataType)],
) -> Vec<(&'static str, DataType)> {
    let mut c = vec![("window_start", ts_utc()), ("window_end", ts_utc())];
    c.extend(keys.iter().cloned());
    c.extend(metrics.iter().cloned());
    c.push(("date", DataType::Date32));
    c
}

fn check_windowed(
    report: &mut Report,
    tables: &HashMap<&str, TableData>,
    table_idx: usize,
    keys: &[&'static str],
    metrics: &[(&'static str, DataType)],
    expected: &Expected,
) {
    let w = &WIN_TABLES[table_idx];
    assert!(!expected.is_empty(), "expected no row in {}", w.path);
    let windows: BTreeSet<i64> = expected.keys().map(|(ws, _)| *ws).collect();
    eprintln!(
        "end_to_end: {}: {} expected rows in {} windows",
        w.path,
        expected.len(),
        windows.len()
    );
    let Some(t) = table(report, tables, w.path) else {
        return;
    };
    let key_types: Vec<(&str, DataType)> = keys.iter().map(|k| (*k, DataType::Utf8)).collect();
    check_schema(
        report,
        t,
        &windowed_columns(&key_types, metrics),
        true,
        false,
    );
    compare_windowed(report, t, (w.slide != 0).then_some(w.size), keys, expected);
}

fn ks(parts: &[Option<&str>]) -> Vec<K> {
    parts.iter().map(|p| K::opt(*p)).collect()
}

const I64: DataType = DataType::Int64;
const F64: DataType = DataType::Float64;

fn check_gateway_analytics(report: &mut Report, tables: &HashMap<&str, TableData>, input: &Input) {
    // request_response_times
    #[derive(Default)]
    struct Rrt {
        n: i64,
        e4: i64,
        e5: i64,
        rl: i64,
        d: Vec<f64>,
    }
    let mut acc: BTreeMap<(i64, Vec<K>), Rrt> = BTreeMap::new();
    for e in on_time(input, RRT) {
        let a = acc
            .entry((
                window_start(e.e.ts, MINUTE_US),
                ks(&[e.s("service"), e.s("route")]),
            ))
            .or_default();
        let status = e.i("status");
        a.n += 1;
        a.e4 += (400..=499).contains(&status) as i64;
        a.e5 += (status >= 500) as i64;
        a.rl += e.b("rate_limited") as i64;
        a.d.push(e.f("duration_ms").unwrap());
    }
    let expected: Expected = acc
        .into_iter()
        .map(|(k, a)| {
            let p = p95(&a.d).unwrap();
            let cells = vec![
                ("requests", Exp::Int(a.n)),
                ("errors_4xx", Exp::Int(a.e4)),
                ("errors_5xx", Exp::Int(a.e5)),
                ("rate_limited", Exp::Int(a.rl)),
                ("avg_duration_ms", Exp::Float(mean(&a.d))),
                (
                    "max_duration_ms",
                    Exp::Float(a.d.iter().cloned().reduce(f64::max)),
                ),
                ("p95_duration_ms", Exp::Approx(Some(p))),
                (
                    "slo_breached",
                    Exp::Above {
                        value: p,
                        threshold: 100.0,
                    },
                ),
            ];
            (k, cells)
        })
        .collect();
    check_windowed(
        report,
        tables,
        RRT,
        &["service", "route"],
        &[
            ("requests", I64),
            ("errors_4xx", I64),
            ("errors_5xx", I64),
            ("rate_limited", I64),
            ("avg_duration_ms", F64),
            ("max_duration_ms", F64),
            ("p95_duration_ms", F64),
            ("slo_breached", DataType::Boolean),
        ],
        &expected,
    );

    // load_balancing_metrics
    let mut per_instance: BTreeMap<(i64, Vec<K>), (i64, Vec<f64>)> = BTreeMap::new();
    let mut per_service: HashMap<(i64, String), i64> = HashMap::new();
    for e in on_time(input, LBM) {
        let ws = window_start(e.e.ts, MINUTE_US);
        let a = per_instance
            .entry((ws, ks(&[e.s("service"), e.s("upstream_instance")])))
            .or_default();
        a.0 += 1;
        a.1.push(e.f("duration_ms").unwrap());
        *per_service
            .entry((ws, e.str("service").to_string()))
            .or_default() += 1;
    }
    let expected: Expected = per_instance
        .into_iter()
        .map(|((ws, k), (n, d))| {
            let K::S(service) = &k[0] else { unreachable!() };
            let total = per_service[&(ws, service.clone())];
            let cells = vec![
                ("requests", Exp::Int(n)),
                ("share", Exp::Float(Some(n as f64 / total as f64))),
                ("avg_duration_ms", Exp::Float(mean(&d))),
            ];
            ((ws, k), cells)
        })
        .collect();
    check_windowed(
        report,
        tables,
        LBM,
        &["service", "upstream_instance"],
        &[("requests", I64), ("share", F64), ("avg_duration_ms", F64)],
        &expected,
    );

    // rate_limiting_data
    let mut acc: BTreeMap<(i64, Vec<K>), (i64, i64, HashSet<String>)> = BTreeMap::new();
    for e in on_time(input, RLD) {
        let a = acc
            .entry((window_start(e.e.ts, MINUTE_US), ks(&[e.s("org_id")])))
            .or_default();
        a.0 += 1;
        a.1 += e.b("rate_limited") as i64;
        if let Some(u) = e.s("user_id") {
            a.2.insert(u.to_string());
        }
    }
    assert!(
        acc.keys().any(|(_, k)| k[0] == K::Null),
        "no gateway request without org_id"
    );
    let expected: Expected = acc
        .into_iter()
        .map(|(k, (n, rl, users))| {
            (
                k,
                vec![
                    ("requests", Exp::Int(n)),
                    ("rate_limited", Exp::Int(rl)),
                    ("distinct_users", Exp::Int(users.len() as i64)),
                ],
            )
        })
        .collect();
    check_windowed(
        report,
        tables,
        RLD,
        &["org_id"],
        &[
            ("requests", I64),
            ("rate_limited", I64),
            ("distinct_users", I64),
        ],
        &expected,
    );

    // latency_5m_sliding: every on-time request in each of the five windows it falls in
    let mut acc: BTreeMap<(i64, Vec<K>), Vec<f64>> = BTreeMap::new();
    for e in on_time(input, LSL) {
        let last = window_start(e.e.ts, MINUTE_US);
        for k in 0..5 {
            acc.entry((last - k * MINUTE_US, ks(&[e.s("service")])))
                .or_default()
                .push(e.f("duration_ms").unwrap());
        }
    }
    let expected: Expected = acc
        .into_iter()
        .map(|(k, d)| {
            let cells = vec![
                ("requests", Exp::Int(d.len() as i64)),
                ("p95_duration_ms", Exp::Approx(p95(&d))),
            ];
            (k, cells)
        })
        .collect();
    check_windowed(
        report,
        tables,
        LSL,
        &["service"],
        &[("requests", I64), ("p95_duration_ms", F64)],
        &expected,
    );

    // slo_classes_hourly: requests per service and SLO class (the slo_class UDF)
    let mut acc: BTreeMap<(i64, Vec<K>), i64> = BTreeMap::new();
    for e in on_time(input, SLO) {
        let class = match e.f("duration_ms").unwrap() {
            d if d <= 100.0 => "met",
            d if d <= 500.0 => "degraded",
            _ => "breached",
        };
        *acc.entry((window_start(e.e.ts, HOUR_US), ks(&[e.s("service"), Some(class)])))
            .or_default() += 1;
    }
    let expected: Expected = acc
        .into_iter()
        .map(|(k, n)| (k, vec![("requests", Exp::Int(n))]))
        .collect();
    check_windowed(
        report,
        tables,
        SLO,
        &["service", "slo_class"],
        &[("requests", I64)],
        &expected,
    );

    // errors_hourly: every request not late for it, corrections included (one row
    // per window and service however often the window was emitted)
    let mut acc: BTreeMap<(i64, Vec<K>), (i64, i64)> = BTreeMap::new();
    for e in on_time(input, EHR) {
        let a = acc
            .entry((window_start(e.e.ts, HOUR_US), ks(&[e.s("service")])))
            .or_default();
        a.0 += 1;
        a.1 += (e.i("status") >= 500) as i64;
    }
    let expected: Expected = acc
        .into_iter()
        .map(|(k, (n, e5))| {
            let cells = vec![
                ("requests", Exp::Int(n)),
                ("errors_5xx", Exp::Int(e5)),
                ("error_rate", Exp::Approx(Some(e5 as f64 / n as f64))),
            ];
            (k, cells)
        })
        .collect();
    check_windowed(
        report,
        tables,
        EHR,
        &["service"],
        &[("requests", I64), ("errors_5xx", I64), ("error_rate", F64)],
        &expected,
    );
}

fn check_service_call_analytics(
    report: &mut Report,
    tables: &HashMap<&str, TableData>,
    input: &Input,
) {
    #[derive(Default)]
    struct Shd {
        n: i64,
        ok: i64,
        retries: i64,
        open: i64,
        d: Vec<f64>,
    }
    let mut acc: BTreeMap<(i64, Vec<K>), Shd> = BTreeMap::new();
    for e in on_time(input, SHD) {
        let a = acc
            .entry((window_start(e.e.ts, MINUTE_US), ks(&[e.s("service")])))
            .or_default();
        a.n += 1;
        a.ok += e.b("success") as i64;
        a.retries += (e.i("attempt") > 1) as i64;
        a.open += (e.str("breaker_state") == "OPEN") as i64;
        a.d.push(e.f("duration_ms").unwrap());
    }
    let expected: Expected = acc
        .into_iter()
        .map(|(k, a)| {
            (
                k,
                vec![
                    ("calls", Exp::Int(a.n)),
                    ("successes", Exp::Int(a.ok)),
                    ("failures", Exp::Int(a.n - a.ok)),
                    (
                        "success_rate",
                        Exp::Float(Some(a.ok as f64 * 100.0 / a.n as f64)),
                    ),
                    ("avg_duration_ms", Exp::Float(mean(&a.d))),
                    ("retries", Exp::Int(a.retries)),
                    ("open_circuit_calls", Exp::Int(a.open)),
                ],
            )
        })
        .collect();
    check_windowed(
        report,
        tables,
        SHD,
        &["service"],
        &[
            ("calls", I64),
            ("successes", I64),
            ("failures", I64),
            ("success_rate", F64),
            ("avg_duration_ms", F64),
            ("retries", I64),
            ("open_circuit_calls", I64),
        ],
        &expected,
    );

    let mut acc: BTreeMap<(i64, Vec<K>), (i64, i64)> = BTreeMap::new();
    for e in on_time(input, CBL) {
        let a = acc
            .entry((
                window_start(e.e.ts, MINUTE_US),
                ks(&[e.s("service"), e.s("breaker_state")]),
            ))
            .or_default();
        a.0 += 1;
        a.1 += (!e.b("success")) as i64;
    }
    let expected: Expected = acc
        .into_iter()
        .map(|(k, (n, fail))| {
            (
                k,
                vec![("calls", Exp::Int(n)), ("failures", Exp::Int(fail))],
            )
        })
        .collect();
    check_windowed(
        report,
        tables,
        CBL,
        &["service", "breaker_state"],
        &[("calls", I64), ("failures", I64)],
        &expected,
    );
}

fn check_event_processing(report: &mut Report, tables: &HashMap<&str, TableData>, input: &Input) {
    // Ingestion time per message, from the landing table.
    let mut ingested: HashMap<Lineage, i64> = HashMap::new();
    if let Some(t) = tables.get(EVENT_PUBLICATION_LOGS) {
        for row in &t.rows {
            if let (Some(l), Some(V::Ts(at))) = (lineage_of(t, row), t.get(row, "_ingested_at")) {
                ingested.insert(l, *at);
            }
        }
    }
    let mut acc: BTreeMap<(i64, Vec<K>), (i64, Vec<f64>)> = BTreeMap::new();
    let mut without_ingestion = 0;
    for e in on_time(input, EPL) {
        let a = acc
            .entry((
                window_start(e.e.ts, MINUTE_US),
                ks(&[Some(e.file.topic.as_str())]),
            ))
            .or_default();
        a.0 += 1;
        match ingested.get(&e.lineage()) {
            Some(at) => a.1.push((at - e.e.ts) as f64 / 1000.0),
            None => without_ingestion += 1,
        }
    }
    if without_ingestion > 0 {
        report.note(format!(
            "{without_ingestion} domain event(s) have no row in {EVENT_PUBLICATION_LOGS}: their lag is left out of p95_ingest_lag_ms"
        ));
    }
    let expected: Expected = acc
        .into_iter()
        .map(|(k, (n, lags))| {
            (
                k,
                vec![
                    ("events", Exp::Int(n)),
                    ("p95_ingest_lag_ms", Exp::Approx(p95(&lags))),
                ],
            )
        })
        .collect();
    check_windowed(
        report,
        tables,
        EPL,
        &["event_type"],
        &[("events", I64), ("p95_ingest_lag_ms", F64)],
        &expected,
    );
}

fn check_websocket_performance(
    report: &mut Report,
    tables: &HashMap<&str, TableData>,
    input: &Input,
) {
    #[derive(Default)]
    struct Wsp {
        opens: i64,
        closes: i64,
        messages: i64,
        setup: Vec<f64>,
        delivery: Vec<f64>,
    }
    let mut acc: BTreeMap<(i64, Vec<K>), Wsp> = BTreeMap::new();
    for e in on_time(input, WSP) {
        let a = acc
            .entry((window_start(e.e.ts, MINUTE_US), ks(&[e.s("transport")])))
            .or_default();
        match e.str("action") {
            "open" => a.opens += 1,
            "close" => a.closes += 1,
            _ => a.messages += 1,
        }
        a.setup.extend(e.f("setup_ms"));
        a.delivery.extend(e.f("delivery_ms"));
    }
    assert!(
        acc.values().any(|a| a.setup.is_empty()),
        "no websocket window without setup values"
    );
    let expected: Expected = acc
        .into_iter()
        .map(|(k, a)| {
            (
                k,
                vec![
                    ("opens", Exp::Int(a.opens)),
                    ("closes", Exp::Int(a.closes)),
                    ("messages", Exp::Int(a.messages)),
                    ("p95_setup_ms", Exp::Approx(p95(&a.setup))),
                    ("p95_delivery_ms", Exp::Approx(p95(&a.delivery))),
                ],
            )
        })
        .collect();
    check_windowed(
        report,
        tables,
        WSP,
        &["transport"],
        &[
            ("opens", I64),
            ("closes", I64),
            ("messages", I64),
            ("p95_setup_ms", F64),
            ("p95_delivery_ms", F64),
        ],
        &expected,
    );
}

fn check_daily_analytics(report: &mut Report, tables: &HashMap<&str, TableData>, input: &Input) {
    // engagement_daily
    #[derive(Default)]
    struct Eng {
        n: i64,
        sessions: HashSet<String>,
        kinds: [i64; 4],
        latency: Vec<f64>,
    }
    let mut acc: BTreeMap<(i64, Vec<K>), Eng> = BTreeMap::new();
    for e in on_time(input, ENG) {
        let a = acc
            .entry((
                window_start(e.e.ts, DAY_US),
                ks(&[e.s("user_id"), e.s("org_id")]),
            ))
            .or_default();
        a.n += 1;
        a.sessions.insert(e.str("session_id").to_string());
        let k = ["chat", "lab_run", "content_view", "audio_practice"]
            .iter()
            .position(|k| *k == e.str("kind"))
            .unwrap();
        a.kinds[k] += 1;
        a.latency.extend(e.f("latency_ms"));
    }
    let expected: Expected = acc
        .into_iter()
        .map(|(k, a)| {
            (
                k,
                vec![
                    ("interactions", Exp::Int(a.n)),
                    ("sessions", Exp::Int(a.sessions.len() as i64)),
                    ("chats", Exp::Int(a.kinds[0])),
                    ("lab_runs", Exp::Int(a.kinds[1])),
                    ("content_views", Exp::Int(a.kinds[2])),
                    ("audio_practice", Exp::Int(a.kinds[3])),
                    ("avg_latency_ms", Exp::Float(mean(&a.latency))),
                ],
            )
        })
        .collect();
    assert_days(&expected, "engagement_daily");
    check_windowed(
        report,
        tables,
        ENG,
        &["user_id", "org_id"],
        &[
            ("interactions", I64),
            ("sessions", I64),
            ("chats", I64),
            ("lab_runs", I64),
            ("content_views", I64),
            ("audio_practice", I64),
            ("avg_latency_ms", F64),
        ],
        &expected,
    );

    // velocity_daily
    let mut acc: BTreeMap<(i64, Vec<K>), (i64, i64, f64, f64)> = BTreeMap::new();
    for e in on_time(input, VEL) {
        let a = acc
            .entry((
                window_start(e.e.ts, DAY_US),
                ks(&[e.s("user_id"), e.s("course_id")]),
            ))
            .or_default();
        a.0 += 1;
        a.1 += e.b("completed") as i64;
        a.2 += e.f("progress_delta").unwrap();
        a.3 += e.f("minutes_spent").unwrap();
    }
    let expected: Expected = acc
        .into_iter()
        .map(|(k, (n, done, gain, minutes))| {
            (
                k,
                vec![
                    ("events", Exp::Int(n)),
                    ("topics_completed", Exp::Int(done)),
                    ("progress_gain", Exp::Float(Some(gain))),
                    ("minutes_spent", Exp::Float(Some(minutes))),
                ],
            )
        })
        .collect();
    assert_days(&expected, "velocity_daily");
    check_windowed(
        report,
        tables,
        VEL,
        &["user_id", "course_id"],
        &[
            ("events", I64),
            ("topics_completed", I64),
            ("progress_gain", F64),
            ("minutes_spent", F64),
        ],
        &expected,
    );

    // mastery_daily
    let mut acc: BTreeMap<(i64, Vec<K>), (i64, Vec<f64>)> = BTreeMap::new();
    for e in on_time(input, MAS) {
        let a = acc
            .entry((
                window_start(e.e.ts, DAY_US),
                ks(&[e.s("user_id"), e.s("skill_id")]),
            ))
            .or_default();
        a.0 += e.b("passed") as i64;
        a.1.push(e.f("score").unwrap());
    }
    let beyond_three = acc.values().filter(|(_, scores)| scores.len() > 3).count();
    eprintln!("end_to_end: mastery_daily: {beyond_three} group(s) with more than three scores");
    assert!(beyond_three > 0, "no group where mastery (best three) differs from avg_score's inputs");
    let expected: Expected = acc
        .into_iter()
        .map(|(k, (passes, scores))| {
            (
                k,
                vec![
                    ("attempts", Exp::Int(scores.len() as i64)),
                    ("passes", Exp::Int(passes)),
                    (
                        "best_score",
                        Exp::Float(scores.iter().cloned().reduce(f64::max)),
                    ),
                    ("avg_score", Exp::Float(mean(&scores))),
                    ("mastery", Exp::Approx(mean(&best_three(&scores)))),
                ],
            )
        })
        .collect();
    assert_days(&expected, "mastery_daily");
    check_windowed(
        report,
        tables,
        MAS,
        &["user_id", "skill_id"],
        &[
            ("attempts", I64),
            ("passes", I64),
            ("best_score", F64),
            ("avg_score", F64),
            ("mastery", F64),
        ],
        &expected,
    );

    // score_bands_daily: assessments per skill and score band (the score_band UDF)
    let mut acc: BTreeMap<(i64, Vec<K>), i64> = BTreeMap::new();
    for e in on_time(input, SBD) {
        let band = match e.f("score").unwrap() {
            s if s < 40.0 => "novice",
            s if s < 70.0 => "intermediate",
            s if s < 90.0 => "advanced",
            _ => "expert",
        };
        *acc.entry((window_start(e.e.ts, DAY_US), ks(&[e.s("skill_id"), Some(band)])))
            .or_default() += 1;
    }
    let expected: Expected = acc
        .into_iter()
        .map(|(k, n)| (k, vec![("assessments", Exp::Int(n))]))
        .collect();
    check_windowed(
        report,
        tables,
        SBD,
        &["skill_id", "band"],
        &[("assessments", I64)],
        &expected,
    );

    // results_daily
    #[derive(Default)]
    struct Res {
        exposed: HashSet<String>,
        converted: HashSet<String>,
        value_sum: f64,
    }
    let mut acc: BTreeMap<(i64, Vec<K>), Res> = BTreeMap::new();
    for e in on_time(input, RES) {
        let a = acc
            .entry((
                window_start(e.e.ts, DAY_US),
                ks(&[e.s("experiment_id"), e.s("variant")]),
            ))
            .or_default();
        let user = e.str("user_id").to_string();
        if e.str("outcome") == "exposed" {
            a.exposed.insert(user);
        } else {
            a.converted.insert(user);
            a.value_sum += e.f("value").unwrap_or(0.0);
        }
    }
    let expected: Expected = acc
        .into_iter()
        .map(|(k, a)| {
            let exposed = a.exposed.len() as i64;
            let converted = a.converted.len() as i64;
            let rate = (exposed > 0).then(|| converted as f64 / exposed as f64);
            (
                k,
                vec![
                    ("exposed_users", Exp::Int(exposed)),
                    ("converted_users", Exp::Int(converted)),
                    ("conversion_rate", Exp::Float(rate)),
                    ("value_sum", Exp::Float(Some(a.value_sum))),
                ],
            )
        })
        .collect();
    assert_days(&expected, "results_daily");
    check_windowed(
        report,
        tables,
        RES,
        &["experiment_id", "variant"],
        &[
            ("exposed_users", I64),
            ("converted_users", I64),
            ("conversion_rate", F64),
            ("value_sum", F64),
        ],
        &expected,
    );
}

/// The best three of `scores`, or all of them if fewer (`mastery`).
fn best_three(scores: &[f64]) -> Vec<f64> {
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    sorted.truncate(3);
    sorted
}

fn assert_days(expected: &Expected, what: &str) {
    let days: BTreeSet<i64> = expected.keys().map(|(ws, _)| *ws).collect();
    assert!(
        days.len() >= 2,
        "{what}: expected rows in {} day(s) only",
        days.len()
    );
}

/// A cell of the model's expected rows, as text: to assert that a hand-written case
/// took the path it was written for.
fn model_cell(expected: &Expected, ws: i64, keys: &[&str], col: &str) -> String {
    let key = (ws, keys.iter().map(|k| K::S(k.to_string())).collect());
    let cell = expected
        .get(&key)
        .and_then(|c| c.iter().find(|(n, _)| *n == col));
    cell.map_or("no row".into(), |(_, e)| e.to_string())
}

// ---------------------------------------------------------------------------
// Service mirrors (§3.2)
// ---------------------------------------------------------------------------

fn mirror_path(topic: &str) -> String {
    format!("services/{}", topic["cdc.".len()..].replace('.', "/"))
}

fn check_mirrors(report: &mut Report, tables: &HashMap<&str, TableData>, input: &Input) {
    let users = mirror_as_of(&changes(input, C_USERS), i64::MAX);
    let lsn = |k: &str| users.get(k).map(|c| c.lsn - EDGE_LSN);
    assert_eq!(
        [lsn("u-edge-m1"), lsn("u-edge-m2"), lsn("u-edge-m3")],
        [Some(10), None, Some(32)],
        "the users mirror's hand-written cases: out-of-order lsns, stale update after a delete, re-create"
    );
    assert_eq!(
        users["u-edge-m4"].s("display_name"),
        "m4 first",
        "a duplicate lsn"
    );
    assert_eq!(users[EDGE_USER].s("org_id"), "org-edge-later");
    let mut rows = 0;
    for (topic, pk, fields) in CDC_TOPICS {
        let expected: BTreeMap<String, Vec<(&str, V)>> =
            mirror_as_of(&changes(input, topic), i64::MAX)
                .into_iter()
                .map(|(key, c)| {
                    let mut cells: Vec<(&str, V)> =
                        fields.iter().map(|f| f.name).zip(c.vals.clone()).collect();
                    cells.push(("_lsn", V::I(c.lsn)));
                    cells.push(("_updated_at", V::Ts(c.ts)));
                    (key.to_string(), cells)
                })
                .collect();
        let mut cols: Vec<(&str, DataType)> =
            fields.iter().map(|f| (f.name, arrow_type(f.ty))).collect();
        cols.push(("_lsn", I64));
        cols.push(("_updated_at", ts_utc()));
        rows += expected.len();
        let Some(t) = table(report, tables, &mirror_path(topic)) else {
            continue;
        };
        check_schema(report, t, &cols, false, true);
        compare_keyed(report, t, pk, &expected);
    }
    eprintln!(
        "end_to_end: services/*: {rows} expected rows in {} mirrors",
        CDC_TOPICS.len()
    );

    // analytics/organization/members: the users mirror grouped by organisation
    let mut members: BTreeMap<String, [i64; 4]> = BTreeMap::new();
    for c in users.values() {
        let m = members.entry(c.s("org_id").to_string()).or_default();
        m[0] += 1;
        match c.s("role") {
            "learner" => m[1] += 1,
            "trainer" => m[2] += 1,
            _ => m[3] += 1,
        }
    }
    let expected: BTreeMap<String, Vec<(&str, V)>> = members
        .into_iter()
        .map(|(org, [all, learners, trainers, admins])| {
            let cells = vec![
                ("members", V::I(all)),
                ("learners", V::I(learners)),
                ("trainers", V::I(trainers)),
                ("org_admins", V::I(admins)),
            ];
            (org, cells)
        })
        .collect();
    if let Some(t) = table(report, tables, MEMBERS) {
        let cols = [("org_id", DataType::Utf8), ("members", I64), ("learners", I64), ("trainers", I64), ("org_admins", I64)];
        check_schema(report, t, &cols, false, false);
        compare_keyed(report, t, "org_id", &expected);
    }
}

// ---------------------------------------------------------------------------
// Temporal joins (§2, §3.3): the mirrors as of each window's end
// ---------------------------------------------------------------------------

fn check_joins(report: &mut Report, tables: &HashMap<&str, TableData>, input: &Input) {
    let (users, reqs) = (changes(input, C_USERS), changes(input, C_REQ));
    let (assignments, enrollments) = (changes(input, C_TEACH), changes(input, C_ENROLL));
    // user → organisation, by the users mirror as of `t`
    let orgs = |t: i64| -> HashMap<&str, &str> {
        mirror_as_of(&users, t)
            .into_iter()
            .map(|(k, c)| (k, c.s("org_id")))
            .collect()
    };
    let edge = events(input, &[T_ASSESS])
        .find(|e| e.str("event_id") == "edge-join-1")
        .unwrap();
    assert!(
        edge.late_for(MAS) && !edge.late_for(SKG),
        "the join case's assessments are late for mastery_daily but held on time for skill_gaps_daily by the CDC watermark"
    );
    let day = window_start(edge.e.ts, DAY_US);

    // skill_gaps_daily
    let mut best: BTreeMap<(i64, Vec<K>), f64> = BTreeMap::new();
    for e in on_time(input, SKG) {
        let key = (
            window_start(e.e.ts, DAY_US),
            ks(&[e.s("user_id"), e.s("skill_id")]),
        );
        let b = best.entry(key).or_insert(f64::MIN);
        *b = b.max(e.f("score").unwrap());
    }
    let mut expected = Expected::new();
    for ((ws, k), best) in best {
        let end = ws + DAY_US;
        let (K::S(user), K::S(skill)) = (&k[0], &k[1]) else {
            unreachable!()
        };
        let Some(org) = orgs(end).get(user.as_str()).copied() else {
            continue;
        };
        let required = mirror_as_of(&reqs, end)
            .values()
            .filter(|r| r.s("org_id") == org && r.s("skill_id") == skill)
            .map(|r| r.v("required_level").as_f64().unwrap())
            .reduce(f64::max);
        if let Some(req) = required.filter(|req| req - best > 0.0) {
            let cells = vec![
                ("required_level", Exp::Float(Some(req))),
                ("best_score", Exp::Float(Some(best))),
                ("gap", Exp::Float(Some(req - best))),
            ];
            expected.insert((ws, k), cells);
        }
    }
    let edge_row = [EDGE_USER, EDGE_SKILL];
    assert_eq!(
        model_cell(&expected, day, &edge_row, "required_level"),
        "80.0"
    );
    assert_eq!(model_cell(&expected, day, &edge_row, "gap"), "20.0");
    let metrics = [("required_level", F64), ("best_score", F64), ("gap", F64)];
    check_windowed(
        report,
        tables,
        SKG,
        &["user_id", "skill_id"],
        &metrics,
        &expected,
    );

    // student_progress_daily
    #[derive(Default)]
    struct Act {
        completed: i64,
        scores: Vec<f64>,
    }
    let mut acts: BTreeMap<i64, HashMap<&str, Act>> = BTreeMap::new();
    for e in on_time(input, SPD) {
        let day = acts.entry(window_start(e.e.ts, DAY_US)).or_default();
        let a = day.entry(e.str("user_id")).or_default();
        match e.file.topic.as_str() {
            T_PROGRESS => a.completed += e.b("completed") as i64,
            _ => a.scores.push(e.f("score").unwrap()),
        }
    }
    let mut expected = Expected::new();
    for (ws, acts) in &acts {
        let pairs: BTreeSet<(&str, &str)> = mirror_as_of(&assignments, ws + DAY_US)
            .values()
            .map(|c| (c.s("trainer_id"), c.s("student_id")))
            .collect();
        let mut trainers: BTreeMap<&str, (i64, i64, Vec<f64>)> = BTreeMap::new();
        for (trainer, a) in pairs.iter().filter_map(|(t, s)| Some((*t, acts.get(s)?))) {
            let t = trainers.entry(trainer).or_default();
            t.0 += 1;
            t.1 += a.completed;
            t.2.extend(&a.scores);
        }
        for (trainer, (n, done, scores)) in trainers {
            let cells = vec![
                ("students_active", Exp::Int(n)),
                ("topics_completed", Exp::Int(done)),
                ("avg_score", Exp::Float(mean(&scores))),
            ];
            expected.insert((*ws, ks(&[Some(trainer)])), cells);
        }
    }
    assert_eq!(
        model_cell(&expected, day, &[EDGE_TRAINER], "avg_score"),
        "50.0"
    );
    let metrics = [
        ("students_active", I64),
        ("topics_completed", I64),
        ("avg_score", F64),
    ];
    check_windowed(report, tables, SPD, &["trainer_id"], &metrics, &expected);

    // kpis_daily
    #[derive(Default)]
    struct Kpi<'a> {
        users: HashSet<&'a str>,
        completed: i64,
        assessments: i64,
        passes: i64,
    }
    let mut acc: BTreeMap<(i64, Vec<K>), Kpi> = BTreeMap::new();
    for e in on_time(input, KPI) {
        let a = acc
            .entry((window_start(e.e.ts, DAY_US), ks(&[e.s("org_id")])))
            .or_default();
        a.users.insert(e.str("user_id"));
        match e.file.topic.as_str() {
            T_PROGRESS => a.completed += e.b("completed") as i64,
            T_ASSESS => {
                a.assessments += 1;
                a.passes += e.b("passed") as i64;
            }
            _ => {}
        }
    }
    let mut expected = Expected::new();
    for ((ws, k), a) in acc {
        let (end, K::S(org)) = (ws + DAY_US, &k[0]) else {
            unreachable!()
        };
        let orgs = orgs(end);
        let enrolled = mirror_as_of(&enrollments, end)
            .values()
            .filter(|c| {
                c.s("status") == "active" && orgs.get(c.s("user_id")) == Some(&org.as_str())
            })
            .count();
        let pass_rate = (a.assessments > 0).then(|| a.passes as f64 / a.assessments as f64);
        let cells = vec![
            ("active_learners", Exp::Int(a.users.len() as i64)),
            ("topics_completed", Exp::Int(a.completed)),
            ("assessments", Exp::Int(a.assessments)),
            ("pass_rate", Exp::Float(pass_rate)),
            ("active_enrollments", Exp::Int(enrolled as i64)),
        ];
        expected.insert((ws, k), cells);
    }
    assert_eq!(
        model_cell(&expected, day, &[EDGE_ORG], "active_enrollments"),
        "1"
    );
    assert!(
        expected
            .values()
            .flatten()
            .any(|(c, e)| *c == "active_enrollments" && e.to_string() == "0"),
        "no organisation without active enrollments"
    );
    let metrics = [
        ("active_learners", I64),
        ("topics_completed", I64),
        ("assessments", I64),
        ("pass_rate", F64),
        ("active_enrollments", I64),
    ];
    check_windowed(report, tables, KPI, &["org_id"], &metrics, &expected);
}

// ---------------------------------------------------------------------------
// Session windows
// ---------------------------------------------------------------------------

fn check_sessions(
    report: &mut Report,
    tables: &HashMap<&str, TableData>,
    input: &Input,
    sims: &[Sessions],
) {
    let sim = &sims[ACT];
    // The on-time events of each user, split where the next comes a gap or more later:
    // what the sessions emitted while simulating must come to.
    let mut per_user: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for e in on_time(input, ACT) {
        per_user.entry(e.str("user_id")).or_default().push(e.e.ts);
    }
    let mut split: Vec<(String, Session)> = Vec::new();
    for (user, mut ts) in per_user {
        ts.sort_unstable();
        let mut s = (ts[0], ts[0], 0);
        for t in ts {
            if t - s.1 >= SESSION_GAP {
                split.push((user.to_string(), s));
                s = (t, t, 0);
            }
            s.1 = t;
            s.2 += 1;
        }
        split.push((user.to_string(), s));
    }
    let mut emitted = sim.emitted.clone();
    emitted.sort();
    assert!(
        split == emitted,
        "the sessions emitted while simulating are not the on-time events split at gaps"
    );
    let edge = |name: &str| {
        let id = format!("edge-{T_INTER}-{name}");
        events(input, &[T_INTER])
            .find(|e| e.str("event_id") == id)
            .unwrap()
    };
    assert!(
        sim.bridges.contains(&edge("session-bridge").lineage()),
        "the bridging event merged no sessions"
    );
    let (a, b) = (edge("session-a").e.ts, edge("session-b").e.ts);
    let user = EDGE_SESSION_USER.to_string();
    assert!(
        split.contains(&(user.clone(), (a, b, 3))),
        "the bridged session"
    );
    assert!(
        split.contains(&(user, (b + SESSION_GAP, b + SESSION_GAP, 1))),
        "a gap later: a new session"
    );
    assert!(
        sim.ended_in_batch.contains(&edge("session-late").lineage()),
        "session-late is not late, or not for a session that ended earlier in its own batch"
    );
    eprintln!(
        "end_to_end: sessions: {} bridging event(s); {} event(s) late only for their user's emitted session, {} of them ended in the same batch",
        sim.bridges.len(),
        sim.late_after_emitted.len(),
        sim.ended_in_batch.len()
    );
    let expected: Expected = split
        .into_iter()
        .map(|(user, (first, last, n))| {
            let cells = vec![
                ("window_end", Exp::Is(V::Ts(last + SESSION_GAP))),
                ("interactions", Exp::Int(n)),
                (
                    "active_minutes",
                    Exp::Float(Some((last - first) as f64 / MINUTE_US as f64)),
                ),
            ];
            ((first, vec![K::S(user)]), cells)
        })
        .collect();
    let path = WIN_TABLES[ACT].path;
    if !tables.contains_key(path) {
        report.diff(
            path,
            format!(
                "not in the lake: does the engine land session windows yet? ({} sessions expected)",
                expected.len()
            ),
        );
    }
    let metrics = [("interactions", I64), ("active_minutes", F64)];
    check_windowed(report, tables, ACT, &["user_id"], &metrics, &expected);
}

// ---------------------------------------------------------------------------
// Pipeline throughput
// ---------------------------------------------------------------------------

fn check_throughput(report: &mut Report, tables: &HashMap<&str, TableData>, input: &Input) {
    let cols = windowed_columns(
        &[("source_topic", DataType::Utf8)],
        &[
            ("records", I64),
            ("bad_records", I64),
            ("late_records", I64),
            ("max_lag_ms", F64),
        ],
    );
    // topic → (records, bad, late)
    let mut expected: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for f in &input.files {
        let a = expected.entry(f.topic.clone()).or_default();
        for m in &f.msgs {
            match &m.kind {
                Kind::Blank => {}
                Kind::Bad(_) => {
                    a.0 += 1;
                    a.1 += 1;
                }
                Kind::Event(e) => {
                    a.0 += 1;
                    a.2 += (!e.late.is_empty()) as i64;
                }
                Kind::Tombstone | Kind::Cdc(_) => a.0 += 1,
            }
        }
    }
    let Some(t) = table(report, tables, THROUGHPUT) else {
        return;
    };
    check_schema(report, t, &cols, true, false);
    let mut actual: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for row in &t.rows {
        let get = |c: &str| t.get(row, c).and_then(V::as_i64).unwrap_or(0);
        let Some(topic) = t.get(row, "source_topic").and_then(V::as_str) else {
            report.diff(
                THROUGHPUT,
                format!("row without source_topic: {}", t.describe_row(row)),
            );
            continue;
        };
        if let (Some(V::Ts(ws)), Some(we)) = (t.get(row, "window_start"), t.get(row, "window_end"))
        {
            if *we != V::Ts(ws + MINUTE_US) {
                report.diff(
                    THROUGHPUT,
                    format!(
                        "{topic} at {}: window_end {we} is not a minute later",
                        fmt_us(*ws)
                    ),
                );
            }
            if let Some(d) = t.get(row, "date") {
                if *d != V::D(ws.div_euclid(DAY_US) as i32) {
                    report.diff(
                        THROUGHPUT,
                        format!(
                            "{topic} at {}: date {d} is not that of window_start",
                            fmt_us(*ws)
                        ),
                    );
                }
            }
        }
        let a = actual.entry(topic.to_string()).or_default();
        a.0 += get("records");
        a.1 += get("bad_records");
        a.2 += get("late_records");
    }
    for (topic, e) in &expected {
        let a = actual.get(topic).copied();
        match a {
            None => report.diff(THROUGHPUT, format!("source_topic={topic}: no row (expected records={}, bad_records={}, late_records={})", e.0, e.1, e.2)),
            Some(a) => {
                for (c, x, y) in [("records", e.0, a.0), ("bad_records", e.1, a.1), ("late_records", e.2, a.2)] {
                    if x != y {
                        report.diff(THROUGHPUT, format!("source_topic={topic}: sum of `{c}`: expected {x}, got {y}"));
                    }
                }
            }
        }
    }
    for topic in actual.keys() {
        if !expected.contains_key(topic) {
            report.diff(
                THROUGHPUT,
                format!("source_topic={topic}: no such input topic"),
            );
        }
    }
}

// ===========================================================================
// The model checks itself (no pipeline needed)
// ===========================================================================

/// The test's own parser, percentile, validator and watermark simulation on cases
/// worked out by hand, so a failure of `end_to_end` is not a bug of the model.
#[test]
fn model_self_check() {
    // RFC 3339 as the contract allows it.
    let base = parse_rfc3339_us("2026-03-01T09:15:02.125Z").unwrap();
    assert_eq!(
        base,
        days_from_civil(2026, 3, 1) * DAY_US + (9 * 3600 + 15 * 60 + 2) * 1_000_000 + 125_000
    );
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    assert_eq!(
        parse_rfc3339_us("2026-03-01t11:15:02.125+02:00"),
        Some(base)
    );
    assert_eq!(
        parse_rfc3339_us("2026-03-01T09:15:02.125999999z"),
        Some(base + 999)
    );
    assert_eq!(
        parse_rfc3339_us("2026-03-01T05:45:02.125-03:30"),
        Some(base)
    );
    assert_eq!(
        parse_rfc3339_us("2026-03-01T09:15:02Z"),
        Some(base - 125_000)
    );
    assert_eq!(
        parse_rfc3339_us("2026-03-01T09:15:02.1Z"),
        Some(base - 25_000)
    );
    assert_eq!(
        parse_rfc3339_us("2026-03-02T00:15:02.125+15:00"),
        Some(base)
    );
    for bad in [
        "2026-03-01T09:15:02.125",
        "2026-03-01 09:15:02Z",
        "2026-03-01T09:15:02.Z",
        "2026-03-01T09:15:02.1234567891Z",
        "2026-02-30T10:00:00Z",
        "2026-02-30T25:61:00Z",
        "2026-03-01T24:00:00Z",
        "yesterday",
        "2026-03-01T09:15:02+2:00",
        "2026-03-01T09:15:02+02:00x",
        "2026-03-01T09:15:02ZZ",
        "",
    ] {
        assert_eq!(parse_rfc3339_us(bad), None, "{bad:?} must not parse");
    }
    for (off, frac, sep, z) in [
        (-210, "125", 'T', 'Z'),
        (720, "125000", 't', 'z'),
        (0, "125", 'T', 'z'),
        (0, "125", 'T', '+'),
    ] {
        let s = fmt_rfc3339(base, off, frac, sep, z);
        assert_eq!(parse_rfc3339_us(&s), Some(base), "{s}");
    }
    assert_eq!(
        fmt_rfc3339(base, 0, "125", 'T', '+'),
        "2026-03-01T09:15:02.125+00:00"
    );

    // Percentiles with linear interpolation.
    assert_eq!(p95(&[5.0, 1.0, 4.0, 2.0, 3.0]), Some(4.8));
    assert_eq!(p95(&[7.0]), Some(7.0));
    assert_eq!(p95(&[]), None);
    assert!(check_cell(&Exp::Approx(Some(100.0)), &V::F(100.9)).is_ok());
    assert!(check_cell(&Exp::Approx(Some(100.0)), &V::F(101.1)).is_err());
    assert!(check_cell(
        &Exp::Above {
            value: 100.5,
            threshold: 100.0
        },
        &V::B(false)
    )
    .is_ok());
    assert!(check_cell(
        &Exp::Above {
            value: 150.0,
            threshold: 100.0
        },
        &V::B(false)
    )
    .is_err());

    // The validator.
    let kinds = |topic: &str, line: &[u8]| -> Vec<(Option<String>, BadKind)> {
        match classify_line(topic, line).1 {
            Kind::Bad(ps) => ps.into_iter().map(|p| (p.field, p.kind)).collect(),
            _ => vec![],
        }
    };
    assert!(matches!(classify_line(T_GATEWAY, b"").1, Kind::Blank));
    assert!(matches!(
        classify_line(T_GATEWAY, b"null").1,
        Kind::Tombstone
    ));
    assert!(matches!(
        classify_line("cdc.directory.users", b"null").1,
        Kind::Tombstone
    ));
    assert_eq!(kinds(T_GATEWAY, b"[1,2]"), vec![(None, BadKind::NotObject)]);
    assert_eq!(kinds(T_GATEWAY, b"{\"a\":"), vec![(None, BadKind::NotJson)]);
    assert_eq!(
        kinds(T_GATEWAY, b"\xff\xfe{}"),
        vec![(None, BadKind::NotUtf8)]
    );
    let ok = json!({
        "request_id": "r-1", "correlation_id": "c-1", "ts": "2026-03-01T09:15:02.125Z",
        "service": "auth", "upstream_instance": "auth-1", "method": "GET", "route": "/x",
        "status": 200, "duration_ms": 12, "auth_outcome": "ok", "rate_limited": false,
        "bytes_out": 5_000_000_000i64, "extra": {"x": 1}
    });
    let ok = ok.as_object().unwrap();
    match classify_line(T_GATEWAY, &line(ok)).1 {
        Kind::Event(e) => {
            assert_eq!(e.ts, base);
            assert_eq!(e.vals[7], V::I(200));
            assert_eq!(e.vals[8], V::F(12.0));
            assert_eq!(e.vals[9], V::Null);
            assert_eq!(e.vals[13], V::I(5_000_000_000));
        }
        other => panic!("valid gateway request classified {other:?}"),
    }
    for (field, value, kind) in [
        ("status", json!(200.5), BadKind::WrongType),
        ("status", json!("200"), BadKind::WrongType),
        ("status", json!(3_000_000_000i64), BadKind::OutOfRange),
        ("duration_ms", json!("12"), BadKind::WrongType),
        ("rate_limited", json!(1), BadKind::WrongType),
        ("service", json!("billing"), BadKind::NotInEnum),
        ("auth_outcome", json!(3), BadKind::WrongType),
        ("ts", json!("2026-03-01T09:15:02"), BadKind::BadTimestamp),
        ("ts", json!(1772356502125i64), BadKind::WrongType),
        ("route", Value::Null, BadKind::Missing),
        ("user_id", json!(17), BadKind::WrongType),
    ] {
        assert_eq!(
            kinds(T_GATEWAY, &line(&set(ok, &[(field, value.clone())]))),
            vec![(Some(field.to_string()), kind)],
            "{field} = {value}"
        );
    }
    let change = json!({
        "op": "c", "ts_ms": 1772356502125i64, "before": null,
        "after": {"user_id": "u-1", "org_id": "o-1", "role": "learner", "display_name": "A"},
        "source": {"service": "directory", "entity": "users", "lsn": 4711}
    });
    let change = change.as_object().unwrap();
    let users = "cdc.directory.users";
    assert!(matches!(
        classify_line(users, &line(change)).1,
        Kind::Cdc(_)
    ));
    let delete = set(
        change,
        &[
            ("op", json!("d")),
            ("after", Value::Null),
            ("before", json!({"user_id": "u-1"})),
        ],
    );
    assert!(matches!(
        classify_line(users, &line(&delete)).1,
        Kind::Cdc(_)
    ));
    assert_eq!(
        kinds(users, &line(&set(change, &[("op", json!("x"))]))),
        vec![(Some("op".into()), BadKind::Envelope)]
    );
    assert_eq!(
        kinds(
            users,
            &line(&set(change, &[("source", json!("directory"))]))
        ),
        vec![(Some("source".into()), BadKind::Envelope)]
    );
    assert_eq!(
        kinds(users, &line(&set(&delete, &[("before", json!({}))]))),
        vec![(Some("user_id".into()), BadKind::Envelope)]
    );
    assert_eq!(
        kinds(
            users,
            &line(&set(
                change,
                &[(
                    "after",
                    json!({"user_id": "u-1", "org_id": "o-1", "role": "boss", "display_name": "A"})
                )]
            ))
        ),
        vec![(Some("role".into()), BadKind::NotInEnum)]
    );

    // Reading order and watermarks, batch size 2. Partition 0: t0, t0+65s, t0+10s;
    // partition 1: t0+80s, t0+5s (an exact multiple of the batch: finished after round 1).
    let t0 = 1_000 * MINUTE_US;
    let s = 1_000_000;
    let ev = |offset: i64, ts: i64| Msg {
        offset,
        raw: String::new(),
        kind: Kind::Event(Event {
            ts,
            vals: vec![],
            late: vec![],
            corrected: vec![],
        }),
    };
    let file = |partition: i32, msgs: Vec<Msg>| InFile {
        topic: T_GATEWAY.to_string(),
        partition,
        fields: event_fields(T_GATEWAY),
        msgs,
    };
    let mut input = Input {
        files: vec![
            file(0, vec![ev(0, t0), ev(1, t0 + 65 * s), ev(2, t0 + 10 * s)]),
            file(1, vec![ev(0, t0 + 80 * s), ev(1, t0 + 5 * s)]),
        ],
    };
    simulate(&mut input, 2);
    let late: Vec<(i32, i64, Vec<(usize, i64)>)> = input
        .files
        .iter()
        .flat_map(|f| {
            f.msgs.iter().map(move |m| match &m.kind {
                Kind::Event(e) => (f.partition, m.offset, e.late.clone()),
                _ => unreachable!(),
            })
        })
        .collect();
    let gw = |wm: i64| vec![(RRT, wm), (LBM, wm), (RLD, wm), (LSL, wm)];
    assert_eq!(
        late,
        vec![
            (0, 0, vec![]),
            (0, 1, vec![]),
            // Partition 1 is finished by now (+∞), partition 0 is at t0+65s−5s = the window end.
            (0, 2, gw(t0 + 60 * s)),
            // Partition 1 saw nothing yet when its first event came: −∞.
            (1, 0, vec![]),
            // min(t0+60s, t0+75s) = t0+60s reaches the end of [t0, t0+60s).
            (1, 1, gw(t0 + 60 * s)),
        ]
    );
}
