//! A raw agent-protocol client for attack tests: it speaks TLS to the agent port and then
//! writes whatever muxado frames and RPC bytes a test asks for, in any order, at any size,
//! and reads or ignores what comes back. Nothing here is a multiplexer: no window is kept,
//! no frame is answered unless the test says so.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::{STEP, TestEdge, within};

/// muxado frame types.
pub mod ty {
    /// RST: a stream is aborted (4-byte error code).
    pub const RST: u8 = 0;
    /// DATA: stream bytes; with SYN it opens the stream, with FIN it half-closes it.
    pub const DATA: u8 = 1;
    /// WNDINC: more window for a stream (4 bytes).
    pub const WNDINC: u8 = 2;
    /// GOAWAY: no new streams (last id, error code, message).
    pub const GOAWAY: u8 = 3;
}

/// muxado frame flags.
pub mod flag {
    /// The sender's last bytes on the stream.
    pub const FIN: u8 = 0x1;
    /// The stream's first frame.
    pub const SYN: u8 = 0x2;
}

/// One frame as read from the edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// [`ty`].
    pub ty: u8,
    /// [`flag`] bits.
    pub flags: u8,
    /// The stream (0 for GOAWAY).
    pub stream: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of an RST or GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.ty {
            ty::RST => 0,
            ty::GOAWAY => 4,
            _ => return None,
        };
        self.payload.get(at..at + 4).map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    }
}

/// muxado error codes the tests look for.
pub mod code {
    /// STREAM_REFUSED.
    pub const STREAM_REFUSED: u32 = 5;
    /// ACCEPT_QUEUE_FULL.
    pub const ACCEPT_QUEUE_FULL: u32 = 9;
    /// ENHANCE_YOUR_CALM.
    pub const ENHANCE_YOUR_CALM: u32 = 10;
}

/// The 8-byte muxado frame header.
pub fn header(len: u32, ty: u8, flags: u8, stream: u32) -> [u8; 8] {
    let l = len.to_be_bytes();
    let i = stream.to_be_bytes();
    [l[1], l[2], l[3], (ty << 4) | flags, i[0], i[1], i[2], i[3]]
}

/// A raw client connected to an edge's agent port.
pub struct Hostile {
    tls: TlsStream<TcpStream>,
}

impl Hostile {
    /// TLS to the agent listener, as any agent starts.
    pub async fn connect(edge: &TestEdge) -> Hostile {
        Hostile { tls: crate::tls_connect(edge.config.connect_addr, "localhost", &edge.ca_pem, &[]).await }
    }

    /// Writes one frame.
    pub async fn frame(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(&header(payload.len() as u32, ty, flags, stream)).await?;
        self.tls.write_all(payload).await?;
        self.tls.flush().await
    }

    /// Writes bytes as they are (a frame cut short, garbage).
    pub async fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(bytes).await?;
        self.tls.flush().await
    }

    /// Opens stream `stream` with a typed-stream header of `ty` followed by `json`, without
    /// half-closing (as ngrok clients do).
    pub async fn open_rpc(&mut self, stream: u32, ty: u32, json: &serde_json::Value) -> std::io::Result<()> {
        let mut payload = ty.to_be_bytes().to_vec();
        payload.extend_from_slice(json.to_string().as_bytes());
        self.frame(ty::DATA, flag::SYN, stream, &payload).await
    }

    /// Authenticates on stream `stream` and returns the edge's reply.
    pub async fn auth(&mut self, stream: u32, token: &str) -> warren_proto::AuthResp {
        let auth = serde_json::json!({ "Version": ["3", "2"], "Extra": { "AuthToken": token } });
        self.open_rpc(stream, 0, &auth).await.expect("Auth written");
        let reply = within("AuthResp", self.reply(stream)).await;
        warren_proto::decode("AuthResp", &reply).expect("AuthResp JSON")
    }

    /// Reads the next frame; `None` at the end of the connection.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        let mut h = [0u8; 8];
        self.tls.read_exact(&mut h).await.ok()?;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.tls.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            ty: h[3] >> 4,
            flags: h[3] & 0xF,
            stream: u32::from_be_bytes(h[4..8].try_into().unwrap()) & 0x7FFF_FFFF,
            payload,
        })
    }

    /// Reads frames until stream `stream` ends with FIN and returns its DATA; other frames
    /// are skipped. Heartbeats from the edge are not answered.
    pub async fn reply(&mut self, stream: u32) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(f) = self.read_frame().await {
            if f.stream == stream && f.ty == ty::DATA {
                out.extend_from_slice(&f.payload);
                if f.flags & flag::FIN != 0 {
                    return out;
                }
            }
        }
        panic!("the connection ended before stream {stream}'s reply");
    }

    /// Reads every frame until the edge ends the connection (failing after [`STEP`]).
    pub async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        within("the edge ends the connection", async {
            while let Some(f) = self.read_frame().await {
                frames.push(f);
            }
        })
        .await;
        frames
    }

    /// Waits until the edge has let go of the socket itself, not just sent its last bytes:
    /// writes below TLS then fail (the edge's kernel answers with RST). A half-closed socket
    /// that the edge still holds keeps taking the bytes.
    pub async fn assert_socket_dropped(self) {
        let (mut tcp, _) = self.tls.into_inner();
        let dropped = tokio::time::timeout(STEP, async {
            loop {
                if tcp.write_all(&[0u8; 1024]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(dropped.is_ok(), "the edge still holds the connection's socket");
    }
}

/// A healthy agent whose endpoint must keep answering, quickly, while others attack.
pub struct Bystander {
    _agent: warren_agent::Agent,
    _up: crate::HttpUpstream,
    /// Its endpoint's host.
    pub host: String,
}

impl Bystander {
    /// An agent serving `https://<name>.warren.localhost` from an [`crate::HttpUpstream`].
    pub async fn start(edge: &TestEdge, name: &str) -> Bystander {
        let up = crate::HttpUpstream::start().await;
        let url = format!("https://{name}.warren.localhost");
        let ep = warren_agent::EndpointConfig::http(&up.url(), Some(&url)).expect("endpoint");
        let mut agent = warren_agent::Agent::start(edge.agent_with(ep));
        within("bystander online", agent.wait_online()).await.expect("bystander online");
        Bystander { _agent: agent, _up: up, host: format!("{name}.warren.localhost") }
    }

    /// Asserts the endpoint answers, each request well under a second (requests on loopback
    /// take milliseconds; an edge stalled by an attack takes seconds).
    pub async fn still_serves(&self, edge: &TestEdge) {
        for _ in 0..5 {
            let start = std::time::Instant::now();
            let (status, _, body) = within("bystander served", crate::https_get(edge, &self.host, "/")).await;
            assert_eq!((status, body.as_str()), (hyper::StatusCode::OK, "hello from upstream"));
            let took = start.elapsed();
            assert!(took < Duration::from_secs(1), "the bystander waited {took:?}");
        }
    }
}

/// Reads until the edge ends the connection (or it fails); what the edge sent on the way.
/// Fails the test if the edge never closes it.
pub async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    within("the edge closes the connection", async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    got
}
