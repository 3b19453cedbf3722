//! Typed streams (a big-endian `u32` type before the payload) and muxado heartbeats, as ngrok
//! agents and SDKs use them.

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::driver::{Mux, Stream};

/// The stream type of heartbeat streams.
pub const HEARTBEAT_TYPE: u32 = 0xFFFF_FFFF;

impl Mux {
    /// Opens a stream and writes its type.
    pub async fn open_typed(&self, ty: u32) -> io::Result<Stream> {
        let mut s = self.open()?;
        s.write_all(&ty.to_be_bytes()).await?;
        Ok(s)
    }
}

/// Reads the type that starts a typed stream.
pub async fn read_type(s: &mut Stream) -> io::Result<u32> {
    s.read_u32().await
}

/// Why heartbeats stopped.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// No echo arrived within the tolerance.
    #[error("no heartbeat reply within {0:?}")]
    Timeout(Duration),
    /// The echo did not match what was sent.
    #[error("heartbeat reply did not match")]
    Mismatch,
    /// The stream failed.
    #[error("heartbeat stream failed: {0}")]
    Io(#[from] io::Error),
}

/// Sends a heartbeat every `interval` on one stream and waits up to `tolerance` for each echo.
/// Returns only when heartbeating failed; the caller then treats the session as dead.
pub async fn run_heartbeats(mux: &Mux, interval: Duration, tolerance: Duration) -> HeartbeatError {
    run_heartbeats_with(mux, interval, tolerance, |_| {}).await
}

/// [`run_heartbeats`], reporting each round trip to `on_rtt` (the agent shows it as latency).
pub async fn run_heartbeats_with(
    mux: &Mux,
    interval: Duration,
    tolerance: Duration,
    mut on_rtt: impl FnMut(Duration),
) -> HeartbeatError {
    let mut s = match mux.open_typed(HEARTBEAT_TYPE).await {
        Ok(s) => s,
        Err(e) => return e.into(),
    };
    let seed = RandomState::new();
    let mut n: u64 = 0;
    loop {
        // The first round trip is measured at once: window tuning needs it.
        if n > 0 {
            tokio::time::sleep(interval).await;
        }
        n += 1;
        let id = (seed.hash_one(n) as u32).to_be_bytes();
        let sent = tokio::time::Instant::now();
        let mut echo = [0u8; 4];
        // The write counts against the tolerance too: a peer that stops reading fills the
        // session's output, and then the heartbeat cannot even be sent.
        let round = async {
            s.write_all(&id).await?;
            s.read_exact(&mut echo).await
        };
        match tokio::time::timeout(tolerance, round).await {
            Err(_) => return HeartbeatError::Timeout(tolerance),
            Ok(Err(e)) => return e.into(),
            Ok(Ok(_)) if echo != id => return HeartbeatError::Mismatch,
            Ok(Ok(_)) => {
                let rtt = sent.elapsed();
                mux.set_rtt(rtt);
                on_rtt(rtt);
            }
        }
    }
}

/// Echoes every 4-byte heartbeat id the peer sends on `s` until the stream ends.
pub async fn answer_heartbeats(mut s: Stream) {
    let mut id = [0u8; 4];
    while s.read_exact(&mut id).await.is_ok() {
        if s.write_all(&id).await.is_err() {
            return;
        }
    }
}
