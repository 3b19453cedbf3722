//! muxado stream multiplexing, the framing under ngrok's agent protocol.
//!
//! # Layout
//! - [`frame`]: the 8-byte header and error codes.
//! - [`session`]: the protocol as a state machine with no I/O and no clock ([`Session`]).
//! - [`driver`]: a thin tokio driver that owns a transport and exposes [`Stream`]s as
//!   `AsyncRead + AsyncWrite`.
//! - [`typed`]: typed streams and heartbeats on top of the driver.
//! - [`rpc`]: ngrok's JSON request and reply on a typed stream (messages from
//!   `warren-proto`), for the edge, the agent and the testkit alike.
//! - [`splice`]: copying between a socket and a stream without buffers while idle.

pub mod driver;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod rpc;
pub mod session;
pub mod splice;
pub mod typed;

pub use driver::{Mux, Stream, start};
pub use frame::{ErrorCode, StreamId};
pub use session::{Config, Event, Limits, Recv, Role, Session, SessionError, StreamError};
