//! Bad messages (contract §1.3): every kind, each recognisable from its text, all on
//! one line. Field-level faults are drawn from the topic's schema, so a schema change
//! keeps them honest.

use rand::rngs::SmallRng;
use rand::Rng;

use super::dist::pick;
use super::json::{Fault, FaultAction, Ts};
use crate::schema::{FieldType, TopicKind, TopicSchema};

/// How a message is spoiled.
#[derive(Debug)]
pub(super) enum Corruption {
    /// Cut short: a strict prefix of an object is never valid JSON.
    Truncate,
    /// Text that is not JSON at all.
    Garbage(&'static [u8]),
    /// Valid JSON, but not an object.
    NotObject(&'static str),
    /// A field missing, of the wrong type, outside its enum or a bad timestamp.
    Field(Fault),
}

const GARBAGE: [&[u8]; 6] = [
    b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
    b"status=200 duration_ms=41.2 route=/api/v1/courses",
    b"{\"ts\": 2026-03-01T09:15:02Z, \"service\": auth}",
    b"{\"event_id\":\"e-1\",}",
    b"\xff\xfe{\"id\":\x01\x02}",
    b"{'user_id': 'u-1'}",
];

// `null` is a tombstone, never a bad message, so it is not among these.
const NOT_OBJECT: [&str; 5] = ["[1,2]", "\"hello\"", "42", "true", "[{\"ts\":\"2026-03-01T09:15:02Z\"}]"];

/// A topic's field-level faults, by kind.
#[derive(Debug)]
pub(super) struct Faults {
    missing: Vec<Fault>,
    wrong_type: Vec<Fault>,
    bad_enum: Vec<Fault>,
    /// Paths of timestamp fields; the bad value is made from the message's own time.
    timestamps: Vec<String>,
}

fn raw(path: impl Into<String>, json: &str) -> Fault {
    Fault { path: path.into(), action: FaultAction::Raw(json.to_owned()) }
}

fn omit(path: impl Into<String>) -> Fault {
    Fault { path: path.into(), action: FaultAction::Omit }
}

/// A recognisably wrong JSON value for a field: the classic mistakes where we know the
/// field, otherwise a value of another JSON type.
fn wrong_type(name: &str, ty: &FieldType) -> &'static str {
    match name {
        "duration_ms" => "\"fast\"",
        "status" if *ty == FieldType::Int => "\"200\"",
        "rate_limited" => "\"yes\"",
        "score" => "true",
        "attempt" => "\"first\"",
        "bytes_out" => "\"12kB\"",
        "progress_delta" => "\"5%\"",
        _ => match ty {
            FieldType::String => "12345",
            FieldType::Enum(_) => "3",
            FieldType::Int => "2.5",
            FieldType::Int64 => "\"many\"",
            FieldType::Double => "\"n/a\"",
            FieldType::Bool => "\"no\"",
            FieldType::Timestamp => "1772356502125",
        },
    }
}

/// A value outside an enum's list: a plausible word, never one of `values`.
fn outside(name: &str, values: &[String]) -> String {
    let word = match name {
        "kind" => "video",
        "auth_outcome" => "maybe",
        "service" => "billing",
        "op" => "x",
        "transport" => "long_polling",
        "action" => "reconnect",
        "outcome" => "clicked",
        "breaker_state" => "TRIPPED",
        "role" => "superuser",
        "status" => "paused",
        "creation_method" => "imported",
        _ => "unknown",
    };
    let mut word = word.to_owned();
    while values.contains(&word) {
        word.push('_');
    }
    format!("\"{word}\"")
}

impl Faults {
    pub(super) fn for_topic(schema: &TopicSchema) -> Self {
        let mut faults = Faults { missing: vec![], wrong_type: vec![], bad_enum: vec![], timestamps: vec![] };
        let prefix = match schema.kind {
            TopicKind::Event => "",
            TopicKind::Cdc => {
                faults.missing.extend(["op", "ts_ms", "source"].map(omit));
                faults.missing.extend(schema.primary_key.iter().map(|pk| omit(format!("after.{pk}"))));
                faults.wrong_type.push(raw("source", "\"directory\""));
                faults.bad_enum.push(raw("op", &outside("op", &["c", "u", "d", "r"].map(String::from))));
                faults.timestamps.push("ts_ms".into());
                "after."
            }
        };
        for field in schema.fields.iter().filter(|f| !f.nullable) {
            let path = format!("{prefix}{}", field.name);
            if schema.kind == TopicKind::Event {
                faults.missing.push(omit(path.clone()));
            }
            match &field.ty {
                FieldType::Timestamp => faults.timestamps.push(path),
                FieldType::Enum(values) => {
                    faults.bad_enum.push(raw(path.clone(), &outside(&field.name, values)));
                    faults.wrong_type.push(raw(path, wrong_type(&field.name, &field.ty)));
                }
                ty => faults.wrong_type.push(raw(path, wrong_type(&field.name, ty))),
            }
        }
        faults
    }

    /// One corruption, its kind chosen evenly among those the topic allows. `has_row`
    /// says whether a CDC message has an `after` row that field faults may target;
    /// `ms` is the message's time, which a bad timestamp spells wrongly.
    pub(super) fn pick(&self, rng: &mut SmallRng, has_row: bool, ms: i64) -> Corruption {
        let usable = |f: &&Fault| has_row || !f.path.starts_with("after.");
        let missing: Vec<&Fault> = self.missing.iter().filter(usable).collect();
        let wrong: Vec<&Fault> = self.wrong_type.iter().filter(usable).collect();
        let enums: Vec<&Fault> = self.bad_enum.iter().filter(usable).collect();
        let stamps: Vec<&String> =
            self.timestamps.iter().filter(|p| has_row || !p.starts_with("after.")).collect();
        let kinds = [true, true, !missing.is_empty(), !wrong.is_empty(), !enums.is_empty(), !stamps.is_empty()];
        let available: Vec<usize> = (0..kinds.len()).filter(|&k| kinds[k]).collect();
        match *pick(rng, &available) {
            0 if rng.random_bool(0.6) => Corruption::Truncate,
            0 => Corruption::Garbage(GARBAGE[rng.random_range(0..GARBAGE.len())]),
            1 => Corruption::NotObject(NOT_OBJECT[rng.random_range(0..NOT_OBJECT.len())]),
            2 => Corruption::Field((*pick(rng, &missing)).clone()),
            3 => Corruption::Field((*pick(rng, &wrong)).clone()),
            4 => Corruption::Field((*pick(rng, &enums)).clone()),
            _ => Corruption::Field(raw(pick(rng, &stamps).as_str(), &bad_timestamp(rng, ms))),
        }
    }
}

/// A timestamp a parser must refuse: a word, or the real time without its zone.
fn bad_timestamp(rng: &mut SmallRng, ms: i64) -> String {
    let mut buf = Vec::new();
    let digits = match rng.random_range(0..4) {
        0 => return "\"yesterday\"".into(),
        1 => return "\"2026-02-30T25:61:00Z\"".into(),
        2 => 0,
        _ => 3,
    };
    Ts { ms, sub_ms_ns: 0, digits, offset_min: None }.write(&mut buf);
    buf.pop(); // the `Z`
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if digits == 0 {
        text = text.replace('T', " ");
    }
    format!("\"{text}\"")
}
