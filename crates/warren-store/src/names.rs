//! Random names kept per authtoken and endpoint, so a reconnect gets the same URL.

use sqlx::Row;

use crate::{Store, StoreError, unix_now};

/// How long an assignment nobody uses is kept, in seconds.
pub(crate) const NAME_KEPT_SECS: i64 = 7 * 24 * 60 * 60;

impl Store {
    /// The name last given to the endpoint `bind_key` of authtoken `credential_id`, if it was
    /// used within [`NAME_KEPT_SECS`].
    pub async fn assigned_name(
        &self,
        credential_id: &str,
        bind_key: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT host FROM name_assignments WHERE credential_id = $1 AND bind_key = $2 AND used_at > $3")
                .bind(credential_id).bind(bind_key).bind(unix_now() - NAME_KEPT_SECS)
                .fetch_optional(pool).await?
                .map(|r| r.get::<String, _>(0))
        }))
    }

    /// Records (or refreshes) the name given to an endpoint; forgets assignments unused for
    /// [`NAME_KEPT_SECS`].
    pub async fn assign_name(
        &self,
        credential_id: &str,
        bind_key: &str,
        host: &str,
    ) -> Result<(), StoreError> {
        let now = unix_now();
        with_db!(self.db, pool => {
            let mut tx = begin_write!(self, pool);
            sqlx::query("DELETE FROM name_assignments WHERE used_at <= $1").bind(now - NAME_KEPT_SECS).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO name_assignments (credential_id, bind_key, host, used_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (credential_id, bind_key) DO UPDATE SET host = excluded.host, used_at = excluded.used_at")
                .bind(credential_id).bind(bind_key).bind(host).bind(now)
                .execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }
}
