//! Agent sessions: TLS on the connect listener, then muxado. The first RPC must be Auth
//! (heartbeat streams may come first, as ngrok clients open them at once); after it, Bind,
//! Unbind and SrvInfo. Every RPC runs in its own task with a read timeout and a size limit, so
//! a slow or broken stream never holds up the session.
//!
//! - `accept.rs`: one connection's life: TLS, the limits before and after Auth, the session
//!   registered, heartbeats, its end.
//! - `auth.rs`: waiting for Auth, the decision (`auth::decide`: the parsed request and the
//!   state it needs in, a credential or an `AuthError` out), resume, the reply.
//! - `bind.rs`: the Bind decision for each scheme (`bind::decide`), Unbind, names,
//!   reservations and tcp ports; [`BindError`].
//! - `rpc.rs`: the RPCs after Auth, each request read within the limits, and the commands the
//!   edge sends agents (Stop, Restart).
//!
//! `AuthError` and [`BindError`] are the one place refusals map to ngrok's error codes.

mod accept;
mod auth;
mod bind;
mod rpc;

pub(crate) use accept::{accept_loop, serve_agent};
pub(crate) use bind::{BindError, check_domain_reservation, under_domain, verify_domain};
pub(crate) use rpc::command_agent;

#[cfg(test)]
mod tests;
