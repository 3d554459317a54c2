//! One identity's view of the lake: a DataFusion session whose catalog holds only
//! the tables the identity may read, each scanned at its latest Delta version
//! through the policy's row filter, within the server's time and memory limits.
//!
//! Names: a table is `catalog.schema.table` after its path, as in `sluice query`.
//! For Postgres clients, which know two levels, the same table is also
//! `"catalog.schema".table` in the default catalog `lake`; that is how `\dt`,
//! `pg_catalog` and `information_schema` list it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, Session as DfSession, TableProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{exec_datafusion_err, DataFusionError, Result as DfResult, ScalarValue};
use datafusion::datasource::{source_as_provider, TableType};
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{create_udf, ColumnarValue, Expr, LogicalPlan, ScalarFunctionImplementation, TableProviderFilterPushDown, Volatility};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};

use sluice_gate::token::{Identity, Role};

use super::guard::guarded_scan;
use super::information_schema::{InformationSchema, Listing};
use super::lake::ServedLake;
use super::limits::priority::Prioritize;
use super::limits::{Budget, Limits};
use super::policy::{access, Access};
use super::stop::{Stop, Stopped};
use crate::catalog::TablePath;
use crate::error::{Error, Result};

/// The default catalog: the "database" Postgres clients see.
pub const DEFAULT_CATALOG: &str = "lake";

/// The plan check behind the statement allow-list: no DDL, no DML, no `SET`
/// reaching DataFusion.
pub fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

/// One identity's session over the served lake.
pub struct Session {
    pub identity: Identity,
    pub ctx: SessionContext,
    budget: Arc<Budget>,
    view: Arc<View>,
}

/// Why [`Session::answer`] has no rows: stopped (time limit, no turn, a panic),
/// or an error (redacted).
#[derive(Debug)]
pub enum Unanswered {
    Stopped(String),
    Failed(String),
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Unanswered::Stopped(message) | Unanswered::Failed(message) => f.write_str(message),
        }
    }
}

/// The tables an identity may read, as of the statement's start.
struct View {
    lake: Arc<ServedLake>,
    identity: Identity,
    /// `catalog.schema` → table name → path.
    tables: RwLock<BTreeMap<String, BTreeMap<String, TablePath>>>,
    /// pg_catalog and information_schema, registered once at set-up.
    system: RwLock<BTreeMap<String, Arc<dyn SchemaProvider>>>,
    /// While a statement is planned for the plan cache: the tables it scans.
    scanned: std::sync::Mutex<Option<Scanned>>,
}

/// Lake tables a plan scans, each at the version it reads.
pub type Scanned = Vec<(TablePath, Option<deltalake::kernel::Version>)>;

/// While alive, the session notes the lake tables planning scans.
pub struct Noting<'a>(&'a Session);

impl Noting<'_> {
    /// The lake tables scanned since [`Session::note_scans`].
    pub fn scans(self) -> Option<Scanned> {
        self.0.view.scanned.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for Noting<'_> {
    fn drop(&mut self) {
        self.0.view.scanned.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl Session {
    pub async fn new(lake: Arc<ServedLake>, identity: Identity, budget: &Arc<Budget>) -> Result<Session> {
        let view = Arc::new(View { lake, identity: identity.clone(), tables: RwLock::default(), system: RwLock::default(), scanned: Default::default() });
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(budget.session_memory()))
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()?;
        let config = SessionConfig::new()
            // Ours (Postgres' type names, only readable tables), not DataFusion's.
            .with_information_schema(false)
            .with_default_catalog_and_schema(DEFAULT_CATALOG, "public")
            // Two partitions where a table has two files or more, never a
            // round-robin split of one file's batches: for the dashboard's small
            // statements that hand-off between threads cost more than it gained.
            .set_bool("datafusion.optimizer.enable_round_robin_repartition", false)
            .with_create_default_catalog_and_schema(false)
            // DataFusion 55's top-k aggregation sizes a table as ten times the LIMIT,
            // which overflows for LIMIT 9223372036854775807 (found by fuzz_sql.py).
            .set_bool("datafusion.optimizer.enable_topk_aggregation", false);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(super::stop::YieldEverywhere))
            .with_physical_optimizer_rule(Arc::new(Prioritize { budget: budget.clone(), user: identity.user.clone() }))
            .with_catalog_list(Arc::new(Catalogs(view.clone())))
            .build();
        let listing: Arc<dyn Listing> = view.clone();
        view.system.write().unwrap_or_else(|p| p.into_inner()).insert("information_schema".into(), Arc::new(InformationSchema { listing, catalog: DEFAULT_CATALOG }));
        let ctx = SessionContext::new_with_state(state);
        super::limits::functions::bound(&ctx);
        let session = Session { identity, ctx, budget: budget.clone(), view };
        session.refresh().await?;
        Ok(session)
    }

    /// Adds the Postgres system catalog (`pg_catalog`, the functions clients call).
    pub fn with_pg_catalog(self) -> Result<Session> {
        use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{context::EmptyContextProvider, setup_pg_catalog};
        setup_pg_catalog(&self.ctx, DEFAULT_CATALOG, EmptyContextProvider).map_err(|e| Error::DataFusion(*e))?;
        // The connecting user, where pg_catalog's functions would say `postgres`.
        for name in ["session_user", "current_user"] {
            let user = ScalarValue::Utf8(Some(self.identity.user.clone()));
            let answer: ScalarFunctionImplementation = Arc::new(move |_| Ok(ColumnarValue::Scalar(user.clone())));
            self.ctx.register_udf(create_udf(name, vec![], DataType::Utf8, Volatility::Stable, answer));
        }
        Ok(self)
    }

    /// What every statement of this session is bound by.
    pub fn limits(&self) -> &Limits {
        &self.budget.limits
    }

    /// The columns and rows of `sql` with `params` (`$1`, ...), as one of the
    /// user's statements, within the time limit: how REST and the dashboard ask
    /// (Postgres clients go through pgwire). A client that leaves drops this
    /// future, which stops the statement.
    pub async fn answer(&self, sql: &str, params: Vec<ScalarValue>) -> std::result::Result<(Vec<String>, Vec<RecordBatch>), Unanswered> {
        let mut stop = Stop::after(self.limits().query_timeout);
        let _turn = self.budget.statement(&self.identity.user, stop.deadline()).await.map_err(|f| Unanswered::Stopped(f.message))?;
        let answer = async {
            let frame = self.ctx.sql_with_options(sql, read_only()).await?.with_param_values(params)?;
            let columns: Vec<String> = frame.schema().fields().iter().map(|f| f.name().clone()).collect();
            Ok::<_, DataFusionError>((columns, frame.collect().await?))
        };
        match stop.guard(answer).await {
            Err(why @ (Stopped::TimedOut(_) | Stopped::Canceled | Stopped::ClientGone)) => Err(Unanswered::Stopped(why.to_string())),
            Err(why @ Stopped::Panicked(_)) => Err(Unanswered::Failed(why.to_string())),
            Ok(Err(e)) => Err(Unanswered::Failed(crate::catalog::storage::redact(&e.to_string()))),
            Ok(Ok(answer)) => Ok(answer),
        }
    }

    /// Notes the lake tables planning scans until [`Noting::scans`] (or until
    /// dropped, as when the statement is stopped while it is planned).
    pub fn note_scans(&self) -> Noting<'_> {
        *self.view.scanned.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
        Noting(self)
    }

    /// Whether every table of `tables` ([`lake_tables_of`] a plan) still has the
    /// columns it was planned with, as last loaded: then the plan may run again.
    pub async fn same_columns(&self, tables: &[(TablePath, SchemaRef)]) -> bool {
        for (path, schema) in tables {
            match self.view.lake.known(path).await {
                Ok(loaded) if loaded.schema == *schema => continue,
                _ => return false,
            }
        }
        true
    }

    /// Whether every table in `scanned` is still at the version noted.
    pub async fn unchanged(&self, scanned: &Scanned) -> bool {
        for (path, version) in scanned {
            match self.view.lake.latest(path).await {
                Ok(loaded) if loaded.delta.version() == *version => continue,
                _ => return false,
            }
        }
        true
    }

    /// The tables this session may read, as of its last refresh.
    pub fn tables(&self) -> Vec<TablePath> {
        let tables = self.view.tables.read().unwrap_or_else(|p| p.into_inner());
        tables.values().flat_map(|t| t.values().cloned()).collect()
    }

    /// Re-reads which tables exist and which the identity may read; called at
    /// the start of every statement.
    pub async fn refresh(&self) -> Result<()> {
        let mut visible: BTreeMap<String, BTreeMap<String, TablePath>> = BTreeMap::new();
        for table in self.view.lake.tables().await? {
            let loaded = match self.view.lake.known(&table).await {
                Ok(loaded) => loaded,
                // A table being created may have no readable version yet.
                Err(e) => {
                    tracing::debug!(table = %table, "not served yet: {e}");
                    continue;
                }
            };
            if !access_to(&self.identity, &loaded, &Default::default()).is_ok_and(|a| a != Access::Hidden) {
                continue;
            }
            let [catalog, schema, name] = table.parts();
            visible.entry(format!("{catalog}.{schema}")).or_default().insert(name.to_string(), table.clone());
        }
        *self.view.tables.write().unwrap_or_else(|p| p.into_inner()) = visible;
        Ok(())
    }
}

/// The system schemas hold the session's catalog (information_schema its view,
/// pg_catalog the whole catalog list), which holds them: a cycle of `Arc`s that
/// would keep every closed session's memory. Ending the session breaks it.
impl Drop for Session {
    fn drop(&mut self) {
        self.view.system.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// What `identity` may read of a loaded table. A policy that does not fit the
/// table (`sluice validate` says so) hides it from all but analysts.
fn access_to(identity: &Identity, loaded: &super::lake::Loaded, scope: &super::policy::Scope) -> std::result::Result<Access, String> {
    match &loaded.ties {
        Ok(ties) => Ok(access(identity, ties, scope)),
        Err(_) if identity.role == Role::Analyst => Ok(Access::All),
        Err(e) => Err(e.clone()),
    }
}

#[async_trait]
impl Listing for View {
    async fn listed(&self) -> Vec<(String, String, SchemaRef)> {
        let tables: Vec<(String, String, TablePath)> = {
            let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
            tables.iter().flat_map(|(s, t)| t.iter().map(move |(n, p)| (s.clone(), n.clone(), p.clone()))).collect()
        };
        let mut listed = Vec::with_capacity(tables.len());
        for (schema, name, path) in tables {
            if let Ok(loaded) = self.lake.known(&path).await {
                listed.push((schema, name, loaded.schema));
            }
        }
        listed
    }
}

impl View {
    fn schemas(&self) -> Vec<String> {
        self.tables.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    fn table_names(&self, schema: &str) -> Vec<String> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        tables.get(schema).map(|t| t.keys().cloned().collect()).unwrap_or_default()
    }

    fn path(&self, schema: &str, name: &str) -> Option<TablePath> {
        self.tables.read().unwrap_or_else(|p| p.into_inner()).get(schema)?.get(name).cloned()
    }
}

/// The catalogs a session resolves: `lake` (listed), and each first path segment
/// (`analytics`, `monitoring`, ...), resolved for three-part names but not listed,
/// so that `information_schema` and `pg_catalog` show every table once.
#[derive(Debug)]
struct Catalogs(Arc<View>);

impl CatalogProviderList for Catalogs {

    fn register_catalog(&self, _name: String, _catalog: Arc<dyn CatalogProvider>) -> Option<Arc<dyn CatalogProvider>> {
        None
    }

    fn catalog_names(&self) -> Vec<String> {
        vec![DEFAULT_CATALOG.to_string()]
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        if name == DEFAULT_CATALOG {
            return Some(Arc::new(Catalog { view: self.0.clone(), first: None }));
        }
        let prefix = format!("{name}.");
        let known = self.0.schemas().iter().any(|s| s.starts_with(&prefix));
        known.then(|| Arc::new(Catalog { view: self.0.clone(), first: Some(name.to_string()) }) as Arc<dyn CatalogProvider>)
    }
}

#[derive(Debug)]
struct Catalog {
    view: Arc<View>,
    /// None for `lake` (schemas `catalog.schema`), else the first path segment.
    first: Option<String>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "View({})", self.identity.user)
    }
}

impl CatalogProvider for Catalog {

    fn schema_names(&self) -> Vec<String> {
        match &self.first {
            None => {
                let mut names: Vec<String> = self.view.system.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
                names.extend(self.view.schemas());
                names
            }
            Some(first) => {
                let prefix = format!("{first}.");
                self.view.schemas().iter().filter_map(|s| s.strip_prefix(&prefix).map(str::to_string)).collect()
            }
        }
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let dotted = match &self.first {
            None => {
                if let Some(system) = self.view.system.read().unwrap_or_else(|p| p.into_inner()).get(name) {
                    return Some(system.clone());
                }
                name.to_string()
            }
            Some(first) => format!("{first}.{name}"),
        };
        let exists = self.view.schemas().contains(&dotted);
        exists.then(|| Arc::new(Schema { view: self.view.clone(), name: dotted }) as Arc<dyn SchemaProvider>)
    }

    /// Only the system schemas, at set-up; SQL cannot create schemas (statements are read-only).
    fn register_schema(&self, name: &str, schema: Arc<dyn SchemaProvider>) -> DfResult<Option<Arc<dyn SchemaProvider>>> {
        if self.first.is_some() || !matches!(name, "pg_catalog" | "information_schema") {
            return Err(DataFusionError::Plan("the served lake is read-only: no schema can be created".into()));
        }
        Ok(self.view.system.write().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), schema))
    }
}

#[derive(Debug)]
struct Schema {
    view: Arc<View>,
    name: String,
}

#[async_trait]
impl SchemaProvider for Schema {

    fn table_names(&self) -> Vec<String> {
        self.view.table_names(&self.name)
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(path) = self.view.path(&self.name, name) else { return Ok(None) };
        let loaded = self.view.lake.known(&path).await.map_err(|e| exec_datafusion_err!("{e}"))?;
        Ok(Some(Arc::new(LakeTable { view: self.view.clone(), path, schema: loaded.schema })))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.view.path(&self.name, name).is_some()
    }
}

/// Whether a filter is small enough to hand to the Delta scan.
fn small(filter: &Expr) -> bool {
    const MAX_NODES: usize = 64;
    let mut nodes = 0;
    let _ = filter.apply(|e| {
        nodes += match e {
            Expr::InList(list) => list.list.len(),
            _ => 1,
        };
        Ok(if nodes > MAX_NODES { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    nodes <= MAX_NODES
}

/// The lake tables a logical plan names (its subqueries' too), with the columns
/// it was planned with; `None` if it reads anything else (the system catalogs,
/// built when named).
pub fn lake_tables_of(plan: &LogicalPlan) -> Option<Vec<(TablePath, SchemaRef)>> {
    let mut tables = Some(Vec::new());
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let provider = source_as_provider(&scan.source).ok();
            match (provider.as_ref().and_then(|p| p.downcast_ref::<LakeTable>()), tables.as_mut()) {
                (Some(lake), Some(found)) => found.push((lake.path.clone(), lake.schema.clone())),
                _ => {
                    tables = None;
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    tables
}

/// A lake table in a statement's plan. What it reads is decided when the plan
/// runs: the latest committed version, through the identity's row filter as the
/// directory says now, so a prepared statement run again sees new commits.
#[derive(Debug)]
struct LakeTable {
    view: Arc<View>,
    path: TablePath,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for LakeTable {

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Analysts' small filters reach the Delta scan (file skipping); a guarded
        // table's never do. A large one (an IN list of thousands) stays with
        // DataFusion: delta-rs turns it into a predicate tree it walks recursively,
        // as deep as the list is long.
        let analyst = self.view.identity.role == Role::Analyst;
        Ok(filters
            .iter()
            .map(|filter| if analyst && small(filter) { TableProviderFilterPushDown::Inexact } else { TableProviderFilterPushDown::Unsupported })
            .collect())
    }

    async fn scan(&self, state: &dyn DfSession, projection: Option<&Vec<usize>>, filters: &[Expr], limit: Option<usize>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let fail = |e: Error| exec_datafusion_err!("{e}");
        let lake = &self.view.lake;
        let loaded = lake.latest(&self.path).await.map_err(fail)?;
        if let Some(scanned) = self.view.scanned.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            scanned.push((self.path.clone(), loaded.delta.version()));
        }
        if loaded.schema != self.schema {
            return Err(exec_datafusion_err!("table {} changed its columns while the statement was planned; run it again", self.path.sql_name()));
        }
        let scope = lake.scope(&self.view.identity).await.map_err(fail)?;
        loaded.delta.update_datafusion_session(state).map_err(|e| exec_datafusion_err!("{e}"))?;
        let delta: Arc<dyn TableProvider> = loaded.delta.table_provider().await.map_err(|e| exec_datafusion_err!("{e}"))?;
        match access_to(&self.view.identity, &loaded, &scope).map_err(|e| exec_datafusion_err!("policy: {e}"))? {
            Access::All => delta.scan(state, projection, filters, limit).await,
            Access::Rows(filter) => guarded_scan(&self.path.sql_name(), delta.as_ref(), &filter, state, projection).await,
            Access::Hidden => Err(exec_datafusion_err!("table '{}' not found", self.path.sql_name())),
        }
    }
}
