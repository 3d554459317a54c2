//! The Postgres wire protocol (pgwire), for psql, psycopg, JDBC tools and Grafana.
//!
//! [`wire`] drives each connection (TLS, bounded frames, the login deadline). A
//! connection authenticates with a JWT as its password (cleartext, so only over
//! TLS or loopback) and gets its own [`Session`] as a typed session extension SQL
//! cannot reach. Each statement is admitted by size and nesting, then checked
//! against the read-only allow-list ([`sluice_gate::statement`]), before
//! datafusion-postgres plans and answers it against that session: its hooks
//! answer `SET`/`SHOW`, transactions and cursors the way clients expect, and
//! arrow-pg encodes the rows with their Postgres types. Every statement runs
//! under a [`Stop`] (time limit, CancelRequest, client gone, panic) and holds
//! one of its user's statement slots until its last row.

mod names;
mod plans;
pub mod wire;

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::error::ArrowError;
use datafusion::common::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::{DfSessionService, QueryHook};
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::auth::{finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, DefaultServerParameterProvider, StartupHandler};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionHandle, ConnectionManager, ErrorHandler, PgWireConnectionState, PgWireServerHandlers, Type, METADATA_USER};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::{Authentication, SecretKey};
use pgwire::messages::data::DataRow;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use sluice_gate::statement::{self, Refused, StatementLimits};
use sluice_gate::token::{Refusal, Verifier};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use super::lake::ServedLake;
use super::limits::{Budget, ConnectionSlot, Full};
use super::session::Session;
use super::stop::{Stop, Stopped};
use wire::{Peer, WireLimits};

type DfStatement = (String, Option<(Statement, LogicalPlan)>);

/// Where datafusion-postgres' `SET statement_timeout` hook keeps the session's value.
const STATEMENT_TIMEOUT_KEY: &str = "statement_timeout_ms";

/// Connections still logging in at once; past this, the oldest of them is closed,
/// so a flood of silent sockets cannot keep a real client (which logs in within
/// milliseconds) out.
const MAX_LOGGING_IN: usize = 256;

/// What every connection shares.
pub struct PgServer {
    lake: Arc<ServedLake>,
    verifier: Verifier,
    budget: Arc<Budget>,
    parser: Arc<PgParser>,
    /// Running statements by (pid, secret key), for CancelRequests.
    cancels: Arc<ConnectionManager>,
}

/// One connection's state, in pgwire's session extensions.
struct Connection {
    session: Session,
    service: DfSessionService,
    cancel: Arc<ConnectionHandle>,
    /// Simple-protocol statements as planned, run again while their tables stand still.
    plans: plans::PlanCache,
    /// Extended-protocol statements as parsed, planned again with each one's parameters.
    parsed: plans::ParsedCache,
    _slot: ConnectionSlot,
    _registered: pgwire::api::ConnectionGuard,
}

impl Connection {
    /// After a statement that may change the session's settings.
    fn forget_plans(&self) {
        self.plans.clear();
        self.parsed.clear();
    }
}

impl PgServer {
    pub fn new(lake: Arc<ServedLake>, verifier: Verifier, budget: Arc<Budget>) -> Self {
        // Asked only for a plan's parameter and result types: no hooks, no session.
        let template = DfSessionService::new_with_hooks(Arc::new(SessionContext::new()), Vec::new());
        PgServer {
            lake,
            verifier,
            budget,
            parser: Arc::new(PgParser { sql: PostgresCompatibilityParser::new(), template, hooks: hooks() }),
            cancels: Arc::new(ConnectionManager::new()),
        }
    }

    /// Accepts connections until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Option<pgwire::tokio::TlsAcceptor>) {
        let limits = WireLimits {
            auth_timeout: self.budget.limits.auth_timeout,
            max_frame: self.budget.limits.statement.max_bytes + (64 << 10),
            max_message_time: self.budget.limits.query_timeout + Duration::from_secs(10),
        };
        let mut logging_in: VecDeque<(Arc<AtomicBool>, AbortHandle)> = VecDeque::new();
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait, rather than spin.
                    tracing::warn!("postgres listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let authenticated = Arc::new(AtomicBool::new(false));
            let handlers = Handlers { server: self.clone(), authenticated: authenticated.clone() };
            let connection = wire::serve(socket, tls.clone(), handlers, limits, authenticated.clone());
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, "postgres connection ended: {e}");
                }
            });
            logging_in.retain(|(done, task)| !done.load(Ordering::Acquire) && !task.is_finished());
            logging_in.push_back((authenticated, task.abort_handle()));
            if logging_in.len() > MAX_LOGGING_IN {
                if let Some((_, oldest)) = logging_in.pop_front() {
                    oldest.abort();
                }
            }
        }
    }

    /// The statement's time limit: the server's, or the session's `statement_timeout` if shorter.
    fn time_limit<C: ClientInfo>(&self, client: &C) -> Duration {
        let session = client.metadata().get(STATEMENT_TIMEOUT_KEY).and_then(|ms| ms.parse::<u64>().ok()).filter(|&ms| ms > 0).map(Duration::from_millis);
        let limit = self.budget.limits.query_timeout;
        session.map_or(limit, |s| s.min(limit))
    }

    /// What stops this connection's next statement, and its turn among its user's statements.
    async fn start<C: ClientInfo>(&self, client: &C, connection: &Connection) -> PgWireResult<(Stop, super::limits::StatementSlot)> {
        let stop = Stop::after(self.time_limit(client))
            .with_cancel(connection.cancel.start_query().await)
            .with_peer(client.session_extensions().get::<Peer>().map(|p| *p));
        let slot = self.budget.statement(&connection.session.identity.user, stop.deadline()).await.map_err(full)?;
        Ok((stop, slot))
    }
}

/// The connection's state, which authentication put in pgwire's session extensions.
fn connection<C: ClientInfo>(client: &C) -> PgWireResult<Arc<Connection>> {
    client.session_extensions().get::<Connection>().ok_or_else(|| fatal("28000", "not authenticated"))
}

fn hooks() -> Vec<Arc<dyn QueryHook>> {
    vec![Arc::new(CursorStatementHook), Arc::new(SetShowHook), Arc::new(TransactionStatementHook)]
}

/// The pgwire handler set for one connection.
struct Handlers {
    server: Arc<PgServer>,
    authenticated: Arc<AtomicBool>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.server.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.server.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(Login { server: self.server.clone(), authenticated: self.authenticated.clone() })
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        self.server.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.server.cancels.clone()))
    }
}

impl ErrorHandler for PgServer {
    fn on_error<C: ClientInfo>(&self, client: &C, error: &mut PgWireError) {
        if let Some(remapped) = remapped(error) {
            *error = remapped;
        }
        tracing::debug!(peer = %client.socket_addr(), "postgres error: {error}");
    }
}

fn fatal(code: &str, message: impl ToString) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), message.to_string())))
}

fn error(code: &str, message: impl ToString) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message.to_string())))
}

/// DataFusion's errors with the SQLSTATE a client can act on (and no credential).
fn remap(e: PgWireError) -> PgWireError {
    remapped(&e).unwrap_or(e)
}

fn remapped(e: &PgWireError) -> Option<PgWireError> {
    let PgWireError::ApiError(inner) = e else { return None };
    let df = inner.downcast_ref::<DataFusionError>()?;
    let root = df.find_root();
    let code = match root {
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::SQL(..) => "42601",
        DataFusionError::Plan(m) if m.contains("not found") => "42P01",
        DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => "42000",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            ArrowError::DivideByZero => "22012",
            ArrowError::CastError(_) | ArrowError::ParseError(_) => "22P02",
            ArrowError::ArithmeticOverflow(_) | ArrowError::OffsetOverflowError(_) => "22003",
            ArrowError::InvalidArgumentError(_) | ArrowError::ComputeError(_) => "22023",
            _ => "XX000",
        },
        // What a statement's values or arguments make fail (a bad granularity, a bad regex).
        DataFusionError::Execution(_) => "22023",
        _ => "XX000",
    };
    let message = match root {
        // The pool's own refusal (which limit) may be behind a spill's error.
        DataFusionError::ResourcesExhausted(m) if m.contains("--query-memory") || m.contains("--memory") => format!("out of memory: {m}"),
        DataFusionError::ResourcesExhausted(m) => {
            format!("out of memory: the statement needs more memory than one may use here (--query-memory; all statements together: --memory): {m}")
        }
        _ => df.to_string(),
    };
    Some(error(code, crate::catalog::storage::redact(&message)))
}

fn refused(r: Refused) -> PgWireError {
    error(r.code, r.message)
}

fn full(f: Full) -> PgWireError {
    error(f.code, f.message)
}

fn stopped(why: Stopped) -> PgWireError {
    error(why.code(), why)
}

/// The statement's rows, ended early if it must stop, and with the column names
/// Postgres would give them.
fn guarded(response: Response, stop: Stop, slot: super::limits::StatementSlot, names: Option<Vec<String>>) -> Response {
    let Response::Query(mut query) = response else { return response };
    if let Some(names) = names {
        query.row_schema = Arc::new(names::renamed(&query.row_schema, &names));
    }
    let rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
    let rows = Box::pin(futures::StreamExt::map(rows, |row| row.map_err(remap)));
    query.data_rows = stop.guard_stream(rows, slot, |why| Err(stopped(why)));
    Response::Query(query)
}

/// Runs `plan` in `ctx`, its rows encoded as text with their Postgres types.
fn encode_plan(plan: Arc<dyn ExecutionPlan>, ctx: &SessionContext, format: Arc<FormatOptions>) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(arrow_schema_to_pg_fields(plan.schema().as_ref(), &Format::UnifiedText, Some(format))?);
    let batches = execute_stream(plan, ctx.task_ctx()).map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let encoding = fields.clone();
    let rows = batches.flat_map(move |batch| {
        let rows: Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send + Sync> = match batch {
            Ok(batch) => encode_recordbatch(encoding.clone(), batch),
            Err(e) => Box::new(std::iter::once(Err(PgWireError::ApiError(Box::new(e))))),
        };
        futures::stream::iter(rows)
    });
    Ok(QueryResponse::new(fields, rows))
}

/// The statement with its types coerced. A plan's schema before coercion can
/// differ from its rows' (`int + CASE … ELSE float END` is declared an integer
/// and computed as a float), and clients decode rows by the declared types.
fn coerced(frame: DataFrame) -> datafusion::error::Result<DataFrame> {
    let (state, plan) = frame.into_parts();
    let analyzed = state.analyzer().execute_and_check(plan, state.config_options(), |_, _| {})?;
    Ok(DataFrame::new(state, analyzed))
}

/// A statement [`admit`] parsed and checked, planned read-only: what
/// `sql_with_options` does, without parsing the text a second time (with another
/// parser than the extended protocol's).
async fn read_only_frame(ctx: &SessionContext, statement: Statement) -> datafusion::error::Result<DataFrame> {
    let plan = plan_statement(ctx, statement).await?;
    super::session::read_only().verify_plan(&plan)?;
    ctx.execute_logical_plan(plan).await
}

/// Parses a statement's text, checked before and after parsing: both protocols
/// admit a statement here.
fn admit(parser: &PostgresCompatibilityParser, limits: &StatementLimits, sql: &str) -> PgWireResult<Vec<Statement>> {
    statement::admit(sql, limits).map_err(refused)?;
    let statements = parser.parse(sql).map_err(|e| refused(statement::unparsed(sql, e)))?;
    for statement in &statements {
        statement::check(statement).map_err(refused)?;
    }
    Ok(statements)
}

/// Logs a connection in: a JWT as the password, then a session of its own.
struct Login {
    server: Arc<PgServer>,
    authenticated: Arc<AtomicBool>,
}

#[async_trait]
impl StartupHandler for Login {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let server = &self.server;
        match message {
            PgWireFrontendMessage::Startup(ref startup) if matches!(client.state(), PgWireConnectionState::AwaitingStartup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if !client.is_secure() && !client.socket_addr().ip().is_loopback() {
                    return Err(fatal("28000", Refusal::Unencrypted));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) if matches!(client.state(), PgWireConnectionState::AuthenticationInProgress) => {
                let password = password.into_password()?;
                let identity = server.verifier.verify(&password.password).map_err(|r| fatal("28P01", r))?;
                let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
                if user != identity.user {
                    return Err(fatal("28000", Refusal::UserMismatch { user }));
                }
                let slot = server.budget.connection(&identity.user).map_err(|f| fatal(f.code, f.message))?;
                let session = Session::new(server.lake.clone(), identity, &server.budget)
                    .await
                    .and_then(Session::with_pg_catalog)
                    .map_err(|e| fatal("58030", format!("cannot open the lake: {e}")))?;
                let service = DfSessionService::new_with_hooks(Arc::new(session.ctx.clone()), hooks());
                let (pid, key) = (rand::random::<i32>().abs(), SecretKey::I32(rand::random::<i32>()));
                client.set_pid_and_secret_key(pid, key.clone());
                let (cancel, registered) = server.cancels.register(pid, key);
                client.session_extensions().insert(Connection { session, service, cancel, plans: Default::default(), parsed: Default::default(), _slot: slot, _registered: registered });
                let mut parameters = DefaultServerParameterProvider::default();
                parameters.default_transaction_read_only = true;
                finish_authentication(client, &parameters).await?;
                self.authenticated.store(true, Ordering::Release);
            }
            _ => return Err(fatal("08P01", "unexpected message while logging in")),
        }
        Ok(())
    }
}

#[async_trait]
impl SimpleQueryHandler for PgServer {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let connection = connection(client)?;
        let statements = admit(&self.parser.sql, &self.budget.limits.statement, query)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        'statements: for statement in statements {
            connection.session.refresh().await.map_err(|e| error("58030", e))?;
            for hook in &self.parser.hooks {
                if let Some(response) = hook.handle_simple_query(&statement, &connection.session.ctx, client).await {
                    connection.forget_plans();
                    responses.push(response.map_err(remap)?);
                    continue 'statements;
                }
            }
            let (mut stop, slot) = self.start(client, &connection).await?;
            let ctx = &connection.session.ctx;
            let sql = statement.to_string();
            let format = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
            let answer = async {
                let failed = |e: DataFusionError| remap(PgWireError::ApiError(Box::new(e)));
                let (plan, names) = match connection.plans.get(&sql, &connection.session).await {
                    Some(planned) => (planned.to_run().map_err(failed)?, planned.names),
                    None => {
                        let frame = read_only_frame(ctx, statement).await.map_err(failed)?;
                        let frame = coerced(frame).map_err(failed)?;
                        let names = names::postgres_names(frame.logical_plan());
                        let logical = frame.logical_plan().clone();
                        let noting = connection.session.note_scans();
                        let plan = frame.create_physical_plan().await;
                        let scans = noting.scans();
                        let plan = plan.map_err(failed)?;
                        connection.plans.keep(&sql, &connection.session, &logical, &plan, names.clone(), scans);
                        // The kept plan is never run itself.
                        (reset_plan_states(plan).map_err(failed)?, names)
                    }
                };
                Ok::<_, PgWireError>((encode_plan(plan, ctx, format).map_err(remap)?, names))
            };
            let (response, names) = stop.guard(answer).await.map_err(stopped)??;
            responses.push(guarded(Response::Query(response), stop, slot, names));
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for PgServer {
    type Statement = DfStatement;
    type QueryParser = PgParser;

    fn query_parser(&self) -> Arc<PgParser> {
        self.parser.clone()
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<DfStatement>, max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = DfStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let connection = connection(client)?;
        let max = self.budget.limits.statement.max_literal_bytes;
        if let Some(value) = portal.parameters.iter().flatten().find(|p| p.len() > max) {
            return Err(error(statement::TOO_COMPLEX, format!("statement too complex: a parameter of {} bytes, more than the limit of {max} bytes", value.len())));
        }
        if !matches!(portal.statement.statement.1, Some((Statement::Query(_), _))) {
            // A SET, say: the kept plans may no longer hold.
            connection.forget_plans();
        }
        let names = portal.statement.statement.1.as_ref().and_then(|(_, plan)| names::postgres_names(plan));
        let (mut stop, slot) = self.start(client, &connection).await?;
        let answer = ExtendedQueryHandler::do_query(&connection.service, client, portal, max_rows);
        let response = stop.guard(answer).await.map_err(stopped)?.map_err(remap)?;
        Ok(guarded(response, stop, slot, names))
    }
}

/// Parses and checks statements; plans extended-protocol ones in the connection's
/// session.
pub struct PgParser {
    sql: PostgresCompatibilityParser,
    /// For the session-independent parts (parameter and result types of a plan).
    template: DfSessionService,
    /// datafusion-postgres's answers to SET, SHOW, transactions and cursors, for
    /// both protocols.
    hooks: Vec<Arc<dyn QueryHook>>,
}

#[async_trait]
impl QueryParser for PgParser {
    type Statement = DfStatement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<DfStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let connection = connection(client)?;
        if let Some(parsed) = connection.parsed.get(sql, &connection.session).await {
            return Ok(Some(parsed));
        }
        let limits = connection.session.limits();
        let statements = admit(&self.sql, &limits.statement, sql)?;
        // Like datafusion-postgres's parser, the first statement is the one planned.
        let Some(statement) = statements.into_iter().next() else { return Ok(None) };
        connection.session.refresh().await.map_err(|e| error("58030", e))?;
        let mut stop = Stop::after(limits.query_timeout);
        let planning = plan_parsed(&self.hooks, &statement, &connection.session.ctx, client);
        let mut plan = stop.guard(planning).await.map_err(stopped)?.map_err(remap)?;
        // Described with the types the rows will have (a plan with untyped parameters keeps its own).
        let state = connection.session.ctx.state();
        if let Ok(analyzed) = state.analyzer().execute_and_check(plan.clone(), state.config_options(), |_, _| {}) {
            plan = analyzed;
        }
        if matches!(statement, Statement::Query(_) | Statement::Explain { .. }) {
            super::session::read_only().verify_plan(&plan).map_err(|e| error(statement::READ_ONLY, e))?;
        }
        let parsed = (statement.to_string(), Some((statement, plan)));
        connection.parsed.keep(sql, &parsed);
        Ok(Some(parsed))
    }

    fn get_parameter_types(&self, stmt: &DfStatement) -> PgWireResult<Vec<Type>> {
        self.template.query_parser().get_parameter_types(stmt)
    }

    fn get_result_schema(&self, stmt: &DfStatement, column_format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        let fields = self.template.query_parser().get_result_schema(stmt, column_format)?;
        let names = stmt.1.as_ref().and_then(|(_, plan)| names::postgres_names(plan));
        Ok(match names {
            Some(names) => names::renamed(&fields, &names),
            None => fields,
        })
    }
}

/// Plans a parsed extended-protocol statement as datafusion-postgres's parser does
/// (its hooks first: SET, SHOW, transactions, cursors), without parsing the text a
/// second time.
async fn plan_parsed<C: ClientInfo + Send + Sync>(
    hooks: &[Arc<dyn QueryHook>],
    statement: &Statement,
    ctx: &SessionContext,
    client: &C,
) -> PgWireResult<LogicalPlan> {
    for hook in hooks {
        if let Some(plan) = hook.handle_extended_parse_query(statement, ctx, client).await {
            return plan;
        }
    }
    plan_statement(ctx, statement.clone()).await.map_err(|e| PgWireError::ApiError(Box::new(e)))
}

/// The logical plan of a parsed statement, in the session's state.
async fn plan_statement(ctx: &SessionContext, statement: Statement) -> datafusion::error::Result<LogicalPlan> {
    ctx.state().statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(statement))).await
}

/// TLS from a PEM certificate chain and private key.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> crate::error::Result<pgwire::tokio::TlsAcceptor> {
    use crate::error::Error;
    use tokio_rustls::rustls;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| Error::io(path, e));
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("--tls-cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("--tls-cert {}: no certificate in it (PEM expected)", cert.display())));
    }
    let private = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| Error::Config(format!("--tls-key {}: {e}", key.display())))?
        .ok_or_else(|| Error::Config(format!("--tls-key {}: no private key in it (PEM expected)", key.display())))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| Error::Config(format!("--tls-cert/--tls-key: {e}")))?;
    // Postgres 17's direct TLS names its protocol; the negotiated kind needs nothing.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(pgwire::tokio::TlsAcceptor::from(Arc::new(config)))
}
