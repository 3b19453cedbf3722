//! Live state shared by every edge node on one database: nodes, their agent sessions and
//! endpoints, and commands for sessions held by another node. Each node writes its own rows
//! as sessions come and go; any node's API reads them all. An endpoint's URL is unique
//! across nodes, so the database, not a node's memory, decides who holds a name.

use sqlx::Row;

use crate::time::unix_now as now;
use crate::{Page, Store, StoreError, generate_id, into_page, now_rfc3339, page_limit};

/// An agent session as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TunnelSession {
    /// `ts_...`
    pub id: String,
    /// The owner.
    pub account_id: String,
    /// The edge node holding its connection.
    pub node_id: String,
    /// The authtoken it authenticated with.
    pub credential_id: String,
    /// The agent's address (after trusted proxies).
    pub ip: String,
    /// What the agent said about itself.
    pub agent_version: String,
    /// The agent's OS.
    pub os: String,
    /// The agent's metadata.
    pub metadata: String,
    /// RFC 3339.
    pub started_at: String,
    /// SHA-256 of the cookie the edge gave the session (empty: not resumable). Never in an
    /// event.
    #[serde(skip)]
    pub resume_hash: Vec<u8>,
}

/// `agent_session_start.v0` or `agent_session_stop.v0` of `s`, by the edge.
fn session_event(s: &TunnelSession, start: bool) -> crate::events::NewEvent {
    let mut ev = crate::events::NewEvent::rendered(
        &s.account_id,
        if start { "agent_session_start.v0" } else { "agent_session_stop.v0" },
        &serde_json::Value::Null,
        false,
    );
    ev.object_kind = "tunnel_session";
    ev.object = serde_json::to_string(s).expect("JSON");
    ev
}

/// A bound endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveEndpoint {
    /// `ep_...`, given by the edge.
    pub id: String,
    /// The owner.
    pub account_id: String,
    /// The session serving it.
    pub session_id: String,
    /// The agent's id for it.
    pub client_id: String,
    /// `http`, `https` or `tcp`.
    pub proto: String,
    /// The public URL.
    pub url: String,
    /// What must be unique across nodes: `https://host`, `http://host`, `tls://host` or the
    /// tcp URL.
    pub route_key: String,
    /// The host name of an http, https or tls endpoint (empty for tcp): it belongs to one
    /// account across every scheme, and https and tls never share one.
    pub host: String,
    /// RFC 3339.
    pub created_at: String,
    /// What the agent said about it in its Bind (ngrok's `Extra.Name`, `Metadata`,
    /// `Description` and `ForwardsTo`).
    pub details: EndpointDetails,
    /// One member of a pool: other pooled endpoints of the same account may share its URL.
    pub pooled: bool,
}

/// What an agent says about an endpoint it binds; shown, never acted on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointDetails {
    /// The endpoint's name in the agent's config.
    pub name: String,
    /// Free-form metadata (at most 4 KiB).
    pub metadata: String,
    /// A description (at most 4 KiB).
    pub description: String,
    /// Where the agent forwards it (`ForwardsTo`).
    pub upstream_url: String,
}

/// What another node is asked to do with one of its sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionCommand {
    /// End the session; the agent stops.
    Stop,
    /// Tell the agent to restart.
    Restart,
}

impl SessionCommand {
    fn as_str(self) -> &'static str {
        match self {
            SessionCommand::Stop => "stop",
            SessionCommand::Restart => "restart",
        }
    }
}

const SESSION_COLUMNS: &str =
    "id, account_id, node_id, credential_id, ip, agent_version, os, metadata, started_at, resume_hash";
const ENDPOINT_COLUMNS: &str = "id, account_id, session_id, client_id, proto, url, created_at, route_key, host, \
     name, metadata, description, upstream_url, pooled";

fn session_row<R: Row>(r: &R) -> TunnelSession
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    TunnelSession {
        id: r.get(0),
        account_id: r.get(1),
        node_id: r.get(2),
        credential_id: r.get(3),
        ip: r.get(4),
        agent_version: r.get(5),
        os: r.get(6),
        metadata: r.get(7),
        started_at: r.get(8),
        resume_hash: r.get(9),
    }
}

fn endpoint_row<R: Row>(r: &R) -> LiveEndpoint
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    bool: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    LiveEndpoint {
        id: r.get(0),
        account_id: r.get(1),
        session_id: r.get(2),
        client_id: r.get(3),
        proto: r.get(4),
        url: r.get(5),
        created_at: r.get(6),
        route_key: r.get(7),
        host: r.get(8),
        details: EndpointDetails {
            name: r.get(9),
            metadata: r.get(10),
            description: r.get(11),
            upstream_url: r.get(12),
        },
        pooled: r.get(13),
    }
}

impl Store {
    /// The database's clock, in Unix seconds. Node liveness is judged by it alone, so a node
    /// whose own clock is off neither expires others early nor keeps itself alive.
    pub(crate) async fn db_now(&self) -> Result<i64, StoreError> {
        Ok(match &*self.db {
            crate::Db::Sqlite(_) => now(),
            crate::Db::Postgres(pool) => sqlx::query("SELECT CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)")
                .fetch_one(pool)
                .await?
                .get::<i64, _>(0),
        })
    }

    /// Records a node as up (at start), with where it takes relay links (empty: nowhere).
    pub async fn register_node(&self, node_id: &str, relay_addr: &str) -> Result<(), StoreError> {
        let now = self.db_now().await?;
        with_db!(self.db, pool => {
            sqlx::query("INSERT INTO edge_nodes (id, started_at, last_seen, relay_addr) VALUES ($1, $2, $3, $4)")
                .bind(node_id).bind(now_rfc3339()).bind(now).bind(relay_addr).execute(pool).await?;
        });
        Ok(())
    }

    /// Marks a node as still up, and removes nodes not seen for `dead_after_secs` with all
    /// their sessions, endpoints and commands (a node that crashed). Returns how many were
    /// removed. A node that finds itself removed (it was paused too long) re-registers.
    pub async fn touch_node(
        &self,
        node_id: &str,
        relay_addr: &str,
        dead_after_secs: i64,
    ) -> Result<u64, StoreError> {
        let now = self.db_now().await?;
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM tunnel_sessions WHERE node_id IN (SELECT id FROM edge_nodes WHERE last_seen < $1 AND id <> $2)"
        );
        let (touched, purged) = with_db!(self.db, pool => {
            let touched = sqlx::query("UPDATE edge_nodes SET last_seen = $1 WHERE id = $2")
                .bind(now).bind(node_id).execute(pool).await?.rows_affected();
            // A dead node's sessions stop with it: each gets its stop event.
            let mut tx = begin_write!(self, pool);
            let lost: Vec<TunnelSession> = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(now - dead_after_secs).bind(node_id).fetch_all(&mut *tx).await?.iter().map(session_row).collect();
            let purged = sqlx::query("DELETE FROM edge_nodes WHERE last_seen < $1 AND id <> $2")
                .bind(now - dead_after_secs).bind(node_id).execute(&mut *tx).await?.rows_affected();
            for s in &lost {
                insert_event!(self, tx, session_event(s, false));
            }
            tx.commit().await?;
            (touched, purged)
        });
        if touched == 0 {
            self.register_node(node_id, relay_addr).await?;
        }
        Ok(purged)
    }

    /// Removes a node and its live rows (clean shutdown).
    pub async fn remove_node(&self, node_id: &str) -> Result<(), StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM tunnel_sessions WHERE node_id = $1");
        with_db!(self.db, pool => {
            let mut tx = begin_write!(self, pool);
            let held: Vec<TunnelSession> = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(node_id).fetch_all(&mut *tx).await?.iter().map(session_row).collect();
            sqlx::query("DELETE FROM edge_nodes WHERE id = $1").bind(node_id).execute(&mut *tx).await?;
            for s in &held {
                insert_event!(self, tx, session_event(s, false));
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Records a new agent session.
    pub async fn insert_tunnel_session(&self, s: &TunnelSession) -> Result<(), StoreError> {
        with_db!(self.db, pool => {
            let mut tx = begin_write!(self, pool);
            sqlx::query("INSERT INTO tunnel_sessions (id, account_id, node_id, credential_id, ip, agent_version, os, metadata, started_at, resume_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
                .bind(&s.id).bind(&s.account_id).bind(&s.node_id).bind(&s.credential_id).bind(&s.ip)
                .bind(&s.agent_version).bind(&s.os).bind(&s.metadata).bind(&s.started_at).bind(&s.resume_hash)
                .execute(&mut *tx).await?;
            insert_event!(self, tx, session_event(s, true));
            tx.commit().await?;
        });
        Ok(())
    }

    /// Forgets a session and its endpoints (idempotent; the stop event is written once).
    pub async fn delete_tunnel_session(&self, id: &str) -> Result<(), StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM tunnel_sessions WHERE id = $1");
        with_db!(self.db, pool => {
            let mut tx = begin_write!(self, pool);
            let found = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(&mut *tx).await?.map(|r| session_row(&r));
            if let Some(s) = found {
                sqlx::query("DELETE FROM tunnel_sessions WHERE id = $1").bind(id).execute(&mut *tx).await?;
                insert_event!(self, tx, session_event(&s, false));
                tx.commit().await?;
            }
        });
        Ok(())
    }

    /// One session of an account, on any node.
    pub async fn get_tunnel_session(&self, account_id: &str, id: &str) -> Result<TunnelSession, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM tunnel_sessions WHERE account_id = $1 AND id = $2");
        with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(id).fetch_optional(pool).await?.map(|r| session_row(&r))
        })
        .ok_or(StoreError::NotFound("tunnel session"))
    }

    /// An account's sessions on every node, newest first.
    pub async fn list_tunnel_sessions(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<TunnelSession>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM tunnel_sessions WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit))
                .fetch_all(pool).await?.iter().map(session_row).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Records a bound endpoint. Its route key already held by any session on any node
    /// (unless both are pooled endpoints of one account), or its host held by another account
    /// (in any scheme) or by the other of https and tls (they share the TLS port), is a
    /// [`StoreError::Conflict`].
    pub async fn insert_endpoint(&self, e: &LiveEndpoint) -> Result<(), StoreError> {
        // One statement checks and inserts. SQLite runs it under its single writer lock;
        // PostgreSQL serialises binds of one host with an advisory lock held to commit, so
        // the check of the second bind sees the first one's row.
        const INSERT: &str = "INSERT INTO endpoints (id, account_id, session_id, client_id, proto, url, created_at, route_key, host, \
               name, metadata, description, upstream_url, pooled) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 WHERE ($9 = '' OR NOT EXISTS (\
               SELECT 1 FROM endpoints WHERE host = $9 AND (account_id <> $2 \
                 OR (proto = 'tls' AND $5 = 'https') OR (proto = 'https' AND $5 = 'tls')))) \
             AND NOT EXISTS (SELECT 1 FROM endpoints WHERE route_key = $8 \
               AND ($14 = FALSE OR pooled = FALSE OR account_id <> $2)) \
             AND ($9 = '' OR NOT EXISTS (SELECT 1 FROM cloud_endpoints WHERE host = $9 \
               AND (account_id <> $2 OR proto = $5 OR (proto = 'https' AND $5 = 'tls'))))";
        let conflict = crate::conflict("endpoint");
        let inserted = match &*self.db {
            crate::Db::Sqlite(pool) => sqlx::query(INSERT)
                .bind(&e.id)
                .bind(&e.account_id)
                .bind(&e.session_id)
                .bind(&e.client_id)
                .bind(&e.proto)
                .bind(&e.url)
                .bind(&e.created_at)
                .bind(&e.route_key)
                .bind(&e.host)
                .bind(&e.details.name)
                .bind(&e.details.metadata)
                .bind(&e.details.description)
                .bind(&e.details.upstream_url)
                .bind(e.pooled)
                .execute(pool)
                .await
                .map_err(conflict)?
                .rows_affected(),
            crate::Db::Postgres(pool) => {
                let mut tx = begin_write!(self, pool);
                if !e.host.is_empty() {
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
                        .bind(&e.host)
                        .execute(&mut *tx)
                        .await?;
                }
                // Pooled and unpooled binds of one route key (tcp ones have no host) are
                // decided one at a time too.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 8))")
                    .bind(&e.route_key)
                    .execute(&mut *tx)
                    .await?;
                let n = sqlx::query(INSERT)
                    .bind(&e.id)
                    .bind(&e.account_id)
                    .bind(&e.session_id)
                    .bind(&e.client_id)
                    .bind(&e.proto)
                    .bind(&e.url)
                    .bind(&e.created_at)
                    .bind(&e.route_key)
                    .bind(&e.host)
                    .bind(&e.details.name)
                    .bind(&e.details.metadata)
                    .bind(&e.details.description)
                    .bind(&e.details.upstream_url)
                    .bind(e.pooled)
                    .execute(&mut *tx)
                    .await
                    .map_err(conflict)?
                    .rows_affected();
                tx.commit().await?;
                n
            }
        };
        if inserted == 0 {
            return Err(StoreError::Conflict("endpoint host"));
        }
        Ok(())
    }

    /// The account holding `host` in any scheme, on any node.
    pub async fn host_holder(&self, host: &str) -> Result<Option<String>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT account_id FROM endpoints WHERE host = $1 LIMIT 1").bind(host).fetch_optional(pool).await?
                .map(|r| r.get::<String, _>(0))
        }))
    }

    /// The session holding `route_key`, if any node serves it.
    pub async fn endpoint_holder(&self, route_key: &str) -> Result<Option<String>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT session_id FROM endpoints WHERE route_key = $1").bind(route_key).fetch_optional(pool).await?
                .map(|r| r.get::<String, _>(0))
        }))
    }

    /// The node holding session `id`, in any account.
    pub async fn tunnel_session_node(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT node_id FROM tunnel_sessions WHERE id = $1").bind(id).fetch_optional(pool).await?
                .map(|r| r.get::<String, _>(0))
        }))
    }

    /// Forgets one endpoint of a session (idempotent).
    pub async fn delete_endpoint(&self, session_id: &str, client_id: &str) -> Result<(), StoreError> {
        with_db!(self.db, pool => {
            sqlx::query("DELETE FROM endpoints WHERE session_id = $1 AND client_id = $2")
                .bind(session_id).bind(client_id).execute(pool).await?;
        });
        Ok(())
    }

    /// One endpoint of an account.
    pub async fn get_endpoint(&self, account_id: &str, id: &str) -> Result<LiveEndpoint, StoreError> {
        let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE account_id = $1 AND id = $2");
        with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(id).fetch_optional(pool).await?.map(|r| endpoint_row(&r))
        })
        .ok_or(StoreError::NotFound("endpoint"))
    }

    /// An account's endpoints on every node, newest first.
    pub async fn list_endpoints(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<LiveEndpoint>, StoreError> {
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit))
                .fetch_all(pool).await?.iter().map(endpoint_row).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Asks the node holding `session_id` to stop or restart it.
    pub async fn queue_session_command(
        &self,
        node_id: &str,
        session_id: &str,
        command: SessionCommand,
    ) -> Result<(), StoreError> {
        with_db!(self.db, pool => {
            sqlx::query("INSERT INTO session_commands (id, node_id, session_id, command) VALUES ($1, $2, $3, $4)")
                .bind(generate_id("cmd")).bind(node_id).bind(session_id).bind(command.as_str()).execute(pool).await?;
        });
        Ok(())
    }

    /// Takes the commands queued for this node (each is returned once).
    pub async fn take_session_commands(
        &self,
        node_id: &str,
    ) -> Result<Vec<(String, SessionCommand)>, StoreError> {
        let rows = with_db!(self.db, pool => {
            sqlx::query("DELETE FROM session_commands WHERE node_id = $1 RETURNING session_id, command")
                .bind(node_id).fetch_all(pool).await?
                .iter().map(|r| (r.get::<String, _>(0), r.get::<String, _>(1))).collect::<Vec<_>>()
        });
        Ok(rows
            .into_iter()
            .map(|(s, c)| (s, if c == "stop" { SessionCommand::Stop } else { SessionCommand::Restart }))
            .collect())
    }
}
