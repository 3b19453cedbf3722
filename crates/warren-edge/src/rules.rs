//! A change to the rules sessions were admitted under, made through one node's API (an
//! authtoken revoked or restricted, an IP policy's rules, the account's traffic policy, its
//! cloud endpoints), acts
//! on the sessions of every node: the node that made it announces it (PostgreSQL `NOTIFY`),
//! and every other node ends or restarts its own sessions the change concerns, within a
//! moment. On SQLite there is one node and nothing to announce.

use std::sync::Arc;
use std::time::Duration;

use warren_store::Announcement;

use crate::Shared;

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RulesChanged {
    /// An authtoken was revoked or its rules changed: the sessions that authenticated with it
    /// end (their agents reconnect under the new rules, or are refused).
    Credential {
        /// `cr_...`
        id: String,
    },
    /// The account's traffic policy changed: its sessions end and their agents bind again
    /// under it.
    Account {
        /// `acc_...`
        account_id: String,
    },
    /// An IP policy's rules changed: cached restrictions are dropped and the sessions that
    /// use the policy restart.
    IpPolicy {
        /// `acc_...`
        account_id: String,
        /// `ipp_...`
        policy_id: String,
    },
    /// The account's cloud endpoints changed: every node serves them as they are now.
    CloudEndpoints {
        /// `acc_...`
        account_id: String,
    },
}

/// An announcement on the wire: who made the change, and the change.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Announced {
    node: String,
    change: RulesChanged,
}

/// Tells the other nodes (nothing with SQLite). A failure is logged: the other nodes' sessions
/// then keep the old rules until they reconnect.
pub(crate) async fn announce(shared: &Shared, change: RulesChanged) {
    if shared.config.database_url.is_none() {
        return;
    }
    let payload = serde_json::to_string(&Announced { node: shared.node_id.clone(), change })
        .expect("an announcement serializes");
    if let Err(e) = shared.store.announce(Announcement::Rules, &payload).await {
        shared.metrics.store_errors.inc();
        tracing::warn!(error = %e, "could not tell the other nodes of a rules change; their sessions keep the old rules until they reconnect");
    }
}

/// Acts on other nodes' announcements until the edge shuts down.
pub(crate) async fn run(shared: Arc<Shared>) {
    let stop = crate::shutting_down(shared.shutdown.clone());
    tokio::pin!(stop);
    loop {
        let listening = async {
            match shared.store.listen(Announcement::Rules).await {
                Ok(mut changes) => {
                    // Changes announced while this node was not listening were missed:
                    // cloud endpoints are read again whole (sessions meet the rules
                    // when they next bind).
                    crate::cloud::reload(&shared, None).await;
                    while let Ok(payload) = changes.next().await {
                        match serde_json::from_str::<Announced>(&payload) {
                            Ok(a) if a.node != shared.node_id => apply(&shared, a.change).await,
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "ignored a rules announcement that does not parse")
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot listen for rules changes; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = listening => {}
        }
    }
}

async fn apply(shared: &Shared, change: RulesChanged) {
    match change {
        RulesChanged::Credential { id } => {
            shared
                .end_sessions_using_here(&id, "its authtoken changed (through another node); reconnect")
                .await;
        }
        RulesChanged::Account { account_id } => {
            shared
                .end_sessions_of_here(
                    &account_id,
                    "the account's traffic policy changed (through another node); reconnect",
                )
                .await;
        }
        RulesChanged::IpPolicy { account_id, policy_id } => {
            shared.ip_policy_changed_here(&account_id, &policy_id).await;
        }
        RulesChanged::CloudEndpoints { account_id } => crate::cloud::reload(shared, Some(&account_id)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_and_nothing_else_parses() {
        let a = Announced {
            node: "nd_1".into(),
            change: RulesChanged::IpPolicy { account_id: "acc_1".into(), policy_id: "ipp_1".into() },
        };
        let text = serde_json::to_string(&a).unwrap();
        let back: Announced = serde_json::from_str(&text).unwrap();
        assert_eq!(back.change, a.change);
        assert!(serde_json::from_str::<Announced>(r#"{"node":"n","change":{"kind":"everything"}}"#).is_err());
        assert!(
            serde_json::from_str::<Announced>(
                r#"{"node":"n","change":{"kind":"credential","id":"cr_1","all":true}}"#
            )
            .is_err()
        );
    }
}
