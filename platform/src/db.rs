//! The Postgres pool and the embedded migrations.

use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgQueryResult};
use sqlx::query::Query;
use sqlx::{PgPool, Postgres};
use std::str::FromStr;
use std::time::Duration;

use crate::Settings;

/// Every migration of the project, embedded in the binary. sqlx takes an advisory lock
/// while it migrates, so two processes starting together apply each migration once.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn connect(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    connect_url(&settings.database_url, settings.db_max_connections).await
}

pub async fn connect_url(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("voketag");
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        // A broken connection fails its query and is replaced; pinging before every
        // acquire would cost a round trip per statement batch.
        .test_before_acquire(false)
        .connect_with(options)
        .await
}

/// Creates the database named in `url` when it does not exist yet (development and tests).
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let Some(name) = options.get_database().map(str::to_string) else {
        return Ok(());
    };
    let admin = options.database("postgres");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(admin)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&pool)
            .await?;
    if !exists {
        let quoted = name.replace('"', "\"\"");
        match sqlx::query(&format!("CREATE DATABASE \"{quoted}\""))
            .execute(&pool)
            .await
        {
            Ok(_) => {}
            // Another process created it between our check and our CREATE.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e),
        }
    }
    pool.close().await;
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Postgres connections for statements that run alone (an implicit transaction each), taken
/// and given back without a round trip.
///
/// sqlx's pool pings every connection it takes back (sqlx 0.8 has no switch for it): one more
/// round trip and two more wake-ups per statement, which cost the factory API about a fifth
/// of its command throughput (`bench commands`: 3,836 → 4,912 commands/s on one machine).
/// Here a connection goes straight back. That is safe for single statements: a statement
/// whose future was dropped half-way leaves at most unread answers behind, which sqlx reads
/// and discards before the connection's next statement. A connection that failed with an
/// I/O or protocol error is dropped instead ([`Statement::broken`]); the next one is opened
/// fresh. Never open a transaction on one.
#[derive(Clone)]
pub struct StatementPool {
    pool: deadpool::managed::Pool<Connector>,
}

struct Connector {
    options: PgConnectOptions,
}

impl deadpool::managed::Manager for Connector {
    type Type = sqlx::PgConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<sqlx::PgConnection, sqlx::Error> {
        use sqlx::ConnectOptions;
        self.options.connect().await
    }

    async fn recycle(
        &self,
        _: &mut sqlx::PgConnection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<sqlx::Error> {
        Ok(())
    }
}

/// A connection of a [`StatementPool`]; goes back to it when dropped.
pub struct Statement(deadpool::managed::Object<Connector>);

impl StatementPool {
    /// Connections to the database of `pool`, at most as many as it has, opened on first use.
    pub fn beside(pool: &PgPool) -> StatementPool {
        let max = pool.options().get_max_connections().max(1) as usize;
        let pool = deadpool::managed::Pool::builder(Connector {
            options: (*pool.connect_options()).clone(),
        })
        .max_size(max)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build();
        match pool {
            Ok(pool) => StatementPool { pool },
            // Only a missing runtime fails the build, and one is given above.
            Err(e) => unreachable!("building a statement pool with a runtime: {e}"),
        }
    }

    /// A connection: an idle one, or a new one while fewer than the maximum are open.
    pub async fn get(&self) -> Result<Statement, sqlx::Error> {
        use deadpool::managed::PoolError;
        match self.pool.get().await {
            Ok(object) => Ok(Statement(object)),
            Err(PoolError::Backend(e)) => Err(e),
            Err(PoolError::Timeout(_)) => Err(sqlx::Error::PoolTimedOut),
            Err(_) => Err(sqlx::Error::PoolClosed),
        }
    }
}

impl StatementPool {
    /// Runs the statement `query` builds on a pooled connection. When a connection that had
    /// been idle in the pool fails with a connection error (the server closed it meanwhile:
    /// a restart, a failover, an idle timeout), it is dropped and the statement runs once
    /// more on a new one. Should the first attempt have been executed after all (its answer
    /// lost), statements that append events fail the second time on the events' primary
    /// key: nothing is stored twice.
    pub async fn execute<'q, F>(&self, query: F) -> Result<PgQueryResult, sqlx::Error>
    where
        F: Fn() -> Query<'q, Postgres, PgArguments>,
    {
        let mut conn = self.get().await?;
        let reused = deadpool::managed::Object::metrics(&conn.0).recycle_count > 0;
        let error = match query().execute(conn.conn()).await {
            Ok(done) => return Ok(done),
            Err(e) => e,
        };
        let retry = reused && is_connection_error(&error);
        conn.failed(&error);
        if !retry {
            return Err(error);
        }
        tracing::info!(error = %error, "an idle Postgres connection was closed; running the statement on a new one");
        let mut conn = self.get().await?;
        let result = query().execute(conn.conn()).await;
        if let Err(e) = &result {
            conn.failed(e);
        }
        result
    }
}

/// Whether the connection, not the statement, failed: I/O, protocol or TLS errors, and the
/// server's own word that it closed the session (class 08, connection exception; 57P01–03,
/// shutdown by an administrator or a crash, or not accepting connections yet).
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

impl Statement {
    pub fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.0
    }

    /// After `error`: gives the connection back when the server answered about the
    /// statement (a constraint, say), drops it when the connection may be unusable.
    pub fn failed(self, error: &sqlx::Error) {
        let answered = matches!(error, sqlx::Error::Database(_) | sqlx::Error::RowNotFound);
        if !answered || is_connection_error(error) {
            drop(deadpool::managed::Object::take(self.0));
        }
    }
}
