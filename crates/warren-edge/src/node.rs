//! This edge node's presence in the shared store: a heartbeat that keeps its row alive and
//! removes nodes that stopped beating (with their sessions and endpoints), and the commands
//! other nodes' APIs left for its sessions.

use std::sync::Arc;
use std::time::Duration;

use warren_proto::StreamType;
use warren_store::SessionCommand;

use crate::Shared;

/// How often the node marks itself alive.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// A node silent this long is dead: its sessions and endpoints are removed, freeing names.
const DEAD_AFTER_SECS: i64 = 45;

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
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = beat.tick() => match shared.store.touch_node(&shared.node_id, shared.cluster.as_ref().map_or("", |c| c.relay_addr.as_str()), DEAD_AFTER_SECS).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(nodes = n, "removed edge nodes that stopped answering, with their sessions"),
                Err(e) => tracing::warn!(error = %e, "node heartbeat failed"),
            },
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

async fn apply(shared: &Arc<Shared>, session_id: &str, cmd: SessionCommand) {
    let Some(session) = shared.registry.session(session_id) else { return };
    tracing::info!(session = %session_id, ?cmd, "session command from another node");
    let ty = match cmd {
        SessionCommand::Stop => StreamType::Stop,
        SessionCommand::Restart => StreamType::Restart,
    };
    crate::session::command_agent(shared, &session, ty).await;
}
