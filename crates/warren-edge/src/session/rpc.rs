//! The RPCs of an authenticated session, each stream in its own task, and the commands the
//! edge sends agents.

use std::sync::Arc;
use std::time::Duration;

use warren_mux::{ErrorCode, Stream};
use warren_proto::{self as proto, StreamType, error_codes as codes};

use crate::Shared;
use crate::registry::AgentSession;

/// Serves the session's streams until the agent goes away.
pub(super) async fn serve(shared: &Arc<Shared>, session: &Arc<AgentSession>) {
    while let Some(mut stream) = session.mux.accept().await {
        let shared = shared.clone();
        let session = session.clone();
        tokio::spawn(async move {
            let ty = match tokio::time::timeout(
                shared.config.limits.rpc_timeout,
                warren_mux::typed::read_type(&mut stream),
            )
            .await
            {
                Ok(Ok(t)) => StreamType::from_u32(t),
                _ => return,
            };
            match ty {
                StreamType::Heartbeat => warren_mux::typed::answer_heartbeats(stream).await,
                StreamType::Bind => super::bind::handle_bind(&shared, &session, stream).await,
                StreamType::Unbind => super::bind::handle_unbind(&shared, &session, stream).await,
                StreamType::SrvInfo => {
                    let _ = reply(&mut stream, &proto::SrvInfoResp { region: "local".into() }).await;
                }
                StreamType::BindLabeled => {
                    let text = proto::error_text(
                        "labeled tunnels (edges) are not supported by warren; bind an endpoint URL instead",
                        codes::BIND_INVALID,
                    );
                    let _ = reply(
                        &mut stream,
                        &proto::StartTunnelWithLabelResp { error: text, ..Default::default() },
                    )
                    .await;
                }
                other => {
                    tracing::debug!(session = %session.id, ?other, "unexpected stream type; resetting stream");
                    stream.reset(ErrorCode::Protocol);
                }
            }
        });
    }
}

/// Reads one request within the RPC timeout and size limit; the error says what went wrong,
/// for the reply.
pub(super) async fn read_request<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    stream: &mut Stream,
    what: &'static str,
) -> Result<T, String> {
    let read = warren_mux::rpc::read_message(stream, what, proto::MAX_RPC_LEN);
    match tokio::time::timeout(shared.config.limits.rpc_timeout, read).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("the {what} request was not completed in time")),
    }
}

/// Writes the reply and half-closes.
pub(super) async fn reply<T: serde::Serialize>(stream: &mut Stream, msg: &T) -> std::io::Result<()> {
    warren_mux::rpc::reply(stream, msg).await
}

/// Sends the agent a Stop (or Restart) command, as ngrok's API does. The agent answers and
/// acts; an agent that does not support the command gets its session closed instead.
pub(crate) async fn command_agent(shared: &Shared, s: &Arc<AgentSession>, ty: StreamType) {
    let answer = match ty {
        StreamType::Restart => ask(&s.mux, ty, &proto::Restart {}).await,
        _ => ask(&s.mux, ty, &proto::Stop {}).await,
    };
    let refused = match answer {
        Ok(c) => c.error.filter(|e| !e.is_empty()),
        // An answer that is not a CommandResp is an answer: the agent read the command.
        Err(warren_mux::rpc::RpcError::Message(_)) => None,
        Err(_) => Some("no answer".into()),
    };
    if ty == StreamType::Stop || refused.is_some() {
        s.mux.close(ErrorCode::None, "stopped through the API");
        shared.end_session(&s.id).await;
    }
}

async fn ask<Req: serde::Serialize>(
    mux: &warren_mux::Mux,
    ty: StreamType,
    req: &Req,
) -> Result<proto::CommandResp, warren_mux::rpc::RpcError> {
    warren_mux::rpc::call(mux, ty.to_u32(), "command", req, proto::MAX_RPC_LEN, Duration::from_secs(5)).await
}
