//! Topic schemas: `schemas/<topic>.toml`, the single source of truth for what a
//! message of each topic holds. The decoder, the generator and `sluice schemas` all
//! read them from here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Arrow type of every timestamp Sluice stores: microseconds, UTC (Delta's `timestamp`).
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Lineage columns every decoded batch carries after the topic's own fields (contract §3).
pub const LINEAGE: [&str; 4] = ["_topic", "_partition", "_offset", "_ingested_at"];
/// The message as received (UTF-8, lossily decoded), for `payload`, dead letters and late events.
pub const RAW: &str = "_raw";
/// CDC columns after the entity's fields: the change kind and its log sequence number.
pub const CDC_OP: &str = "_op";
pub const CDC_LSN: &str = "_lsn";
/// The event-time column of every topic (for CDC, the change's `ts_ms`).
pub const EVENT_TIME: &str = "ts";

/// The default allowed out-of-orderness of a topic (contract §2).
pub const DEFAULT_OUT_OF_ORDERNESS: Duration = Duration::from_secs(5);

/// What a field of a message may hold.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    String,
    /// 32-bit integer (`int` in the contract).
    Int,
    Int64,
    Double,
    Bool,
    /// RFC 3339 with `Z` or an offset, kept as microseconds UTC.
    Timestamp,
    /// A string from a fixed list.
    Enum(Vec<String>),
}

impl FieldType {
    pub fn arrow_type(&self) -> DataType {
        match self {
            FieldType::String | FieldType::Enum(_) => DataType::Utf8,
            FieldType::Int => DataType::Int32,
            FieldType::Int64 => DataType::Int64,
            FieldType::Double => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::Timestamp => timestamp_type(),
        }
    }

    /// How the type reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            FieldType::String => "a string".into(),
            FieldType::Int => "a 32-bit integer".into(),
            FieldType::Int64 => "an integer".into(),
            FieldType::Double => "a number".into(),
            FieldType::Bool => "a boolean".into(),
            FieldType::Timestamp => "an RFC 3339 timestamp string".into(),
            FieldType::Enum(values) => format!("one of {}", values.join(", ")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    pub name: String,
    pub ty: FieldType,
    /// May be missing or null (`?` in the schema file).
    pub nullable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// Append-only interaction and domain events (contract §1.1).
    Event,
    /// Debezium-style change envelopes (contract §1.2).
    Cdc,
}

/// One topic's schema, as read from its file.
#[derive(Debug, Clone)]
pub struct TopicSchema {
    pub topic: String,
    pub kind: TopicKind,
    /// The field the producer keys messages by.
    pub key: String,
    /// For CDC topics, the entity's primary key.
    pub primary_key: Option<String>,
    /// Partitions the generator writes (Kafka topics bring their own).
    pub partitions: u32,
    pub out_of_orderness: Duration,
    pub fields: Vec<FieldSpec>,
    /// The decoded batch: the fields, CDC columns, lineage, then `_raw`.
    pub arrow_schema: SchemaRef,
}

impl TopicSchema {
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn enum_values(&self, name: &str) -> &[String] {
        match self.field(name).map(|f| &f.ty) {
            Some(FieldType::Enum(values)) => values,
            _ => &[],
        }
    }

    fn build_arrow_schema(kind: TopicKind, fields: &[FieldSpec]) -> SchemaRef {
        let mut columns: Vec<Field> = fields
            .iter()
            // CDC deletes carry only the key, so every entity column may be null.
            .map(|f| Field::new(&f.name, f.ty.arrow_type(), f.nullable || kind == TopicKind::Cdc))
            .collect();
        if kind == TopicKind::Cdc {
            columns.push(Field::new(CDC_OP, DataType::Utf8, false));
            columns.push(Field::new(CDC_LSN, DataType::Int64, false));
            columns.push(Field::new(EVENT_TIME, timestamp_type(), false));
        }
        columns.extend(lineage_fields());
        columns.push(Field::new(RAW, DataType::Utf8, false));
        Arc::new(Schema::new(columns))
    }
}

/// `_topic`, `_partition`, `_offset`, `_ingested_at`.
pub fn lineage_fields() -> Vec<Field> {
    vec![
        Field::new(LINEAGE[0], DataType::Utf8, false),
        Field::new(LINEAGE[1], DataType::Int32, false),
        Field::new(LINEAGE[2], DataType::Int64, false),
        Field::new(LINEAGE[3], timestamp_type(), false),
    ]
}

/// Every topic schema of a `schemas/` directory, by topic name.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    topics: BTreeMap<String, Arc<TopicSchema>>,
}

impl SchemaRegistry {
    /// Reads every `*.toml` in `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(Error::Schema {
                path: dir.to_path_buf(),
                message: "no topic schemas (*.toml) here".into(),
            });
        }
        let mut topics = BTreeMap::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let schema = parse_schema(&text).map_err(|message| Error::Schema {
                path: path.clone(),
                message,
            })?;
            topics.insert(schema.topic.clone(), Arc::new(schema));
        }
        Ok(SchemaRegistry { topics })
    }

    pub fn get(&self, topic: &str) -> Option<&Arc<TopicSchema>> {
        self.topics.get(topic)
    }

    pub fn topics(&self) -> impl Iterator<Item = &Arc<TopicSchema>> {
        self.topics.values()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    topic: String,
    kind: String,
    key: String,
    primary_key: Option<String>,
    #[serde(default = "one")]
    partitions: u32,
    out_of_orderness: Option<String>,
    fields: toml::Table,
}

fn one() -> u32 {
    1
}

/// Parses one schema file; the error says what is wrong, the caller adds where.
pub fn parse_schema(text: &str) -> std::result::Result<TopicSchema, String> {
    let file: SchemaFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let kind = match file.kind.as_str() {
        "event" => TopicKind::Event,
        "cdc" => TopicKind::Cdc,
        other => return Err(format!("kind `{other}` is neither `event` nor `cdc`")),
    };
    let mut fields = Vec::with_capacity(file.fields.len());
    for (name, value) in &file.fields {
        let (ty, nullable) = match value {
            toml::Value::String(s) => {
                let (base, nullable) = match s.strip_suffix('?') {
                    Some(base) => (base, true),
                    None => (s.as_str(), false),
                };
                let ty = match base {
                    "string" => FieldType::String,
                    "int" => FieldType::Int,
                    "int64" => FieldType::Int64,
                    "double" => FieldType::Double,
                    "bool" => FieldType::Bool,
                    "timestamp" => FieldType::Timestamp,
                    other => {
                        return Err(format!(
                            "field `{name}`: unknown type `{other}` (expected string, int, int64, double, bool, timestamp or a list of values)"
                        ))
                    }
                };
                (ty, nullable)
            }
            toml::Value::Array(values) => {
                let values = values
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| format!("field `{name}`: enum values must be strings"))?;
                (FieldType::Enum(values), false)
            }
            _ => return Err(format!("field `{name}`: expected a type name or a list of values")),
        };
        fields.push(FieldSpec { name: name.clone(), ty, nullable });
    }
    if kind == TopicKind::Event && !fields.iter().any(|f| f.name == EVENT_TIME && f.ty == FieldType::Timestamp) {
        return Err(format!("an event topic needs a `{EVENT_TIME} = \"timestamp\"` field"));
    }
    if kind == TopicKind::Cdc {
        let pk = file.primary_key.as_deref().ok_or("a cdc topic needs `primary_key`")?;
        if !fields.iter().any(|f| f.name == pk) {
            return Err(format!("primary_key `{pk}` is not among the fields"));
        }
    }
    let out_of_orderness = match &file.out_of_orderness {
        Some(text) => parse_duration(text)?,
        None => DEFAULT_OUT_OF_ORDERNESS,
    };
    if file.partitions == 0 {
        return Err("partitions must be at least 1".into());
    }
    let arrow_schema = TopicSchema::build_arrow_schema(kind, &fields);
    Ok(TopicSchema {
        topic: file.topic,
        kind,
        key: file.key,
        primary_key: file.primary_key,
        partitions: file.partitions,
        out_of_orderness,
        fields,
        arrow_schema,
    })
}

/// Parses `500ms`, `5s`, `2m`, `1h`, `2d`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 5s, 2m, 1h or 2d"))?;
    let millis = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{text}` is not a duration like 500ms, 5s, 2m, 1h or 2d")),
    };
    Ok(Duration::from_millis(n * millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_schemas_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        let registry = SchemaRegistry::load(&dir).unwrap();
        assert_eq!(registry.topics().count(), 24);
        let gw = registry.get("gateway.requests").unwrap();
        assert_eq!(gw.enum_values("auth_outcome"), ["ok", "denied", "expired", "missing"]);
        assert!(gw.field("user_id").unwrap().nullable);
        assert_eq!(gw.field("status").unwrap().ty, FieldType::Int);
        let users = registry.get("cdc.directory.users").unwrap();
        assert_eq!(users.primary_key.as_deref(), Some("user_id"));
        assert!(users.arrow_schema.field_with_name(CDC_LSN).is_ok());
    }

    #[test]
    fn bad_schema_files_name_the_problem() {
        let err = parse_schema("topic='t'\nkind='event'\nkey='k'\n[fields]\nts='timestamp'\nx='float'").unwrap_err();
        assert!(err.contains("field `x`: unknown type `float`"), "{err}");
        let err = parse_schema("topic='t'\nkind='event'\nkey='k'\n[fields]\nx='int'").unwrap_err();
        assert!(err.contains("`ts = \"timestamp\"`"), "{err}");
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
