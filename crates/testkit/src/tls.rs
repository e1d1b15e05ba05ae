//! Certificates for TLS tests, made with the `openssl` command: a CA (`ca.pem`, `ca.key`), a
//! server certificate for 127.0.0.1 signed by it (`server.crt`, `server.key`, with
//! `subjectAltName=IP:127.0.0.1`), and a second CA that signed nothing (`other.pem`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::process::{scratch_dir, set_mode};

/// A directory of certificates, removed on drop.
pub struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    /// The directory (mode 0755; `server.key` is 0600).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file of the directory, as a string (for settings and flags).
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Makes the certificates (valid two days).
pub fn certificates() -> Result<Certificates> {
    let certs = Certificates {
        dir: scratch_dir("tls")?,
    };
    let d = certs.dir();
    for ca in ["ca", "other"] {
        let (key, pem, subject) = (
            format!("{ca}.key"),
            format!("{ca}.pem"),
            format!("/CN=collect test {ca}"),
        );
        openssl(
            d,
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem,
                "-days", "2", "-subj", &subject,
            ],
        )?;
    }
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    )?;
    std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1\n")?;
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    )?;
    set_mode(&d.join("server.key"), 0o600)?;
    Ok(certs)
}
