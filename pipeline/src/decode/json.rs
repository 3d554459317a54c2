//! The serde side of decoding: borrowing visitors that fill one [`Value`] slot per
//! schema field and skip everything else.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::schema::FieldSpec;

/// A JSON scalar as found in a message, before it is checked against the schema.
#[derive(Debug, Clone, Default)]
pub enum Value<'a> {
    #[default]
    Missing,
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// An object or array where a scalar belongs.
    Nested(&'static str),
}

impl Value<'_> {
    /// How the value reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Value::Missing => "nothing".into(),
            Value::Null => "null".into(),
            Value::Str(s) if s.chars().count() > 40 => format!("the string \"{}...\"", s.chars().take(40).collect::<String>()),
            Value::Str(s) => format!("the string \"{s}\""),
            Value::Int(i) => format!("the number {i}"),
            Value::Float(f) => format!("the number {f}"),
            Value::Bool(b) => format!("{b}"),
            Value::Nested(what) => (*what).into(),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Value::Str(s) => s,
            _ => "",
        }
    }
}

/// A message's bytes; as `str` when they are known to be UTF-8 already, which spares
/// serde_json checking every string again.
#[derive(Clone, Copy)]
pub enum Text<'a> {
    Str(&'a str),
    Bytes(&'a [u8]),
}

/// Parses a message that must be one JSON object of `fields`.
pub fn parse_object<'a>(text: Text<'a>, fields: &[FieldSpec], slots: &mut Vec<Value<'a>>) -> Result<(), String> {
    reset(slots, fields.len());
    match text {
        Text::Str(s) => object(serde_json::Deserializer::from_str(s), fields, slots),
        Text::Bytes(b) => object(serde_json::Deserializer::from_slice(b), fields, slots),
    }
}

fn object<'a, R: serde_json::de::Read<'a>>(
    mut de: serde_json::Deserializer<R>,
    fields: &[FieldSpec],
    slots: &mut Vec<Value<'a>>,
) -> Result<(), String> {
    de.deserialize_any(RowVisitor { fields, slots, top_level: true }).map_err(json_error)?;
    de.end().map_err(json_error)
}

/// The parts of a Debezium envelope that Sluice reads.
#[derive(Debug, Default)]
pub struct Envelope<'a> {
    pub op: Value<'a>,
    pub ts_ms: Value<'a>,
    pub lsn: Value<'a>,
    pub after_present: bool,
    pub before_present: bool,
}

/// Parses a CDC envelope; `after` and `before` rows land in their slots.
pub fn parse_envelope<'a>(
    text: Text<'a>,
    fields: &[FieldSpec],
    after: &mut Vec<Value<'a>>,
    before: &mut Vec<Value<'a>>,
) -> Result<Envelope<'a>, String> {
    reset(after, fields.len());
    reset(before, fields.len());
    match text {
        Text::Str(s) => envelope(serde_json::Deserializer::from_str(s), fields, after, before),
        Text::Bytes(b) => envelope(serde_json::Deserializer::from_slice(b), fields, after, before),
    }
}

fn envelope<'a, R: serde_json::de::Read<'a>>(
    mut de: serde_json::Deserializer<R>,
    fields: &[FieldSpec],
    after: &mut Vec<Value<'a>>,
    before: &mut Vec<Value<'a>>,
) -> Result<Envelope<'a>, String> {
    let env = de.deserialize_any(EnvelopeVisitor { fields, after, before }).map_err(json_error)?;
    de.end().map_err(json_error)?;
    Ok(env)
}

fn reset(slots: &mut Vec<Value>, n: usize) {
    slots.clear();
    slots.resize(n, Value::Missing);
}

fn json_error(e: serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => format!("invalid JSON: {e}"),
        _ => e.to_string(),
    }
}

/// Fills `slots` from a JSON object; with `top_level`, anything but an object is an error.
struct RowVisitor<'s, 'a> {
    fields: &'s [FieldSpec],
    slots: &'s mut Vec<Value<'a>>,
    top_level: bool,
}

impl<'de> Visitor<'de> for RowVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(if self.top_level { "a JSON object" } else { "an object" })
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        // Producers mostly write fields in schema order: try the next one first.
        let mut next = 0;
        while let Some(key) = map.next_key_seed(StrSeed)? {
            let position = match self.fields.get(next) {
                Some(f) if f.name == *key => Some(next),
                _ => self.fields.iter().position(|f| f.name == *key),
            };
            match position {
                Some(i) => {
                    self.slots[i] = map.next_value_seed(ScalarSeed)?;
                    next = i + 1;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

struct EnvelopeVisitor<'s, 'a> {
    fields: &'s [FieldSpec],
    after: &'s mut Vec<Value<'a>>,
    before: &'s mut Vec<Value<'a>>,
}

impl<'de> Visitor<'de> for EnvelopeVisitor<'_, 'de> {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object (a change envelope)")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Envelope<'de>, M::Error> {
        let mut env = Envelope::default();
        while let Some(key) = map.next_key_seed(StrSeed)? {
            match &*key {
                "op" => env.op = map.next_value_seed(ScalarSeed)?,
                "ts_ms" => env.ts_ms = map.next_value_seed(ScalarSeed)?,
                "after" => {
                    env.after_present = map.next_value_seed(OptionalRow { fields: self.fields, slots: self.after, name: "after" })?
                }
                "before" => {
                    env.before_present =
                        map.next_value_seed(OptionalRow { fields: self.fields, slots: self.before, name: "before" })?
                }
                "source" => env.lsn = map.next_value_seed(SourceSeed)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(env)
    }
}

/// `after` / `before`: null (returns false) or an object of the entity's fields (true).
struct OptionalRow<'s, 'a> {
    fields: &'s [FieldSpec],
    slots: &'s mut Vec<Value<'a>>,
    name: &'static str,
}

impl<'de> DeserializeSeed<'de> for OptionalRow<'_, 'de> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OptionalRow<'_, 'de> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "`{}` to be an object or null", self.name)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<bool, M::Error> {
        RowVisitor { fields: self.fields, slots: self.slots, top_level: false }.visit_map(map)?;
        Ok(true)
    }
}

/// `source`: only `lsn` matters.
struct SourceSeed;

impl<'de> DeserializeSeed<'de> for SourceSeed {
    type Value = Value<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SourceSeed {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`source` to be an object with `lsn`")
    }

    fn visit_unit<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Missing)
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Value<'de>, M::Error> {
        let mut lsn = Value::Missing;
        while let Some(key) = map.next_key_seed(StrSeed)? {
            if *key == *"lsn" {
                lsn = map.next_value_seed(ScalarSeed)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(lsn)
    }
}

/// A string that borrows from the message unless it had escapes.
struct StrSeed;

impl<'de> DeserializeSeed<'de> for StrSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for StrSeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// Any JSON value as a [`Value`]; objects and arrays are skipped and marked.
struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Value<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value<'de>, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value<'de>, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value<'de>, E> {
        Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value<'de>, E> {
        Ok(Value::Float(v))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value<'de>, E> {
        Ok(Value::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Value<'de>, M::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Nested("an object"))
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Value<'de>, S::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Nested("an array"))
    }
}

