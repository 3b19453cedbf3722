use sqlx::Row;

use crate::{Account, Store, StoreError, generate_id, now_rfc3339};

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
}
