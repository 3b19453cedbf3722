//! Connection limits of a listener: how many at once in all, and how many from one address,
//! so that one address cannot take every slot. Every listener is bound with [`listen`] (a
//! backlog that absorbs a burst) and accepts through [`accept`], which also turns on TCP
//! keepalive so that a peer that vanished without a FIN is noticed even when nothing is being
//! sent.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Keepalive probes start after this much silence, then every [`KEEPALIVE_INTERVAL`]; a peer
/// that answers none of [`KEEPALIVE_RETRIES`] is gone.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const KEEPALIVE_RETRIES: u32 = 6;

/// Connections the kernel completes and queues for a listener until the edge accepts them
/// (Linux caps it at `net.core.somaxconn`, 4096 by default). tokio's `TcpListener::bind` asks
/// for 128, as std does: in a burst of more than that (agents reconnecting after a restart, a
/// crowd of visitors) the kernel dropped the SYNs beyond it, and each of those clients waited
/// a second for its retransmission.
pub(crate) const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener as tokio's `TcpListener::bind` does (`SO_REUSEADDR`), with a backlog of
/// [`LISTEN_BACKLOG`].
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The limits of one class of connections (visitors, agents, API calls).
pub(crate) struct ConnLimit {
    max: usize,
    total: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
}

/// Held for as long as a connection lives.
pub(crate) struct ConnPermit {
    _total: OwnedSemaphorePermit,
    _ip: IpPermit,
}

/// Why a connection was turned away.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every slot is taken.
    Full,
    /// Its address holds its share already.
    PerIp,
}

impl ConnLimit {
    /// At most `total` connections, and at most `per_ip` from one address (0: no per-address
    /// limit).
    pub(crate) fn new(total: usize, per_ip: usize) -> ConnLimit {
        ConnLimit {
            max: total,
            total: Arc::new(Semaphore::new(total)),
            per_ip: Arc::new(PerIp { max: per_ip, counts: Mutex::new(HashMap::new()) }),
        }
    }

    /// A permit for one more connection from `ip`.
    pub(crate) fn try_acquire(&self, ip: IpAddr) -> Result<ConnPermit, Refused> {
        let ip_permit = self.per_ip.try_acquire(ip).ok_or(Refused::PerIp)?;
        let total = self.total.clone().try_acquire_owned().map_err(|_| Refused::Full)?;
        Ok(ConnPermit { _total: total, _ip: ip_permit })
    }

    /// Connections held now, from every address.
    pub(crate) fn in_use(&self) -> usize {
        self.max.saturating_sub(self.total.available_permits())
    }

    /// Connections from `ip` now.
    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> usize {
        self.per_ip.counts.lock().expect("per-ip counts").get(&ip).copied().unwrap_or(0)
    }
}

struct PerIp {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

struct IpPermit {
    ip: IpAddr,
    from: Option<Arc<PerIp>>,
}

impl PerIp {
    fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        if self.max == 0 {
            return Some(IpPermit { ip, from: None });
        }
        let mut counts = self.counts.lock().expect("per-ip counts");
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpPermit { ip, from: Some(self.clone()) })
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let Some(per_ip) = &self.from else { return };
        let mut counts = per_ip.counts.lock().expect("per-ip counts");
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // Addresses that left take no memory.
                counts.remove(&self.ip);
            }
        }
    }
}

/// Accepts the next connection that `limit` admits. Accept errors (EMFILE and friends) back
/// off briefly instead of spinning; connections over a limit are closed at once.
pub(crate) async fn accept(
    listener: &TcpListener,
    limit: &ConnLimit,
    what: &str,
) -> (TcpStream, SocketAddr, ConnPermit) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match limit.try_acquire(remote.ip()) {
            Ok(permit) => {
                keepalive(&tcp);
                return (tcp, remote, permit);
            }
            Err(Refused::Full) => {
                tracing::warn!(%remote, listener = what, "connection limit reached; closing")
            }
            Err(Refused::PerIp) => {
                tracing::warn!(%remote, listener = what, "connection limit for this address reached; closing")
            }
        }
    }
}

/// Turns on TCP keepalive: a peer whose machine or network vanished is found even on an idle
/// connection.
pub(crate) fn keepalive(tcp: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "could not turn on TCP keepalive");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_far_beyond_128_connects_before_any_is_accepted() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nothing accepts, so every connection the kernel completes waits in the backlog.
        // With tokio's own bind (128) the SYNs beyond the 129th are dropped, and dropped
        // again on every retransmission while the queue stays full: those connects hang.
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..1000 {
            connects.spawn(TcpStream::connect(addr));
        }
        let all = async {
            let mut held = Vec::new();
            while let Some(c) = connects.join_next().await {
                held.push(c.unwrap().unwrap());
            }
            held
        };
        let held = tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .expect("a connection waited on a full backlog");
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn one_address_gets_its_share_and_the_rest_stay_for_others() {
        let limit = ConnLimit::new(4, 2);
        let (a, b) = (IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]));
        let a1 = limit.try_acquire(a).unwrap();
        let _a2 = limit.try_acquire(a).unwrap();
        assert_eq!(limit.try_acquire(a).err(), Some(Refused::PerIp));
        let _b1 = limit.try_acquire(b).unwrap();
        let _b2 = limit.try_acquire(b).unwrap();
        assert_eq!(limit.try_acquire(IpAddr::from([192, 0, 2, 3])).err(), Some(Refused::Full));
        drop(a1);
        assert_eq!(limit.count(a), 1);
        let _a3 = limit.try_acquire(a).unwrap();
        assert_eq!(limit.try_acquire(b).err(), Some(Refused::PerIp));
    }

    #[test]
    fn a_refused_total_gives_the_address_slot_back_and_zero_means_no_share() {
        let limit = ConnLimit::new(1, 5);
        let ip = IpAddr::from([192, 0, 2, 1]);
        let _p = limit.try_acquire(ip).unwrap();
        assert_eq!(limit.try_acquire(ip).err(), Some(Refused::Full));
        assert_eq!(limit.count(ip), 1, "the refused connection's address slot was returned");
        let open = ConnLimit::new(3, 0);
        let _all: Vec<_> = (0..3).map(|_| open.try_acquire(ip).unwrap()).collect();
        assert_eq!(open.try_acquire(ip).err(), Some(Refused::Full));
    }
}
