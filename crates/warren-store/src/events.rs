//! Events. Every change to an account writes its audit event to the outbox in the change's
//! own transaction (see the `audited!` macro), so an event that is written is never lost and
//! a change that rolls back leaves none. Delivery reads the outbox in `seq` order behind one
//! cursor per destination, and moves the cursor only after the destination took the events:
//! at-least-once.
//!
//! This file also holds the records of event destinations and subscriptions.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{
    ApiKey, Credential, IpPolicy, IpPolicyRule, IpRestriction, Page, ReservedAddr, ReservedDomain, Store,
    StoreError, UploadedCertificate, User, check_text, generate_id, into_page, now_rfc3339, page_limit,
};

/// Who made a change: the audit event's `principal`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The API key's id, or what acted for the edge (`bootstrap`, `edge`, `cli`).
    pub id: String,
    /// The user the key belongs to (their e-mail), if any.
    pub subject: String,
    /// Where the change came from: `api`, `cli`, `bootstrap`, `edge`.
    pub source: String,
    /// The role it acted with.
    pub role: String,
    /// The client address, when the change came over the network.
    pub ip: String,
}

impl Actor {
    /// warren itself (sessions starting and stopping, the edge's own housekeeping).
    pub fn edge() -> Actor {
        Actor { id: "edge".into(), source: "edge".into(), ..Actor::default() }
    }
}

/// What happened to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// It was made.
    Created,
    /// It changed.
    Updated,
    /// It is gone.
    Deleted,
}

impl Op {
    fn suffix(self) -> &'static str {
        match self {
            Op::Created => "created",
            Op::Updated => "updated",
            Op::Deleted => "deleted",
        }
    }
}

/// A record whose changes are audit events. The outbox keeps the record as serialized here;
/// the edge renders it in the API's shape when it delivers the event.
pub trait Audited: Serialize {
    /// What `object_kind` says in the outbox, for rendering.
    const KIND: &'static str;
    /// The name in event types (`<name>_created.v0`), ngrok's where ngrok has one.
    const EVENT_NAME: &'static str;
}

macro_rules! audited_kinds {
    ($($ty:ty => $kind:literal, $name:literal;)*) => {
        $(impl Audited for $ty {
            const KIND: &'static str = $kind;
            const EVENT_NAME: &'static str = $name;
        })*
        /// Every `object_kind` of audit events, and its name in event types.
        pub const AUDIT_KINDS: &[(&str, &str)] = &[$(($kind, $name)),*];
    };
}

audited_kinds! {
    ApiKey => "api_key", "api_key";
    Credential => "credential", "tunnel_credential";
    User => "user", "user";
    IpPolicy => "ip_policy", "ip_policy";
    IpPolicyRule => "ip_policy_rule", "ip_policy_rule";
    IpRestriction => "ip_restriction", "ip_restriction";
    ReservedDomain => "reserved_domain", "domain";
    ReservedAddr => "reserved_addr", "tcp_address";
    UploadedCertificate => "tls_certificate", "tls_certificate";
    EventDestination => "event_destination", "event_destination";
    EventSubscription => "event_subscription", "event_subscription";
    AccountTrafficPolicy => "traffic_policy", "traffic_policy";
    crate::CloudEndpoint => "cloud_endpoint", "endpoint";
}

/// The account-wide traffic policy, as its audit events carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountTrafficPolicy {
    /// The document (JSON or YAML as it was given); empty once deleted.
    pub document: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// An event on its way into the outbox.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub(crate) id: String,
    pub(crate) account_id: String,
    pub(crate) event_type: String,
    pub(crate) created_at: String,
    pub(crate) principal: String,
    pub(crate) object_kind: &'static str,
    pub(crate) object: String,
    pub(crate) traffic: bool,
}

impl NewEvent {
    /// An event the edge built whole (`object` is final): a session starting, a request.
    pub fn rendered(
        account_id: &str,
        event_type: &str,
        object: &serde_json::Value,
        traffic: bool,
    ) -> NewEvent {
        NewEvent::rendered_text(account_id, event_type, object.to_string(), traffic)
    }

    /// [`NewEvent::rendered`] with the object already JSON text.
    pub fn rendered_text(account_id: &str, event_type: &str, object: String, traffic: bool) -> NewEvent {
        static EDGE: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| serde_json::to_string(&Actor::edge()).expect("JSON"));
        NewEvent {
            id: generate_id("ev"),
            account_id: account_id.to_owned(),
            event_type: event_type.to_owned(),
            created_at: now_rfc3339(),
            principal: EDGE.clone(),
            object_kind: "rendered",
            object,
            traffic,
        }
    }
}

/// An event as the outbox holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its place in the outbox; delivery follows it.
    pub seq: i64,
    /// `ev_...`, the envelope's `event_id`.
    pub id: String,
    /// The account.
    pub account_id: String,
    /// `api_key_created.v0`, `http_request_complete.v0`, ...
    pub event_type: String,
    /// RFC 3339.
    pub created_at: String,
    /// The [`Actor`], as JSON.
    pub principal: String,
    /// An [`Audited::KIND`], or `rendered`.
    pub object_kind: String,
    /// The record (or the whole object), as JSON.
    pub object: String,
}

impl Store {
    /// The same store, naming `actor` in the audit event of every change made through it.
    pub fn acting_as(&self, actor: Actor) -> Store {
        Store { db: self.db.clone(), actor: Some(std::sync::Arc::new(actor)) }
    }

    /// The audit event of `op` on `record` of account `account_id`, by this store's actor.
    pub(crate) fn audit_event<T: Audited>(&self, account_id: &str, op: Op, record: &T) -> NewEvent {
        let actor = self.actor.as_deref().cloned().unwrap_or_else(Actor::edge);
        NewEvent {
            id: generate_id("ev"),
            account_id: account_id.to_owned(),
            event_type: format!("{}_{}.v0", T::EVENT_NAME, op.suffix()),
            created_at: now_rfc3339(),
            principal: serde_json::to_string(&actor).expect("JSON"),
            object_kind: T::KIND,
            object: serde_json::to_string(record).expect("records serialize"),
            traffic: false,
        }
    }

    /// Writes events the edge built (sessions, traffic) to the outbox, in one transaction.
    pub async fn record_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        // Many rows per statement: each statement is a round trip to SQLite's worker thread,
        // and traffic events come by the hundred.
        with_db!(self.db, pool => {
            let mut tx = begin_write!(self, pool);
            if self.backend() == "postgres" {
                sqlx::query("SELECT pg_advisory_xact_lock(7305)").execute(&mut *tx).await?;
            }
            for chunk in events.chunks(64) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO event_outbox (id, account_id, event_type, created_at, principal, object_kind, object, traffic) ",
                );
                q.push_values(chunk, |mut row, ev| {
                    row.push_bind(&ev.id)
                        .push_bind(&ev.account_id)
                        .push_bind(&ev.event_type)
                        .push_bind(&ev.created_at)
                        .push_bind(&ev.principal)
                        .push_bind(ev.object_kind)
                        .push_bind(&ev.object)
                        .push_bind(i64::from(ev.traffic));
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Up to `limit` events of `account_id` after `seq`, oldest first.
    pub async fn events_after(
        &self,
        account_id: &str,
        seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT seq, id, account_id, event_type, created_at, principal, object_kind, object FROM event_outbox WHERE account_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
                .bind(account_id).bind(seq).bind(i64::from(limit)).fetch_all(pool).await?
                .iter().map(|r| StoredEvent {
                    seq: r.get(0), id: r.get(1), account_id: r.get(2), event_type: r.get(3),
                    created_at: r.get(4), principal: r.get(5), object_kind: r.get(6), object: r.get(7),
                }).collect()
        }))
    }

    /// The newest outbox `seq` (0 when empty): where a new destination starts.
    async fn outbox_head(&self) -> Result<i64, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM event_outbox").fetch_one(pool).await?.get::<i64, _>(0)
        }))
    }

    /// Removes events every destination of their account has handled and that are older
    /// than `before` (RFC 3339), and traffic events of accounts without destinations.
    /// Returns how many went.
    pub async fn prune_events(&self, before: &str) -> Result<u64, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query(
                "DELETE FROM event_outbox WHERE (created_at < $1 AND seq <= COALESCE( \
                   (SELECT MIN(d.cursor) FROM event_destinations d WHERE d.account_id = event_outbox.account_id), seq)) \
                 OR (traffic = 1 AND NOT EXISTS (SELECT 1 FROM event_destinations d WHERE d.account_id = event_outbox.account_id))",
            )
            .bind(before).execute(pool).await?.rows_affected()
        }))
    }
}

/// Where events go.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDestination {
    /// `ed_...`
    pub id: String,
    /// The owner.
    pub account_id: String,
    /// What it is for.
    pub description: String,
    /// Free-form.
    pub metadata: String,
    /// `json`.
    pub format: String,
    /// The target as the API shows it (a webhook's secret is not in it), JSON.
    pub target: String,
    /// A webhook's signing secret, sealed by the edge. Never in an event.
    #[serde(skip)]
    pub secret_sealed: Option<Vec<u8>>,
    /// RFC 3339.
    pub created_at: String,
    /// The last outbox `seq` handled.
    #[serde(skip)]
    pub cursor: i64,
    /// Failed tries of the event at the cursor.
    #[serde(skip)]
    pub attempts: i64,
    /// The last delivery error (empty after a success).
    #[serde(skip)]
    pub last_error: String,
    /// When it happened.
    #[serde(skip)]
    pub last_error_at: Option<String>,
    /// When events last went through.
    #[serde(skip)]
    pub last_delivered_at: Option<String>,
    /// Events delivered so far.
    #[serde(skip)]
    pub delivered: i64,
}

impl std::fmt::Debug for EventDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventDestination")
            .field("id", &self.id)
            .field("target", &self.target)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

/// What [`Store::create_event_destination`] needs.
#[derive(Clone, Debug, Default)]
pub struct NewEventDestination {
    /// What it is for.
    pub description: String,
    /// Free-form.
    pub metadata: String,
    /// `json`.
    pub format: String,
    /// The target, JSON, without secrets.
    pub target: String,
    /// A webhook's signing secret, sealed.
    pub secret_sealed: Option<Vec<u8>>,
}

const DEST_COLUMNS: &str = "id, account_id, description, metadata, format, target, secret_sealed, created_at, cursor, attempts, last_error, last_error_at, last_delivered_at, delivered";

fn dest_row<R: Row>(r: &R) -> EventDestination
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<Vec<u8>>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    EventDestination {
        id: r.get(0),
        account_id: r.get(1),
        description: r.get(2),
        metadata: r.get(3),
        format: r.get(4),
        target: r.get(5),
        secret_sealed: r.get(6),
        created_at: r.get(7),
        cursor: r.get(8),
        attempts: r.get(9),
        last_error: r.get(10),
        last_error_at: r.get(11),
        last_delivered_at: r.get(12),
        delivered: r.get(13),
    }
}

/// One kind of event a subscription takes, with an optional CEL filter and the fields to
/// keep (traffic events only; empty keeps every field).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSource {
    /// The event type, `http_request_complete.v0`.
    #[serde(rename = "type")]
    pub kind: String,
    /// CEL over `ev`; empty takes every event of the type.
    pub filter: String,
    /// Dotted field names to keep.
    pub fields: Vec<String>,
}

/// Which events go to which destinations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSubscription {
    /// `esb_...`
    pub id: String,
    /// The owner.
    pub account_id: String,
    /// What it is for.
    pub description: String,
    /// Free-form.
    pub metadata: String,
    /// RFC 3339.
    pub created_at: String,
    /// What it takes.
    pub sources: Vec<EventSource>,
    /// Where it sends.
    pub destination_ids: Vec<String>,
}

impl Store {
    /// Creates a destination; it receives events written from now on.
    pub async fn create_event_destination(
        &self,
        account_id: &str,
        new: &NewEventDestination,
    ) -> Result<EventDestination, StoreError> {
        check_text("description", &new.description)?;
        check_text("metadata", &new.metadata)?;
        let head = self.outbox_head().await?;
        let d = EventDestination {
            id: generate_id("ed"),
            account_id: account_id.to_owned(),
            description: new.description.clone(),
            metadata: new.metadata.clone(),
            format: new.format.clone(),
            target: new.target.clone(),
            secret_sealed: new.secret_sealed.clone(),
            created_at: now_rfc3339(),
            cursor: head,
            attempts: 0,
            last_error: String::new(),
            last_error_at: None,
            last_delivered_at: None,
            delivered: 0,
        };
        Ok(audited!(self, tx, account_id, Op::Created, |d| {
            sqlx::query("INSERT INTO event_destinations (id, account_id, description, metadata, format, target, secret_sealed, created_at, cursor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                .bind(&d.id).bind(&d.account_id).bind(&d.description).bind(&d.metadata).bind(&d.format)
                .bind(&d.target).bind(&d.secret_sealed).bind(&d.created_at).bind(d.cursor)
                .execute(&mut *tx).await?;
            d.clone()
        }))
    }

    /// One destination.
    pub async fn get_event_destination(
        &self,
        account_id: &str,
        id: &str,
    ) -> Result<EventDestination, StoreError> {
        let sql = format!("SELECT {DEST_COLUMNS} FROM event_destinations WHERE account_id = $1 AND id = $2");
        with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(id).fetch_optional(pool).await?.map(|r| dest_row(&r))
        })
        .ok_or(StoreError::NotFound("event destination"))
    }

    /// Destinations, newest first.
    pub async fn list_event_destinations(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<EventDestination>, StoreError> {
        let sql = format!(
            "SELECT {DEST_COLUMNS} FROM event_destinations WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit)).fetch_all(pool).await?
                .iter().map(dest_row).collect::<Vec<_>>()
        });
        Ok(into_page(rows, limit))
    }

    /// Changes a destination's description, metadata or target (and secret); `None` keeps one.
    pub async fn update_event_destination(
        &self,
        account_id: &str,
        id: &str,
        description: Option<&str>,
        metadata: Option<&str>,
        target: Option<(&str, Option<Vec<u8>>)>,
    ) -> Result<EventDestination, StoreError> {
        description.map_or(Ok(()), |d| check_text("description", d))?;
        metadata.map_or(Ok(()), |m| check_text("metadata", m))?;
        let sql = format!("SELECT {DEST_COLUMNS} FROM event_destinations WHERE account_id = $1 AND id = $2");
        Ok(audited!(self, tx, account_id, Op::Updated, |d| {
            let n = sqlx::query("UPDATE event_destinations SET description = COALESCE($1, description), metadata = COALESCE($2, metadata) WHERE account_id = $3 AND id = $4")
                .bind(description).bind(metadata).bind(account_id).bind(id).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("event destination"));
            }
            if let Some((target, sealed)) = &target {
                // A new target starts clean: the old one's errors are not its own.
                sqlx::query("UPDATE event_destinations SET target = $1, secret_sealed = $2, attempts = 0, last_error = '', last_error_at = NULL WHERE id = $3")
                    .bind(*target).bind(sealed).bind(id).execute(&mut *tx).await?;
            }
            let r = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(account_id)
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            dest_row(&r)
        }))
    }

    /// Deletes a destination; refused while a subscription sends to it.
    pub async fn delete_event_destination(&self, account_id: &str, id: &str) -> Result<(), StoreError> {
        let d = self.get_event_destination(account_id, id).await?;
        let users = with_db!(self.db, pool => {
            sqlx::query("SELECT subscription_id FROM event_subscription_destinations WHERE destination_id = $1 ORDER BY subscription_id")
                .bind(id).fetch_all(pool).await?.iter().map(|r| r.get::<String, _>(0)).collect::<Vec<_>>()
        });
        if !users.is_empty() {
            return Err(StoreError::InUse(format!(
                "event destination {id} is used by event subscriptions {}; remove it from them first",
                users.join(", ")
            )));
        }
        audited!(self, tx, account_id, Op::Deleted, |d| {
            let n = sqlx::query("DELETE FROM event_destinations WHERE account_id = $1 AND id = $2")
                .bind(account_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("event destination"));
            }
            d
        });
        Ok(())
    }
}

impl Store {
    /// Creates a subscription; every destination must be the account's.
    pub async fn create_event_subscription(
        &self,
        account_id: &str,
        description: &str,
        metadata: &str,
        sources: &[EventSource],
        destination_ids: &[String],
    ) -> Result<EventSubscription, StoreError> {
        check_text("description", description)?;
        check_text("metadata", metadata)?;
        check_sources(sources)?;
        for d in destination_ids {
            self.get_event_destination(account_id, d).await?;
        }
        let s = EventSubscription {
            id: generate_id("esb"),
            account_id: account_id.to_owned(),
            description: description.to_owned(),
            metadata: metadata.to_owned(),
            created_at: now_rfc3339(),
            sources: sources.to_vec(),
            destination_ids: dedup(destination_ids),
        };
        Ok(audited!(self, tx, account_id, Op::Created, |s| {
            sqlx::query("INSERT INTO event_subscriptions (id, account_id, description, metadata, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&s.id).bind(account_id).bind(&s.description).bind(&s.metadata).bind(&s.created_at)
                .execute(&mut *tx).await?;
            for src in &s.sources {
                sqlx::query("INSERT INTO event_sources (subscription_id, type, filter, fields) VALUES ($1, $2, $3, $4)")
                    .bind(&s.id).bind(&src.kind).bind(&src.filter).bind(serde_json::to_string(&src.fields).expect("JSON"))
                    .execute(&mut *tx).await?;
            }
            for d in &s.destination_ids {
                sqlx::query("INSERT INTO event_subscription_destinations (subscription_id, destination_id) VALUES ($1, $2)")
                    .bind(&s.id).bind(d).execute(&mut *tx).await?;
            }
            s.clone()
        }))
    }

    /// One subscription with its sources and destinations.
    pub async fn get_event_subscription(
        &self,
        account_id: &str,
        id: &str,
    ) -> Result<EventSubscription, StoreError> {
        let mut s = with_db!(self.db, pool => {
            sqlx::query("SELECT id, account_id, description, metadata, created_at FROM event_subscriptions WHERE account_id = $1 AND id = $2")
                .bind(account_id).bind(id).fetch_optional(pool).await?
                .map(|r| EventSubscription { id: r.get(0), account_id: r.get(1), description: r.get(2), metadata: r.get(3), created_at: r.get(4), sources: Vec::new(), destination_ids: Vec::new() })
        })
        .ok_or(StoreError::NotFound("event subscription"))?;
        self.fill_subscription(&mut s).await?;
        Ok(s)
    }

    async fn fill_subscription(&self, s: &mut EventSubscription) -> Result<(), StoreError> {
        with_db!(self.db, pool => {
            s.sources = sqlx::query("SELECT type, filter, fields FROM event_sources WHERE subscription_id = $1 ORDER BY type")
                .bind(&s.id).fetch_all(pool).await?.iter()
                .map(|r| EventSource { kind: r.get(0), filter: r.get(1), fields: serde_json::from_str(&r.get::<String, _>(2)).unwrap_or_default() })
                .collect();
            s.destination_ids = sqlx::query("SELECT destination_id FROM event_subscription_destinations WHERE subscription_id = $1 ORDER BY destination_id")
                .bind(&s.id).fetch_all(pool).await?.iter().map(|r| r.get::<String, _>(0)).collect();
        });
        Ok(())
    }

    /// Subscriptions, newest first.
    pub async fn list_event_subscriptions(
        &self,
        account_id: &str,
        limit: u32,
        before_id: Option<&str>,
    ) -> Result<Page<EventSubscription>, StoreError> {
        let rows = with_db!(self.db, pool => {
            sqlx::query("SELECT id, account_id, description, metadata, created_at FROM event_subscriptions WHERE account_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3")
                .bind(account_id).bind(before_id.unwrap_or("")).bind(page_limit(limit)).fetch_all(pool).await?
                .iter().map(|r| EventSubscription { id: r.get(0), account_id: r.get(1), description: r.get(2), metadata: r.get(3), created_at: r.get(4), sources: Vec::new(), destination_ids: Vec::new() })
                .collect::<Vec<_>>()
        });
        let mut page = into_page(rows, limit);
        for s in &mut page.items {
            self.fill_subscription(s).await?;
        }
        Ok(page)
    }

    /// Changes a subscription; `None` keeps a field. Sources and destinations given replace
    /// the old ones.
    pub async fn update_event_subscription(
        &self,
        account_id: &str,
        id: &str,
        description: Option<&str>,
        metadata: Option<&str>,
        sources: Option<&[EventSource]>,
        destination_ids: Option<&[String]>,
    ) -> Result<EventSubscription, StoreError> {
        description.map_or(Ok(()), |d| check_text("description", d))?;
        metadata.map_or(Ok(()), |m| check_text("metadata", m))?;
        if let Some(s) = sources {
            check_sources(s)?;
        }
        for d in destination_ids.unwrap_or_default() {
            self.get_event_destination(account_id, d).await?;
        }
        let mut s = self.get_event_subscription(account_id, id).await?;
        if let Some(d) = description {
            s.description = d.to_owned();
        }
        if let Some(m) = metadata {
            s.metadata = m.to_owned();
        }
        if let Some(src) = sources {
            s.sources = src.to_vec();
            s.sources.sort_by(|a, b| a.kind.cmp(&b.kind));
        }
        if let Some(d) = destination_ids {
            s.destination_ids = dedup(d);
        }
        Ok(audited!(self, tx, account_id, Op::Updated, |s| {
            let n = sqlx::query("UPDATE event_subscriptions SET description = $1, metadata = $2 WHERE account_id = $3 AND id = $4")
                .bind(&s.description).bind(&s.metadata).bind(account_id).bind(id).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound("event subscription"));
            }
            sqlx::query("DELETE FROM event_sources WHERE subscription_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            for src in &s.sources {
                sqlx::query("INSERT INTO event_sources (subscription_id, type, filter, fields) VALUES ($1, $2, $3, $4)")
                    .bind(id).bind(&src.kind).bind(&src.filter).bind(serde_json::to_string(&src.fields).expect("JSON"))
                    .execute(&mut *tx).await?;
            }
            sqlx::query("DELETE FROM event_subscription_destinations WHERE subscription_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            for d in &s.destination_ids {
                sqlx::query("INSERT INTO event_subscription_destinations (subscription_id, destination_id) VALUES ($1, $2)")
                    .bind(id).bind(d).execute(&mut *tx).await?;
            }
            s.clone()
        }))
    }

    /// Deletes a subscription.
    pub async fn delete_event_subscription(&self, account_id: &str, id: &str) -> Result<(), StoreError> {
        let s = self.get_event_subscription(account_id, id).await?;
        audited!(self, tx, account_id, Op::Deleted, |s| {
            sqlx::query("DELETE FROM event_subscriptions WHERE account_id = $1 AND id = $2")
                .bind(account_id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            s
        });
        Ok(())
    }

    /// Every source of every subscription that sends to `destination_id`.
    pub async fn destination_sources(&self, destination_id: &str) -> Result<Vec<EventSource>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT s.type, s.filter, s.fields FROM event_sources s JOIN event_subscription_destinations d ON d.subscription_id = s.subscription_id WHERE d.destination_id = $1 ORDER BY s.subscription_id, s.type")
                .bind(destination_id).fetch_all(pool).await?.iter()
                .map(|r| EventSource { kind: r.get(0), filter: r.get(1), fields: serde_json::from_str(&r.get::<String, _>(2)).unwrap_or_default() })
                .collect()
        }))
    }

    /// Every destination of `account_id` with the sources of the subscriptions that send to
    /// it: what a node needs to deliver the traffic events it sees, from memory.
    pub async fn event_routes(
        &self,
        account_id: &str,
    ) -> Result<Vec<(EventDestination, Vec<EventSource>)>, StoreError> {
        let sql = format!("SELECT {DEST_COLUMNS} FROM event_destinations WHERE account_id = $1 ORDER BY id");
        let dests = with_db!(self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(account_id).fetch_all(pool).await?
                .iter().map(dest_row).collect::<Vec<_>>()
        });
        let mut out = Vec::with_capacity(dests.len());
        for d in dests {
            let sources = self.destination_sources(&d.id).await?;
            if !sources.is_empty() {
                out.push((d, sources));
            }
        }
        Ok(out)
    }

    /// Counts traffic events a node delivered to `destination_id` (they bypass the outbox
    /// and its cursor).
    pub async fn traffic_events_delivered(
        &self,
        destination_id: &str,
        delivered: i64,
    ) -> Result<(), StoreError> {
        with_db!(self.db, pool => {
            sqlx::query("UPDATE event_destinations SET delivered = delivered + $1, last_delivered_at = $2 WHERE id = $3")
                .bind(delivered).bind(now_rfc3339()).bind(destination_id).execute(pool).await?;
        });
        Ok(())
    }

    /// Shows a failure to deliver traffic events on the destination, without counting it
    /// against the outbox event at its cursor.
    pub async fn traffic_events_failed(&self, destination_id: &str, error: &str) -> Result<(), StoreError> {
        let error: String = error.chars().take(1024).collect();
        with_db!(self.db, pool => {
            sqlx::query("UPDATE event_destinations SET last_error = $1, last_error_at = $2 WHERE id = $3")
                .bind(&error).bind(now_rfc3339()).bind(destination_id).execute(pool).await?;
        });
        Ok(())
    }

    /// The event types some subscription of `account_id` takes (and sends somewhere).
    pub async fn subscribed_types(&self, account_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT DISTINCT s.type FROM event_sources s JOIN event_subscriptions e ON e.id = s.subscription_id \
                         JOIN event_subscription_destinations d ON d.subscription_id = s.subscription_id WHERE e.account_id = $1 ORDER BY s.type")
                .bind(account_id).fetch_all(pool).await?.iter().map(|r| r.get::<String, _>(0)).collect()
        }))
    }
}

fn dedup(ids: &[String]) -> Vec<String> {
    let mut v = ids.to_vec();
    v.sort();
    v.dedup();
    v
}

/// The shape rules of sources the store can check (the edge checks filters compile).
fn check_sources(sources: &[EventSource]) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::new();
    for s in sources {
        if !seen.insert(s.kind.as_str()) {
            return Err(StoreError::Invalid(format!("sources: {} is listed twice", s.kind)));
        }
        check_text("filter", &s.filter)?;
        if s.fields.len() > 256 || s.fields.iter().any(|f| f.is_empty() || f.len() > 256) {
            return Err(StoreError::Invalid("fields: at most 256 names of 1 to 256 bytes".into()));
        }
    }
    Ok(())
}

/// Delivery bookkeeping: which node delivers for a destination, and how far it got.
impl Store {
    /// Takes (or renews) the delivery lease on every destination whose lease has run out or is
    /// `node`'s, until `until` (unix seconds), and returns them. One node delivers for a
    /// destination at a time.
    pub async fn lease_event_destinations(
        &self,
        node: &str,
        now: i64,
        until: i64,
    ) -> Result<Vec<EventDestination>, StoreError> {
        let sql = format!(
            "SELECT {DEST_COLUMNS} FROM event_destinations WHERE lease_node = $1 AND lease_until = $2"
        );
        Ok(with_db!(self.db, pool => {
            sqlx::query("UPDATE event_destinations SET lease_node = $1, lease_until = $2 WHERE lease_until < $3 OR lease_node = $1")
                .bind(node).bind(until).bind(now).execute(pool).await?;
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(node).bind(until).fetch_all(pool).await?
                .iter().map(dest_row).collect()
        }))
    }

    /// Records that `destination_id` handled everything up to `cursor`, `delivered` of it
    /// sent. Only the lease holder moves the cursor, and never backwards.
    pub async fn event_destination_advanced(
        &self,
        destination_id: &str,
        node: &str,
        cursor: i64,
        delivered: i64,
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        with_db!(self.db, pool => {
            sqlx::query("UPDATE event_destinations SET cursor = $1, delivered = delivered + $2, attempts = 0, last_error = '', \
                         last_delivered_at = CASE WHEN $2 > 0 THEN $3 ELSE last_delivered_at END \
                         WHERE id = $4 AND lease_node = $5 AND cursor < $1")
                .bind(cursor).bind(delivered).bind(&now).bind(destination_id).bind(node).execute(pool).await?;
        });
        Ok(())
    }

    /// Records a failed try; returns the number of tries of the event at the cursor so far.
    pub async fn event_destination_failed(
        &self,
        destination_id: &str,
        error: &str,
    ) -> Result<i64, StoreError> {
        let error: String = error.chars().take(1024).collect();
        Ok(with_db!(self.db, pool => {
            sqlx::query("UPDATE event_destinations SET attempts = attempts + 1, last_error = $1, last_error_at = $2 WHERE id = $3 RETURNING attempts")
                .bind(&error).bind(now_rfc3339()).bind(destination_id).fetch_optional(pool).await?
                .map(|r| r.get::<i64, _>(0)).unwrap_or(0)
        }))
    }

    /// Sets `event` aside for `destination_id` after `attempts` failed tries, and moves the
    /// cursor past it so the events behind it flow.
    pub async fn park_event(
        &self,
        destination_id: &str,
        node: &str,
        event: &StoredEvent,
        error: &str,
        attempts: i64,
    ) -> Result<(), StoreError> {
        let error: String = error.chars().take(1024).collect();
        with_db!(self.db, pool => {
            let mut tx = begin_write!(self, pool);
            sqlx::query("INSERT INTO event_parked (destination_id, seq, event_id, event_type, error, attempts, parked_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING")
                .bind(destination_id).bind(event.seq).bind(&event.id).bind(&event.event_type).bind(&error).bind(attempts).bind(now_rfc3339())
                .execute(&mut *tx).await?;
            sqlx::query("UPDATE event_destinations SET cursor = $1, attempts = 0 WHERE id = $2 AND lease_node = $3 AND cursor < $1")
                .bind(event.seq).bind(destination_id).bind(node).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The events parked for a destination, newest first: `(event_id, event_type, error,
    /// attempts, parked_at)`.
    pub async fn parked_events(
        &self,
        destination_id: &str,
    ) -> Result<Vec<(String, String, String, i64, String)>, StoreError> {
        Ok(with_db!(self.db, pool => {
            sqlx::query("SELECT event_id, event_type, error, attempts, parked_at FROM event_parked WHERE destination_id = $1 ORDER BY seq DESC LIMIT 100")
                .bind(destination_id).fetch_all(pool).await?.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect()
        }))
    }
}
