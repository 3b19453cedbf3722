use sqlx::Row;

use crate::{
    Op, Page, Role, Store, StoreError, User, conflict, generate_id, into_page, now_rfc3339, page_limit,
};

const COLUMNS: &str = "id, account_id, email, role, created_at, authtoken_acl, authtoken_ip_policy_ids";

fn user<R: Row>(r: &R) -> User
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let role: String = r.get(3);
    let acl: Option<String> = r.get(5);
    let policies: String = r.get(6);
    User {
        id: r.get(0),
        account_id: r.get(1),
        email: r.get(2),
        role: Role::parse(&role).unwrap_or(Role::ReadOnly),
        created_at: r.get(4),
        authtoken_acl: acl.map(|a| serde_json::from_str(&a).unwrap_or_default()),
        authtoken_ip_policy_ids: serde_json::from_str(&policies).unwrap_or_default(),
    }
}

impl Store {
    /// Adds a user to an account; the email must be unique within it.
    pub async fn create_user(&self, account_id: &str, email: &str, role: Role) -> Result<User, StoreError> {
        let email = email.trim();
        if email.is_empty() || email.len() > 320 {
            return Err(StoreError::Invalid("email: must be 1 to 320 characters".into()));
        }
        let u = User {
            id: generate_id("usr"),
            account_id: account_id.to_owned(),
            email: email.to_owned(),
            role,
            created_at: now_rfc3339(),
            authtoken_acl: None,
            authtoken_ip_policy_ids: Vec::new(),
        };
        let u = audited!(self, tx, account_id, Op::Created, |u| {
            sqlx::query(
                "INSERT INTO users (id, account_id, email, role, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&u.id)
            .bind(&u.account_id)
            .bind(&u.email)
            .bind(u.role.as_str())
            .bind(&u.created_at)
            .execute(&mut *tx)
            .await
            .map_err(conflict("user with this email"))?;
            u
        });
        Ok(u)
    }

    /// One user of an account.
    pub async fn get_user(&self, account_id: &str, id: &str) -> Result<User, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE account_id = $1 AND id = $2");
        with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(id).fetch_optional(pool).await?.map(|r| user(&r))
        })
        .ok_or(StoreError::NotFound("user"))
    }

    /// Users of an account, newest first.
    pub async fn list_users(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<User>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM users WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit))
                .fetch_all(pool).await?.iter().map(user).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Sets what the user's authtokens may do at most: `acl` (`Some(None)` removes the
    /// ceiling) and the IP policies their sessions must pass; `None` keeps a field.
    pub async fn set_user_limits(
        &self,
        account_id: &str,
        id: &str,
        acl: Option<Option<Vec<String>>>,
        ip_policy_ids: Option<Vec<String>>,
    ) -> Result<User, StoreError> {
        if let Some(Some(a)) = &acl {
            if a.is_empty() {
                return Err(StoreError::Invalid(
                    "authtoken_acl: an empty list would read as no limit; give bind rules, or null for no ceiling"
                        .into(),
                ));
            }
            crate::credentials::check_acl(a)?;
        }
        if let Some(p) = &ip_policy_ids {
            self.check_policies_exist(account_id, p).await?;
        }
        let acl_json = acl.as_ref().map(|a| a.as_ref().map(|v| serde_json::to_string(v).expect("strings")));
        let policies = ip_policy_ids.map(|p| serde_json::to_string(&p).expect("strings"));
        let sql = format!("SELECT {COLUMNS} FROM users WHERE account_id = $1 AND id = $2");
        Ok(audited!(self, tx, account_id, Op::Updated, |updated| {
            let n = sqlx::query("UPDATE users SET authtoken_acl = CASE WHEN $1 THEN $2 ELSE authtoken_acl END, authtoken_ip_policy_ids = COALESCE($3, authtoken_ip_policy_ids) WHERE account_id = $4 AND id = $5")
                .bind(acl_json.is_some()).bind(acl_json.flatten()).bind(policies).bind(account_id).bind(id)
                .execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("user"));
            }
            user(
                &sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(account_id)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?,
            )
        }))
    }

    /// Changes a user's role.
    pub async fn set_user_role(&self, account_id: &str, id: &str, role: Role) -> Result<User, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE account_id = $1 AND id = $2");
        Ok(audited!(self, tx, account_id, Op::Updated, |updated| {
            let n = sqlx::query("UPDATE users SET role = $1 WHERE account_id = $2 AND id = $3")
                .bind(role.as_str())
                .bind(account_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("user"));
            }
            user(
                &sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(account_id)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?,
            )
        }))
    }

    /// Removes a user and revokes what they held: their API keys and authtokens are deleted
    /// with them (no key or token outlives its owner, and none is left without one, which
    /// could read as more access than it had); their reservations and uploaded certificates
    /// stay in the account, changeable by admins only. Returns the revoked authtokens' ids,
    /// whose live sessions the caller ends.
    pub async fn delete_user(&self, account_id: &str, id: &str) -> Result<Vec<String>, StoreError> {
        const STEPS: [&str; 5] = [
            "DELETE FROM api_keys WHERE account_id = $1 AND owner_id = $2",
            "DELETE FROM credentials WHERE account_id = $1 AND owner_id = $2",
            "UPDATE reserved_domains SET owner_id = NULL WHERE account_id = $1 AND owner_id = $2",
            "UPDATE reserved_addrs SET owner_id = NULL WHERE account_id = $1 AND owner_id = $2",
            "UPDATE uploaded_certificates SET owner_id = NULL WHERE account_id = $1 AND owner_id = $2",
        ];
        let u = self.get_user(account_id, id).await?;
        // What goes with the user, each with its own audit event.
        let mut keys = Vec::new();
        let mut page = self.list_api_keys(account_id, 100, None).await?;
        loop {
            keys.extend(page.items.iter().filter(|k| k.owner_id.as_deref() == Some(id)).cloned());
            match (page.more, page.items.last()) {
                (true, Some(last)) => {
                    page = self.list_api_keys(account_id, 100, Some(&last.id.clone())).await?
                }
                _ => break,
            }
        }
        let mut creds = Vec::new();
        for cid in self.credentials_of(account_id, id).await? {
            creds.push(self.get_credential(account_id, &cid).await?);
        }
        let mut events: Vec<crate::events::NewEvent> =
            keys.iter().map(|k| self.audit_event(account_id, Op::Deleted, k)).collect();
        events.extend(creds.iter().map(|c| self.audit_event(account_id, Op::Deleted, c)));
        events.push(self.audit_event(account_id, Op::Deleted, &u));
        let revoked = with_db!(self.db, pool => {
            let mut tx = begin_write!(self, pool);
            let revoked: Vec<String> = sqlx::query("SELECT id FROM credentials WHERE account_id = $1 AND owner_id = $2")
                .bind(account_id).bind(id).fetch_all(&mut *tx).await?
                .iter().map(|r| r.get::<String, _>(0)).collect();
            for step in STEPS {
                sqlx::query(step).bind(account_id).bind(id).execute(&mut *tx).await?;
            }
            let n = sqlx::query("DELETE FROM users WHERE account_id = $1 AND id = $2")
                .bind(account_id).bind(id).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("user"));
            }
            for ev in &events {
                insert_event!(self, tx, *ev);
            }
            tx.commit().await?;
            revoked
        });
        Ok(revoked)
    }
}
