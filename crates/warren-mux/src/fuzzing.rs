//! The session state machine driven by arbitrary bytes, for the fuzz target `mux_session`
//! and the regression test that replays its corpus. Not part of the API.

use bytes::BytesMut;

use crate::frame::ErrorCode;
use crate::session::{Config, Limits, Recv, Role, Session};

/// Interprets `data` as a script: the first byte picks the role and tight or default limits;
/// then each operation byte feeds frame bytes from the peer, or makes the application open,
/// write, read, half-close, reset or release a stream, or the driver take output. Whatever
/// the script, the session must not panic and must keep its bounds.
pub fn session(data: &[u8]) {
    let Some((&head, mut rest)) = data.split_first() else { return };
    let role = if head & 1 == 0 { Role::Server } else { Role::Client };
    let config = if head & 2 == 0 {
        Config::default()
    } else {
        Config::default().with_limits(Limits { max_streams: 4, accept_backlog: 2, max_buffered: 2048 })
    };
    let max_buffered = config.max_buffered;
    let mut s = Session::new(role, config);
    let mut open = Vec::new();
    let mut input = BytesMut::new();
    let mut buf = [0u8; 512];
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let arg = rest.first().copied().unwrap_or(0) as usize;
        match op % 10 {
            // Peer bytes: `arg` of them.
            0..=3 => {
                let Some((_, bytes)) = rest.split_first() else { break };
                let n = arg.min(bytes.len());
                input.extend_from_slice(&bytes[..n]);
                rest = &bytes[n..];
                let _ = s.handle_input(&mut input);
            }
            4 => {
                if let Ok(id) = s.open() {
                    open.push(id);
                }
            }
            5 => {
                if let Some(id) = s.accept() {
                    open.push(id);
                }
            }
            6 if !open.is_empty() => {
                let id = open[arg % open.len()];
                let _ = s.send(id, &buf[..arg]);
            }
            7 if !open.is_empty() => {
                let id = open[arg % open.len()];
                while let Ok(Recv::Data(_)) = s.recv(id, &mut buf) {}
            }
            8 if !open.is_empty() => {
                let id = open.swap_remove(arg % open.len());
                match arg % 3 {
                    0 => s.release(id),
                    1 => {
                        let _ = s.close_write(id);
                        open.push(id);
                    }
                    // The application still holds the handle of a stream it reset: its drop
                    // releases it later.
                    _ => {
                        s.reset(id, ErrorCode::StreamCancelled);
                        open.push(id);
                    }
                }
            }
            9 => {
                let _ = s.poll_transmit();
                while s.poll_event().is_some() {}
            }
            _ => {}
        }
        if arg == 255 {
            s.set_time(u64::from(op) * 1_000_000);
        }
        assert!(s.buffered_total() <= max_buffered, "the session holds more than max_buffered");
    }
    s.close(ErrorCode::None);
    for id in open {
        s.release(id);
    }
    assert_eq!(s.buffered_total(), 0, "closing frees every buffer");
}
