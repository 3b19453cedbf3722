use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use warren_store::Role;

use super::ApiError;
use crate::Shared;

/// Who is calling: the API key and the role it carries (its owner's).
#[derive(Clone, Debug)]
pub(crate) struct Principal {
    pub(crate) account_id: String,
    pub(crate) key_id: String,
    pub(crate) user_id: Option<String>,
    pub(crate) role: Role,
    /// The store, acting as this caller: every change made through it names the key, its
    /// user, role and address in its audit event.
    pub(crate) store: warren_store::Store,
}

impl Principal {
    /// Admins may do anything; others get 403 for account-wide changes.
    pub(crate) fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{what} needs the admin role; this key's role is {}",
                self.role.as_str()
            )))
        }
    }

    /// Admins may change anything; developers only what they own.
    pub(crate) fn require_owner_or_admin(&self, owner: Option<&str>, what: &str) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Developer if owner.is_some() && owner == self.user_id.as_deref() => Ok(()),
            r => Err(ApiError::forbidden(format!(
                "the {} role may not change {what} it does not own",
                r.as_str()
            ))),
        }
    }
}

/// A signed-in dashboard user calling the API in-process: the dashboard's pages and actions
/// are API calls, so they obey the same role rules and leave the same audit records.
/// Clients cannot send it: it is a request extension, which nothing on the wire sets.
#[derive(Clone, Debug)]
pub(crate) struct DashboardCaller {
    pub(crate) user: warren_store::User,
    /// The browser's address (the dashboard checked its IP restrictions).
    pub(crate) ip: std::net::IpAddr,
}

/// Requests per API key per window (ngrok: 120 per 60 s). A fixed window per key: cheap and
/// enough to stop a runaway script.
#[derive(Debug)]
pub struct RateLimit {
    max: u32,
    window: Duration,
    counts: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimit {
    /// `max` requests per `window` for each key.
    pub fn new(max: u32, window: Duration) -> RateLimit {
        RateLimit { max, window, counts: Mutex::new(HashMap::new()) }
    }

    /// Counts one request; `Err(seconds)` when over the limit.
    fn hit(&self, key: &str, now: Instant) -> Result<(), u64> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() > 100_000 {
            // Keys that stopped calling; bounded memory.
            counts.retain(|_, (start, _)| now.duration_since(*start) < self.window);
        }
        let entry = counts.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.max {
            let left = self.window.saturating_sub(now.duration_since(entry.0));
            return Err(left.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(())
    }
}

/// Version header, API key, rate limit and the read-only role, before any handler runs.
pub(crate) async fn check(
    State(shared): State<Arc<Shared>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(caller) = req.extensions_mut().remove::<DashboardCaller>() {
        return as_dashboard_user(&shared, caller, req, next).await;
    }
    let version = req.headers().get("ngrok-version").and_then(|v| v.to_str().ok()).map(str::trim);
    if version != Some("2") {
        return Err(ApiError::missing_version());
    }
    let ip = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let ip = ip.unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    let ip = crate::client_addr::forwarded_ip(&shared, ip, req.headers());
    if let Some(wait) = shared.accounts.auth_failures.blocked(ip, Instant::now()) {
        return Err(ApiError::rate_limited(wait));
    }
    let key = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("send the API key as Authorization: Bearer <key>"))?;
    let Some(key) = shared.store.verify_api_key(key).await? else {
        shared.accounts.auth_failures.failed(ip, Instant::now());
        return Err(ApiError::unauthorized("the API key is invalid, deleted or expired"));
    };
    shared.accounts.api_rate_limit.hit(&key.id, Instant::now()).map_err(ApiError::rate_limited)?;
    match shared.accounts.ip_rules.check(&shared.store, &key.account_id, "api", ip).await? {
        warren_store::IpDecision::Allow => {}
        warren_store::IpDecision::Deny { restriction, enforced: false } => {
            tracing::warn!(%ip, %restriction, key = %key.id, "API call from outside an IP restriction (log only; allowed)");
        }
        warren_store::IpDecision::Deny { restriction, enforced: true } => {
            return Err(ApiError::forbidden(format!(
                "API calls from {ip} are not allowed by IP restriction {restriction}"
            )));
        }
    }
    // A key acts with its owner's role and never more: a key without a live owner (left
    // from a version that kept the keys of removed users) does not work at all.
    let gone = || ApiError::unauthorized("the API key's owner was removed, so the key no longer works");
    let owner = match &key.owner_id {
        Some(uid) => match shared.store.get_user(&key.account_id, uid).await {
            Ok(u) => u,
            Err(warren_store::StoreError::NotFound(_)) => return Err(gone()),
            Err(e) => return Err(e.into()),
        },
        None => return Err(gone()),
    };
    let role = owner.role;
    if role == Role::ReadOnly && req.method() != Method::GET {
        return Err(ApiError::forbidden("this API key's role is read-only"));
    }
    let store = shared.store.acting_as(warren_store::Actor {
        id: key.id.clone(),
        subject: owner.email,
        source: "api".into(),
        role: role.as_str().into(),
        ip: ip.to_string(),
    });
    let principal =
        Principal { account_id: key.account_id, key_id: key.id, user_id: key.owner_id, role, store };
    Ok(run_as(&shared, principal, req, next).await)
}

/// Runs the handler as `principal`; a change's audit event, already in the outbox, is
/// delivered now rather than at the next poll, and every change is one `info` log line
/// (who, what, the answer; never a body, which may hold a secret).
async fn run_as(shared: &Shared, principal: Principal, mut req: Request, next: Next) -> Response {
    let changes = req.method() != Method::GET;
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let (account, by) = (principal.account_id.clone(), principal.key_id.clone());
    req.extensions_mut().insert(principal);
    let resp = next.run(req).await;
    if changes {
        shared.accounts.events.wake();
        tracing::info!(%method, %path, status = resp.status().as_u16(), account = %account, by = %by, "API change");
    }
    resp
}

/// Who a change made from the dashboard names in its audit event.
pub(crate) fn dashboard_actor(user: &warren_store::User, ip: std::net::IpAddr) -> warren_store::Actor {
    warren_store::Actor {
        id: user.id.clone(),
        subject: user.email.clone(),
        source: "dashboard".into(),
        role: user.role.as_str().into(),
        ip: ip.to_string(),
    }
}

/// The dashboard's calls: the session and the `dashboard` IP restrictions were checked by
/// the dashboard; the role is the user's as the store has it now.
async fn as_dashboard_user(
    shared: &Shared,
    caller: DashboardCaller,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let role = caller.user.role;
    if role == Role::ReadOnly && req.method() != Method::GET {
        return Err(ApiError::forbidden("your role is read-only"));
    }
    let store = shared.store.acting_as(dashboard_actor(&caller.user, caller.ip));
    let principal = Principal {
        account_id: caller.user.account_id,
        key_id: format!("dashboard:{}", caller.user.id),
        user_id: Some(caller.user.id),
        role,
        store,
    };
    Ok(run_as(shared, principal, req, next).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_per_key_and_resets_after_the_window() {
        let rl = RateLimit::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(rl.hit("a", t0).is_ok());
        assert!(rl.hit("a", t0).is_ok());
        assert_eq!(rl.hit("a", t0 + Duration::from_secs(10)), Err(50));
        assert!(rl.hit("b", t0).is_ok(), "another key has its own budget");
        assert!(rl.hit("a", t0 + Duration::from_secs(60)).is_ok());
    }
}
