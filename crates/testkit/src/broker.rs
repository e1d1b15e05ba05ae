//! A throwaway Kafka-protocol broker: Tansu with SQLite storage (durable across `kill -9`) in
//! a scratch directory, on a free port. Tests talk to it only through the Kafka protocol, so
//! they hold against Apache Kafka as well.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::{Guarded, ServerSpec, free_port, log_tail, scratch_dir, wait_until};

/// The Tansu executable: `$COLLECT_TANSU_BIN`, else `tansu` on the PATH, else
/// `~/.cargo/bin/tansu`.
pub fn tansu_bin() -> Result<PathBuf> {
    if let Ok(bin) = std::env::var("COLLECT_TANSU_BIN") {
        return Ok(bin.into());
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v tansu"]).output()
        && out.status.success()
    {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().into());
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cargo = Path::new(&home).join(".cargo/bin/tansu");
    if cargo.exists() {
        return Ok(cargo);
    }
    bail!("tansu not found: run tests/run (it installs it) or set COLLECT_TANSU_BIN")
}

/// A running (or stopped, for fault injection) broker.
#[derive(Debug)]
pub struct Broker {
    dir: PathBuf,
    port: u16,
    spec: ServerSpec,
    server: Option<Guarded>,
}

impl Broker {
    /// Starts a broker with an empty store.
    pub async fn start() -> Result<Self> {
        Self::start_advertising(None).await
    }

    /// Starts a broker with an empty store that tells clients to connect to
    /// `127.0.0.1:{advertised}` (a TLS-terminating proxy in front of it, say) instead of
    /// its own port.
    pub async fn start_advertising(advertised: Option<u16>) -> Result<Self> {
        let bin = tansu_bin()?;
        let dir = scratch_dir("broker")?;
        let mut last_err = None;
        for _ in 0..3 {
            let port = free_port()?;
            let url = format!("tcp://127.0.0.1:{port}");
            let shown = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
            let spec = ServerSpec {
                argv: vec![
                    bin.display().to_string(),
                    "broker".into(),
                    "--listener-url".into(),
                    url,
                    "--advertised-listener-url".into(),
                    shown,
                    // Tansu resolves the SQLite path against its working directory.
                    "--storage-engine".into(),
                    "sqlite://tansu.db".into(),
                ],
                cwd: dir.clone(),
                log: dir.join("broker.log"),
                user: None,
                stop_signal: "TERM",
            };
            let mut broker = Self {
                dir: dir.clone(),
                port,
                spec,
                server: None,
            };
            match broker.launch().await {
                Ok(()) => return Ok(broker),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("broker did not start")))
    }

    async fn launch(&mut self) -> Result<()> {
        let server = Guarded::spawn(&self.spec)?;
        let alive = || server.alive();
        let addr = format!("127.0.0.1:{}", self.port);
        let ready = wait_until("broker", Duration::from_secs(30), alive, || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
        self.server = Some(server);
        ready.with_context(|| format!("broker log:\n{}", log_tail(&self.spec.log, 20)))
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Guarded::pid)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's directory (store in `tansu.db`, log in `broker.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a topic with the Tansu CLI (tests may equally use the Kafka admin API).
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        let out = Command::new(tansu_bin()?)
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
                "--broker",
            ])
            .arg(format!("tcp://{}", self.bootstrap()))
            .output()?;
        if !out.status.success() {
            bail!(
                "creating topic {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Kills the broker with SIGKILL, as a crash would.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(s) = self.server.take() {
            s.signal("KILL")?;
            s.stop(Duration::from_secs(10));
        }
        Ok(())
    }

    /// Starts the broker again on the same store and port.
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(s) = self.server.take() {
            s.stop(Duration::from_secs(10));
        }
        self.launch().await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop(Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
