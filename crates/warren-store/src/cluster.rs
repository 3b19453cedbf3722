//! What the nodes of a cluster share to relay visitors to each other: the cluster CA their
//! relay links trust, each node's relay address (on its `edge_nodes` row), and the view of
//! which node holds which endpoint, with a generation that moves on every change to it.

use sqlx::Row;

use crate::{Store, StoreError, now_rfc3339};

/// An endpoint held by a session of another node, as a relaying node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// `ep_...`: the holder checks it on every relayed stream, so a stale view (the endpoint
    /// was bound again, perhaps elsewhere) is refused rather than served by the wrong owner.
    pub endpoint_id: String,
    /// `https://host`, `http://host`, `tls://host` or the tcp URL.
    pub route_key: String,
    /// The node whose session holds it.
    pub node_id: String,
    /// Where that node takes relay links (`host:port`; empty: it does not relay).
    pub relay_addr: String,
}

/// The cluster CA as stored: its certificate and its key, sealed by the edge.
#[derive(Clone, Debug)]
pub struct ClusterCa {
    /// PEM.
    pub cert_pem: String,
    /// The key, sealed with the master key (never in plaintext here).
    pub key_sealed: Vec<u8>,
}

/// What another node may announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announcement {
    /// An endpoint was bound, released or moved.
    Routes,
    /// A certificate was stored, replaced or removed.
    Certificates,
    /// A change to the rules sessions were admitted under (an authtoken revoked or
    /// restricted, an IP policy's rules, the account's policy): the payload says which.
    Rules,
}

impl Announcement {
    fn channel(self) -> &'static str {
        match self {
            Announcement::Routes => "warren_routes",
            Announcement::Certificates => "warren_certificates",
            Announcement::Rules => "warren_rules",
        }
    }
}

/// Announcements of one kind from any node (PostgreSQL's `LISTEN`); on SQLite, one node,
/// nothing is ever announced. Announcements made while the connection was down are lost:
/// readers poll as well.
pub struct Announcements(Option<sqlx::postgres::PgListener>);

impl Announcements {
    /// Waits for the next announcement (reconnecting if the connection dropped) and returns
    /// its payload.
    pub async fn next(&mut self) -> Result<String, StoreError> {
        match &mut self.0 {
            Some(l) => Ok(l.recv().await?.payload().to_owned()),
            None => std::future::pending().await,
        }
    }
}

impl Store {
    /// Starts listening for announcements of `what`.
    pub async fn listen(&self, what: Announcement) -> Result<Announcements, StoreError> {
        match &*self.db {
            crate::Db::Postgres(pool) => {
                let mut l = sqlx::postgres::PgListener::connect_with(pool).await?;
                l.listen(what.channel()).await?;
                Ok(Announcements(Some(l)))
            }
            crate::Db::Sqlite(_) => Ok(Announcements(None)),
        }
    }

    /// Tells every node listening for `what` (PostgreSQL's `NOTIFY`; nothing on SQLite, one
    /// node). `payload` is at most a few hundred bytes.
    pub async fn announce(&self, what: Announcement, payload: &str) -> Result<(), StoreError> {
        if let crate::Db::Postgres(pool) = &*self.db {
            sqlx::query("SELECT pg_notify($1, $2)").bind(what.channel()).bind(payload).execute(pool).await?;
        }
        Ok(())
    }

    /// Takes the right to order a certificate for `domain` for `ttl_secs` (by the database's
    /// clock) unless another node holds it; returns whether `node_id` now holds it.
    pub async fn claim_acme_order(
        &self,
        domain: &str,
        node_id: &str,
        ttl_secs: i64,
    ) -> Result<bool, StoreError> {
        let now = self.db_now().await?;
        let claimed = with_db!(self.db, pool => {
            sqlx::query(
                "INSERT INTO acme_orders (domain, node_id, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (domain) DO UPDATE SET node_id = excluded.node_id, expires_at = excluded.expires_at \
                 WHERE acme_orders.expires_at < $4 OR acme_orders.node_id = $2",
            )
            .bind(domain).bind(node_id).bind(now + ttl_secs).bind(now).execute(pool).await?.rows_affected()
        });
        Ok(claimed > 0)
    }

    /// Gives the right to order for `domain` back (the order finished, either way).
    pub async fn release_acme_order(&self, domain: &str, node_id: &str) -> Result<(), StoreError> {
        with_db!(self.db, pool => {
            sqlx::query("DELETE FROM acme_orders WHERE domain = $1 AND node_id = $2")
                .bind(domain).bind(node_id).execute(pool).await?;
        });
        Ok(())
    }

    /// Keeps a challenge answer for `ttl_secs`, for any node to give (`id` says which
    /// challenge: `http:TOKEN` or `alpn:DOMAIN`).
    pub async fn put_acme_challenge(&self, id: &str, answer: &str, ttl_secs: i64) -> Result<(), StoreError> {
        let expires = self.db_now().await? + ttl_secs;
        with_db!(self.db, pool => {
            sqlx::query("INSERT INTO acme_challenges (id, answer, expires_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (id) DO UPDATE SET answer = excluded.answer, expires_at = excluded.expires_at")
                .bind(id).bind(answer).bind(expires).execute(pool).await?;
        });
        Ok(())
    }

    /// Forgets a challenge answer (and any that expired).
    pub async fn delete_acme_challenge(&self, id: &str) -> Result<(), StoreError> {
        let now = self.db_now().await?;
        with_db!(self.db, pool => {
            sqlx::query("DELETE FROM acme_challenges WHERE id = $1 OR expires_at < $2")
                .bind(id).bind(now).execute(pool).await?;
        });
        Ok(())
    }

    /// One challenge answer in flight.
    pub async fn acme_challenge(&self, id: &str) -> Result<Option<String>, StoreError> {
        let now = self.db_now().await?;
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT answer FROM acme_challenges WHERE id = $1 AND expires_at >= $2")
                .bind(id).bind(now).fetch_optional(pool).await?.map(|r| r.get(0))
        }))
    }

    /// The cluster CA, if a node made one.
    pub async fn cluster_ca(&self) -> Result<Option<ClusterCa>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT cert_pem, key_sealed FROM cluster_ca WHERE id = 1").fetch_optional(pool).await?
                .map(|r| ClusterCa { cert_pem: r.get(0), key_sealed: r.get(1) })
        }))
    }

    /// Stores `ca` as the cluster CA unless a node already did; returns the one that won,
    /// so nodes starting at once agree on one CA.
    pub async fn init_cluster_ca(&self, ca: &ClusterCa) -> Result<ClusterCa, StoreError> {
        with_db!(self.db, pool => {
            sqlx::query("INSERT INTO cluster_ca (id, cert_pem, key_sealed, created_at) VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING")
                .bind(&ca.cert_pem).bind(&ca.key_sealed).bind(now_rfc3339()).execute(pool).await?;
        });
        self.cluster_ca().await?.ok_or(StoreError::NotFound("cluster CA"))
    }

    /// A number that changes whenever any endpoint is bound, released or moved on any node.
    pub async fn route_generation(&self) -> Result<i64, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT generation FROM route_generation WHERE id = 1").fetch_one(pool).await?.get::<i64, _>(0)
        }))
    }

    /// Every endpoint held by a session of another node than `node_id`, with where that
    /// node relays.
    pub async fn remote_endpoints(&self, node_id: &str) -> Result<Vec<RemoteEndpoint>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query(
                "SELECT e.id, e.route_key, s.node_id, n.relay_addr FROM endpoints e \
                 JOIN tunnel_sessions s ON s.id = e.session_id JOIN edge_nodes n ON n.id = s.node_id \
                 WHERE s.node_id <> $1",
            )
            .bind(node_id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| RemoteEndpoint {
                endpoint_id: r.get(0),
                route_key: r.get(1),
                node_id: r.get(2),
                relay_addr: r.get(3),
            })
            .collect()
        }))
    }
}
