//! A throwaway Postgres cluster: initdb in a scratch directory, `wal_level = logical`, a free
//! port, run as the `postgres` user when the tests run as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio_postgres::NoTls;

use crate::process::{
    Guarded, ServerSpec, free_port, log_tail, running_as_root, scratch_dir, set_mode, user_ids,
    wait_until,
};

/// Where the Postgres programs are: `$COLLECT_PG_BIN`, else Debian's Postgres 15 directory,
/// else whatever `pg_config --bindir` says.
pub fn pg_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("COLLECT_PG_BIN") {
        return Ok(dir.into());
    }
    let debian = Path::new("/usr/lib/postgresql/15/bin");
    if debian.join("postgres").exists() {
        return Ok(debian.into());
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .context("no Postgres found: install the postgresql package or set COLLECT_PG_BIN")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().into())
}

/// Options of a cluster.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
    /// `fsync` off makes tests faster; killing Postgres still loses nothing (the OS keeps
    /// the written pages), only a machine crash would.
    pub fsync: bool,
    /// Password authentication over TCP (`password`, `md5` or `scram-sha-256`) with this
    /// superuser password; trust when `None`.
    pub password_auth: Option<(String, String)>,
}

/// A running (or stopped, for fault injection) Postgres cluster.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    port: u16,
    password: Option<String>,
    spec: ServerSpec,
    server: Option<Guarded>,
}

const USER: &str = "postgres";

impl PgCluster {
    /// Initialises and starts a cluster.
    pub async fn start(options: PgOptions) -> Result<Self> {
        let bin = pg_bin_dir()?;
        let dir = scratch_dir("pg")?;
        let data = dir.join("data");
        let as_root = running_as_root();
        if as_root {
            let (uid, gid) = user_ids(USER)?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        set_mode(&dir, 0o700)?;
        let mut initdb = if as_root {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={USER}"),
                &format!("--regid={USER}"),
                "--init-groups",
                "--",
            ]);
            c.arg(bin.join("initdb"));
            c
        } else {
            Command::new(bin.join("initdb"))
        };
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"]);
        match &options.password_auth {
            None => {
                initdb.args(["-A", "trust"]);
            }
            Some((method, password)) => {
                let pwfile = dir.join("pwfile");
                std::fs::write(&pwfile, password)?;
                if as_root {
                    let (uid, gid) = user_ids(USER)?;
                    std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
                }
                initdb
                    .arg(format!("--auth-host={method}"))
                    .arg("--auth-local=trust")
                    .arg(format!("--pwfile={}", pwfile.display()));
            }
        }
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut last_err = None;
        for _ in 0..3 {
            let port = free_port()?;
            let mut argv = vec![
                bin.join("postgres").display().to_string(),
                "-D".into(),
                data.display().to_string(),
                "-p".into(),
                port.to_string(),
                "-k".into(),
                dir.display().to_string(),
            ];
            let mut settings: Vec<(String, String)> = vec![
                ("listen_addresses".into(), "127.0.0.1".into()),
                ("wal_level".into(), "logical".into()),
                ("max_wal_senders".into(), "20".into()),
                ("max_replication_slots".into(), "20".into()),
                ("max_connections".into(), "200".into()),
                (
                    "fsync".into(),
                    if options.fsync { "on" } else { "off" }.into(),
                ),
                (
                    "full_page_writes".into(),
                    if options.fsync { "on" } else { "off" }.into(),
                ),
            ];
            settings.extend(options.settings.iter().cloned());
            for (k, v) in settings {
                argv.push("-c".into());
                argv.push(format!("{k}={v}"));
            }
            let spec = ServerSpec {
                argv,
                cwd: dir.clone(),
                log: dir.join("postgres.log"),
                user: Some(USER.into()),
                stop_signal: "INT",
            };
            let mut cluster = Self {
                dir: dir.clone(),
                port,
                password: options.password_auth.as_ref().map(|(_, p)| p.clone()),
                spec,
                server: None,
            };
            match cluster.launch().await {
                Ok(()) => {
                    if let Some(("md5", password)) =
                        options.password_auth.as_ref().map(|(m, p)| (m.as_str(), p))
                    {
                        // initdb stored a SCRAM verifier; MD5 authentication needs an MD5 one.
                        let (client, conn) =
                            tokio_postgres::connect(&cluster.url("postgres"), NoTls).await?;
                        tokio::spawn(conn);
                        client
                            .batch_execute(&format!(
                                "SET password_encryption = 'md5'; ALTER USER {USER} PASSWORD '{}'",
                                password.replace('\'', "''")
                            ))
                            .await?;
                    }
                    return Ok(cluster);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    async fn launch(&mut self) -> Result<()> {
        let server = Guarded::spawn(&self.spec)?;
        let url = self.url("postgres");
        let alive = || server.alive();
        let ready = wait_until("postgres", Duration::from_secs(60), alive, || {
            let url = url.clone();
            async move { tokio_postgres::connect(&url, NoTls).await.is_ok() }
        })
        .await;
        self.server = Some(server);
        ready.with_context(|| format!("postgres log:\n{}", log_tail(&self.spec.log, 20)))
    }

    /// The port Postgres listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `db` as the superuser (with its password, if any).
    pub fn url(&self, db: &str) -> String {
        match &self.password {
            Some(p) => format!("postgres://{USER}:{p}@127.0.0.1:{}/{db}", self.port),
            None => format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port),
        }
    }

    /// The cluster's directory (data directory in `data/`, log in `postgres.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the postmaster with SIGKILL, as a crash would.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(s) = self.server.take() {
            s.signal("KILL")?;
            s.stop(Duration::from_secs(10));
        }
        Ok(())
    }

    /// `pg_ctl restart -m immediate`: SIGQUIT to the postmaster (every backend quits at
    /// once, no checkpoint), then a start on the same data directory and port, which runs
    /// crash recovery.
    pub async fn restart_immediate(&mut self) -> Result<()> {
        if let Some(s) = self.server.take() {
            s.signal("QUIT")?;
            s.stop(Duration::from_secs(30));
        }
        self.launch().await
    }

    /// Starts Postgres again on the same data directory and port (crash recovery runs).
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(s) = self.server.take() {
            s.stop(Duration::from_secs(30));
        }
        self.launch().await
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop(Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
