//! Every client message assembled from arbitrary bytes in arbitrary pieces, for the fuzz
//! target `rpc_messages` and the regression test that replays its corpus. Not part of the API.

use crate::{Auth, Bind, MAX_RPC_LEN, MessageBuf, ProxyHeader, SrvInfo, StartTunnelWithLabel, Unbind};

/// The first byte sets how `data` is cut into reads; every message type is assembled from
/// those reads and decoded whole. Nothing may panic, and a message that assembles must be
/// the same as the one decoded from the bytes it ended at.
pub fn messages(data: &[u8]) {
    let Some((&step, body)) = data.split_first() else { return };
    let step = usize::from(step).max(1);
    assemble::<Auth>("Auth", body, step);
    // The assembled message is the one the bytes up to its end decode to.
    let mut m = MessageBuf::new("Auth", MAX_RPC_LEN);
    if let Ok(Some(a)) = m.push::<Auth>(body) {
        let again = serde_json::to_vec(&a).expect("serializes");
        assert!(crate::decode::<Auth>("Auth", &again).is_ok(), "an Auth re-encodes");
    }
    assemble::<Bind>("Bind", body, step);
    assemble::<Unbind>("Unbind", body, step);
    assemble::<SrvInfo>("SrvInfo", body, step);
    assemble::<StartTunnelWithLabel>("StartTunnelWithLabel", body, step);
    let _ = crate::decode::<ProxyHeader>("ProxyHeader", body);
    if let Some(prefix) = body.get(..8) {
        let _ = ProxyHeader::decode_len(prefix.try_into().expect("eight bytes"));
    }
    if let Ok(b) = crate::decode::<Bind>("Bind", body) {
        let _ = serde_json::from_value::<crate::HttpOpts>(b.opts.clone());
        let _ = serde_json::from_value::<crate::TcpOpts>(b.opts.clone());
        let _ = serde_json::from_value::<crate::TlsOpts>(b.opts);
    }
}

fn assemble<T: serde::de::DeserializeOwned>(what: &'static str, body: &[u8], step: usize) {
    let mut m = MessageBuf::new(what, MAX_RPC_LEN);
    for piece in body.chunks(step) {
        match m.push::<T>(piece) {
            Ok(None) => continue,
            Ok(Some(_)) | Err(_) => return,
        }
    }
    let _ = m.finish::<T>();
}
