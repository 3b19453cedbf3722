use sqlx::Row;

use crate::secret::{self, SecretKind};
use crate::{
    Credential, CredentialUpdate, NewCredential, Op, Page, Store, StoreError, Token, check_text, into_page,
    now_rfc3339, page_limit, parse_token,
};

const COLUMNS: &str = "id, account_id, description, metadata, acl, owner_id, created_at, ip_policy_ids";

fn credential<R: Row>(r: &R) -> Credential
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let acl: String = r.get(4);
    let ip_policy_ids: String = r.get(7);
    Credential {
        id: r.get(0),
        account_id: r.get(1),
        description: r.get(2),
        metadata: r.get(3),
        acl: serde_json::from_str(&acl).unwrap_or_default(),
        owner_id: r.get(5),
        created_at: r.get(6),
        ip_policy_ids: serde_json::from_str(&ip_policy_ids).unwrap_or_default(),
    }
}

pub(crate) fn check_acl(acl: &[String]) -> Result<(), StoreError> {
    for rule in acl {
        let ok = rule.strip_prefix("bind:").is_some_and(|h| {
            let h = h.strip_prefix("*.").unwrap_or(h);
            h == "*"
                || (!h.is_empty()
                    && h.len() <= 253
                    && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b)))
        });
        if !ok {
            return Err(StoreError::Invalid(format!(
                "acl rule {rule:?}: expected bind:HOST, bind:*.DOMAIN or bind:*"
            )));
        }
    }
    Ok(())
}

impl Store {
    /// Creates an authtoken; the returned [`Token`] is the only time the secret is visible.
    pub async fn create_credential(
        &self,
        account_id: &str,
        new: &NewCredential,
    ) -> Result<(Credential, Token), StoreError> {
        check_text("description", &new.description)?;
        check_text("metadata", &new.metadata)?;
        check_acl(&new.acl)?;
        self.check_policies_exist(account_id, &new.ip_policy_ids).await?;
        let (id, token, hash) = secret::new_secret(SecretKind::Credential);
        let c = Credential {
            id,
            account_id: account_id.to_owned(),
            description: new.description.clone(),
            metadata: new.metadata.clone(),
            acl: new.acl.clone(),
            owner_id: new.owner_id.clone(),
            ip_policy_ids: new.ip_policy_ids.clone(),
            created_at: now_rfc3339(),
        };
        let acl = serde_json::to_string(&c.acl).expect("strings serialize");
        let policies = serde_json::to_string(&c.ip_policy_ids).expect("strings serialize");
        let c = audited!(self, tx, account_id, Op::Created, |c| {
            sqlx::query("INSERT INTO credentials (id, account_id, description, metadata, acl, owner_id, secret_hash, created_at, ip_policy_ids) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                .bind(&c.id).bind(&c.account_id).bind(&c.description).bind(&c.metadata).bind(&acl)
                .bind(&c.owner_id).bind(&hash[..]).bind(&c.created_at).bind(&policies)
                .execute(&mut *tx).await?;
            c
        });
        Ok((c, Token(token)))
    }

    /// The ids of a user's authtokens.
    pub async fn credentials_of(&self, account_id: &str, owner_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT id FROM credentials WHERE account_id = $1 AND owner_id = $2")
                .bind(account_id).bind(owner_id).fetch_all(pool).await?
                .iter().map(|r| r.get::<String, _>(0)).collect::<Vec<_>>()
        }))
    }

    /// Looks a presented authtoken up by id and checks its secret. `None` when unknown or wrong.
    pub async fn verify_credential(&self, token: &str) -> Result<Option<Credential>, StoreError> {
        let Some((id, presented)) = parse_token(SecretKind::Credential, token) else {
            return Ok(None);
        };
        let sql = format!("SELECT {COLUMNS}, secret_hash FROM credentials WHERE id = $1");
        let found = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(pool).await?
                .map(|r| (credential(&r), r.get::<Vec<u8>, _>(8)))
        });
        let Some((c, stored)) = found else {
            // Same work as a hit, so timing does not tell whether the id exists.
            let _ = secret::hash_matches(presented, &[0u8; 32]);
            return Ok(None);
        };
        Ok(secret::hash_matches(presented, &stored).then_some(c))
    }

    /// One authtoken record of an account.
    pub async fn get_credential(&self, account_id: &str, id: &str) -> Result<Credential, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM credentials WHERE account_id = $1 AND id = $2");
        with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(id).fetch_optional(pool).await?.map(|r| credential(&r))
        })
        .ok_or(StoreError::NotFound("credential"))
    }

    /// An account's authtokens, newest first.
    pub async fn list_credentials(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<Credential>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM credentials WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit))
                .fetch_all(pool).await?.iter().map(credential).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Changes description, metadata, ACL or IP policies in one statement.
    pub async fn update_credential(
        &self,
        account_id: &str,
        id: &str,
        up: &CredentialUpdate,
    ) -> Result<Credential, StoreError> {
        if let Some(d) = &up.description {
            check_text("description", d)?;
        }
        if let Some(m) = &up.metadata {
            check_text("metadata", m)?;
        }
        if let Some(a) = &up.acl {
            check_acl(a)?;
        }
        if let Some(p) = &up.ip_policy_ids {
            self.check_policies_exist(account_id, p).await?;
        }
        let acl = up.acl.as_ref().map(|a| serde_json::to_string(a).expect("strings serialize"));
        let policies =
            up.ip_policy_ids.as_ref().map(|p| serde_json::to_string(p).expect("strings serialize"));
        let sql = format!("SELECT {COLUMNS} FROM credentials WHERE account_id = $1 AND id = $2");
        Ok(audited!(self, tx, account_id, Op::Updated, |updated| {
            let n = sqlx::query("UPDATE credentials SET description = COALESCE($1, description), metadata = COALESCE($2, metadata), acl = COALESCE($3, acl), ip_policy_ids = COALESCE($4, ip_policy_ids) WHERE account_id = $5 AND id = $6")
                .bind(&up.description).bind(&up.metadata).bind(&acl).bind(&policies).bind(account_id).bind(id)
                .execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("credential"));
            }
            credential(
                &sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(account_id)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?,
            )
        }))
    }

    /// Deletes an authtoken; it stops working at once (sessions using it are the edge's to end).
    pub async fn delete_credential(&self, account_id: &str, id: &str) -> Result<(), StoreError> {
        let old = self.get_credential(account_id, id).await?;
        audited!(self, tx, account_id, Op::Deleted, |old| {
            let n = sqlx::query("DELETE FROM credentials WHERE account_id = $1 AND id = $2")
                .bind(account_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("credential"));
            }
            old
        });
        Ok(())
    }
}
