//! How every part of Collect connects to Postgres: the session settings whose text output the
//! code parses are pinned, whatever the database or role says.
//!
//! Postgres's own logical replication worker does the same (`libpqwalreceiver` connects with
//! `-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3`): a database set to
//! `DateStyle = 'SQL, DMY'` would otherwise change the text of every timestamp the CDC reader
//! decodes. See "Client Connection Defaults" in the Postgres manual.

mod tls;

use std::time::Duration;

/// Session settings every connection starts with, as `(name, value)`.
pub const PINNED_SETTINGS: [(&str, &str); 4] = [
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("client_encoding", "UTF8"),
];

/// The `options` startup value (`-c name=value ...`) that pins [`PINNED_SETTINGS`].
pub fn pinned_options() -> String {
    PINNED_SETTINGS
        .iter()
        .map(|(k, v)| format!("-c {k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a connection is secured: libpq's `sslmode` ("SSL Support" in the Postgres manual).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, without checking its certificate (libpq's default).
    Prefer,
    /// TLS, refused without it; the certificate is checked against the root certificates
    /// when `sslrootcert` is given (libpq does the same), not otherwise.
    Require,
    /// TLS with a certificate signed by a trusted root (any host name).
    VerifyCa,
    /// TLS with a certificate signed by a trusted root and naming the host.
    VerifyFull,
}

/// A database to connect to: where, as whom, and how securely.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host, port, user, database, options (tokio-postgres's view of the URL).
    pub config: tokio_postgres::Config,
    /// `sslmode` (default `prefer`, as libpq).
    pub ssl_mode: SslMode,
    /// `sslrootcert`: a PEM file of root certificates, or `system` for the system's roots
    /// (the default when verifying).
    pub root_cert: Option<std::path::PathBuf>,
}

/// Takes `sslmode` and `sslrootcert` out of a URL (`postgres://...?sslmode=verify-full`) or a
/// key=value string (`host=h sslmode=require`); tokio-postgres knows neither `verify-*` nor
/// `sslrootcert`.
fn split_ssl(database_url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let (mut mode, mut root) = (None, None);
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        // The other query parameters are kept byte for byte (a re-encoded `%20` would reach
        // tokio-postgres as `+`); only these two are taken out and decoded.
        let Some((base, query)) = database_url.split_once('?') else {
            return Ok((database_url.to_string(), None, None));
        };
        let decode = |v: &str| {
            url::form_urlencoded::parse(format!("v={v}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let mut kept = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("sslmode", v)) => mode = Some(decode(v)),
                Some(("sslrootcert", v)) => root = Some(decode(v)),
                _ => kept.push(part),
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, mode, root));
    }
    let mut kept = Vec::new();
    for part in database_url.split_whitespace() {
        match part.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.trim_matches('\'').to_string()),
            Some(("sslrootcert", v)) => root = Some(v.trim_matches('\'').to_string()),
            _ => kept.push(part),
        }
    }
    Ok((kept.join(" "), mode, root))
}

/// Parses a libpq-style URL or key=value string: host, port, user, database, the pinned
/// settings (added after any `options` the URL gives: later `-c` settings win), and
/// `sslmode`/`sslrootcert`.
pub fn target(database_url: &str) -> Result<Target, String> {
    let (rest, mode, root) = split_ssl(database_url)?;
    let ssl_mode = match mode.as_deref() {
        None | Some("prefer") => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        Some("allow") => SslMode::Prefer,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => {
            return Err(format!(
                "invalid database URL: sslmode '{other}' is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ));
        }
    };
    let mut cfg = config(&rest)?;
    cfg.ssl_mode(match ssl_mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok(Target {
        config: cfg,
        ssl_mode,
        root_cert: root.filter(|r| r != "system").map(std::path::PathBuf::from),
    })
}

impl Target {
    /// The rustls configuration of this target's TLS (`None` for `sslmode=disable`).
    pub fn rustls(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
        if self.ssl_mode == SslMode::Disable {
            return Ok(None);
        }
        tls::client_config(self.ssl_mode, self.root_cert.as_deref()).map(Some)
    }

    /// The tokio-postgres TLS connector of this target (for pools).
    pub fn make_tls(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        tls::make_connect(self)
    }

    /// Connects (TLS as `sslmode` says); the connection runs on a task of its own.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        Ok(self.connect_watched().await?.0)
    }

    /// Connects; the receiver turns true when the connection ends (a lease session whose
    /// loss must stop the work it guards).
    pub async fn connect_watched(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::sync::watch::Receiver<bool>), tokio_postgres::Error>
    {
        let (client, conn) = self.config.connect(tls::make_connect(self)).await?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
            let _ = tx.send(true);
        });
        Ok((client, rx))
    }
}

/// Parses a libpq-style URL or key=value string into a tokio-postgres configuration with the
/// pinned settings added after any `options` the URL gives (later `-c` settings win). The URL
/// must not carry `sslmode=verify-*` or `sslrootcert` (see [`target`]).
pub fn config(database_url: &str) -> Result<tokio_postgres::Config, String> {
    let mut cfg: tokio_postgres::Config = database_url
        .parse()
        .map_err(|e| format!("invalid database URL: {e}"))?;
    let options = match cfg.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {}", pinned_options()),
        _ => pinned_options(),
    };
    cfg.options(&options);
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(10));
    }
    Ok(cfg)
}

/// [`config`] for a session whose loss must be noticed within seconds (a lease: the
/// connector's advisory locks, the reader's slot lock): TCP keepalives after 5 s of silence,
/// every 2 s, 3 probes, so a dead peer ends the session in about 11 s instead of the
/// kernel's default of hours.
pub fn lease_target(database_url: &str) -> Result<Target, String> {
    let mut t = target(database_url)?;
    // The server's side too: its backend (and the advisory locks it holds) must go within
    // seconds when the client is cut off, not after the kernel's two hours.
    let options = format!(
        "{} -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3",
        t.config.get_options().unwrap_or_default()
    );
    t.config.options(options.trim());
    t.config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_after_the_urls_own_options() {
        let cfg = config("postgres://u@h/db?options=-c%20search_path%3Dx").unwrap();
        assert_eq!(
            cfg.get_options(),
            Some(
                "-c search_path=x -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 -c client_encoding=UTF8"
            )
        );
        let cfg = config("host=h user=u dbname=d").unwrap();
        assert_eq!(cfg.get_options(), Some(pinned_options().as_str()));
        assert!(config("postgres://[bad").is_err());
        assert_eq!(
            lease_target("postgres://u@h/db")
                .unwrap()
                .config
                .get_keepalives_idle(),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn other_url_parameters_are_kept_byte_for_byte() {
        let t = target("postgres://u@h/db?options=-c%20search_path%3Dx&sslmode=require").unwrap();
        assert_eq!(t.ssl_mode, SslMode::Require);
        assert!(
            t.config
                .get_options()
                .is_some_and(|o| o.starts_with("-c search_path=x -c DateStyle=ISO")),
            "{:?}",
            t.config.get_options()
        );
        let t = target("postgres://u@h/db?sslrootcert=%2Fetc%2Fca%20file.pem").unwrap();
        assert_eq!(
            t.root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca file.pem"))
        );
        let lease = lease_target("postgres://u@h/db").unwrap();
        assert!(
            lease
                .config
                .get_options()
                .is_some_and(|o| o.contains("tcp_keepalives_idle=5")),
            "{:?}",
            lease.config.get_options()
        );
    }

    #[test]
    fn ssl_settings_are_read_as_libpq_names_them() {
        let t = target(
            "postgres://u@h:5433/db?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(t.ssl_mode, SslMode::VerifyFull);
        assert_eq!(
            t.root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(t.config.get_ports(), &[5433]);
        let t = target("host=h user=u dbname=d sslmode=verify-ca sslrootcert=system").unwrap();
        assert_eq!(t.ssl_mode, SslMode::VerifyCa);
        assert_eq!(t.root_cert, None);
        assert_eq!(
            target("postgres://u@h/db").unwrap().ssl_mode,
            SslMode::Prefer
        );
        assert!(
            target("postgres://u@h/db?sslmode=sometimes")
                .unwrap_err()
                .contains("sslmode")
        );
        assert!(
            target("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .unwrap()
                .rustls()
                .unwrap_err()
                .contains("/nonexistent/ca.pem")
        );
    }
}
