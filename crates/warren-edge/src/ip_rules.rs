//! The IP restrictions of each account, cached so that checking a visitor costs a map lookup
//! instead of database queries. API changes on this node drop an account's entries at once;
//! changes made through another node sharing the database are picked up when an entry
//! expires (`TTL`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warren_store::{CompiledRestriction, IpDecision, Store, StoreError};

/// How long a cached view may lag changes made on another edge node.
pub(crate) const TTL: Duration = Duration::from_secs(5);

/// Accounts kept before expired entries are swept (bounded memory).
const MAX_ENTRIES: usize = 50_000;

/// When an entry was loaded, and the account's restrictions of one kind.
type Entry = (Instant, Arc<[CompiledRestriction]>);

/// The kinds an account's entry holds, by kind name.
type Kinds = HashMap<&'static str, Entry>;

/// Keyed by account id, looked up by `&str`: no allocation per visitor.
#[derive(Default)]
pub(crate) struct IpRules {
    entries: Mutex<HashMap<String, Kinds>>,
}

impl IpRules {
    /// Applies the account's restrictions of `kind` (`agent`, `api`, `endpoints`) to `ip`.
    pub(crate) async fn check(
        &self,
        store: &Store,
        account_id: &str,
        kind: &'static str,
        ip: IpAddr,
    ) -> Result<IpDecision, StoreError> {
        let now = Instant::now();
        let cached = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .get(account_id)
                .and_then(|kinds| kinds.get(kind))
                .map(|(at, r)| (now.duration_since(*at) < TTL, r.clone()))
        };
        let restrictions = match cached {
            Some((true, r)) => r,
            stale => match store.compiled_restrictions(account_id, kind).await {
                Ok(loaded) => {
                    let loaded: Arc<[CompiledRestriction]> = loaded.into();
                    let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                    if entries.len() >= MAX_ENTRIES {
                        entries.retain(|_, kinds| {
                            kinds.retain(|_, (at, _)| now.duration_since(*at) < TTL);
                            !kinds.is_empty()
                        });
                    }
                    entries.entry(account_id.to_owned()).or_default().insert(kind, (now, loaded.clone()));
                    loaded
                }
                // A database outage keeps the last known rules rather than opening or
                // closing every endpoint; with none known, the caller fails closed.
                Err(e) => match stale {
                    Some((_, r)) => {
                        tracing::warn!(error = %e, "store unavailable; applying the last known IP restrictions");
                        r
                    }
                    None => return Err(e),
                },
            },
        };
        Ok(warren_store::ip::decide(&restrictions, ip))
    }

    /// Forgets every account's cached restrictions (a reload: read them again at once).
    pub(crate) fn invalidate_all(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Forgets the account's cached restrictions after a change.
    pub(crate) fn invalidate(&self, account_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(account_id);
    }
}

/// Whether a visitor from `ip` may reach an endpoint of `account_id` (restrictions of type
/// `endpoints`). Log-only restrictions log and allow; a store failure with nothing cached
/// refuses.
pub(crate) async fn visitor_allowed(shared: &crate::Shared, account_id: &str, ip: IpAddr, url: &str) -> bool {
    match shared.accounts.ip_rules.check(&shared.store, account_id, "endpoints", ip).await {
        Ok(IpDecision::Allow) => true,
        Ok(IpDecision::Deny { restriction, enforced: false }) => {
            tracing::warn!(%ip, %restriction, %url, "visitor from outside an IP restriction (log only; allowed)");
            true
        }
        Ok(IpDecision::Deny { restriction, enforced: true }) => {
            tracing::debug!(%ip, %restriction, %url, "visitor refused by IP restriction");
            false
        }
        Err(e) => {
            shared.metrics.store_errors.inc();
            tracing::error!(error = %e, "store failed while checking IP restrictions; refusing the visitor");
            false
        }
    }
}
