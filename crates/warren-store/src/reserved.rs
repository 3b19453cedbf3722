//! Reserved domains and reserved TCP addresses: names and ports an account owns. Binding them
//! is refused to every other account, on every edge node sharing the store.

use sqlx::Row;

use crate::{Op, Page, Store, StoreError, check_text, generate_id, into_page, now_rfc3339, page_limit};

/// A domain an account owns: a name under the edge's base domain, or a custom domain whose
/// DNS points at the edge. `*.example.com` reserves every name under example.com.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReservedDomain {
    /// `rd_...`
    pub id: String,
    /// The owner.
    pub account_id: String,
    /// Lowercase, without a trailing dot; a wildcard only as the leftmost label.
    pub domain: String,
    /// What it is for.
    pub description: String,
    /// Free-form.
    pub metadata: String,
    /// RFC 3339.
    pub created_at: String,
    /// The user who reserved it; `None`: admins only.
    pub owner_id: Option<String>,
    /// What the TXT record `_warren-challenge.<domain>` must hold to prove control of the
    /// domain (empty when nothing needs proving).
    pub verify_token: String,
    /// When control was proven (RFC 3339); `None` while pending: the name cannot be bound
    /// and gets no certificate.
    pub verified_at: Option<String>,
}

impl ReservedDomain {
    /// The name of the TXT record that proves control: `_warren-challenge.` and the domain
    /// (a wildcard's parent).
    pub fn challenge_name(&self) -> String {
        format!("_warren-challenge.{}", self.domain.strip_prefix("*.").unwrap_or(&self.domain))
    }
}

/// A TCP port an account owns on the edge's tcp host.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReservedAddr {
    /// `ra_...`
    pub id: String,
    /// The owner.
    pub account_id: String,
    /// The port.
    pub port: u16,
    /// What it is for.
    pub description: String,
    /// Free-form.
    pub metadata: String,
    /// RFC 3339.
    pub created_at: String,
    /// The user who reserved it; `None`: admins only.
    pub owner_id: Option<String>,
}

pub(crate) const DOMAIN_COLUMNS: &str =
    "id, account_id, domain, description, metadata, created_at, owner_id, verify_token, verified_at";
const ADDR_COLUMNS: &str = "id, account_id, port, description, metadata, created_at, owner_id";

pub(crate) fn domain_row<R: Row>(r: &R) -> ReservedDomain
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    ReservedDomain {
        id: r.get(0),
        account_id: r.get(1),
        domain: r.get(2),
        description: r.get(3),
        metadata: r.get(4),
        created_at: r.get(5),
        owner_id: r.get(6),
        verify_token: r.get(7),
        verified_at: r.get(8),
    }
}

fn addr_row<R: Row>(r: &R) -> ReservedAddr
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    ReservedAddr {
        id: r.get(0),
        account_id: r.get(1),
        port: u16::try_from(r.get::<i64, _>(2)).unwrap_or(0),
        description: r.get(3),
        metadata: r.get(4),
        created_at: r.get(5),
        owner_id: r.get(6),
    }
}

/// Normalises a domain to reserve: lowercase, no trailing dot, at least two labels, each a
/// valid DNS label, `*` allowed only as the whole leftmost label.
pub fn normalize_domain(domain: &str) -> Result<String, StoreError> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| StoreError::Invalid(format!("domain {domain:?}: {why}"));
    if d.is_empty() || d.len() > 253 {
        return Err(bad("expected a DNS name of 1 to 253 characters"));
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err(bad("expected at least two labels, like app.example.com"));
    }
    for (i, l) in labels.iter().enumerate() {
        if i == 0 && *l == "*" {
            continue;
        }
        let ok = !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(bad(
                "each label is 1 to 63 letters, digits or inner hyphens; '*' only as the first label",
            ));
        }
    }
    if labels[0] == "*" && labels.len() < 3 {
        return Err(bad("a wildcard needs a parent of at least two labels, like *.example.com"));
    }
    Ok(d)
}

impl Store {
    /// Reserves `domain` for the account on behalf of `owner`; `verified` says whether it
    /// needs no proof of control (a name under the edge's own domain). A name that overlaps another
    /// account's reservation (the same name, a wildcard covering it, or, for a wildcard, a
    /// name under it) or another account's live endpoint (in any scheme) is
    /// [`StoreError::Taken`]; the same name reserved again is a [`StoreError::Conflict`].
    pub async fn create_reserved_domain(
        &self,
        account_id: &str,
        domain: &str,
        description: &str,
        metadata: &str,
        owner: Option<&str>,
        verified: bool,
    ) -> Result<ReservedDomain, StoreError> {
        check_text("description", description)?;
        check_text("metadata", metadata)?;
        let now = now_rfc3339();
        let d = ReservedDomain {
            id: generate_id("rd"),
            account_id: account_id.to_owned(),
            domain: normalize_domain(domain)?,
            description: description.to_owned(),
            metadata: metadata.to_owned(),
            created_at: now.clone(),
            owner_id: owner.map(str::to_owned),
            verify_token: if verified { String::new() } else { crate::secret::challenge_token() },
            verified_at: verified.then_some(now),
        };
        // Check and insert under one writer: SQLite's (BEGIN IMMEDIATE), PostgreSQL's
        // advisory lock for reservations, so two overlapping reservations cannot both pass.
        match &*self.db {
            crate::Db::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                overlap_check!(tx, &d).await?;
                insert_event!(self, tx, self.audit_event(account_id, Op::Created, &d));
                tx.commit().await?;
            }
            crate::Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(7261657365727665)").execute(&mut *tx).await?;
                overlap_check!(tx, &d).await?;
                insert_event!(self, tx, self.audit_event(account_id, Op::Created, &d));
                tx.commit().await?;
            }
        }
        Ok(d)
    }

    /// One reserved domain of an account.
    pub async fn get_reserved_domain(
        &self,
        account_id: &str,
        id: &str,
    ) -> Result<ReservedDomain, StoreError> {
        let sql = format!("SELECT {DOMAIN_COLUMNS} FROM reserved_domains WHERE account_id = $1 AND id = $2");
        with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(id).fetch_optional(pool).await?.map(|r| domain_row(&r))
        })
        .ok_or(StoreError::NotFound("reserved domain"))
    }

    /// An account's reserved domains, newest first.
    pub async fn list_reserved_domains(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<ReservedDomain>, StoreError> {
        let sql = format!(
            "SELECT {DOMAIN_COLUMNS} FROM reserved_domains WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit))
                .fetch_all(pool).await?.iter().map(domain_row).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Changes description or metadata; `None` keeps the field.
    pub async fn update_reserved_domain(
        &self,
        account_id: &str,
        id: &str,
        description: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<ReservedDomain, StoreError> {
        description.map_or(Ok(()), |d| check_text("description", d))?;
        metadata.map_or(Ok(()), |m| check_text("metadata", m))?;
        let sql = format!("SELECT {DOMAIN_COLUMNS} FROM reserved_domains WHERE account_id = $1 AND id = $2");
        Ok(audited!(self, tx, account_id, Op::Updated, |updated| {
            let n = sqlx::query("UPDATE reserved_domains SET description = COALESCE($1, description), metadata = COALESCE($2, metadata) WHERE account_id = $3 AND id = $4")
                .bind(description).bind(metadata).bind(account_id).bind(id).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("reserved domain"));
            }
            domain_row(
                &sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(account_id)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?,
            )
        }))
    }

    /// Records that control of a reserved domain was proven.
    pub async fn mark_domain_verified(
        &self,
        account_id: &str,
        id: &str,
    ) -> Result<ReservedDomain, StoreError> {
        let sql = format!("SELECT {DOMAIN_COLUMNS} FROM reserved_domains WHERE account_id = $1 AND id = $2");
        Ok(audited!(self, tx, account_id, Op::Updated, |d| {
            sqlx::query("UPDATE reserved_domains SET verified_at = $1 WHERE account_id = $2 AND id = $3 AND verified_at IS NULL")
                .bind(now_rfc3339()).bind(account_id).bind(id).execute(&mut *tx).await?;
            match sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(account_id)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
            {
                Some(r) => domain_row(&r),
                None => return Err(StoreError::NotFound("reserved domain")),
            }
        }))
    }

    /// Releases a reserved domain.
    pub async fn delete_reserved_domain(&self, account_id: &str, id: &str) -> Result<(), StoreError> {
        let old = self.get_reserved_domain(account_id, id).await?;
        audited!(self, tx, account_id, Op::Deleted, |old| {
            let n = sqlx::query("DELETE FROM reserved_domains WHERE account_id = $1 AND id = $2")
                .bind(account_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("reserved domain"));
            }
            old
        });
        Ok(())
    }

    /// The reservation covering `host`, in any account: the exact name first, then the
    /// nearest wildcard (`a.b.example.com` is covered by `*.b.example.com`, then
    /// `*.example.com`).
    pub async fn domain_reservation(&self, host: &str) -> Result<Option<ReservedDomain>, StoreError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let mut candidates = vec![host.clone()];
        let mut rest = host.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if parent.contains('.') {
                candidates.push(format!("*.{parent}"));
            }
            rest = parent;
        }
        let sql = format!("SELECT {DOMAIN_COLUMNS} FROM reserved_domains WHERE domain = $1");
        for c in candidates {
            let found = with_db!(self.db, pool => {
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(&c).fetch_optional(pool).await?.map(|r| domain_row(&r))
            });
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Reserves `port` for the account. A port reserved already is a [`StoreError::Conflict`].
    pub async fn create_reserved_addr(
        &self,
        account_id: &str,
        port: u16,
        description: &str,
        metadata: &str,
        owner: Option<&str>,
    ) -> Result<ReservedAddr, StoreError> {
        check_text("description", description)?;
        check_text("metadata", metadata)?;
        if port == 0 {
            return Err(StoreError::Invalid("port: 0 cannot be reserved".into()));
        }
        let a = ReservedAddr {
            id: generate_id("ra"),
            account_id: account_id.to_owned(),
            port,
            description: description.to_owned(),
            metadata: metadata.to_owned(),
            created_at: now_rfc3339(),
            owner_id: owner.map(str::to_owned),
        };
        let a = audited!(self, tx, account_id, Op::Created, |a| {
            sqlx::query("INSERT INTO reserved_addrs (id, account_id, port, description, metadata, created_at, owner_id) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(&a.id).bind(&a.account_id).bind(i64::from(a.port)).bind(&a.description).bind(&a.metadata).bind(&a.created_at).bind(&a.owner_id)
                .execute(&mut *tx).await.map_err(crate::conflict("reserved address"))?;
            a
        });
        Ok(a)
    }

    /// One reserved address of an account.
    pub async fn get_reserved_addr(&self, account_id: &str, id: &str) -> Result<ReservedAddr, StoreError> {
        let sql = format!("SELECT {ADDR_COLUMNS} FROM reserved_addrs WHERE account_id = $1 AND id = $2");
        with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(id).fetch_optional(pool).await?.map(|r| addr_row(&r))
        })
        .ok_or(StoreError::NotFound("reserved address"))
    }

    /// An account's reserved addresses, newest first.
    pub async fn list_reserved_addrs(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<ReservedAddr>, StoreError> {
        let sql = format!(
            "SELECT {ADDR_COLUMNS} FROM reserved_addrs WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit))
                .fetch_all(pool).await?.iter().map(addr_row).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Changes description or metadata; `None` keeps the field.
    pub async fn update_reserved_addr(
        &self,
        account_id: &str,
        id: &str,
        description: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<ReservedAddr, StoreError> {
        description.map_or(Ok(()), |d| check_text("description", d))?;
        metadata.map_or(Ok(()), |m| check_text("metadata", m))?;
        let sql = format!("SELECT {ADDR_COLUMNS} FROM reserved_addrs WHERE account_id = $1 AND id = $2");
        Ok(audited!(self, tx, account_id, Op::Updated, |updated| {
            let n = sqlx::query("UPDATE reserved_addrs SET description = COALESCE($1, description), metadata = COALESCE($2, metadata) WHERE account_id = $3 AND id = $4")
                .bind(description).bind(metadata).bind(account_id).bind(id).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("reserved address"));
            }
            addr_row(
                &sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(account_id)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?,
            )
        }))
    }

    /// Releases a reserved address.
    pub async fn delete_reserved_addr(&self, account_id: &str, id: &str) -> Result<(), StoreError> {
        let old = self.get_reserved_addr(account_id, id).await?;
        audited!(self, tx, account_id, Op::Deleted, |old| {
            let n = sqlx::query("DELETE FROM reserved_addrs WHERE account_id = $1 AND id = $2")
                .bind(account_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("reserved address"));
            }
            old
        });
        Ok(())
    }

    /// The reservation of `port`, in any account.
    pub async fn port_reservation(&self, port: u16) -> Result<Option<ReservedAddr>, StoreError> {
        let sql = format!("SELECT {ADDR_COLUMNS} FROM reserved_addrs WHERE port = $1");
        Ok(with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(i64::from(port)).fetch_optional(pool).await?.map(|r| addr_row(&r))
        }))
    }
}

/// The names whose reservation would cover `domain`: itself and each wildcard above it
/// (`a.b.example.com`: `*.b.example.com`, `*.example.com`; never `*.com`).
pub(crate) fn covering(domain: &str) -> Vec<String> {
    let mut out = vec![domain.to_owned()];
    let mut rest = domain.strip_prefix("*.").unwrap_or(domain);
    if domain.starts_with("*.") {
        // `*.b.example.com` is covered by `*.example.com`, not by itself again.
        if let Some((_, parent)) = rest.split_once('.')
            && parent.contains('.')
        {
            out.push(format!("*.{parent}"));
        }
        rest = rest.split_once('.').map_or("", |(_, p)| p);
    }
    while let Some((_, parent)) = rest.split_once('.') {
        if parent.contains('.') {
            let w = format!("*.{parent}");
            if !out.contains(&w) {
                out.push(w);
            }
        }
        rest = parent;
    }
    out
}

/// Checks, inside the reservation's transaction `$tx`, that `$d` overlaps nothing of another
/// account's; evaluates to `Result<(), StoreError>`. A macro rather than a generic function:
/// its body is the same for both backends, and sqlx's generic executor bounds would make the
/// future lose `Send`.
macro_rules! overlap_check {
    ($tx:expr, $d:expr) => {
        async {
            let d: &ReservedDomain = $d;
            for name in covering(&d.domain) {
                let other = sqlx::query("SELECT domain FROM reserved_domains WHERE domain = $1 AND account_id <> $2")
                    .bind(&name).bind(&d.account_id).fetch_optional(&mut *$tx).await?
                    .map(|r| r.get::<String, _>(0));
                if let Some(other) = other {
                    return Err(StoreError::Taken(format!(
                        "{} is covered by another account's reservation {other}",
                        d.domain
                    )));
                }
            }
            // Names are [a-z0-9.-] once normalised, so LIKE needs no escaping.
            let under = d.domain.strip_prefix("*.").map(|parent| format!("%.{parent}"));
            if let Some(pattern) = &under {
                let inner = sqlx::query("SELECT domain FROM reserved_domains WHERE domain LIKE $1 AND account_id <> $2 LIMIT 1")
                    .bind(pattern).bind(&d.account_id).fetch_optional(&mut *$tx).await?
                    .map(|r| r.get::<String, _>(0));
                if let Some(inner) = inner {
                    return Err(StoreError::Taken(format!(
                        "{} would cover another account's reservation {inner}",
                        d.domain
                    )));
                }
            }
            let live = match &under {
                Some(pattern) => sqlx::query("SELECT host FROM endpoints WHERE host LIKE $1 AND account_id <> $2 LIMIT 1").bind(pattern),
                None => sqlx::query("SELECT host FROM endpoints WHERE host = $1 AND account_id <> $2 LIMIT 1").bind(&d.domain),
            };
            let live = live.bind(&d.account_id).fetch_optional(&mut *$tx).await?.map(|r| r.get::<String, _>(0));
            if let Some(host) = live {
                return Err(StoreError::Taken(format!(
                    "{} would cover {host}, online in another account's session",
                    d.domain
                )));
            }
            let cloud = match &under {
                Some(pattern) => sqlx::query("SELECT host FROM cloud_endpoints WHERE host LIKE $1 AND account_id <> $2 LIMIT 1").bind(pattern),
                None => sqlx::query("SELECT host FROM cloud_endpoints WHERE host = $1 AND account_id <> $2 LIMIT 1").bind(&d.domain),
            };
            let cloud = cloud.bind(&d.account_id).fetch_optional(&mut *$tx).await?.map(|r| r.get::<String, _>(0));
            if let Some(host) = cloud {
                return Err(StoreError::Taken(format!(
                    "{} would cover {host}, another account's cloud endpoint",
                    d.domain
                )));
            }
            sqlx::query("INSERT INTO reserved_domains (id, account_id, domain, description, metadata, created_at, owner_id, verify_token, verified_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                .bind(&d.id).bind(&d.account_id).bind(&d.domain).bind(&d.description)
                .bind(&d.metadata).bind(&d.created_at).bind(&d.owner_id).bind(&d.verify_token).bind(&d.verified_at)
                .execute(&mut *$tx).await.map_err(crate::conflict("reserved domain"))?;
            Ok::<(), StoreError>(())
        }
    };
}
use overlap_check;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_normalise_and_wildcards_sit_leftmost() {
        assert_eq!(normalize_domain(" App.Example.COM. ").unwrap(), "app.example.com");
        assert_eq!(normalize_domain("*.dev.example.com").unwrap(), "*.dev.example.com");
        for bad in ["", "com", "*.com", "a.*.example.com", "-a.example.com", "a_b.example.com", "a..b"] {
            assert!(normalize_domain(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_name_is_covered_by_itself_and_each_wildcard_above_it() {
        assert_eq!(covering("a.b.example.com"), ["a.b.example.com", "*.b.example.com", "*.example.com"]);
        assert_eq!(covering("*.b.example.com"), ["*.b.example.com", "*.example.com"]);
        assert_eq!(covering("*.example.com"), ["*.example.com"]);
        assert_eq!(covering("example.com"), ["example.com"]);
    }
}
