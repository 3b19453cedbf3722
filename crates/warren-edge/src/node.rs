//! This edge node's presence in the shared store: a lease renewed on a heartbeat (judged by
//! the database's clock) that keeps its row alive and removes nodes whose lease lapsed (with
//! their sessions and endpoints, so their names are free), and the commands other nodes' APIs
//! left for its sessions.
//!
//! A node that cannot renew its lease (it lost the database: a partition, an outage) fences
//! itself: after [`FENCE_AFTER`] without a renewal it ends every agent session, so it stops
//! serving their endpoints and the agents reconnect to another node, before the other nodes
//! may consider its lease lapsed ([`DEAD_AFTER_SECS`], measured from its last renewal, which
//! happened no earlier than this node's own count started).

use std::sync::Arc;
use std::time::Duration;

use warren_proto::StreamType;
use warren_store::SessionCommand;

use crate::Shared;

/// How often the node renews its lease.
const HEARTBEAT: Duration = Duration::from_secs(3);

/// A node whose lease was not renewed for this long is dead: its sessions and endpoints are
/// removed, freeing names.
const DEAD_AFTER_SECS: i64 = 15;

/// A node that has not renewed its lease for this long ends its sessions (see the module
/// comment); well before [`DEAD_AFTER_SECS`], so a slow database round trip does not let
/// another node take over names this node still serves.
const FENCE_AFTER: Duration = Duration::from_secs(9);

/// How often the node looks for commands from other nodes (one small query).
const COMMAND_POLL: Duration = Duration::from_secs(1);

/// Runs until the edge shuts down.
pub(crate) async fn run(shared: Arc<Shared>) {
    let stop = crate::shutting_down(shared.shutdown.clone());
    tokio::pin!(stop);
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut poll = tokio::time::interval(COMMAND_POLL);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let relay_addr = shared.sessions.cluster.as_ref().map_or(String::new(), |c| c.relay_addr.clone());
    // When the last renewal that succeeded was sent.
    let mut renewed = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = beat.tick() => {
                let sent = std::time::Instant::now();
                // A renewal that hangs counts as failed once it is past the fence.
                let touch = shared.store.touch_node(&shared.node_id, &relay_addr, DEAD_AFTER_SECS);
                match tokio::time::timeout(FENCE_AFTER, touch).await {
                    Ok(Ok(n)) => {
                        renewed = sent;
                        shared.lease_held.store(true, std::sync::atomic::Ordering::Relaxed);
                        if n > 0 {
                            tracing::warn!(nodes = n, "removed edge nodes whose lease lapsed, with their sessions");
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "node lease renewal failed"),
                    Err(_) => tracing::warn!("node lease renewal timed out"),
                }
                if renewed.elapsed() >= FENCE_AFTER {
                    fence(&shared);
                }
            }
            _ = poll.tick() => match shared.store.take_session_commands(&shared.node_id).await {
                Ok(cmds) => {
                    for (session_id, cmd) in cmds {
                        apply(&shared, &session_id, cmd).await;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "could not read session commands"),
            },
        }
    }
}

/// Ends every agent session of this node: its lease may lapse, and another node may then
/// take over their names.
fn fence(shared: &Shared) {
    shared.lease_held.store(false, std::sync::atomic::Ordering::Relaxed);
    let sessions = shared.sessions.registry.session_count();
    if sessions > 0 {
        tracing::error!(
            sessions,
            "cannot renew this node's lease in the store; ending its agent sessions so that they reconnect to another node"
        );
        shared.sessions.registry.close_all("edge node lost its store; reconnect");
        shared.sessions.registry.remove_all();
    }
}

async fn apply(shared: &Arc<Shared>, session_id: &str, cmd: SessionCommand) {
    let Some(session) = shared.sessions.registry.session(session_id) else { return };
    tracing::info!(session = %session_id, ?cmd, "session command from another node");
    let ty = match cmd {
        SessionCommand::Stop => StreamType::Stop,
        SessionCommand::Restart => StreamType::Restart,
    };
    crate::session::command_agent(shared, &session, ty).await;
}
