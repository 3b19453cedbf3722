//! Cloud endpoints: endpoints that live on the edge without an agent (ngrok's type `cloud`),
//! answered by their traffic policy on every node. A URL is one endpoint's, an agent's or a
//! cloud one: the writers of both tables check the other under the same lock (PostgreSQL's
//! advisory lock on the host, SQLite's single writer).

use sqlx::Row;

use crate::{Op, Page, Store, StoreError, check_text, generate_id, into_page, now_rfc3339, page_limit};

/// A cloud endpoint as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CloudEndpoint {
    /// `ep_...`, from the same space as agent endpoints' ids.
    pub id: String,
    /// The owner.
    pub account_id: String,
    /// `https://host` or `http://host`.
    pub url: String,
    /// `https` or `http`.
    pub proto: String,
    /// Lower-case host name.
    pub host: String,
    /// The policy document as given (YAML or JSON text).
    pub traffic_policy: String,
    /// What it is for.
    pub description: String,
    /// Free-form.
    pub metadata: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// The user who made it (`None`: an admin key without a user).
    pub owner_id: Option<String>,
}

/// What a cloud endpoint is made from (or changed to).
#[derive(Clone, Debug, Default)]
pub struct CloudEndpointSpec {
    /// `https://host` or `http://host`, already checked by the caller.
    pub url: String,
    /// `https` or `http`.
    pub proto: String,
    /// Lower-case host name.
    pub host: String,
    /// The policy document.
    pub traffic_policy: String,
    /// What it is for.
    pub description: String,
    /// Free-form.
    pub metadata: String,
}

const COLUMNS: &str = "id, account_id, url, proto, host, traffic_policy, description, metadata, created_at, updated_at, owner_id";

fn row<R: Row>(r: &R) -> CloudEndpoint
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    CloudEndpoint {
        id: r.get(0),
        account_id: r.get(1),
        url: r.get(2),
        proto: r.get(3),
        host: r.get(4),
        traffic_policy: r.get(5),
        description: r.get(6),
        metadata: r.get(7),
        created_at: r.get(8),
        updated_at: r.get(9),
        owner_id: r.get(10),
    }
}

/// Inside transaction `$tx`: whether (`$proto`, `$host`) may be a cloud endpoint of
/// `$account` (other than `$id`): no other cloud endpoint has that URL or the host in another
/// account, no agent endpoint holds it (an https one excludes tls too: they share the TLS
/// port), nor the host in another account. Evaluates to `Result<(), StoreError>`.
macro_rules! route_free {
    ($tx:expr, $account:expr, $id:expr, $proto:expr, $host:expr) => {
        async {
            let (account, id, proto, host): (&str, &str, &str, &str) = ($account, $id, $proto, $host);
            let cloud = sqlx::query("SELECT url FROM cloud_endpoints WHERE host = $1 AND id <> $2 AND (proto = $3 OR account_id <> $4) LIMIT 1")
                .bind(host).bind(id).bind(proto).bind(account).fetch_optional(&mut *$tx).await?
                .map(|r| r.get::<String, _>(0));
            if let Some(url) = cloud {
                return Err(StoreError::Taken(format!("{url} is already a cloud endpoint")));
            }
            let agent = sqlx::query("SELECT url FROM endpoints WHERE host = $1 AND (account_id <> $2 OR proto = $3 OR (proto = 'tls' AND $3 = 'https')) LIMIT 1")
                .bind(host).bind(account).bind(proto).fetch_optional(&mut *$tx).await?
                .map(|r| r.get::<String, _>(0));
            if let Some(url) = agent {
                return Err(StoreError::Taken(format!("{url} is online from an agent")));
            }
            // Checked here too, under the reservations' lock: a reservation made at the same
            // moment cannot pass as well.
            for name in crate::reserved::covering(host) {
                let other = sqlx::query("SELECT domain FROM reserved_domains WHERE domain = $1 AND account_id <> $2")
                    .bind(&name).bind(account).fetch_optional(&mut *$tx).await?
                    .map(|r| r.get::<String, _>(0));
                if let Some(other) = other {
                    return Err(StoreError::Taken(format!("{host} is covered by another account's reservation {other}")));
                }
            }
            Ok(())
        }
    };
}

/// Runs `$body` in a write transaction `$tx` on either backend, holding on PostgreSQL the
/// reservations' lock and the lock `insert_endpoint` takes for each of `$hosts` first (on
/// SQLite the one writer's), then writes audit event `$op` of the body's value and commits.
macro_rules! with_hosts_locked {
    ($store:expr, $tx:ident, $account:expr, $hosts:expr, $op:expr, |$obj:ident| $body:block) => {
        match &*$store.db {
            crate::Db::Sqlite(pool) => {
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let $obj = $body;
                insert_event!($store, $tx, $store.audit_event($account, $op, &$obj));
                $tx.commit().await?;
                $obj
            }
            crate::Db::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                // The reservations' lock first (as reserving takes it), then the hosts'.
                sqlx::query("SELECT pg_advisory_xact_lock(7261657365727665)").execute(&mut *$tx).await?;
                let mut hosts: Vec<&str> = $hosts;
                hosts.sort_unstable();
                hosts.dedup();
                for h in hosts {
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
                        .bind(h)
                        .execute(&mut *$tx)
                        .await?;
                }
                let $obj = $body;
                insert_event!($store, $tx, $store.audit_event($account, $op, &$obj));
                $tx.commit().await?;
                $obj
            }
        }
    };
}

impl Store {
    /// Makes a cloud endpoint. Its URL taken by any endpoint, or its host by another account,
    /// is [`StoreError::Taken`].
    pub async fn create_cloud_endpoint(
        &self,
        account_id: &str,
        spec: &CloudEndpointSpec,
        owner: Option<&str>,
        max_per_account: usize,
    ) -> Result<CloudEndpoint, StoreError> {
        check_text("description", &spec.description)?;
        check_text("metadata", &spec.metadata)?;
        let now = now_rfc3339();
        let e = CloudEndpoint {
            id: generate_id("ep"),
            account_id: account_id.to_owned(),
            url: spec.url.clone(),
            proto: spec.proto.clone(),
            host: spec.host.clone(),
            traffic_policy: spec.traffic_policy.clone(),
            description: spec.description.clone(),
            metadata: spec.metadata.clone(),
            created_at: now.clone(),
            updated_at: now,
            owner_id: owner.map(str::to_owned),
        };
        let insert = format!(
            "INSERT INTO cloud_endpoints ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        );
        Ok(with_hosts_locked!(self, tx, account_id, vec![e.host.as_str()], Op::Created, |e| {
            // Counted under the lock every writer of cloud endpoints takes first.
            let have: i64 = sqlx::query("SELECT COUNT(*) FROM cloud_endpoints WHERE account_id = $1")
                .bind(account_id)
                .fetch_one(&mut *tx)
                .await?
                .get(0);
            if usize::try_from(have).unwrap_or(usize::MAX) >= max_per_account {
                return Err(StoreError::Invalid(format!(
                    "cloud endpoint: an account has at most {max_per_account}"
                )));
            }
            route_free!(tx, account_id, &e.id, &e.proto, &e.host).await?;
            sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                .bind(&e.id)
                .bind(&e.account_id)
                .bind(&e.url)
                .bind(&e.proto)
                .bind(&e.host)
                .bind(&e.traffic_policy)
                .bind(&e.description)
                .bind(&e.metadata)
                .bind(&e.created_at)
                .bind(&e.updated_at)
                .bind(&e.owner_id)
                .execute(&mut *tx)
                .await
                .map_err(crate::conflict("cloud endpoint url"))?;
            e
        }))
    }

    /// One cloud endpoint of an account.
    pub async fn get_cloud_endpoint(&self, account_id: &str, id: &str) -> Result<CloudEndpoint, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM cloud_endpoints WHERE account_id = $1 AND id = $2");
        with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(id).fetch_optional(pool).await?.map(|r| row(&r))
        })
        .ok_or(StoreError::NotFound("endpoint"))
    }

    /// An account's cloud endpoints, newest first.
    pub async fn list_cloud_endpoints(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<CloudEndpoint>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM cloud_endpoints WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit))
                .fetch_all(pool).await?.iter().map(row).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Every cloud endpoint of an account (`None`: of every account), for serving.
    pub async fn all_cloud_endpoints(
        &self,
        account_id: Option<&str>,
    ) -> Result<Vec<CloudEndpoint>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM cloud_endpoints WHERE ($1 = '' OR account_id = $1) ORDER BY id");
        Ok(with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id.unwrap_or("")).fetch_all(pool).await?.iter().map(row).collect::<Vec<_>>()
        }))
    }

    /// Changes a cloud endpoint: each `Some` replaces its field; a new URL is checked as at
    /// create.
    pub async fn update_cloud_endpoint(
        &self,
        account_id: &str,
        id: &str,
        change: CloudEndpointChange,
    ) -> Result<CloudEndpoint, StoreError> {
        if let Some(d) = &change.description {
            check_text("description", d)?;
        }
        if let Some(m) = &change.metadata {
            check_text("metadata", m)?;
        }
        let old = self.get_cloud_endpoint(account_id, id).await?;
        let mut hosts = vec![old.host.as_str()];
        if let Some((_, _, host)) = &change.url {
            hosts.push(host.as_str());
        }
        let select = format!("SELECT {COLUMNS} FROM cloud_endpoints WHERE account_id = $1 AND id = $2");
        Ok(with_hosts_locked!(self, tx, account_id, hosts, Op::Updated, |e| {
            let mut e = match sqlx::query(sqlx::AssertSqlSafe(select.as_str()))
                .bind(account_id)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
            {
                Some(r) => row(&r),
                None => return Err(StoreError::NotFound("endpoint")),
            };
            if let Some((url, proto, host)) = change.url.clone() {
                route_free!(tx, account_id, id, &proto, &host).await?;
                (e.url, e.proto, e.host) = (url, proto, host);
            }
            if let Some(p) = change.traffic_policy.clone() {
                e.traffic_policy = p;
            }
            if let Some(d) = change.description.clone() {
                e.description = d;
            }
            if let Some(m) = change.metadata.clone() {
                e.metadata = m;
            }
            e.updated_at = now_rfc3339();
            sqlx::query("UPDATE cloud_endpoints SET url = $1, proto = $2, host = $3, traffic_policy = $4, description = $5, metadata = $6, updated_at = $7 WHERE account_id = $8 AND id = $9")
                .bind(&e.url).bind(&e.proto).bind(&e.host).bind(&e.traffic_policy).bind(&e.description)
                .bind(&e.metadata).bind(&e.updated_at).bind(account_id).bind(id)
                .execute(&mut *tx).await.map_err(crate::conflict("cloud endpoint url"))?;
            e
        }))
    }

    /// Deletes a cloud endpoint.
    pub async fn delete_cloud_endpoint(
        &self,
        account_id: &str,
        id: &str,
    ) -> Result<CloudEndpoint, StoreError> {
        let old = self.get_cloud_endpoint(account_id, id).await?;
        Ok(audited!(self, tx, account_id, Op::Deleted, |old| {
            let n = sqlx::query("DELETE FROM cloud_endpoints WHERE account_id = $1 AND id = $2")
                .bind(account_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("endpoint"));
            }
            old
        }))
    }
}

/// What [`Store::update_cloud_endpoint`] changes; `None` keeps the field.
#[derive(Clone, Debug, Default)]
pub struct CloudEndpointChange {
    /// A new URL: (url, proto, host).
    pub url: Option<(String, String, String)>,
    /// A new policy document.
    pub traffic_policy: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// New metadata.
    pub metadata: Option<String>,
}
