//! Benchmarks (see README): each prints its figure next to a raw baseline measured in
//! the same run on the same machine, and the ratio between them.

use clap::Subcommand;
use voketag_platform::Settings;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// A CSV of N tags from upload to events committed, against a raw COPY of the same rows.
    Import {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
}

pub async fn run(_settings: Settings, bench: BenchCommand) -> anyhow::Result<()> {
    match bench {
        BenchCommand::Import { rows } => anyhow::bail!("import benchmark for {rows} rows: not built yet"),
    }
}
