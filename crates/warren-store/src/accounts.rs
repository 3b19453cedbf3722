use sqlx::Row;

use crate::events::AccountTrafficPolicy;
use crate::{Account, Op, Store, StoreError, generate_id, now_rfc3339};

impl Store {
    /// Returns the account named `name`, creating it if it does not exist; the flag is true
    /// when it was created.
    pub async fn ensure_account(&self, name: &str) -> Result<(Account, bool), StoreError> {
        let found = with_db!(self.db, pool => {
            sqlx::query("SELECT id, name FROM accounts WHERE name = $1").bind(name).fetch_optional(pool).await?
                .map(|r| Account { id: r.get(0), name: r.get(1) })
        });
        if let Some(a) = found {
            return Ok((a, false));
        }
        let id = generate_id("acc");
        with_db!(self.db, pool => {
            sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)")
                .bind(&id).bind(name).bind(now_rfc3339()).execute(pool).await?;
        });
        Ok((Account { id, name: name.to_owned() }, true))
    }

    /// Creates the account named `name`; [`StoreError::Conflict`] if there is one already.
    pub async fn create_account(&self, name: &str) -> Result<Account, StoreError> {
        if name.trim().is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(StoreError::Invalid(
                "account name: 1 to 64 characters, no control characters".into(),
            ));
        }
        let id = generate_id("acc");
        let inserted = with_db!(self.db, pool => {
            sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
                .bind(&id).bind(name).bind(now_rfc3339()).execute(pool).await?.rows_affected()
        });
        if inserted == 0 {
            return Err(StoreError::Conflict("an account with this name"));
        }
        Ok(Account { id, name: name.to_owned() })
    }

    /// The account with this id, if there is one.
    pub async fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT id, name FROM accounts WHERE id = $1").bind(id).fetch_optional(pool).await?
                .map(|r| Account { id: r.get(0), name: r.get(1) })
        }))
    }

    /// Every account, by name.
    pub async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT id, name FROM accounts ORDER BY name").fetch_all(pool).await?
                .into_iter().map(|r| Account { id: r.get(0), name: r.get(1) }).collect()
        }))
    }
}

impl Store {
    /// The account-wide traffic policy document and when it was set, if any.
    pub async fn account_traffic_policy(
        &self,
        account_id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT document, updated_at FROM account_traffic_policies WHERE account_id = $1")
                .bind(account_id).fetch_optional(pool).await?
                .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
        }))
    }

    /// Sets the account-wide traffic policy (the caller has checked that it compiles).
    pub async fn set_account_traffic_policy(
        &self,
        account_id: &str,
        document: &str,
    ) -> Result<String, StoreError> {
        let now = now_rfc3339();
        let policy = AccountTrafficPolicy { document: document.to_owned(), updated_at: now.clone() };
        audited!(self, tx, account_id, Op::Updated, |policy| {
            sqlx::query("INSERT INTO account_traffic_policies (account_id, document, updated_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (account_id) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at")
                .bind(account_id).bind(document).bind(&now).execute(&mut *tx).await?;
            policy
        });
        Ok(now)
    }

    /// Removes the account-wide traffic policy; true if there was one.
    pub async fn delete_account_traffic_policy(&self, account_id: &str) -> Result<bool, StoreError> {
        let gone = AccountTrafficPolicy { document: String::new(), updated_at: now_rfc3339() };
        let n = with_db!(self.db, pool => {
            let mut tx = begin_write!(self, pool);
            let n = sqlx::query("DELETE FROM account_traffic_policies WHERE account_id = $1")
                .bind(account_id).execute(&mut *tx).await?.rows_affected();
            if n > 0 {
                insert_event!(self, tx, self.audit_event(account_id, Op::Deleted, &gone));
                tx.commit().await?;
            }
            n
        });
        Ok(n > 0)
    }
}
