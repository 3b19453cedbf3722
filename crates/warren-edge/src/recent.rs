//! The last requests of each account, for the dashboard's live traffic view. Requests are
//! recorded only while someone watches (the view was opened in the last few minutes): when
//! nobody does, the proxy path pays one atomic load.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Requests kept per account.
pub(crate) const PER_ACCOUNT: usize = 100;
/// Accounts kept at once; past it the oldest are dropped.
const ACCOUNTS: usize = 1000;
/// How long recording goes on after the view was last opened.
pub(crate) const WATCH: Duration = Duration::from_secs(300);
/// The longest path kept.
const MAX_PATH: usize = 512;
/// The longest user agent kept.
const MAX_AGENT: usize = 256;

/// One request as the view shows it (the fields of `http_request_complete`'s that matter
/// at a glance).
#[derive(Clone, Debug)]
pub(crate) struct Recent {
    pub(crate) at: SystemTime,
    pub(crate) endpoint_url: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) status: u16,
    pub(crate) duration_ms: u64,
    pub(crate) client_ip: IpAddr,
    pub(crate) response_bytes: u64,
    pub(crate) user_agent: String,
}

/// Shared by the ingress (which records) and the dashboard (which reads).
#[derive(Clone, Default)]
pub(crate) struct RecentRequests(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Unix seconds until which requests are recorded.
    watched_until: AtomicU64,
    accounts: Mutex<HashMap<String, VecDeque<Recent>>>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl RecentRequests {
    /// Whether requests are being recorded now.
    pub(crate) fn watching(&self) -> bool {
        self.0.watched_until.load(Ordering::Relaxed) > unix(SystemTime::now())
    }

    /// Someone opened the view: record for [`WATCH`] from now.
    pub(crate) fn watch(&self) {
        self.0.watched_until.store(unix(SystemTime::now() + WATCH), Ordering::Relaxed);
    }

    /// Records a finished request of `account_id`.
    pub(crate) fn record(&self, account_id: &str, mut r: Recent) {
        r.path = cut(&r.path, MAX_PATH);
        r.user_agent = cut(&r.user_agent, MAX_AGENT);
        let mut accounts = self.0.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if !accounts.contains_key(account_id) && accounts.len() >= ACCOUNTS {
            // The account whose newest request is oldest goes.
            let oldest = accounts.iter().min_by_key(|(_, q)| q.back().map(|r| r.at)).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                accounts.remove(&k);
            }
        }
        let q = accounts.entry(account_id.to_owned()).or_default();
        if q.len() == PER_ACCOUNT {
            q.pop_front();
        }
        q.push_back(r);
    }

    /// An account's recorded requests, newest first.
    pub(crate) fn last(&self, account_id: &str) -> Vec<Recent> {
        let accounts = self.0.accounts.lock().unwrap_or_else(|e| e.into_inner());
        accounts.get(account_id).map(|q| q.iter().rev().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str) -> Recent {
        Recent {
            at: SystemTime::now(),
            endpoint_url: "https://a.example".into(),
            method: "GET".into(),
            path: path.into(),
            status: 200,
            duration_ms: 1,
            client_ip: IpAddr::from([127, 0, 0, 1]),
            response_bytes: 0,
            user_agent: "ü".repeat(300),
        }
    }

    #[test]
    fn recording_is_off_until_watched_and_each_account_keeps_its_last_hundred() {
        let r = RecentRequests::default();
        assert!(!r.watching());
        r.watch();
        assert!(r.watching());
        for i in 0..(PER_ACCOUNT + 5) {
            r.record("a", req(&format!("/{i}")));
        }
        r.record("b", req(&"x".repeat(2000)));
        let a = r.last("a");
        assert_eq!(a.len(), PER_ACCOUNT);
        assert_eq!(a[0].path, format!("/{}", PER_ACCOUNT + 4), "newest first");
        let b = r.last("b");
        assert_eq!(b.len(), 1, "accounts are apart");
        assert!(b[0].path.len() <= MAX_PATH + 3 && b[0].user_agent.len() <= MAX_AGENT + 3);
        assert!(r.last("c").is_empty());
    }
}
