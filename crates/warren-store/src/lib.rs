//! warren's persistent state, on SQLite (the embedded default: one file in the data
//! directory, WAL mode, `synchronous = FULL`) or PostgreSQL (for several edge nodes). Both run
//! the same SQL; each has its own versioned migrations, run at open.
//!
//! Secrets (authtokens, API keys) have the form `<id>_<secret>` with 32 random bytes of
//! base64url secret: the id is stored in clear for lookup, the secret only as a SHA-256 hash,
//! compared in constant time. The full token is returned once, on creation.
//!
//! # Layout
//! - [`model`]: the records.
//! - `accounts.rs`, `users.rs`, `credentials.rs`, `api_keys.rs`: one `impl Store` each.
//! - `reserved.rs`: reserved domains and TCP addresses.
//! - `certificates.rs`: custom-domain certificates (keys sealed by the edge) and ACME accounts.
//! - `live.rs`: edge nodes, their sessions and endpoints (shared by every node).
//! - `cluster.rs`: the cluster CA, relay addresses and who holds which endpoint, for relaying.
//! - [`events`]: the outbox every change writes its audit event to, in the change's own
//!   transaction; event destinations and subscriptions.
//! - `secret.rs`: ids and tokens. `time.rs`: RFC 3339 timestamps.

use std::path::Path;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Runs `$body` with `$pool` bound to whichever pool the store has. The SQL is shared: both
/// engines take `$1`-style placeholders, and rows are read by position.
macro_rules! with_db {
    ($store:expr, $pool:ident => $body:expr) => {
        match &*$store {
            $crate::Db::Sqlite($pool) => $body,
            $crate::Db::Postgres($pool) => $body,
        }
    };
}

/// Begins a transaction that will write. On SQLite it takes the write lock at once
/// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and writes later fails at
/// once with "database is locked" when another writer is active, instead of waiting.
macro_rules! begin_write {
    ($store:expr, $pool:expr) => {
        if $store.backend() == "sqlite" {
            $pool.begin_with("BEGIN IMMEDIATE").await?
        } else {
            $pool.begin().await?
        }
    };
}

/// Writes event `$ev` (an [`events::NewEvent`]) to the outbox inside transaction `$tx`, as
/// the transaction's last statement. On PostgreSQL, writers of the outbox take one lock until
/// they commit, so `seq` order is commit order and a delivery cursor never passes an event
/// that commits later.
macro_rules! insert_event {
    ($store:expr, $tx:expr, $ev:expr) => {{
        let ev: &$crate::events::NewEvent = &$ev;
        if $store.backend() == "postgres" {
            sqlx::query("SELECT pg_advisory_xact_lock(7305)").execute(&mut *$tx).await?;
        }
        sqlx::query("INSERT INTO event_outbox (id, account_id, event_type, created_at, principal, object_kind, object, traffic) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&ev.id).bind(&ev.account_id).bind(&ev.event_type).bind(&ev.created_at)
            .bind(&ev.principal).bind(ev.object_kind).bind(&ev.object).bind(i64::from(ev.traffic))
            .execute(&mut *$tx).await?;
    }};
}

/// Runs `$body` in a transaction on whichever pool the store has, with `$tx` bound to it, and
/// ends it by writing the audit event `$op` of `$obj` (a [`events::Audited`] record of
/// `$account`) and committing. `$body` returns early with `?` to roll back.
macro_rules! audited {
    ($store:expr, $tx:ident, $account:expr, $op:expr, |$obj:ident| $body:block) => {
        with_db!($store.db, pool => {
            let mut $tx = begin_write!($store, pool);
            let $obj = $body;
            let ev = $store.audit_event($account, $op, &$obj);
            insert_event!($store, $tx, ev);
            $tx.commit().await?;
            $obj
        })
    };
}

mod accounts;
mod api_keys;
mod certificates;
mod cloud;
mod cluster;
mod credentials;
pub mod dashboard;
pub mod events;
pub mod ip;
mod live;
pub mod model;
mod names;
mod reserved;
mod secret;
mod time;
mod users;

pub use certificates::{StoredCertificate, UploadedCertificate};
pub use cloud::{CloudEndpoint, CloudEndpointChange, CloudEndpointSpec};
pub use cluster::{Announcement, Announcements, ClusterCa, RemoteEndpoint};
pub use dashboard::{DashboardSession, SignIn};
pub use events::{
    Actor, Audited, EventDestination, EventSource, EventSubscription, NewEventDestination, Op, StoredEvent,
};
pub use ip::{
    Cidr, CompiledRestriction, IpDecision, IpPolicy, IpPolicyRule, IpPolicyRuleUpdate, IpRestriction,
    IpRestrictionUpdate,
};
pub use live::{EndpointDetails, LiveEndpoint, SessionCommand, TunnelSession};
pub use model::{
    Account, ApiKey, Credential, CredentialUpdate, NewApiKey, NewCredential, Page, Role, Token, User,
    acl_allows,
};
pub use reserved::{ReservedAddr, ReservedDomain, normalize_domain};
pub use secret::{SecretKind, generate_id, hash_secret, parse_token, write_id, write_id_at};
pub use time::{now_rfc3339, rfc3339, unix_now};

/// Everything that can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database server cannot be reached or refuses the connection (where, and the
    /// innermost reason: the operator's message, with no password from the URL).
    #[error("cannot reach the database at {0}: {1}")]
    Unreachable(String, String),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// No such row.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The row would break a uniqueness rule.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The row is still referenced; the message says by what.
    #[error("{0}")]
    InUse(String),
    /// The name is another account's (a reservation or a live endpoint covers it, or it
    /// covers one of theirs); the message says which.
    #[error("{0}")]
    Taken(String),
    /// A value is out of range; the message says which.
    #[error("invalid {0}")]
    Invalid(String),
    /// The URL names no supported database.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// The store was written by a newer warren: its schema has migrations this binary does
    /// not know, so nothing is changed.
    #[error(
        "the store was written by a newer warren (its schema has migration {0}, this binary knows up to {1}); run that version or newer, or restore a backup made for this one"
    )]
    Newer(i64, i64),
}

pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The store. Cloning shares the pool. A store made with [`Store::acting_as`] names its actor
/// in the audit event every change writes; otherwise the edge itself is named.
#[derive(Clone)]
pub struct Store {
    db: std::sync::Arc<Db>,
    actor: Option<std::sync::Arc<Actor>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &*self.db {
            Db::Sqlite(_) => "Store(sqlite)",
            Db::Postgres(_) => "Store(postgres)",
        })
    }
}

/// A migration run's result, with a store newer than this binary told apart: its schema
/// has a migration this binary does not have (sqlx refuses it before changing anything).
fn migrate(
    result: Result<(), sqlx::migrate::MigrateError>,
    known: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    match result {
        Err(sqlx::migrate::MigrateError::VersionMissing(v)) => {
            Err(StoreError::Newer(v, known.iter().map(|m| m.version).max().unwrap_or(0)))
        }
        other => Ok(other?),
    }
}

impl Store {
    /// Opens `sqlite://PATH` or `postgres://...` (credentials in the URL are never logged).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Store::open_sqlite(Path::new(path)).await;
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Store::open_postgres(PgConnectOptions::from_str(url)?).await;
        }
        let shown = url.split('@').next_back().unwrap_or("");
        Err(StoreError::UnsupportedUrl(shown.to_owned()))
    }

    /// Opens (creating if needed) the SQLite database at `path` and runs migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        let migrator = sqlx::migrate!("migrations/sqlite");
        migrate(migrator.run(&pool).await, &migrator)?;
        Ok(Store { db: std::sync::Arc::new(Db::Sqlite(pool)), actor: None })
    }

    /// Connects to PostgreSQL and runs migrations.
    pub async fn open_postgres(opts: PgConnectOptions) -> Result<Store, StoreError> {
        // One connection first: a server that refuses or does not exist is said at once,
        // rather than after the pool's acquire timeout.
        match <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts).await {
            Ok(c) => sqlx::Connection::close(c).await?,
            Err(e) => {
                let mut why: &dyn std::error::Error = &e;
                while let Some(inner) = why.source() {
                    why = inner;
                }
                let at = format!("{}:{}", opts.get_host(), opts.get_port());
                return Err(StoreError::Unreachable(at, why.to_string()));
            }
        }
        let pool = PgPoolOptions::new().max_connections(8).connect_with(opts).await?;
        let migrator = sqlx::migrate!("migrations/postgres");
        migrate(migrator.run(&pool).await, &migrator)?;
        Ok(Store { db: std::sync::Arc::new(Db::Postgres(pool)), actor: None })
    }

    /// Writes a consistent copy of the whole store to `path` (a new file) while the edge
    /// keeps running: SQLite's `VACUUM INTO`, one read transaction. Sealed keys are in it,
    /// the master key that opens them is not. PostgreSQL stores are backed up with
    /// `pg_dump`.
    pub async fn backup_to(&self, path: &Path) -> Result<(), StoreError> {
        match &*self.db {
            Db::Sqlite(pool) => {
                let target = path.to_str().ok_or_else(|| StoreError::Invalid("backup path: not UTF-8".into()))?;
                sqlx::query("VACUUM INTO $1").bind(target).execute(pool).await?;
                Ok(())
            }
            Db::Postgres(_) => Err(StoreError::Invalid(
                "backup of a PostgreSQL store: use pg_dump (docs/DEPLOY.md); warren backs up the SQLite store".into(),
            )),
        }
    }

    /// The newest migration this binary knows, for `warren admin` and upgrade checks.
    pub fn schema_version(&self) -> i64 {
        let m = match &*self.db {
            Db::Sqlite(_) => sqlx::migrate!("migrations/sqlite"),
            Db::Postgres(_) => sqlx::migrate!("migrations/postgres"),
        };
        m.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match &*self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool (for SQLite, checkpointing the WAL).
    pub async fn close(&self) {
        with_db!(self.db, pool => pool.close().await)
    }
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
pub(crate) fn conflict(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::Database(e),
    }
}

/// Longest description or metadata accepted, as in ngrok's API.
const MAX_TEXT: usize = 4096;

/// Refuses a description or metadata longer than ngrok allows.
pub(crate) fn check_text(field: &str, v: &str) -> Result<(), StoreError> {
    if v.len() > MAX_TEXT {
        return Err(StoreError::Invalid(format!("{field}: at most {MAX_TEXT} bytes")));
    }
    Ok(())
}

/// `LIMIT` for a page: one more than asked, to learn whether more rows exist.
pub(crate) fn page_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 100)) + 1
}

/// Cuts the extra row [`page_limit`] asked for.
pub(crate) fn into_page<T>(mut items: Vec<T>, limit: u32) -> Page<T> {
    let keep = limit.clamp(1, 100) as usize;
    let more = items.len() > keep;
    items.truncate(keep);
    Page { items, more }
}
