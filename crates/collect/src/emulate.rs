//! `collect emulate ...`: third-party emulators for tests and the dev stack.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
        /// Keep spreadsheets, accounts and tokens in this file: loaded at start, saved every
        /// second while it changes and at shutdown (a kill -9 loses the last second).
        #[arg(long, env = "COLLECT_SHEETS_EMULATOR_STATE")]
        state_file: Option<PathBuf>,
    },
    /// An SMS provider with Twilio's Programmable Messaging API.
    Sms {
        /// Address to listen on.
        #[arg(
            long,
            env = "COLLECT_SMS_EMULATOR_LISTEN",
            default_value = "127.0.0.1:8091"
        )]
        listen: String,
    },
}

/// Runs an emulator until Ctrl-C or SIGTERM.
pub async fn run(cmd: EmulateCommand) -> Result<()> {
    match cmd {
        EmulateCommand::Sms { listen } => {
            let listener = TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let base = format!("http://{}", listener.local_addr()?);
            tracing::info!(base, "SMS emulator listening");
            let emulator = collect_emulators::sms::Emulator::new(&base);
            collect_emulators::sms::serve(listener, emulator, shutdown_signal()).await?;
            Ok(())
        }
        EmulateCommand::Sheets {
            listen,
            base_url,
            state_file,
        } => {
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
            let Some(path) = state_file else {
                collect_emulators::sheets::serve(listener, emulator, shutdown_signal()).await?;
                return Ok(());
            };
            match std::fs::read(&path) {
                Ok(bytes) => {
                    emulator
                        .restore(&bytes)
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("cannot load {}", path.display()))?;
                    tracing::info!(path = %path.display(), "emulator state loaded");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            }
            let saver = {
                let (emulator, path) = (emulator.clone(), path.clone());
                tokio::spawn(async move {
                    let mut last = Vec::new();
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        save(&emulator, &path, &mut last);
                    }
                })
            };
            collect_emulators::sheets::serve(listener, emulator.clone(), shutdown_signal()).await?;
            saver.abort();
            save(&emulator, &path, &mut Vec::new());
            Ok(())
        }
    }
}

/// Writes the emulator's state to `path` (atomically) if it changed since `last`.
fn save(emulator: &collect_emulators::sheets::Emulator, path: &Path, last: &mut Vec<u8>) {
    let now = emulator.snapshot();
    if now == *last {
        return;
    }
    let tmp = path.with_extension("tmp");
    match std::fs::write(&tmp, &now).and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => *last = now,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot save the emulator state")
        }
    }
}
