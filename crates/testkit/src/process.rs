//! Server processes that cannot outlive the test process, scratch directories, free ports.
//!
//! Each server runs under a tiny `sh` guardian whose stdin is a pipe held by the test process.
//! When the test process ends, however it ends (success, panic, `kill -9`), the pipe closes,
//! the guardian's `read` returns and it stops the server. No test can leave a server behind
//! for a later command, and none can depend on one.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a probe socket")?;
    Ok(l.local_addr()?.port())
}

/// Whether this process runs as root (servers such as Postgres then run as another user).
pub fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The uid and gid of a system user, from `id`.
pub fn user_ids(user: &str) -> Result<(u32, u32)> {
    let get = |flag: &str| -> Result<u32> {
        let out = Command::new("id").arg(flag).arg(user).output()?;
        if !out.status.success() {
            bail!(
                "user {user} does not exist: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((get("-u")?, get("-g")?))
}

const SCRATCH_ROOT: &str = "/tmp/collect-test";

/// This process's scratch directory, `/tmp/collect-test/<pid>-<nanos>`, world-traversable so a
/// server running as another user can reach its own subdirectory. Directories of processes
/// that no longer exist are removed the first time this is called.
pub fn scratch_root() -> Result<&'static Path> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match ROOT.get_or_init(|| make_scratch_root().map_err(|e| format!("{e:#}"))) {
        Ok(p) => Ok(p),
        Err(e) => bail!("scratch directory: {e}"),
    }
}

fn make_scratch_root() -> Result<PathBuf> {
    fs::create_dir_all(SCRATCH_ROOT)?;
    set_mode(Path::new(SCRATCH_ROOT), 0o1777)?;
    for entry in fs::read_dir(SCRATCH_ROOT)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let pid = name.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let dir = Path::new(SCRATCH_ROOT).join(format!("{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir)?;
    set_mode(&dir, 0o755)?;
    Ok(dir)
}

/// A new empty directory under the scratch root.
pub fn scratch_dir(prefix: &str) -> Result<PathBuf> {
    let dir = scratch_root()?.join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir_all(&dir)?;
    set_mode(&dir, 0o755)?;
    Ok(dir)
}

/// Sets the permission bits of a path.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Where stdout and stderr go (appended).
    pub log: PathBuf,
    /// Run as this system user (only when the test process is root).
    pub user: Option<String>,
    /// Signal that asks the server to stop (`INT` for Postgres' fast shutdown).
    pub stop_signal: &'static str,
}

const GUARDIAN: &str = r#"
"$@" >>"$COLLECT_GUARD_LOG" 2>&1 &
pid=$!
echo "$pid"
read _ignored
kill -s "$COLLECT_GUARD_STOP" "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
exit 0
"#;

/// A running server under its guardian.
#[derive(Debug)]
pub struct Guarded {
    guardian: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

impl Guarded {
    /// Starts the server described by `spec`.
    pub fn spawn(spec: &ServerSpec) -> Result<Self> {
        let mut argv: Vec<String> = Vec::new();
        if let Some(user) = spec.user.as_deref().filter(|_| running_as_root()) {
            argv.extend(
                [
                    "setpriv",
                    &format!("--reuid={user}"),
                    &format!("--regid={user}"),
                    "--init-groups",
                    "--",
                ]
                .map(String::from),
            );
        }
        argv.extend(spec.argv.iter().cloned());
        let mut guardian = Command::new("sh")
            .arg("-c")
            .arg(GUARDIAN)
            .arg("collect-guardian")
            .args(&argv)
            .current_dir(&spec.cwd)
            .env("COLLECT_GUARD_LOG", &spec.log)
            .env("COLLECT_GUARD_STOP", spec.stop_signal)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", spec.argv.join(" ")))?;
        let stdout = guardian.stdout.take().context("guardian stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let pid = line
            .trim()
            .parse()
            .with_context(|| format!("guardian said {line:?}"))?;
        Ok(Self {
            stdin: guardian.stdin.take(),
            guardian,
            pid,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the server process still exists.
    pub fn alive(&self) -> bool {
        // A zombie still has a /proc entry; its state letter is Z.
        fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or_default()
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, ...) to the server.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.pid.to_string()])
            .stderr(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("kill -s {sig} {} failed", self.pid);
        }
        Ok(())
    }

    /// Stops the server (its stop signal, then `KILL` after `grace`) and waits for it.
    pub fn stop(mut self, grace: Duration) {
        self.stdin.take();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.guardian.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.signal("KILL");
        let _ = self.guardian.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // Closing the pipe is enough: the guardian stops the server on its own.
        self.stdin.take();
    }
}

/// Polls `check` every 50 ms until it succeeds or `timeout` passes; while waiting, fails early
/// if `alive` says the server died.
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    alive: impl Fn() -> bool,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if !alive() {
            bail!("{what} exited while starting");
        }
        if Instant::now() >= deadline {
            bail!("{what} not ready after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
