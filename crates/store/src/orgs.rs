//! Organizations and their API keys.

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Result, Store, StoreError};

/// A created organization and its first API key, shown once and never stored in clear.
#[derive(Debug, Serialize)]
pub struct NewOrg {
    /// Organization id.
    pub org_id: Uuid,
    /// The API key (`ck_` and 40 random alphanumerics, about 238 bits).
    pub api_key: String,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn new_key() -> String {
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("ck_{random}")
}

impl Store {
    /// Creates an organization with one API key.
    pub async fn create_org(&self, name: &str) -> Result<NewOrg> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(StoreError::Invalid(vec![collect_model::FieldError::new(
                "name",
                "invalid",
                "organization name must be 1 to 200 characters",
            )]));
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let org_id = Uuid::now_v7();
        tx.execute(
            "INSERT INTO organizations (id, name) VALUES ($1, $2)",
            &[&org_id, &name],
        )
        .await?;
        let api_key = new_key();
        tx.execute(
            "INSERT INTO api_keys (id, org_id, key_sha256, prefix) VALUES ($1, $2, $3, $4)",
            &[
                &Uuid::now_v7(),
                &org_id,
                &digest(&api_key).as_slice(),
                &&api_key[..8],
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(NewOrg { org_id, api_key })
    }

    /// The organization an API key belongs to, if the key exists and is not revoked.
    pub async fn org_for_key(&self, key: &str) -> Result<Option<Uuid>> {
        let d = digest(key);
        if let Some(org) = self.keys.get(&d) {
            return Ok(Some(org));
        }
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT org_id FROM api_keys WHERE key_sha256 = $1 AND revoked_at IS NULL",
            )
            .await?;
        let row = client.query_opt(&stmt, &[&d.as_slice()]).await?;
        let org = row.map(|r| r.get::<_, Uuid>(0));
        if let Some(org) = org {
            self.keys.put(d, org);
        }
        Ok(org)
    }
}
