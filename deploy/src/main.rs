//! `voketag`: every role of the system in one binary. `main` parses arguments and calls
//! the service crates; nothing else lives here.

mod bench;
mod demo;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::time::Duration;
use uuid::Uuid;
use voketag_commands::auth::DevIdp;
use voketag_domain::Role;
use voketag_platform::{Settings, db, telemetry};

#[derive(Parser)]
#[command(name = "voketag", version, about = "VokeTag product authentication")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything on one machine: migrations, the factory API and the workers.
    Up {
        /// Seed a demo factory, product, active batch and tags; print credentials.
        #[arg(long)]
        demo: bool,
    },
    /// Serve one HTTP API.
    Serve {
        #[command(subcommand)]
        api: ServeCommand,
    },
    /// Run one background worker.
    Work {
        #[command(subcommand)]
        worker: WorkCommand,
    },
    /// Apply the embedded database migrations (safe to repeat and to run concurrently).
    Migrate,
    /// The development identity provider.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Benchmarks that print figures against a raw baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        bench: bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum ServeCommand {
    /// The factory command API (`VOKETAG_FACTORY_ADDR`, default 127.0.0.1:8080).
    Factory,
}

#[derive(Subcommand)]
enum WorkCommand {
    /// Turns uploaded CSV files into issued tags.
    Imports,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a signed JWT for the development identity provider.
    Mint {
        #[arg(long)]
        factory: Uuid,
        /// admin, factory_user or viewer
        #[arg(long, default_value = "factory_user")]
        role: Role,
        #[arg(long, default_value = "dev-user")]
        sub: String,
        #[arg(long, default_value_t = 60)]
        ttl_minutes: u64,
    },
    /// Print the development identity provider's JWKS.
    Jwks,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("voketag: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("voketag: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voketag: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Up { demo } => up(settings, demo).await,
        Command::Serve {
            api: ServeCommand::Factory,
        } => {
            telemetry::init("factory-api", &settings);
            let app = voketag_commands::build(settings).await?;
            tracing::info!(addr = %app.local_addr()?, "factory API listening");
            app.run_until_stopped().await?;
            Ok(())
        }
        Command::Work {
            worker: WorkCommand::Imports,
        } => {
            telemetry::init("imports-worker", &settings);
            let pool = db::connect(&settings)
                .await
                .context("connecting to Postgres")?;
            voketag_workers::imports::ImportWorker::new(pool)
                .run(voketag_platform::shutdown_signal())
                .await?;
            Ok(())
        }
        Command::Migrate => {
            telemetry::init("migrate", &settings);
            let pool = db::connect(&settings)
                .await
                .context("connecting to Postgres")?;
            db::migrate(&pool).await.context("applying migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Token { command } => {
            let pool = db::connect(&settings)
                .await
                .context("connecting to Postgres")?;
            let idp = DevIdp::load_or_create(
                &pool,
                settings.jwt_issuer.clone(),
                settings.jwt_audience.clone(),
            )
            .await
            .context("loading the development signing key (run `voketag migrate` first)")?;
            match command {
                TokenCommand::Mint {
                    factory,
                    role,
                    sub,
                    ttl_minutes,
                } => println!(
                    "{}",
                    idp.mint(&sub, factory, role, Duration::from_secs(ttl_minutes * 60))?
                ),
                TokenCommand::Jwks => println!("{}", serde_json::to_string_pretty(&idp.jwks())?),
            }
            Ok(())
        }
        Command::Bench { bench } => bench::run(settings, bench).await,
    }
}

/// `voketag up`: one process with every role that exists so far.
async fn up(settings: Settings, demo: bool) -> anyhow::Result<()> {
    telemetry::init("voketag", &settings);
    db::ensure_database(&settings.database_url)
        .await
        .context("creating the database")?;
    let pool = db::connect(&settings)
        .await
        .context("connecting to Postgres")?;
    db::migrate(&pool).await.context("applying migrations")?;
    let redis = voketag_platform::redis::connect(&settings)
        .await
        .context("connecting to Redis")?;
    let app = voketag_commands::api::build_with(settings.clone(), pool.clone(), redis).await?;
    let addr = app.local_addr()?;
    if demo {
        demo::seed(&settings, &pool, addr)
            .await
            .context("seeding demo data")?;
    }
    tracing::info!(%addr, "factory API listening");
    let worker = voketag_workers::imports::ImportWorker::new(pool.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_worker = stop_rx.clone();
    let worker = tokio::spawn(async move {
        worker
            .run(async move {
                let _ = stop_worker.changed().await;
            })
            .await
    });
    let served = app.run_until_stopped().await;
    let _ = stop_tx.send(true);
    worker.await??;
    served?;
    Ok(())
}
