//! How every part of Collect connects to Postgres: the session settings whose text output the
//! code parses are pinned, whatever the database or role says.
//!
//! Postgres's own logical replication worker does the same (`libpqwalreceiver` connects with
//! `-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3`): a database set to
//! `DateStyle = 'SQL, DMY'` would otherwise change the text of every timestamp the CDC reader
//! decodes. See "Client Connection Defaults" in the Postgres manual.

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

/// Parses a libpq-style URL or key=value string into a tokio-postgres configuration with the
/// pinned settings added after any `options` the URL gives (later `-c` settings win).
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
pub fn lease_config(database_url: &str) -> Result<tokio_postgres::Config, String> {
    let mut cfg = config(database_url)?;
    cfg.keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3);
    Ok(cfg)
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
            lease_config("postgres://u@h/db")
                .unwrap()
                .get_keepalives_idle(),
            Duration::from_secs(5)
        );
    }
}
