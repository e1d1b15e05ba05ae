//! `collect-bench`: load harnesses that print figures. Run them against a stack started with
//! `COLLECT_PROFILE=release deploy/dev up`; the commands and the figures they printed go into
//! docs/benchmarks.md.

mod api;
mod cdc;
mod chaos;
mod integrations;
mod million;
mod sheets;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "collect-bench", about = "Collect load harnesses")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submissions per second and latency of `POST /v1/forms/{id}/responses`.
    Api(api::Args),
    /// Postgres-to-Kafka throughput, commit-to-ack latency and memory of `collect cdc`.
    Cdc(cdc::Args),
    /// Rows per second and rows per request of the Google Sheets connector (emulator).
    Sheets(sheets::Args),
    /// Threads, memory and idle CPU of one `collect connect` running many integrations.
    Integrations(integrations::Args),
    /// The whole pipeline under kills, restarts and provider storms: lost, duplicated, wrong.
    Chaos(chaos::Args),
    /// A million responses: API rate, reader drain against pg_recvlogical, rows per second.
    Million(million::Args),
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Api(args) => api::run(args).await,
        Command::Cdc(args) => cdc::run(args).await,
        Command::Sheets(args) => sheets::run(args).await,
        Command::Integrations(args) => integrations::run(args).await,
        Command::Chaos(args) => chaos::run(args).await,
        Command::Million(args) => million::run(args).await,
    }
}
