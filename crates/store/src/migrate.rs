//! The migration runner: applies `migrations/*.sql` in order, once each, under an advisory
//! lock, and refuses a migration whose text changed after it was applied.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::{Result, StoreError};

/// One migration: its version, name and SQL text.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Order of application, from the file name's number.
    pub version: i32,
    /// File name without extension.
    pub name: &'static str,
    /// The SQL text.
    pub sql: &'static str,
}

/// Every migration, in order. A unit test checks this list against the directory.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_core",
        sql: include_str!("../../../migrations/0001_core.sql"),
    },
    Migration {
        version: 2,
        name: "0002_registry",
        sql: include_str!("../../../migrations/0002_registry.sql"),
    },
    Migration {
        version: 3,
        name: "0003_cdc",
        sql: include_str!("../../../migrations/0003_cdc.sql"),
    },
    Migration {
        version: 4,
        name: "0004_connect",
        sql: include_str!("../../../migrations/0004_connect.sql"),
    },
    Migration {
        version: 5,
        name: "0005_sheets",
        sql: include_str!("../../../migrations/0005_sheets.sql"),
    },
    Migration {
        version: 6,
        name: "0006_sms",
        sql: include_str!("../../../migrations/0006_sms.sql"),
    },
    Migration {
        version: 7,
        name: "0007_sms_delivery",
        sql: include_str!("../../../migrations/0007_sms_delivery.sql"),
    },
    Migration {
        version: 8,
        name: "0008_exact_values",
        sql: include_str!("../../../migrations/0008_exact_values.sql"),
    },
    Migration {
        version: 9,
        name: "0009_integration_start",
        sql: include_str!("../../../migrations/0009_integration_start.sql"),
    },
    Migration {
        version: 10,
        name: "0010_truncate_notice",
        sql: include_str!("../../../migrations/0010_truncate_notice.sql"),
    },
    Migration {
        version: 11,
        name: "0011_sms_early_reports",
        sql: include_str!("../../../migrations/0011_sms_early_reports.sql"),
    },
    Migration {
        version: 12,
        name: "0012_lease_generation",
        sql: include_str!("../../../migrations/0012_lease_generation.sql"),
    },
    Migration {
        version: 13,
        name: "0013_rate_limits",
        sql: include_str!("../../../migrations/0013_rate_limits.sql"),
    },
    Migration {
        version: 14,
        name: "0014_trace_context",
        sql: include_str!("../../../migrations/0014_trace_context.sql"),
    },
    Migration {
        version: 15,
        name: "0015_sheets_refill",
        sql: include_str!("../../../migrations/0015_sheets_refill.sql"),
    },
    Migration {
        version: 16,
        name: "0016_integration_positions",
        sql: include_str!("../../../migrations/0016_integration_positions.sql"),
    },
    Migration {
        version: 17,
        name: "0017_sms_skipped",
        sql: include_str!("../../../migrations/0017_sms_skipped.sql"),
    },
];

/// Advisory lock key held while migrating ("collect" in ASCII).
const LOCK_KEY: i64 = 0x0063_6f6c_6c65_6374;

fn checksum(sql: &str) -> Vec<u8> {
    Sha256::digest(sql.as_bytes()).to_vec()
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    sha256      bytea NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)";

/// Applies every pending migration; returns the names of those applied now.
pub async fn run(client: &mut Client) -> Result<Vec<&'static str>> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_pending(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_pending(client: &mut Client) -> Result<Vec<&'static str>> {
    client.batch_execute(CREATE_TABLE).await?;
    let applied = applied(client).await?;
    let mut done = Vec::new();
    for m in MIGRATIONS {
        if let Some((_, sum)) = applied.iter().find(|(v, _)| *v == m.version) {
            if *sum != checksum(m.sql) {
                return Err(StoreError::Corrupt(format!(
                    "migration {} was changed after it was applied; add a new migration instead",
                    m.name
                )));
            }
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(migration = m.name, "applied migration");
        done.push(m.name);
    }
    Ok(done)
}

async fn applied(client: &Client) -> Result<Vec<(i32, Vec<u8>)>> {
    let rows = client
        .query(
            "SELECT version, sha256 FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Checks that every known migration is applied (and unchanged), so a server never runs on
/// a schema it was not built for.
pub async fn check_current(client: &Client) -> Result<()> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    let applied = if exists {
        applied(client).await?
    } else {
        Vec::new()
    };
    for m in MIGRATIONS {
        match applied.iter().find(|(v, _)| *v == m.version) {
            None => {
                return Err(StoreError::Corrupt(format!(
                    "migration {} is not applied; run `collect migrate`",
                    m.name
                )));
            }
            Some((_, sum)) if *sum != checksum(m.sql) => {
                return Err(StoreError::Corrupt(format!(
                    "migration {} differs from the one applied",
                    m.name
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_matches_the_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{}.sql", m.name))
            .collect();
        assert_eq!(files, listed);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }
}
