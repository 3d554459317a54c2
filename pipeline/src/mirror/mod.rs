//! Service mirrors: each CDC topic's entities as of any event time (contract §1.2, §3.2).
//!
//! A [`Mirror`] keeps the changes of one CDC topic as Arrow rows with, per primary
//! key, the versions still needed, ordered by `lsn`. From them it answers two
//! questions:
//!
//! - the current state (the highest `lsn` per key, unless a delete), which the
//!   `services/<service>/<entity>` table is rewritten to after each epoch that
//!   changed it, so the table is one row per live key after every commit;
//! - the state as of an event time `t` (per key, the highest `lsn` among changes
//!   with `ts_ms <= t`), which temporal joins read at a window's end.
//!
//! History older than every open window that may still ask for it is pruned to
//! each key's winner. A delete stays as its key's winner, so a stale change that
//! arrives after it still loses.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimestampMicrosecondType};

use crate::catalog::TablePath;
use crate::error::{Error, Result};
use crate::schema::{timestamp_type, TopicKind, TopicSchema, CDC_LSN, CDC_OP, EVENT_TIME};

/// The mirror table's column with the winning change's `ts_ms`.
pub const UPDATED_AT: &str = "_updated_at";
/// Marks a stored delete; not a table column.
const DELETED: &str = "_deleted";

/// The lake table of a CDC topic: `cdc.<service>.<entity>` lands as `services/<service>/<entity>`.
pub fn table_of(topic: &TopicSchema) -> Option<TablePath> {
    if topic.kind != TopicKind::Cdc {
        return None;
    }
    let rest = topic.topic.strip_prefix("cdc.")?;
    TablePath::new(&format!("services/{}", rest.replace('.', "/"))).ok()
}

/// The mirror table's columns: the entity's fields, `_lsn`, `_updated_at`.
pub fn table_schema(topic: &TopicSchema) -> SchemaRef {
    let mut fields: Vec<Field> = topic
        .fields
        .iter()
        .map(|f| Field::new(&f.name, f.ty.arrow_type(), f.nullable || Some(&f.name) != topic.primary_key.as_ref()))
        .collect();
    fields.push(Field::new(CDC_LSN, DataType::Int64, false));
    fields.push(Field::new(UPDATED_AT, timestamp_type(), false));
    Arc::new(Schema::new(fields))
}

/// One change of a key, pointing at its stored row.
#[derive(Debug, Clone, Copy)]
struct Version {
    lsn: i64,
    ts: i64,
    deleted: bool,
    batch: usize,
    row: usize,
}

/// One CDC topic's entities, with the history open windows may still ask for.
pub struct Mirror {
    topic: Arc<str>,
    table: TablePath,
    /// The table's columns.
    schema: SchemaRef,
    /// The stored changes: the table's columns, then `_deleted`.
    stored_schema: SchemaRef,
    /// Where each table column comes from in a decoded batch.
    decoded_columns: Vec<usize>,
    op_column: usize,
    key_column: usize,
    stored: Vec<RecordBatch>,
    stored_rows: usize,
    /// Per key, its versions in ascending `lsn`.
    versions: HashMap<Box<str>, Vec<Version>>,
    /// The current state changed since [`take_changed`](Self::take_changed).
    changed: bool,
}

impl Mirror {
    pub fn new(topic: &TopicSchema) -> Result<Self> {
        let internal = |m: String| Error::Internal(format!("mirror of {}: {m}", topic.topic));
        let table = table_of(topic).ok_or_else(|| internal("not a cdc.<service>.<entity> topic".into()))?;
        let schema = table_schema(topic);
        let decoded = &topic.arrow_schema;
        let position = |name: &str| decoded.index_of(name).map_err(|e| internal(e.to_string()));
        let mut decoded_columns = Vec::with_capacity(schema.fields().len());
        for field in &topic.fields {
            decoded_columns.push(position(&field.name)?);
        }
        decoded_columns.push(position(CDC_LSN)?);
        decoded_columns.push(position(EVENT_TIME)?);
        let key = topic.primary_key.as_deref().ok_or_else(|| internal("no primary key".into()))?;
        let key_column = topic.fields.iter().position(|f| f.name == key).ok_or_else(|| internal(format!("no field `{key}`")))?;
        if decoded.field(decoded_columns[key_column]).data_type() != &DataType::Utf8 {
            return Err(Error::Config(format!("{}: the primary key `{key}` must be a string", topic.topic)));
        }
        let mut stored_fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        stored_fields.push(Field::new(DELETED, DataType::Boolean, false));
        Ok(Mirror {
            topic: Arc::from(topic.topic.as_str()),
            table,
            schema,
            stored_schema: Arc::new(Schema::new(stored_fields)),
            decoded_columns,
            op_column: position(CDC_OP)?,
            key_column,
            stored: Vec::new(),
            stored_rows: 0,
            versions: HashMap::new(),
            changed: false,
        })
    }

    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    pub fn table(&self) -> &TablePath {
        &self.table
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Applies a decoded batch of the topic's changes.
    pub fn apply(&mut self, decoded: &RecordBatch) -> Result<()> {
        if decoded.num_rows() == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = self.decoded_columns.iter().map(|&i| decoded.column(i).clone()).collect();
        let ops = decoded.column(self.op_column).as_string::<i32>();
        columns.push(Arc::new(ops.iter().map(|op| Some(op == Some("d"))).collect::<BooleanArray>()));
        let batch = RecordBatch::try_new(self.stored_schema.clone(), columns)?;
        self.add(batch);
        Ok(())
    }

    /// Indexes a batch of stored changes.
    fn add(&mut self, batch: RecordBatch) {
        let index = self.stored.len();
        let n = self.schema.fields().len();
        let keys = batch.column(self.key_column).as_string::<i32>();
        let lsns = batch.column(n - 2).as_primitive::<Int64Type>();
        let times = batch.column(n - 1).as_primitive::<TimestampMicrosecondType>();
        let deleted = batch.column(n).as_boolean();
        for row in 0..batch.num_rows() {
            if keys.is_null(row) {
                continue;
            }
            let version = Version { lsn: lsns.value(row), ts: times.value(row), deleted: deleted.value(row), batch: index, row };
            let versions = self.versions.entry(keys.value(row).into()).or_default();
            match versions.binary_search_by_key(&version.lsn, |v| v.lsn) {
                // The same change delivered again: the first copy stands.
                Ok(_) => {}
                Err(at) => {
                    self.changed |= at == versions.len();
                    versions.insert(at, version);
                }
            }
        }
        self.stored_rows += batch.num_rows();
        self.stored.push(batch);
    }

    /// The live rows as of event time `t` (µs): per key, the change with the highest
    /// `lsn` among those with `ts_ms <= t`, unless it is a delete.
    pub fn as_of(&self, t: i64) -> Result<RecordBatch> {
        let picked = self.versions.values().filter_map(|versions| versions.iter().rev().find(|v| v.ts <= t)).filter(|v| !v.deleted);
        self.rows(picked, false)
    }

    /// The live rows now: per key, the highest `lsn`, unless a delete.
    pub fn current(&self) -> Result<RecordBatch> {
        self.as_of(i64::MAX)
    }

    /// Whether the current state changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Gathers stored rows, with the `_deleted` column or without.
    fn rows<'a>(&self, versions: impl Iterator<Item = &'a Version>, with_deleted: bool) -> Result<RecordBatch> {
        let mut indices: Vec<(usize, usize)> = versions.map(|v| (v.batch, v.row)).collect();
        // Rows in the order they arrived: deterministic whatever the hash order.
        indices.sort_unstable();
        let gathered = match indices.is_empty() {
            true => RecordBatch::new_empty(self.stored_schema.clone()),
            false => interleave_record_batch(&self.stored.iter().collect::<Vec<_>>(), &indices)?,
        };
        if with_deleted {
            return Ok(gathered);
        }
        Ok(gathered.project(&(0..self.schema.fields().len()).collect::<Vec<_>>())?)
    }

    /// Forgets the history no one can ask for any more: windows that may still read
    /// the mirror all end after `horizon` (µs), so of the changes at or before it only
    /// each key's winner matters. Compacts the stored rows when most are garbage.
    pub fn prune(&mut self, horizon: i64) -> Result<()> {
        let mut live = 0;
        for versions in self.versions.values_mut() {
            if let Some(winner) = versions.iter().rposition(|v| v.ts <= horizon) {
                let mut i = 0;
                versions.retain(|v| {
                    let keep = v.ts > horizon || i == winner;
                    i += 1;
                    keep
                });
            }
            live += versions.len();
        }
        if self.stored_rows > 2 * live + 1024 {
            let compacted = self.snapshot()?;
            self.restore(compacted)?;
        }
        Ok(())
    }

    /// Every retained change, for a checkpoint.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        self.rows(self.versions.values().flatten(), true)
    }

    /// Replaces the state with a [`snapshot`](Self::snapshot).
    pub fn restore(&mut self, snapshot: RecordBatch) -> Result<()> {
        if snapshot.schema().fields() != self.stored_schema.fields() {
            return Err(Error::Checkpoint(format!(
                "the mirror of {} was saved with other columns than its schema now has",
                self.topic
            )));
        }
        let changed = self.changed;
        self.stored.clear();
        self.stored_rows = 0;
        self.versions.clear();
        self.add(snapshot);
        self.changed = changed;
        Ok(())
    }

    /// Keys held, including deleted ones kept for the stale check.
    pub fn keys(&self) -> usize {
        self.versions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing::{decode, registry};

    const TOPIC: &str = "cdc.directory.users";

    fn change(op: &str, user: &str, org: &str, lsn: i64, ts_ms: i64) -> String {
        if op == "d" {
            return format!(r#"{{"op":"d","ts_ms":{ts_ms},"before":{{"user_id":"{user}"}},"after":null,"source":{{"lsn":{lsn}}}}}"#);
        }
        format!(
            r#"{{"op":"{op}","ts_ms":{ts_ms},"after":{{"user_id":"{user}","org_id":"{org}","role":"learner","display_name":"x"}},"source":{{"lsn":{lsn}}}}}"#
        )
    }

    fn mirror() -> Mirror {
        Mirror::new(registry().get(TOPIC).unwrap()).unwrap()
    }

    fn apply(m: &mut Mirror, lines: &[String]) {
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        m.apply(&decode(TOPIC, &lines).batch).unwrap();
    }

    /// (user_id, org_id, _lsn) of every row, sorted.
    fn rows(batch: &RecordBatch) -> Vec<(String, String, i64)> {
        let users = batch.column_by_name("user_id").unwrap().as_string::<i32>();
        let orgs = batch.column_by_name("org_id").unwrap().as_string::<i32>();
        let lsns = batch.column_by_name("_lsn").unwrap().as_primitive::<Int64Type>();
        let mut rows: Vec<_> =
            (0..batch.num_rows()).map(|i| (users.value(i).to_string(), orgs.value(i).to_string(), lsns.value(i))).collect();
        rows.sort();
        rows
    }

    fn row(user: &str, org: &str, lsn: i64) -> (String, String, i64) {
        (user.into(), org.into(), lsn)
    }

    #[test]
    fn the_highest_lsn_wins_deletes_remove_and_a_stale_change_never_wins() {
        let mut m = mirror();
        apply(
            &mut m,
            &[
                change("r", "a", "o1", 1, 1_000),
                change("c", "b", "o1", 2, 1_000),
                change("u", "a", "o2", 5, 2_000),
                // Stale: lower lsn than what `a` has, though later in time and in the feed.
                change("u", "a", "o3", 4, 3_000),
                change("d", "b", "", 6, 2_000),
                // Stale after the delete: `b` stays deleted.
                change("u", "b", "o9", 3, 4_000),
            ],
        );
        assert!(m.take_changed());
        assert_eq!(rows(&m.current().unwrap()), [row("a", "o2", 5)]);
        assert_eq!(m.current().unwrap().schema(), *m.schema());
        // Re-created after the delete with a higher lsn.
        apply(&mut m, &[change("c", "b", "o4", 7, 5_000)]);
        assert!(m.take_changed());
        assert_eq!(rows(&m.current().unwrap()), [row("a", "o2", 5), row("b", "o4", 7)]);
        // Only stale changes: the table has nothing to rewrite.
        apply(&mut m, &[change("u", "b", "o5", 6, 6_000)]);
        assert!(!m.take_changed());
    }

    #[test]
    fn as_of_a_time_sees_the_highest_lsn_among_changes_up_to_it() {
        let mut m = mirror();
        apply(
            &mut m,
            &[
                change("c", "a", "o1", 1, 1_000),
                change("u", "a", "o2", 3, 3_000),
                // Lower lsn, earlier time: wins as of 2 s only.
                change("u", "a", "o9", 2, 2_000),
                change("d", "a", "", 4, 4_000),
            ],
        );
        let at = |ms: i64| rows(&m.as_of(ms * 1000).unwrap());
        assert_eq!(at(999), []);
        assert_eq!(at(1_000), [row("a", "o1", 1)]);
        assert_eq!(at(2_500), [row("a", "o9", 2)]);
        assert_eq!(at(3_000), [row("a", "o2", 3)]);
        assert_eq!(at(4_000), []);
    }

    #[test]
    fn pruning_keeps_what_later_windows_can_ask_for_and_a_snapshot_restores_it() {
        let mut m = mirror();
        let mut lines = Vec::new();
        for lsn in 0..3_000 {
            lines.push(change("u", &format!("u{}", lsn % 10), &format!("o{lsn}"), lsn, lsn));
        }
        apply(&mut m, &lines);
        let before: Vec<_> = [2_900, 2_950, 2_995, 10_000].iter().map(|ms| rows(&m.as_of(ms * 1000).unwrap())).collect();
        m.prune(2_900 * 1000).unwrap();
        assert!(m.stored_rows < 3_000, "compacted: {} rows stored", m.stored_rows);
        let mut restored = mirror();
        restored.restore(m.snapshot().unwrap()).unwrap();
        for mirror in [&m, &restored] {
            let after: Vec<_> = [2_900, 2_950, 2_995, 10_000].iter().map(|ms| rows(&mirror.as_of(ms * 1000).unwrap())).collect();
            assert_eq!(before, after);
        }
        // A stale change after the restore still loses.
        apply(&mut restored, &[change("u", "u1", "stale", 1, 99_000)]);
        assert_eq!(rows(&restored.current().unwrap()), before[3]);
    }
}
