use sqlx::Row;

use crate::secret::{self, SecretKind};
use crate::time::{now_secs, rfc3339};
use crate::{
    ApiKey, NewApiKey, Op, Page, Store, StoreError, Token, into_page, now_rfc3339, page_limit, parse_token,
};

const COLUMNS: &str = "id, account_id, description, metadata, owner_id, expires_at, created_at";

fn api_key<R: Row>(r: &R) -> ApiKey
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    ApiKey {
        id: r.get(0),
        account_id: r.get(1),
        description: r.get(2),
        metadata: r.get(3),
        owner_id: r.get(4),
        expires_at: r.get(5),
        created_at: r.get(6),
    }
}

/// Checks the `YYYY-MM-DDTHH:MM:SSZ` shape the store writes, so expiry compares as text.
fn check_expiry(t: &str) -> Result<(), StoreError> {
    let b = t.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    let ok = b.len() == 20
        && digits.iter().all(|&i| b[i].is_ascii_digit())
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z';
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("expires_at {t:?}: expected YYYY-MM-DDTHH:MM:SSZ (UTC)")))
    }
}

impl Store {
    /// Creates an API key; the returned [`Token`] is the only time the secret is visible.
    pub async fn create_api_key(
        &self,
        account_id: &str,
        new: &NewApiKey,
    ) -> Result<(ApiKey, Token), StoreError> {
        if let Some(t) = &new.expires_at {
            check_expiry(t)?;
        }
        let (id, token, hash) = secret::new_secret(SecretKind::ApiKey);
        let k = ApiKey {
            id,
            account_id: account_id.to_owned(),
            description: new.description.clone(),
            metadata: new.metadata.clone(),
            owner_id: new.owner_id.clone(),
            expires_at: new.expires_at.clone(),
            created_at: now_rfc3339(),
        };
        let k = audited!(self, tx, account_id, Op::Created, |k| {
            sqlx::query("INSERT INTO api_keys (id, account_id, description, metadata, owner_id, expires_at, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&k.id).bind(&k.account_id).bind(&k.description).bind(&k.metadata).bind(&k.owner_id)
                .bind(&k.expires_at).bind(&hash[..]).bind(&k.created_at)
                .execute(&mut *tx).await?;
            k
        });
        Ok((k, Token(token)))
    }

    /// Looks a presented API key up by id and checks its secret and expiry.
    pub async fn verify_api_key(&self, key: &str) -> Result<Option<ApiKey>, StoreError> {
        let Some((id, presented)) = parse_token(SecretKind::ApiKey, key) else {
            return Ok(None);
        };
        let sql = format!("SELECT {COLUMNS}, secret_hash FROM api_keys WHERE id = $1");
        let found = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(pool).await?.map(|r| (api_key(&r), r.get::<Vec<u8>, _>(7)))
        });
        let Some((k, stored)) = found else {
            let _ = secret::hash_matches(presented, &[0u8; 32]);
            return Ok(None);
        };
        if !secret::hash_matches(presented, &stored) {
            return Ok(None);
        }
        if k.expires_at.as_deref().is_some_and(|t| t <= rfc3339(now_secs()).as_str()) {
            return Ok(None);
        }
        Ok(Some(k))
    }

    /// One API key record of an account.
    pub async fn get_api_key(&self, account_id: &str, id: &str) -> Result<ApiKey, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE account_id = $1 AND id = $2");
        with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(id).fetch_optional(pool).await?.map(|r| api_key(&r))
        })
        .ok_or(StoreError::NotFound("api key"))
    }

    /// An account's API keys, newest first.
    pub async fn list_api_keys(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<ApiKey>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM api_keys WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit))
                .fetch_all(pool).await?.iter().map(api_key).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Deletes an API key; it stops working at once.
    pub async fn delete_api_key(&self, account_id: &str, id: &str) -> Result<(), StoreError> {
        let k = self.get_api_key(account_id, id).await?;
        audited!(self, tx, account_id, Op::Deleted, |k| {
            let n = sqlx::query("DELETE FROM api_keys WHERE account_id = $1 AND id = $2")
                .bind(account_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("api key"));
            }
            k
        });
        Ok(())
    }
}

impl Store {
    /// Changes an API key's description or metadata.
    pub async fn update_api_key(
        &self,
        account_id: &str,
        id: &str,
        description: Option<String>,
        metadata: Option<String>,
    ) -> Result<ApiKey, StoreError> {
        for (f, v) in [("description", &description), ("metadata", &metadata)] {
            if v.as_ref().is_some_and(|v| v.len() > 4096) {
                return Err(StoreError::Invalid(format!("{f}: at most 4096 bytes")));
            }
        }
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE account_id = $1 AND id = $2");
        Ok(audited!(self, tx, account_id, Op::Updated, |k| {
            let n = sqlx::query("UPDATE api_keys SET description = COALESCE($1, description), metadata = COALESCE($2, metadata) WHERE account_id = $3 AND id = $4")
                .bind(&description).bind(&metadata).bind(account_id).bind(id)
                .execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("api key"));
            }
            api_key(
                &sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(account_id)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?,
            )
        }))
    }
}
