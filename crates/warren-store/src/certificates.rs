//! Certificates for custom domains and ACME accounts. The store keeps what it is given: the
//! edge seals private keys before handing them over, so neither the database nor its
//! backups hold a key in plaintext.

use sqlx::Row;

use crate::{Op, Store, StoreError, now_rfc3339};

/// A certificate the edge serves for one domain.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCertificate {
    /// The domain (lowercase).
    pub domain: String,
    /// Leaf first.
    pub chain_pem: String,
    /// The private key, sealed by the edge's master key.
    pub key_sealed: Vec<u8>,
    /// Unix seconds.
    pub not_after: i64,
    /// `acme` or `upload`.
    pub source: String,
    /// RFC 3339.
    pub created_at: String,
}

impl std::fmt::Debug for StoredCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCertificate")
            .field("domain", &self.domain)
            .field("not_after", &self.not_after)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "domain, chain_pem, key_sealed, not_after, source, created_at";

fn row<R: Row>(r: &R) -> StoredCertificate
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    StoredCertificate {
        domain: r.get(0),
        chain_pem: r.get(1),
        key_sealed: r.get(2),
        not_after: r.get(3),
        source: r.get(4),
        created_at: r.get(5),
    }
}

impl Store {
    /// Stores (or replaces) the certificate for `c.domain`.
    pub async fn put_certificate(&self, c: &StoredCertificate) -> Result<(), StoreError> {
        with_db!(self.db, pool => {
            sqlx::query("INSERT INTO tls_certificates (domain, chain_pem, key_sealed, not_after, source, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (domain) DO UPDATE SET chain_pem = excluded.chain_pem, key_sealed = excluded.key_sealed, not_after = excluded.not_after, source = excluded.source, created_at = excluded.created_at")
                .bind(&c.domain).bind(&c.chain_pem).bind(&c.key_sealed).bind(c.not_after).bind(&c.source).bind(&c.created_at)
                .execute(pool).await?;
        });
        Ok(())
    }

    /// The certificate for `domain`, if any.
    pub async fn get_certificate(&self, domain: &str) -> Result<Option<StoredCertificate>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM tls_certificates WHERE domain = $1");
        Ok(with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(domain).fetch_optional(pool).await?.map(|r| row(&r))
        }))
    }

    /// Every stored certificate (loaded at start).
    pub async fn all_certificates(&self) -> Result<Vec<StoredCertificate>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM tls_certificates ORDER BY domain");
        Ok(with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(pool).await?.iter().map(row).collect::<Vec<_>>()
        }))
    }

    /// Every reserved domain of every account whose control is proven, with its account
    /// (what the certificate manager looks after).
    pub async fn all_reserved_domain_names(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT domain, account_id FROM reserved_domains WHERE verified_at IS NOT NULL ORDER BY domain").fetch_all(pool).await?
                .iter().map(|r| (r.get::<String, _>(0), r.get::<String, _>(1))).collect::<Vec<_>>()
        }))
    }

    /// The sealed credentials of the ACME account at `directory`.
    pub async fn get_acme_account(&self, directory: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT credentials_sealed FROM acme_accounts WHERE directory = $1").bind(directory)
                .fetch_optional(pool).await?.map(|r| r.get::<Vec<u8>, _>(0))
        }))
    }

    /// Remembers the ACME account for `directory` (sealed credentials).
    pub async fn put_acme_account(&self, directory: &str, sealed: &[u8]) -> Result<(), StoreError> {
        with_db!(self.db, pool => {
            sqlx::query("INSERT INTO acme_accounts (directory, credentials_sealed, created_at) VALUES ($1, $2, $3) ON CONFLICT (directory) DO UPDATE SET credentials_sealed = excluded.credentials_sealed")
                .bind(directory).bind(sealed).bind(now_rfc3339()).execute(pool).await?;
        });
        Ok(())
    }
}

/// A certificate an operator uploaded; its key is sealed (label: the certificate's id). An
/// event's copy of it leaves the key out.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadedCertificate {
    /// `cert_...`
    pub id: String,
    /// The owner.
    pub account_id: String,
    /// What it is for.
    pub description: String,
    /// Free-form.
    pub metadata: String,
    /// Leaf first.
    pub chain_pem: String,
    /// The private key, sealed by the edge's master key.
    #[serde(skip)]
    pub key_sealed: Vec<u8>,
    /// RFC 3339.
    pub created_at: String,
    /// The user who uploaded it; `None`: admins only.
    pub owner_id: Option<String>,
}

impl std::fmt::Debug for UploadedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadedCertificate").field("id", &self.id).finish_non_exhaustive()
    }
}

const UPLOAD_COLUMNS: &str =
    "id, account_id, description, metadata, chain_pem, key_sealed, created_at, owner_id";

fn upload_row<R: Row>(r: &R) -> UploadedCertificate
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    UploadedCertificate {
        id: r.get(0),
        account_id: r.get(1),
        description: r.get(2),
        metadata: r.get(3),
        chain_pem: r.get(4),
        key_sealed: r.get(5),
        created_at: r.get(6),
        owner_id: r.get(7),
    }
}

impl Store {
    /// Stores an uploaded certificate.
    pub async fn insert_uploaded_certificate(&self, c: &UploadedCertificate) -> Result<(), StoreError> {
        crate::check_text("description", &c.description)?;
        crate::check_text("metadata", &c.metadata)?;
        audited!(self, tx, &c.account_id, Op::Created, |created| {
            sqlx::query("INSERT INTO uploaded_certificates (id, account_id, description, metadata, chain_pem, key_sealed, created_at, owner_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&c.id).bind(&c.account_id).bind(&c.description).bind(&c.metadata).bind(&c.chain_pem).bind(&c.key_sealed).bind(&c.created_at).bind(&c.owner_id)
                .execute(&mut *tx).await?;
            c.clone()
        });
        Ok(())
    }

    /// One uploaded certificate of an account.
    pub async fn get_uploaded_certificate(
        &self,
        account_id: &str,
        id: &str,
    ) -> Result<UploadedCertificate, StoreError> {
        let sql =
            format!("SELECT {UPLOAD_COLUMNS} FROM uploaded_certificates WHERE account_id = $1 AND id = $2");
        with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(id).fetch_optional(pool).await?.map(|r| upload_row(&r))
        })
        .ok_or(StoreError::NotFound("tls certificate"))
    }

    /// Some uploaded certificate of any account, if there is one: for checking at start that
    /// the master key opens what the store sealed.
    pub async fn any_uploaded_certificate(&self) -> Result<Option<UploadedCertificate>, StoreError> {
        let sql = format!("SELECT {UPLOAD_COLUMNS} FROM uploaded_certificates LIMIT 1");
        Ok(with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).fetch_optional(pool).await?.map(|r| upload_row(&r))
        }))
    }

    /// An account's uploaded certificates, newest first.
    pub async fn list_uploaded_certificates(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<crate::Page<UploadedCertificate>, StoreError> {
        let sql = format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploaded_certificates WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(before_id.unwrap_or("")).bind(crate::page_limit(limit))
                .fetch_all(pool).await?.iter().map(upload_row).collect::<Vec<_>>()
        });
        Ok(crate::into_page(rows, limit))
    }

    /// Changes description or metadata.
    pub async fn update_uploaded_certificate(
        &self,
        account_id: &str,
        id: &str,
        description: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<UploadedCertificate, StoreError> {
        description.map_or(Ok(()), |d| crate::check_text("description", d))?;
        metadata.map_or(Ok(()), |m| crate::check_text("metadata", m))?;
        let sql =
            format!("SELECT {UPLOAD_COLUMNS} FROM uploaded_certificates WHERE account_id = $1 AND id = $2");
        Ok(audited!(self, tx, account_id, Op::Updated, |updated| {
            let n = sqlx::query("UPDATE uploaded_certificates SET description = COALESCE($1, description), metadata = COALESCE($2, metadata) WHERE account_id = $3 AND id = $4")
                .bind(description).bind(metadata).bind(account_id).bind(id).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("tls certificate"));
            }
            upload_row(
                &sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(account_id)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?,
            )
        }))
    }

    /// Deletes an uploaded certificate; one still attached to a reserved domain is refused.
    pub async fn delete_uploaded_certificate(&self, account_id: &str, id: &str) -> Result<(), StoreError> {
        let users = with_db!(self.db, pool => {
            sqlx::query("SELECT domain FROM reserved_domains WHERE certificate_id = $1").bind(id).fetch_all(pool).await?
                .iter().map(|r| r.get::<String, _>(0)).collect::<Vec<_>>()
        });
        if !users.is_empty() {
            return Err(StoreError::InUse(format!(
                "tls certificate {id} is attached to {}; detach it first",
                users.join(", ")
            )));
        }
        let old = self.get_uploaded_certificate(account_id, id).await?;
        audited!(self, tx, account_id, Op::Deleted, |old| {
            let n = sqlx::query("DELETE FROM uploaded_certificates WHERE account_id = $1 AND id = $2")
                .bind(account_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("tls certificate"));
            }
            old
        });
        Ok(())
    }

    /// Attaches (or with `None` detaches) an uploaded certificate to a reserved domain.
    pub async fn set_domain_certificate(
        &self,
        account_id: &str,
        reserved_domain_id: &str,
        certificate_id: Option<&str>,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "SELECT {} FROM reserved_domains WHERE account_id = $1 AND id = $2",
            crate::reserved::DOMAIN_COLUMNS
        );
        audited!(self, tx, account_id, Op::Updated, |d| {
            let n = sqlx::query(
                "UPDATE reserved_domains SET certificate_id = $1 WHERE account_id = $2 AND id = $3",
            )
            .bind(certificate_id)
            .bind(account_id)
            .bind(reserved_domain_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("reserved domain"));
            }
            crate::reserved::domain_row(
                &sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(account_id)
                    .bind(reserved_domain_id)
                    .fetch_one(&mut *tx)
                    .await?,
            )
        });
        Ok(())
    }

    /// The uploaded certificate attached to a reserved domain, if any.
    pub async fn domain_certificate_id(
        &self,
        account_id: &str,
        reserved_domain_id: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT certificate_id FROM reserved_domains WHERE account_id = $1 AND id = $2")
                .bind(account_id).bind(reserved_domain_id).fetch_optional(pool).await?
                .and_then(|r| r.get::<Option<String>, _>(0))
        }))
    }

    /// Forgets the certificate served for `domain`.
    pub async fn delete_certificate(&self, domain: &str) -> Result<(), StoreError> {
        with_db!(self.db, pool => {
            sqlx::query("DELETE FROM tls_certificates WHERE domain = $1").bind(domain).execute(pool).await?;
        });
        Ok(())
    }
}
