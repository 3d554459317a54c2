//! The lake as the server sees it, shared by every session: which tables exist
//! (re-listed at most every [`LISTING_TTL`], so a table a running pipeline
//! creates appears without a restart), each table at its latest committed
//! version (kept loaded and brought forward incrementally, so a query pays one
//! log listing, not a reload), and the directory that scopes trainers and org
//! admins.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;

use sluice_gate::token::{Identity, Role};
use super::policy::{Policy, Scope, Ties};
use crate::catalog::{Lake, TablePath};
use crate::error::{Error, Result};

/// How stale the list of tables may be.
pub const LISTING_TTL: Duration = Duration::from_secs(1);

const USERS: &str = "services/directory/users";
const ASSIGNMENTS: &str = "services/directory/teaching_assignments";

pub struct ServedLake {
    lake: Lake,
    policy: Policy,
    listing: tokio::sync::Mutex<Option<(Instant, Vec<TablePath>)>>,
    tables: Mutex<HashMap<TablePath, Arc<tokio::sync::Mutex<Option<Loaded>>>>>,
    directory: tokio::sync::Mutex<Directory>,
}

/// A table at the version last loaded, with what the policy says of its columns.
#[derive(Clone)]
pub struct Loaded {
    pub delta: DeltaTable,
    pub schema: SchemaRef,
    /// The policy's ties, or why the policy file does not fit this table.
    pub ties: std::result::Result<Ties, String>,
}

/// Who teaches whom and who belongs where, as of two Delta versions.
#[derive(Default)]
struct Directory {
    versions: (Option<u64>, Option<u64>),
    students: HashMap<String, Vec<String>>,
    org_of: HashMap<String, String>,
    members: HashMap<String, Vec<String>>,
}

impl ServedLake {
    pub fn new(lake: Lake, policy: Policy) -> Self {
        ServedLake {
            lake,
            policy,
            listing: tokio::sync::Mutex::new(None),
            tables: Mutex::new(HashMap::new()),
            directory: tokio::sync::Mutex::new(Directory::default()),
        }
    }

    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Every table of the lake, listed at most [`LISTING_TTL`] ago.
    pub async fn tables(&self) -> Result<Vec<TablePath>> {
        let mut listing = self.listing.lock().await;
        if let Some((at, tables)) = listing.as_ref() {
            if at.elapsed() < LISTING_TTL {
                return Ok(tables.clone());
            }
        }
        let tables = self.lake.tables().await?;
        *listing = Some((Instant::now(), tables.clone()));
        Ok(tables)
    }

    /// A table as first loaded or last brought forward, without touching the store
    /// unless it was never loaded: for names and schemas while planning.
    pub async fn known(&self, table: &TablePath) -> Result<Loaded> {
        let slot = self.slot(table);
        let mut guard = slot.lock().await;
        if let Some(loaded) = guard.as_ref() {
            return Ok(loaded.clone());
        }
        let loaded = self.load(table, self.lake.load_table(table).await?).await?;
        *guard = Some(loaded.clone());
        Ok(loaded)
    }

    /// A table at its latest committed version: what every scan reads. The log
    /// is listed outside the table's lock, so statements reading one table do not
    /// take turns; the newest version any of them found is kept.
    pub async fn latest(&self, table: &TablePath) -> Result<Loaded> {
        let slot = self.slot(table);
        let cached = slot.lock().await.clone();
        let Some(mut loaded) = cached else {
            let mut guard = slot.lock().await;
            let loaded = self.load(table, self.lake.load_table(table).await?).await?;
            *guard = Some(loaded.clone());
            return Ok(loaded);
        };
        let before = loaded.delta.version();
        loaded.delta.update_incremental(None).await.map_err(|e| Error::delta(table.as_str(), e))?;
        if loaded.delta.version() == before {
            return Ok(loaded);
        }
        let loaded = self.load(table, loaded.delta).await?;
        let mut guard = slot.lock().await;
        if guard.as_ref().is_none_or(|kept| kept.delta.version() < loaded.delta.version()) {
            *guard = Some(loaded.clone());
        }
        Ok(loaded)
    }

    fn slot(&self, table: &TablePath) -> Arc<tokio::sync::Mutex<Option<Loaded>>> {
        let mut tables = self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tables.entry(table.clone()).or_default().clone()
    }

    /// With the schema DataFusion scans it with (strings as Utf8View, say).
    async fn load(&self, table: &TablePath, delta: DeltaTable) -> Result<Loaded> {
        let provider = delta.table_provider().await.map_err(|e| Error::delta(table.as_str(), e.into()))?;
        let schema = provider.schema();
        let ties = self.policy.ties(&table.sql_name(), &schema);
        Ok(Loaded { delta, schema, ties })
    }

    /// Whom `identity` teaches and where it belongs, from the directory's latest versions.
    pub async fn scope(&self, identity: &Identity) -> Result<Scope> {
        if !matches!(identity.role, Role::Trainer | Role::OrgAdmin) {
            return Ok(Scope::default());
        }
        let users = self.directory_table(USERS).await?;
        let assignments = self.directory_table(ASSIGNMENTS).await?;
        let versions = (users.as_ref().and_then(|t| t.delta.version()), assignments.as_ref().and_then(|t| t.delta.version()));
        let mut directory = self.directory.lock().await;
        if directory.versions != versions || versions == (None, None) {
            *directory = Directory::read(users, assignments, versions).await?;
        }
        let me = &identity.user;
        let org = directory.org_of.get(me).cloned();
        Ok(Scope {
            students: directory.students.get(me).cloned().unwrap_or_default(),
            members: org.as_ref().and_then(|o| directory.members.get(o)).cloned().unwrap_or_default(),
            org,
        })
    }

    async fn directory_table(&self, path: &str) -> Result<Option<Loaded>> {
        let table = TablePath::new(path).map_err(Error::Config)?;
        if !self.tables().await?.contains(&table) {
            return Ok(None);
        }
        self.latest(&table).await.map(Some)
    }
}

impl Directory {
    async fn read(users: Option<Loaded>, assignments: Option<Loaded>, versions: (Option<u64>, Option<u64>)) -> Result<Directory> {
        let mut directory = Directory { versions, ..Directory::default() };
        if let Some(users) = users {
            for (user, org) in pairs(users, "user_id", "org_id").await? {
                directory.members.entry(org.clone()).or_default().push(user.clone());
                directory.org_of.insert(user, org);
            }
        }
        if let Some(assignments) = assignments {
            for (trainer, student) in pairs(assignments, "trainer_id", "student_id").await? {
                let students = directory.students.entry(trainer).or_default();
                if !students.contains(&student) {
                    students.push(student);
                }
            }
        }
        Ok(directory)
    }
}

/// The non-null `(a, b)` string pairs of a directory table.
async fn pairs(table: Loaded, a: &str, b: &str) -> Result<Vec<(String, String)>> {
    let ctx = SessionContext::new();
    let provider = table.delta.table_provider().await.map_err(|e| Error::delta(a, e.into()))?;
    table.delta.update_datafusion_session(&ctx.state()).map_err(|e| Error::delta(a, e))?;
    ctx.register_table("t", provider)?;
    let batches = ctx.sql(&format!("SELECT \"{a}\", \"{b}\" FROM t WHERE \"{a}\" IS NOT NULL AND \"{b}\" IS NOT NULL")).await?.collect().await?;
    let mut out = BTreeSet::new();
    for batch in batches {
        let left = cast(batch.column(0), &DataType::Utf8)?;
        let right = cast(batch.column(1), &DataType::Utf8)?;
        let (left, right) = (left.as_string::<i32>(), right.as_string::<i32>());
        for i in 0..batch.num_rows() {
            if left.is_valid(i) && right.is_valid(i) {
                out.insert((left.value(i).to_string(), right.value(i).to_string()));
            }
        }
    }
    Ok(out.into_iter().collect())
}
