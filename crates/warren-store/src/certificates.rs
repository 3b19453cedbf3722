//! Certificates for custom domains and ACME accounts. The store keeps what it is given: the
//! edge seals private keys before handing them over, so neither the database nor its
//! backups hold a key in plaintext.

use sqlx::Row;

use crate::{Store, StoreError, now_rfc3339};

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

    /// Every reserved domain of every account (what the certificate manager looks after).
    pub async fn all_reserved_domain_names(&self) -> Result<Vec<String>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT domain FROM reserved_domains ORDER BY domain").fetch_all(pool).await?
                .iter().map(|r| r.get::<String, _>(0)).collect::<Vec<_>>()
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
