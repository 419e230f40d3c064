//! The PostgreSQL side of `weir serve`: datafusion-postgres (pgwire, its `pg_catalog`, `SET`/`SHOW`,
//! cursors, transactions) over the live lake, read-only. Weir adds what a server open to BI tools
//! needs: every statement but a query (and harmless session settings) is refused with a
//! PostgreSQL error, every query first moves the lake to its newest Delta versions, and off
//! loopback a password is asked: SCRAM-SHA-256 over TLS when a certificate is given, else a
//! cleartext password.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Expr, Set, Statement};
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, QueryHook};
use futures::Sink;
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{SCRAM_ITERATIONS, ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{Response, Tag};
use pgwire::api::{ClientInfo, ConnectionManager, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::TlsAcceptor;

use super::Served;

/// Settings datafusion-postgres keeps per connection when `SET` as `name = literal` (its
/// `SetShowHook`); `SET TIME ZONE` is kept per connection too.
const PER_CONNECTION: &[&str] = &[
    "application_name",
    "bytea_output",
    "datestyle",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "statement_timeout",
];

/// Settings tools send at start-up that are answered `SET` and otherwise ignored: passed on,
/// DataFusion would change them for every client of the shared session.
const IGNORED: &[&str] = &[
    "characteristics",
    "client_encoding",
    "client_min_messages",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "idle_in_transaction_session_timeout",
    "jit",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "lock_timeout",
    "names",
    "standard_conforming_strings",
    "time",
    "timezone",
    "transaction",
];

/// What becomes of a statement.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// It runs (a query, a per-connection setting, a transaction or cursor statement).
    Run,
    /// A harmless `SET`, answered without effect.
    Ignore,
    /// Refused with this SQLSTATE and message.
    Refuse(&'static str, String),
}

/// Serves PostgreSQL clients on `listener` until dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    served: Arc<Served>,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(ReadOnly {
            served: served.clone(),
        }),
        Arc::new(datafusion_postgres::hooks::cursor::CursorStatementHook),
        Arc::new(datafusion_postgres::hooks::set_show::SetShowHook),
        Arc::new(datafusion_postgres::hooks::transactions::TransactionStatementHook),
    ];
    let connections = Arc::new(ConnectionManager::new());
    let secret = served.password.clone().map(|p| {
        let salt = uuid::Uuid::new_v4().into_bytes();
        Arc::new(TheSecret {
            scram: gen_salted_password(&p, &salt, SCRAM_ITERATIONS),
            cleartext: p,
            salt,
        })
    });
    let handlers = Arc::new(Handlers {
        service: Arc::new(DfSessionService::new_with_hooks(
            Arc::new(served.ctx.clone()),
            hooks,
        )),
        secret,
        scram: tls.is_some(),
        connections: connections.clone(),
        cancel: Arc::new(DefaultCancelHandler::new(connections)),
    });
    loop {
        // Out of file descriptors, say: wait a moment, the server goes on.
        let (socket, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("PostgreSQL endpoint: accepting a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let handlers = handlers.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                tracing::debug!("PostgreSQL client {addr}: {e}");
            }
        });
    }
}

/// What the server tells clients at start-up: a read-only, non-superuser session.
fn parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.default_transaction_read_only = true;
    p.is_superuser = false;
    p
}

/// A TLS acceptor from PEM files (certificate chain, PKCS#8 or RSA key).
pub fn tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
    .map_err(|e| format!("TLS certificate and key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

struct Handlers {
    service: Arc<DfSessionService>,
    secret: Option<Arc<TheSecret>>,
    /// SCRAM-SHA-256 (over TLS) instead of a cleartext password.
    scram: bool,
    connections: Arc<ConnectionManager>,
    cancel: Arc<DefaultCancelHandler>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    /// One per connection: a SASL exchange keeps its state in the handler.
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let cm = self.connections.clone();
        Arc::new(match &self.secret {
            None => Login::Open(Open { connections: cm }),
            Some(secret) if self.scram => {
                let mut scram = ScramAuth::new(Arc::new(Scram(secret.clone())));
                scram.set_iterations(SCRAM_ITERATIONS);
                Login::Scram(Box::new(
                    SASLAuthStartupHandler::new(Arc::new(parameters()))
                        .with_scram(scram)
                        .with_connection_manager(cm),
                ))
            }
            Some(secret) => Login::Cleartext(Box::new(
                CleartextPasswordAuthStartupHandler::new(Cleartext(secret.clone()), parameters())
                    .with_connection_manager(cm),
            )),
        })
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// No password (loopback), or the one of [`super::PASSWORD_ENV`] for any user: cleartext, or
/// SCRAM-SHA-256 when the server has a certificate.
enum Login {
    Open(Open),
    Cleartext(Box<CleartextPasswordAuthStartupHandler<Cleartext, DefaultServerParameterProvider>>),
    Scram(Box<SASLAuthStartupHandler<DefaultServerParameterProvider>>),
}

struct Open {
    connections: Arc<ConnectionManager>,
}

impl NoopStartupHandler for Open {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.connections.clone())
    }
}

#[async_trait]
impl StartupHandler for Login {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Login::Open(h) => h.on_startup(client, message).await,
            Login::Cleartext(h) => h.on_startup(client, message).await,
            Login::Scram(h) => h.on_startup(client, message).await,
        }
    }
}

/// The password, and its SCRAM form.
struct TheSecret {
    cleartext: String,
    salt: [u8; 16],
    scram: Vec<u8>,
}

impl Debug for TheSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TheSecret(..)")
    }
}

#[derive(Debug)]
struct Cleartext(Arc<TheSecret>);

#[derive(Debug)]
struct Scram(Arc<TheSecret>);

#[async_trait]
impl AuthSource for Cleartext {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        Ok(Password::new(None, self.0.cleartext.as_bytes().to_vec()))
    }
}

#[async_trait]
impl AuthSource for Scram {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        Ok(Password::new(
            Some(self.0.salt.to_vec()),
            self.0.scram.clone(),
        ))
    }
}

/// Refuses what is not a read, and refreshes the lake before each statement that reads it.
struct ReadOnly {
    served: Arc<Served>,
}

impl ReadOnly {
    /// Refuses what may not run; refreshes the lake before what reads it.
    async fn check(&self, statement: &Statement) -> PgWireResult<Verdict> {
        let verdict = verdict(statement);
        if let Verdict::Refuse(code, message) = verdict {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                code.into(),
                message,
            ))));
        }
        if matches!(
            statement,
            Statement::Query(_) | Statement::Explain { .. } | Statement::Declare { .. }
        ) {
            self.served.refresh().await.map_err(|e| {
                PgWireError::UserError(Box::new(ErrorInfo::new(
                    "ERROR".into(),
                    "58030".into(),
                    format!("reading the lake: {e}"),
                )))
            })?;
        }
        Ok(verdict)
    }

    /// The answer of a statement run (simple protocol, or a portal executed): an error, `SET`
    /// for an ignored setting, or `None` to run it.
    async fn answer(&self, statement: &Statement) -> Option<PgWireResult<Response>> {
        match self.check(statement).await {
            Ok(Verdict::Ignore) => Some(Ok(Response::Execution(Tag::new("SET")))),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.answer(statement).await
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        // An ignored SET is planned by SetShowHook (an empty plan) and answered below.
        self.check(statement).await.err().map(Err)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        // A prepared statement runs again and again: each run reads the newest snapshot (the
        // plan's tables are the lake's live tables, resolved when it runs).
        self.answer(statement).await
    }
}

/// What becomes of a statement: only reads run, and settings that stay with the connection.
fn verdict(statement: &Statement) -> Verdict {
    match statement {
        Statement::Query(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Deallocate { .. }
        | Statement::Discard { .. } => Verdict::Run,
        // EXPLAIN ANALYZE runs what it explains: a query only.
        Statement::Explain { statement, .. } => match verdict(statement) {
            Verdict::Run if matches!(**statement, Statement::Query(_)) => Verdict::Run,
            _ => refuse(statement),
        },
        Statement::Set(set) => set_verdict(set, statement),
        other => refuse(other),
    }
}

fn refuse(statement: &Statement) -> Verdict {
    let text = statement.to_string().to_uppercase();
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or("this statement");
    // CREATE TABLE, DROP VIEW, ...; INSERT, DELETE, COPY, ... alone.
    let kind = match (first, words.next()) {
        ("CREATE" | "DROP" | "ALTER", Some(what)) => format!("{first} {what}"),
        _ => first.to_string(),
    };
    Verdict::Refuse(
        "25006",
        format!(
            "{kind} is refused: Weir's PostgreSQL endpoint is read-only (the lake is written by weir run); run SELECT queries"
        ),
    )
}

fn set_verdict(set: &Set, statement: &Statement) -> Verdict {
    match set {
        Set::SingleAssignment {
            scope: None,
            hivevar: false,
            variable,
            values,
        } => {
            let name = variable.to_string().to_lowercase();
            let literal = matches!(values.first(), Some(Expr::Value(_)));
            if PER_CONNECTION.contains(&name.as_str()) && (literal || name == "statement_timeout") {
                return Verdict::Run;
            }
        }
        Set::SetTimeZone { local: false, .. } => return Verdict::Run,
        _ => {}
    }
    let text = statement.to_string().to_lowercase();
    let rest = text.trim_start_matches("set").trim_start();
    let rest = rest
        .strip_prefix("session ")
        .or_else(|| rest.strip_prefix("local "))
        .unwrap_or(rest)
        .trim_start();
    let name = rest
        .split(|c: char| c.is_whitespace() || c == '=')
        .next()
        .unwrap_or("")
        .trim_matches('"');
    if IGNORED.contains(&name) || PER_CONNECTION.contains(&name) {
        Verdict::Ignore
    } else {
        Verdict::Refuse(
            "42501",
            format!(
                "SET {name} is refused: Weir's PostgreSQL endpoint only takes session settings such as client_encoding, DateStyle, TimeZone, search_path, statement_timeout and application_name"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{Verdict, verdict};
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn check(sql: &str) -> Verdict {
        let s = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parses");
        verdict(&s[0])
    }

    #[test]
    fn reads_pass_and_writes_are_refused() {
        for ok in [
            "SELECT 1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
            "SET DateStyle = 'ISO, MDY'",
            "SET TIME ZONE 'UTC'",
            "SET extra_float_digits = 3",
            "SET application_name = 'Metabase v0.55.1'",
            "SET statement_timeout = 1000",
            "SHOW TimeZone",
            "SHOW TRANSACTION ISOLATION LEVEL",
            "BEGIN",
            "COMMIT",
        ] {
            assert_eq!(check(ok), Verdict::Run, "{ok}");
        }
        for ignored in [
            "SET client_encoding = 'UTF8'",
            "SET DateStyle = ISO",
            "SET timezone = 'Europe/Paris'",
            "SET SESSION statement_timeout = 1000",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ] {
            assert_eq!(check(ignored), Verdict::Ignore, "{ignored}");
        }
        for (bad, code) in [
            ("INSERT INTO sales VALUES (1)", "25006"),
            ("DELETE FROM sales", "25006"),
            ("UPDATE sales SET x = 1", "25006"),
            ("CREATE TABLE t (a int)", "25006"),
            ("DROP TABLE sales", "25006"),
            ("COPY sales TO '/tmp/x.csv'", "25006"),
            ("EXPLAIN ANALYZE INSERT INTO sales VALUES (1)", "25006"),
            ("EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/x.csv'", "25006"),
            ("SET datafusion.execution.batch_size = 1", "42501"),
        ] {
            match check(bad) {
                Verdict::Refuse(c, _) => assert_eq!(c, code, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
