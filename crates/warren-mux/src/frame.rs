//! The muxado wire format: an 8-byte header followed by a body.
//!
//! ```text
//! | length: u24 | type: u4 | flags: u4 | reserved: u1 | stream id: u31 |
//! ```
//!
//! `length` counts the body only. Everything is big-endian.

use std::fmt;

/// Size of every frame header on the wire.
pub const HEADER_LEN: usize = 8;
/// The largest body a header can describe (24 bits).
pub const MAX_FRAME_LEN: u32 = 0x00FF_FFFF;
/// Stream ids and window increments are 31-bit values.
pub const MAX_STREAM_ID: u32 = 0x7FFF_FFFF;
/// The largest window increment one WNDINC frame may carry.
pub const MAX_WINDOW_INCREMENT: u32 = 0x7FFF_FFFF;

/// A stream identifier. Streams opened by the client (the agent) are odd, streams opened by the
/// server (the edge) are even; 0 names the session itself (GOAWAY).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The four frame types of muxado.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameType {
    /// Abort one stream: body is a `u32` error code.
    Rst,
    /// Stream data. SYN opens the stream, FIN half-closes the sender's side.
    Data,
    /// Grant the peer more send window on one stream: body is a `u32` increment.
    WndInc,
    /// The sender accepts no new streams: body is `u32` last stream id, `u32` error code, message.
    GoAway,
}

/// Header flag bits (the low nibble of the type byte).
pub mod flags {
    /// The sender will send no more data on this stream.
    pub const FIN: u8 = 0x1;
    /// This DATA frame opens the stream.
    pub const SYN: u8 = 0x2;
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Body length in bytes.
    pub length: u32,
    /// What the body is.
    pub ty: FrameType,
    /// [`flags::FIN`] and [`flags::SYN`].
    pub flags: u8,
    /// The stream the frame belongs to (0 for GOAWAY).
    pub stream_id: StreamId,
}

/// A header that no valid muxado peer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The type nibble is not one of RST, DATA, WNDINC, GOAWAY.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// RST and WNDINC carry exactly 4 bytes; GOAWAY at least 8.
    #[error("{ty:?} frame with invalid length {length}")]
    BadLength {
        /// The frame type.
        ty: FrameType,
        /// The length the header claimed.
        length: u32,
    },
    /// Only GOAWAY may use stream id 0, and GOAWAY must use it.
    #[error("{ty:?} frame on invalid stream id {id}")]
    BadStreamId {
        /// The frame type.
        ty: FrameType,
        /// The id the header named.
        id: u32,
    },
}

impl Header {
    /// Decodes and validates a header.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
        let length = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        let ty = match b[3] >> 4 {
            0 => FrameType::Rst,
            1 => FrameType::Data,
            2 => FrameType::WndInc,
            3 => FrameType::GoAway,
            t => return Err(HeaderError::UnknownType(t)),
        };
        let flags = b[3] & 0x0F;
        let id = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) & MAX_STREAM_ID;
        let bad_len = || HeaderError::BadLength { ty, length };
        match ty {
            FrameType::Rst | FrameType::WndInc if length != 4 => return Err(bad_len()),
            FrameType::GoAway if length < 8 => return Err(bad_len()),
            FrameType::GoAway if id != 0 => return Err(HeaderError::BadStreamId { ty, id }),
            FrameType::Rst | FrameType::WndInc | FrameType::Data if id == 0 => {
                return Err(HeaderError::BadStreamId { ty, id });
            }
            _ => {}
        }
        Ok(Header { length, ty, flags, stream_id: StreamId(id) })
    }

    /// Encodes the header. `length` must fit in 24 bits.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        debug_assert!(self.length <= MAX_FRAME_LEN);
        let ty = match self.ty {
            FrameType::Rst => 0u8,
            FrameType::Data => 1,
            FrameType::WndInc => 2,
            FrameType::GoAway => 3,
        };
        let l = self.length.to_be_bytes();
        let id = (self.stream_id.0 & MAX_STREAM_ID).to_be_bytes();
        [l[1], l[2], l[3], (ty << 4) | (self.flags & 0x0F), id[0], id[1], id[2], id[3]]
    }
}

/// muxado's error codes, carried by RST and GOAWAY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Normal close.
    #[error("no error")]
    None,
    /// The peer broke the protocol.
    #[error("protocol error")]
    Protocol,
    /// The peer failed internally.
    #[error("internal error")]
    Internal,
    /// The peer sent more than its window allowed.
    #[error("flow control error")]
    FlowControl,
    /// The stream was already closed.
    #[error("stream closed")]
    StreamClosed,
    /// The receiver would not take the stream.
    #[error("stream refused")]
    StreamRefused,
    /// The stream was abandoned by its user.
    #[error("stream cancelled")]
    StreamCancelled,
    /// The stream was reset.
    #[error("stream reset")]
    StreamReset,
    /// A frame was larger than allowed.
    #[error("frame size error")]
    FrameSize,
    /// The receiver's accept queue was full.
    #[error("accept queue full")]
    AcceptQueueFull,
    /// The peer is opening streams too fast.
    #[error("enhance your calm")]
    EnhanceYourCalm,
    /// The peer has sent GOAWAY.
    #[error("remote gone away")]
    RemoteGoneAway,
    /// No stream ids are left.
    #[error("streams exhausted")]
    StreamsExhausted,
    /// A write did not complete in time.
    #[error("write timeout")]
    WriteTimeout,
    /// The session is closed.
    #[error("session closed")]
    SessionClosed,
    /// The transport hit end of file.
    #[error("peer EOF")]
    PeerEof,
    /// A code this implementation does not know.
    #[error("unknown error {0}")]
    Unknown(u32),
}

impl ErrorCode {
    /// The wire value.
    pub fn to_u32(self) -> u32 {
        match self {
            ErrorCode::None => 0,
            ErrorCode::Protocol => 1,
            ErrorCode::Internal => 2,
            ErrorCode::FlowControl => 3,
            ErrorCode::StreamClosed => 4,
            ErrorCode::StreamRefused => 5,
            ErrorCode::StreamCancelled => 6,
            ErrorCode::StreamReset => 7,
            ErrorCode::FrameSize => 8,
            ErrorCode::AcceptQueueFull => 9,
            ErrorCode::EnhanceYourCalm => 10,
            ErrorCode::RemoteGoneAway => 11,
            ErrorCode::StreamsExhausted => 12,
            ErrorCode::WriteTimeout => 13,
            ErrorCode::SessionClosed => 14,
            ErrorCode::PeerEof => 15,
            ErrorCode::Unknown(c) => c,
        }
    }

    /// Decodes a wire value; unknown values are kept.
    pub fn from_u32(c: u32) -> ErrorCode {
        match c {
            0 => ErrorCode::None,
            1 => ErrorCode::Protocol,
            2 => ErrorCode::Internal,
            3 => ErrorCode::FlowControl,
            4 => ErrorCode::StreamClosed,
            5 => ErrorCode::StreamRefused,
            6 => ErrorCode::StreamCancelled,
            7 => ErrorCode::StreamReset,
            8 => ErrorCode::FrameSize,
            9 => ErrorCode::AcceptQueueFull,
            10 => ErrorCode::EnhanceYourCalm,
            11 => ErrorCode::RemoteGoneAway,
            12 => ErrorCode::StreamsExhausted,
            13 => ErrorCode::WriteTimeout,
            14 => ErrorCode::SessionClosed,
            15 => ErrorCode::PeerEof,
            c => ErrorCode::Unknown(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            length: 0x12_3456,
            ty: FrameType::Data,
            flags: flags::SYN | flags::FIN,
            stream_id: StreamId(0x7000_0001),
        };
        let b = h.encode();
        assert_eq!(b, [0x12, 0x34, 0x56, 0x13, 0x70, 0x00, 0x00, 0x01]);
        assert_eq!(Header::decode(&b).unwrap(), h);
    }

    #[test]
    fn reserved_bit_is_ignored() {
        let b = [0, 0, 4, 0x20, 0x80, 0, 0, 3];
        assert_eq!(Header::decode(&b).unwrap().stream_id, StreamId(3));
    }

    #[test]
    fn invalid_headers_are_rejected() {
        assert_eq!(Header::decode(&[0, 0, 0, 0x40, 0, 0, 0, 1]), Err(HeaderError::UnknownType(4)));
        assert!(matches!(Header::decode(&[0, 0, 5, 0x00, 0, 0, 0, 1]), Err(HeaderError::BadLength { .. })));
        assert!(matches!(Header::decode(&[0, 0, 4, 0x20, 0, 0, 0, 0]), Err(HeaderError::BadStreamId { .. })));
        assert!(matches!(Header::decode(&[0, 0, 8, 0x30, 0, 0, 0, 1]), Err(HeaderError::BadStreamId { .. })));
        assert!(matches!(Header::decode(&[0, 0, 7, 0x30, 0, 0, 0, 0]), Err(HeaderError::BadLength { .. })));
    }

    #[test]
    fn error_codes_round_trip() {
        for c in 0..20 {
            assert_eq!(ErrorCode::from_u32(c).to_u32(), c);
        }
    }
}
