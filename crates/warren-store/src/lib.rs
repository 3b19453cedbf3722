//! warren's persistent state. The embedded default is one SQLite file in the data directory
//! (WAL mode, fsync defaults kept); migrations run at open.
//!
//! Secrets (authtokens, API keys) have the form `<id>_<secret>`: the id is stored in clear for
//! lookup, the secret only as a SHA-256 hash, compared in constant time. The full token is
//! returned once, on creation.

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

mod secret;

pub use secret::{SecretKind, generate_id, hash_secret, parse_token};

/// Everything that can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// No such row.
    #[error("{0} not found")]
    NotFound(&'static str),
}

/// An account: the owner of credentials, keys and endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// `acc_...`
    pub id: String,
    /// Display name.
    pub name: String,
}

/// An authtoken's stored record (never the secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// `cr_...`
    pub id: String,
    /// The owning account.
    pub account_id: String,
    /// What the token is for.
    pub description: String,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// An API key's stored record (never the secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// `ak_...`
    pub id: String,
    /// The owning account.
    pub account_id: String,
    /// What the key is for.
    pub description: String,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// A secret shown once. `Debug` masks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(********)")
    }
}

/// The store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and runs migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Store { pool })
    }

    /// Returns the account named `name`, creating it if it does not exist.
    pub async fn ensure_account(&self, name: &str) -> Result<(Account, bool), StoreError> {
        if let Some(row) = sqlx::query("SELECT id, name FROM accounts WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok((Account { id: row.get(0), name: row.get(1) }, false));
        }
        let id = generate_id("acc");
        sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES (?, ?, ?)")
            .bind(&id)
            .bind(name)
            .bind(now_rfc3339())
            .execute(&self.pool)
            .await?;
        Ok((Account { id, name: name.to_owned() }, true))
    }

    /// Creates an authtoken; the returned [`Token`] is the only time the secret is visible.
    pub async fn create_credential(
        &self,
        account_id: &str,
        description: &str,
    ) -> Result<(Credential, Token), StoreError> {
        let (id, token, hash) = secret::new_secret(SecretKind::Credential);
        let created_at = now_rfc3339();
        sqlx::query("INSERT INTO credentials (id, account_id, description, secret_hash, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&id)
            .bind(account_id)
            .bind(description)
            .bind(&hash[..])
            .bind(&created_at)
            .execute(&self.pool)
            .await?;
        let c = Credential {
            id,
            account_id: account_id.to_owned(),
            description: description.to_owned(),
            created_at,
        };
        Ok((c, Token(token)))
    }

    /// Looks a presented authtoken up by id and checks its secret. `None` when unknown or wrong.
    pub async fn verify_credential(&self, token: &str) -> Result<Option<Credential>, StoreError> {
        let Some((id, presented)) = parse_token(SecretKind::Credential, token) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT id, account_id, description, secret_hash, created_at FROM credentials WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            // Same work as a hit, so timing does not tell whether the id exists.
            let _ = secret::hash_matches(presented, &[0u8; 32]);
            return Ok(None);
        };
        let stored: Vec<u8> = row.get(3);
        if !secret::hash_matches(presented, &stored) {
            return Ok(None);
        }
        Ok(Some(Credential {
            id: row.get(0),
            account_id: row.get(1),
            description: row.get(2),
            created_at: row.get(4),
        }))
    }

    /// Deletes an authtoken; it stops working at once.
    pub async fn delete_credential(&self, id: &str) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM credentials WHERE id = ?").bind(id).execute(&self.pool).await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound("credential"));
        }
        Ok(())
    }

    /// Lists an account's authtokens (records only).
    pub async fn list_credentials(&self, account_id: &str) -> Result<Vec<Credential>, StoreError> {
        let rows = sqlx::query("SELECT id, account_id, description, created_at FROM credentials WHERE account_id = ? ORDER BY created_at, id")
            .bind(account_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Credential {
                id: r.get(0),
                account_id: r.get(1),
                description: r.get(2),
                created_at: r.get(3),
            })
            .collect())
    }

    /// Creates an API key; the returned [`Token`] is the only time the secret is visible.
    pub async fn create_api_key(
        &self,
        account_id: &str,
        description: &str,
    ) -> Result<(ApiKey, Token), StoreError> {
        let (id, token, hash) = secret::new_secret(SecretKind::ApiKey);
        let created_at = now_rfc3339();
        sqlx::query("INSERT INTO api_keys (id, account_id, description, secret_hash, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&id)
            .bind(account_id)
            .bind(description)
            .bind(&hash[..])
            .bind(&created_at)
            .execute(&self.pool)
            .await?;
        Ok((
            ApiKey { id, account_id: account_id.to_owned(), description: description.to_owned(), created_at },
            Token(token),
        ))
    }

    /// Looks a presented API key up by id and checks its secret.
    pub async fn verify_api_key(&self, key: &str) -> Result<Option<ApiKey>, StoreError> {
        let Some((id, presented)) = parse_token(SecretKind::ApiKey, key) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT id, account_id, description, secret_hash, created_at FROM api_keys WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            let _ = secret::hash_matches(presented, &[0u8; 32]);
            return Ok(None);
        };
        let stored: Vec<u8> = row.get(3);
        if !secret::hash_matches(presented, &stored) {
            return Ok(None);
        }
        Ok(Some(ApiKey {
            id: row.get(0),
            account_id: row.get(1),
            description: row.get(2),
            created_at: row.get(4),
        }))
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Current time as RFC 3339 UTC with second precision.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date crate for one format.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_083_199), "2026-11-30T23:59:59Z");
    }

    async fn store() -> (Store, tempdir::TempDir) {
        let dir = tempdir::TempDir::new();
        let s = Store::open_sqlite(&dir.0.join("warren.db")).await.unwrap();
        (s, dir)
    }

    #[tokio::test]
    async fn credential_verifies_and_stops_working_when_deleted() {
        let (s, _d) = store().await;
        let (acc, created) = s.ensure_account("default").await.unwrap();
        assert!(created);
        assert_eq!(s.ensure_account("default").await.unwrap(), (acc.clone(), false));
        let (cred, token) = s.create_credential(&acc.id, "laptop").await.unwrap();
        assert!(token.0.starts_with(&format!("{}_", cred.id)));
        assert_eq!(s.verify_credential(&token.0).await.unwrap(), Some(cred.clone()));
        // A wrong secret with the right id, a truncated token and garbage all fail.
        let mut wrong = token.0.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(s.verify_credential(&wrong).await.unwrap(), None);
        assert_eq!(s.verify_credential(&cred.id).await.unwrap(), None);
        assert_eq!(s.verify_credential("garbage").await.unwrap(), None);
        assert_eq!(s.list_credentials(&acc.id).await.unwrap(), vec![cred.clone()]);
        s.delete_credential(&cred.id).await.unwrap();
        assert_eq!(s.verify_credential(&token.0).await.unwrap(), None);
        assert!(matches!(s.delete_credential(&cred.id).await, Err(StoreError::NotFound(_))));
    }

    #[tokio::test]
    async fn secrets_are_not_stored_in_plaintext() {
        let dir = tempdir::TempDir::new();
        let path = dir.0.join("warren.db");
        let s = Store::open_sqlite(&path).await.unwrap();
        let (acc, _) = s.ensure_account("default").await.unwrap();
        let (_, token) = s.create_credential(&acc.id, "").await.unwrap();
        let (key, api) = s.create_api_key(&acc.id, "admin").await.unwrap();
        assert_eq!(s.verify_api_key(&api.0).await.unwrap().unwrap().id, key.id);
        assert_eq!(s.verify_api_key(&token.0).await.unwrap(), None, "an authtoken is not an API key");
        s.close().await;
        let mut bytes = std::fs::read(&path).unwrap();
        for f in ["warren.db-wal"] {
            if let Ok(b) = std::fs::read(dir.0.join(f)) {
                bytes.extend(b);
            }
        }
        for secret in [&token.0, &api.0] {
            let secret_part = secret.rsplit_once('_').unwrap().1.as_bytes();
            assert!(
                !bytes.windows(secret_part.len()).any(|w| w == secret_part),
                "secret found in database file"
            );
        }
    }

    /// A temporary directory removed on drop (keeps the dependency list short).
    mod tempdir {
        pub(super) struct TempDir(pub(super) std::path::PathBuf);
        impl TempDir {
            pub(super) fn new() -> TempDir {
                let p = std::env::temp_dir().join(format!("warren-store-{}", crate::generate_id("t")));
                std::fs::create_dir_all(&p).unwrap();
                TempDir(p)
            }
        }
        impl Drop for TempDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
