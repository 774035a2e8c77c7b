//! Plumbing every VokeTag process shares: settings, telemetry (logs and metrics), the
//! Postgres and Redis pools, the embedded migrations and the HTTP conventions (request ids,
//! the error envelope, health endpoints). See `docs/adr/0001-platform-crate.md`.

pub mod bus;
pub mod db;
pub mod http;
pub mod redis;
pub mod settings;
pub mod telemetry;

pub use settings::Settings;

/// Resolves on Ctrl-C or SIGTERM (Cloud Run stops instances with SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
