//! `voketag`: every role of the system in one binary. `main` parses arguments and calls
//! the service crates; nothing else lives here.

mod bench;
mod demo;
mod roles;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::time::Duration;
use uuid::Uuid;
use voketag_commands::auth::DevIdp;
use voketag_domain::Role;
use voketag_platform::{Settings, db, telemetry};

/// mimalloc: the services allocate many small, short-lived buffers per request (headers,
/// JSON, Redis and Postgres frames), where glibc's malloc spent about a tenth of the scan
/// path's CPU in its free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "voketag", version, about = "VokeTag product authentication")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything on one machine: migrations, both APIs, the relay, projectors and workers.
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
    /// Rebuild a read model from the event store.
    Replay {
        #[command(subcommand)]
        target: ReplayCommand,
    },
    /// Re-drive events a projector parked, once what made them fail is fixed.
    Redrive {
        /// Only this projector's subscription (`projector-redis-scan`, `projector-pg-views`).
        #[arg(long)]
        subscription: Option<String>,
        /// Only this aggregate, as `TYPE:ID` (e.g. `Batch:0192…`).
        #[arg(long)]
        aggregate: Option<String>,
        /// List the parked events instead.
        #[arg(long)]
        list: bool,
    },
    /// How far the relay and each projector are behind the event store's head.
    Lag,
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
    /// The public scan API (`VOKETAG_SCAN_ADDR`, default 127.0.0.1:8081).
    Scan,
}

#[derive(Subcommand)]
enum ReplayCommand {
    /// Rebuild the Redis scan model into a new keyspace and switch to it atomically.
    Redis {
        /// Instead of rebuilding, compare every tag in Redis with the Postgres views.
        #[arg(long)]
        verify: bool,
    },
}

#[derive(Subcommand)]
enum WorkCommand {
    /// Turns uploaded CSV files into issued tags.
    Imports,
    /// Publishes committed events on the bus.
    Relay,
    /// Applies events to the Redis scan model and the Postgres views.
    Projector,
    /// Records scan observations as events.
    Scans,
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
        Command::Serve {
            api: ServeCommand::Scan,
        } => {
            telemetry::init("scan-api", &settings);
            let bus = roles::bus(&settings).await?;
            let pool = db::connect(&settings)
                .await
                .context("connecting to Postgres")?;
            let redis = voketag_platform::redis::connect(&settings)
                .await
                .context("connecting to Redis")?;
            let app = voketag_read_api::build_with(settings, pool, redis, bus).await?;
            tracing::info!(addr = %app.local_addr()?, "scan API listening");
            app.run_until_stopped().await?;
            Ok(())
        }
        Command::Work {
            worker: worker @ (WorkCommand::Relay | WorkCommand::Projector | WorkCommand::Scans),
        } => {
            let name = match worker {
                WorkCommand::Relay => "relay",
                WorkCommand::Projector => "projector",
                _ => "scans-worker",
            };
            telemetry::init(name, &settings);
            roles::serve_metrics(&settings).await?;
            let bus = roles::bus(&settings).await?;
            let pool = db::connect(&settings)
                .await
                .context("connecting to Postgres")?;
            let stop = voketag_platform::shutdown_signal();
            match worker {
                WorkCommand::Relay => roles::relay_role(pool, bus, stop).await?,
                WorkCommand::Projector => {
                    let redis = voketag_platform::redis::connect(&settings)
                        .await
                        .context("connecting to Redis")?;
                    roles::projectors(&settings, pool, redis, bus, stop).await?;
                }
                _ => roles::scans(pool, bus, stop).await?,
            }
            Ok(())
        }
        Command::Replay {
            target: ReplayCommand::Redis { verify },
        } => {
            telemetry::init("replay", &settings);
            roles::replay_redis(&settings, verify).await
        }
        Command::Work {
            worker: WorkCommand::Imports,
        } => {
            anyhow::ensure!(
                settings.db_max_connections >= voketag_workers::imports::CONNECTIONS,
                "VOKETAG_DB_MAX_CONNECTIONS is {}: the imports worker needs at least {} (ADRs 0012, 0014)",
                settings.db_max_connections,
                voketag_workers::imports::CONNECTIONS
            );
            telemetry::init("imports-worker", &settings);
            roles::serve_metrics(&settings).await?;
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
        Command::Redrive {
            subscription,
            aggregate,
            list,
        } => {
            telemetry::init("redrive", &settings);
            roles::redrive(
                &settings,
                subscription.as_deref(),
                aggregate.as_deref(),
                list,
            )
            .await
        }
        Command::Lag => {
            telemetry::init("lag", &settings);
            roles::print_lag(&settings).await
        }
        Command::Bench { bench } => bench::run(settings, bench).await,
    }
}

/// `voketag up`: one process with every role, on the in-process bus unless
/// `VOKETAG_BUS=pubsub`.
async fn up(mut settings: Settings, demo: bool) -> anyhow::Result<()> {
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
    // Every role shares the pool; give it room for all of them.
    settings.db_max_connections = settings.db_max_connections.max(20);
    let system = roles::System::start(&settings, pool.clone(), redis).await?;
    if demo {
        demo::seed(&settings, &pool, system.factory_addr, system.scan_addr)
            .await
            .context("seeding demo data")?;
    }
    tracing::info!(factory = %system.factory_addr, scan = %system.scan_addr, "VokeTag is up");
    system.run_until(voketag_platform::shutdown_signal()).await
}
