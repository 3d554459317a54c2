//! The Postgres wire protocol (pgwire), for psql, psycopg, JDBC tools and Grafana.
//!
//! A connection authenticates with a JWT as its password (cleartext, so only over
//! TLS or loopback), gets its own [`Session`] as a typed session extension SQL
//! cannot reach, and has each statement checked ([`statement::check`]) before
//! datafusion-postgres plans and answers it against that session: its hooks
//! answer `SET`/`SHOW`, transactions and cursors the way clients expect, and
//! arrow-pg encodes the rows with their Postgres types.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::{DfSessionService, QueryHook};
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::auth::{finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, DefaultServerParameterProvider, StartupHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ErrorHandler, PgWireConnectionState, PgWireServerHandlers, Type, METADATA_USER};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::auth::{Refusal, Verifier};
use super::lake::ServedLake;
use super::session::{Limits, Session};
use super::statement;

type DfStatement = (String, Option<(Statement, LogicalPlan)>);

/// Where datafusion-postgres' `SET statement_timeout` hook keeps the session's value.
const STATEMENT_TIMEOUT_KEY: &str = "statement_timeout_ms";

/// What every connection shares.
pub struct PgServer {
    lake: Arc<ServedLake>,
    verifier: Verifier,
    limits: Limits,
    connections: Arc<Semaphore>,
    max_connections: usize,
    parser: Arc<PgParser>,
    hooks: Vec<Arc<dyn QueryHook>>,
}

/// One connection's session, in pgwire's session extensions.
struct Connection {
    session: Session,
    service: DfSessionService,
}

/// A connection slot, held from startup until the connection ends (then dropped with it).
struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl PgServer {
    pub fn new(lake: Arc<ServedLake>, verifier: Verifier, limits: Limits, max_connections: usize) -> Self {
        let template = DfSessionService::new_with_hooks(Arc::new(SessionContext::new()), hooks());
        PgServer {
            lake,
            verifier,
            limits,
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            parser: Arc::new(PgParser { sql: PostgresCompatibilityParser::new(), template }),
            hooks: hooks(),
        }
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Option<pgwire::tokio::TlsAcceptor>) {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("postgres listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handlers = Handlers(self.clone());
            let tls = tls.clone();
            tokio::spawn(async move {
                if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                    tracing::debug!(%peer, "postgres connection ended: {e}");
                }
            });
        }
    }

    /// The statement's time limit: the server's, or the session's `statement_timeout` if shorter.
    fn time_limit<C: ClientInfo>(&self, client: &C) -> Duration {
        let session = client.metadata().get(STATEMENT_TIMEOUT_KEY).and_then(|ms| ms.parse::<u64>().ok()).map(Duration::from_millis);
        session.map_or(self.limits.query_timeout, |s| s.min(self.limits.query_timeout))
    }
}

/// The connection's session, which authentication put in pgwire's session extensions.
fn connection<C: ClientInfo>(client: &C) -> PgWireResult<Arc<Connection>> {
    client.session_extensions().get::<Connection>().ok_or_else(|| fatal("28000", "not authenticated"))
}

fn hooks() -> Vec<Arc<dyn QueryHook>> {
    vec![Arc::new(CursorStatementHook), Arc::new(SetShowHook), Arc::new(TransactionStatementHook)]
}

/// The pgwire handler set for one connection.
struct Handlers(Arc<PgServer>);

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.0.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        self.0.clone()
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

/// DataFusion's errors with the SQLSTATE a client can act on.
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
        _ => "XX000",
    };
    let message = match root {
        DataFusionError::ResourcesExhausted(m) => format!("the statement needs more memory than a query may use here ({m})"),
        _ => df.to_string(),
    };
    Some(error(code, message))
}

fn refused(r: statement::Refused) -> PgWireError {
    error(r.code, r.message)
}

fn timed_out(limit: Duration) -> PgWireError {
    error("57014", format!("canceling statement due to statement timeout ({} ms)", limit.as_millis()))
}

/// Ends a response's rows with a timeout error once `deadline` passes.
fn bounded(response: Response, deadline: Instant, limit: Duration) -> Response {
    let Response::Query(mut query) = response else { return response };
    let rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
    let timer = Box::pin(tokio::time::sleep_until(deadline));
    query.data_rows = Box::pin(futures::stream::unfold(Some((rows, timer)), move |state| async move {
        let (mut rows, mut timer) = state?;
        tokio::select! {
            biased;
            _ = &mut timer => Some((Err(timed_out(limit)), None)),
            row = rows.next() => row.map(|row| (row.map_err(remap), Some((rows, timer)))),
        }
    }));
    Response::Query(query)
}

#[async_trait]
impl StartupHandler for PgServer {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if !client.is_secure() && !client.socket_addr().ip().is_loopback() {
                    return Err(fatal("28000", Refusal::Unencrypted));
                }
                let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                    return Err(fatal("53300", format!("too many connections: this server takes {} at a time", self.max_connections)));
                };
                client.session_extensions().insert(Slot { _permit: permit });
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let password = password.into_password()?;
                let identity = self.verifier.verify(&password.password).map_err(|r| fatal("28P01", r))?;
                let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
                if user != identity.user {
                    return Err(fatal("28000", Refusal::UserMismatch { user }));
                }
                if client.session_extensions().get::<Slot>().is_none() {
                    return Err(fatal("08P01", "password before startup"));
                }
                let session = Session::new(self.lake.clone(), identity, &self.limits)
                    .await
                    .and_then(Session::with_pg_catalog)
                    .map_err(|e| fatal("58030", format!("cannot open the lake: {e}")))?;
                let service = DfSessionService::new_with_hooks(Arc::new(session.ctx.clone()), hooks());
                client.session_extensions().insert(Connection { session, service });
                let mut parameters = DefaultServerParameterProvider::default();
                parameters.default_transaction_read_only = true;
                finish_authentication(client, &parameters).await?;
            }
            _ => {}
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
        let statements = self.parser.sql.parse(query).map_err(|e| refused(statement::unparsed(query, e)))?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        for statement in &statements {
            statement::check(statement).map_err(refused)?;
        }
        let mut responses = Vec::with_capacity(statements.len());
        'statements: for statement in statements {
            let limit = self.time_limit(client);
            let deadline = Instant::now() + limit;
            connection.session.refresh().await.map_err(|e| error("58030", e))?;
            for hook in &self.hooks {
                if let Some(response) = hook.handle_simple_query(&statement, &connection.session.ctx, client).await {
                    responses.push(response.map_err(remap)?);
                    continue 'statements;
                }
            }
            let ctx = &connection.session.ctx;
            let sql = statement.to_string();
            let planned = tokio::time::timeout_at(deadline, ctx.sql_with_options(&sql, statement::read_only()));
            let frame = planned.await.map_err(|_| timed_out(limit))?.map_err(|e| remap(PgWireError::ApiError(Box::new(e))))?;
            let format = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
            let encoded = tokio::time::timeout_at(deadline, encode_dataframe(frame, &Format::UnifiedText, Some(format)));
            let response = encoded.await.map_err(|_| timed_out(limit))?.map_err(remap)?;
            responses.push(bounded(Response::Query(response), deadline, limit));
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
        let limit = self.time_limit(client);
        let deadline = Instant::now() + limit;
        let answered = tokio::time::timeout_at(deadline, ExtendedQueryHandler::do_query(&connection.service, client, portal, max_rows));
        let response = answered.await.map_err(|_| timed_out(limit))?.map_err(remap)?;
        Ok(bounded(response, deadline, limit))
    }
}

/// Parses and checks extended-protocol statements, then plans them in the
/// connection's session.
pub struct PgParser {
    sql: PostgresCompatibilityParser,
    /// For the session-independent parts (parameter and result types of a plan).
    template: DfSessionService,
}

#[async_trait]
impl QueryParser for PgParser {
    type Statement = DfStatement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<DfStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let connection = connection(client)?;
        for statement in self.sql.parse(sql).map_err(|e| refused(statement::unparsed(sql, e)))? {
            statement::check(&statement).map_err(refused)?;
        }
        connection.session.refresh().await.map_err(|e| error("58030", e))?;
        let parsed = connection.service.query_parser().parse_sql(client, sql, types).await.map_err(remap)?;
        if let Some((_, Some((Statement::Query(_) | Statement::Explain { .. }, plan)))) = &parsed {
            statement::read_only().verify_plan(plan).map_err(|e| error(statement::READ_ONLY, e))?;
        }
        Ok(parsed)
    }

    fn get_parameter_types(&self, stmt: &DfStatement) -> PgWireResult<Vec<Type>> {
        self.template.query_parser().get_parameter_types(stmt)
    }

    fn get_result_schema(&self, stmt: &DfStatement, column_format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        self.template.query_parser().get_result_schema(stmt, column_format)
    }
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
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| Error::Config(format!("--tls-cert/--tls-key: {e}")))?;
    Ok(pgwire::tokio::TlsAcceptor::from(Arc::new(config)))
}
