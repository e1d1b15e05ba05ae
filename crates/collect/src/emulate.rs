//! `collect emulate ...`: third-party emulators for tests and the dev stack.

use anyhow::{Context, Result};
use clap::Subcommand;
use tokio::net::TcpListener;

use crate::shutdown_signal;

/// Emulators.
#[derive(Subcommand)]
pub enum EmulateCommand {
    /// Google Sheets API v4 and the OAuth2 token endpoint.
    Sheets {
        /// Address to listen on.
        #[arg(
            long,
            env = "COLLECT_SHEETS_EMULATOR_LISTEN",
            default_value = "127.0.0.1:8090"
        )]
        listen: String,
        /// URL clients reach it at (defaults to http://<listen>); token URIs in the keys it
        /// mints point there.
        #[arg(long)]
        base_url: Option<String>,
    },
}

/// Runs an emulator until Ctrl-C or SIGTERM.
pub async fn run(cmd: EmulateCommand) -> Result<()> {
    match cmd {
        EmulateCommand::Sheets { listen, base_url } => {
            let listener = TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let base = base_url.unwrap_or_else(|| {
                format!(
                    "http://{}",
                    listener
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or(listen.clone())
                )
            });
            tracing::info!(base, "Sheets emulator listening");
            let emulator = collect_emulators::sheets::Emulator::new(&base);
            collect_emulators::sheets::serve(listener, emulator, shutdown_signal()).await?;
            Ok(())
        }
    }
}
