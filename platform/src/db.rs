//! The Postgres pool and the embedded migrations.

use deadpool::managed::{Object, Pool, PoolError};
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
/// and given back without a round trip (ADR 0009).
///
/// sqlx's pool pings every connection it takes back (sqlx 0.8 has no switch for it): one more
/// round trip and more wake-ups per statement, in this process and in the backend. Here a
/// connection goes straight back. That is safe for single statements: a statement whose
/// future was dropped half-way leaves at most unread answers behind, which sqlx reads and
/// discards before the connection's next statement. A connection that failed with a
/// connection error ([`is_connection_error`], or anything that is not an answer about the
/// statement) is dropped instead. Never open a transaction on one.
#[derive(Clone)]
pub struct StatementPool {
    pool: Pool<Connector>,
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

impl StatementPool {
    /// Connections to the database of `pool`, at most as many as it has, opened on first use.
    pub fn beside(pool: &PgPool) -> StatementPool {
        let max = pool.options().get_max_connections().max(1) as usize;
        let pool = Pool::builder(Connector {
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
        match self.run(query()).await {
            (Err(e), true) if is_connection_error(&e) => {
                tracing::info!(error = %e, "an idle Postgres connection was closed; running the statement on a new one");
                self.run(query()).await.0
            }
            (result, _) => result,
        }
    }

    /// Runs `query` on a connection of the pool, and says whether that connection had been
    /// used before. Gives the connection back unless it may be unusable.
    async fn run(
        &self,
        query: Query<'_, Postgres, PgArguments>,
    ) -> (Result<PgQueryResult, sqlx::Error>, bool) {
        let mut conn = match self.pool.get().await {
            Ok(conn) => conn,
            Err(PoolError::Backend(e)) => return (Err(e), false),
            Err(PoolError::Timeout(_)) => return (Err(sqlx::Error::PoolTimedOut), false),
            Err(_) => return (Err(sqlx::Error::PoolClosed), false),
        };
        let reused = Object::metrics(&conn).recycle_count > 0;
        let result = query.execute(&mut *conn).await;
        if let Err(e) = &result {
            let answered = matches!(e, sqlx::Error::Database(_)) && !is_connection_error(e);
            if !answered {
                drop(Object::take(conn));
            }
        }
        (result, reused)
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
