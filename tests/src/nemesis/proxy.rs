//! A UDP proxy between store agents and the coordinator that injects network
//! faults: it drops, duplicates, delays and reorders datagrams, and cuts
//! either direction (a partition), each per [`Direction`].
//!
//! Agents are configured with [`FaultProxy::addr`] as their coordinator. Each
//! client source address gets its own upstream socket, so the coordinator
//! sees one peer per agent and its replies go back to the right agent from
//! the listening socket. Upstream sockets are unconnected and send to the
//! current upstream, so [`FaultProxy::set_upstream`] re-targets all of them.
//!
//! Every random decision comes from one [`Rng`] seeded with the proxy's seed,
//! drawn in the order datagrams arrive, and only for faults that are set: the
//! same seed, settings and arrival order give the same decisions, though a
//! real network may order arrivals differently between runs. Held-back and
//! delayed datagrams check `cut` again when they are finally sent, and are
//! dropped if their direction was cut meanwhile. Memory is bounded by
//! [`MAX_CLIENTS`] and [`MAX_IN_FLIGHT`]; datagrams beyond either are
//! dropped. Socket errors never stop forwarding: a failed send counts as a
//! drop, a failed receive is skipped. Dropping the proxy aborts its tasks,
//! which closes its sockets.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use crate::rng::Rng;

/// Most client source addresses tracked; datagrams from further ones are dropped.
pub const MAX_CLIENTS: usize = 1024;
/// Most datagrams held back or delayed at once; further ones are dropped.
pub const MAX_IN_FLIGHT: usize = 10_000;
/// How long a held-back datagram waits for a next one before it is sent anyway.
pub const REORDER_TIMEOUT: Duration = Duration::from_millis(50);
/// Receive buffer size: the largest UDP payload fits.
const BUF_SIZE: usize = 64 * 1024;

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From an agent to the coordinator.
    ToUpstream,
    /// From the coordinator back to an agent.
    ToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToUpstream => 0,
            Direction::ToClient => 1,
        }
    }
}

/// The faults applied to one direction; the default is no fault.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Probability (0..=1) that a datagram is dropped.
    pub drop: f64,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back and sent after the next one
    /// of the same direction, or after [`REORDER_TIMEOUT`] if none comes.
    pub reorder: f64,
    /// Extra delay in milliseconds, uniform in `lo..=hi`; `(0, 0)` is none.
    pub delay_ms: (u64, u64),
    /// Drop everything: a partition.
    pub cut: bool,
}

/// What a proxy did so far, over both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// Datagrams sent on, each copy of a duplicate counted.
    pub forwarded: u64,
    /// Datagrams dropped: by chance, by a cut, over a cap, or a failed send.
    pub dropped: u64,
    /// Datagrams chosen to be sent twice.
    pub duplicated: u64,
    /// Datagrams given an extra delay.
    pub delayed: u64,
    /// Datagrams held back to be sent after the next one.
    pub reordered: u64,
}

impl std::ops::AddAssign for ProxyStats {
    fn add_assign(&mut self, other: ProxyStats) {
        self.forwarded += other.forwarded;
        self.dropped += other.dropped;
        self.duplicated += other.duplicated;
        self.delayed += other.delayed;
        self.reordered += other.reordered;
    }
}

/// A running fault proxy; dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Binds `127.0.0.1:0` and forwards to `upstream`, with no faults set.
    /// Must be called within a Tokio runtime, which runs the proxy's tasks.
    pub fn start(upstream: SocketAddr, seed: u64) -> anyhow::Result<FaultProxy> {
        tokio::runtime::Handle::try_current().context("fault proxy needs a Tokio runtime")?;
        let (recv, send) = bind().context("binding the fault proxy")?;
        let addr = send.local_addr()?;
        let shared = Arc::new(Shared {
            listen: send,
            upstream: Mutex::new(upstream),
            faults: Mutex::new([Faults::default(); 2]),
            rng: Mutex::new(Rng::seeded(seed)),
            stats: Mutex::new(ProxyStats::default()),
            held: Mutex::new([None, None]),
            next_id: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            clients: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Some(JoinSet::new())),
        });
        shared.spawn(Arc::clone(&shared).listen(recv));
        Ok(FaultProxy { addr, shared })
    }

    /// The listening address: what agents use as their coordinator.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends later datagrams (from every client) to `upstream` instead.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *lock(&self.shared.upstream) = upstream;
    }

    /// Sets the faults of one direction.
    pub fn set(&self, direction: Direction, faults: Faults) {
        lock(&self.shared.faults)[direction.index()] = faults;
    }

    /// Sets the same faults on both directions.
    pub fn set_both(&self, faults: Faults) {
        *lock(&self.shared.faults) = [faults; 2];
    }

    /// Cuts one direction, or both for `None`, keeping the other faults.
    pub fn partition(&self, direction: Option<Direction>) {
        let mut faults = lock(&self.shared.faults);
        for (i, f) in faults.iter_mut().enumerate() {
            if direction.is_none_or(|d| d.index() == i) {
                f.cut = true;
            }
        }
    }

    /// Clears all faults and sends the held-back datagrams now. Delayed
    /// datagrams are still sent when their delay ends.
    pub fn heal(&self) {
        self.set_both(Faults::default());
        let held = std::mem::take(&mut *lock(&self.shared.held));
        for h in held.into_iter().flatten() {
            self.shared.unhold(h);
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        *lock(&self.shared.stats)
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let upstream = *lock(&self.shared.upstream);
        let stats = self.stats();
        write!(f, "FaultProxy({} -> {upstream}, {stats:?})", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let tasks = lock(&self.shared.tasks).take();
        lock(&self.shared.clients).clear();
        // Dropping the set aborts every task; the sockets they own close.
        drop(tasks);
    }
}

/// Where a datagram goes.
enum Route {
    /// To the current upstream, from this client's upstream socket.
    Upstream(Arc<StdUdpSocket>),
    /// To this client, from the listening socket.
    Client(SocketAddr),
}

/// A datagram on its way, with the decisions taken for it.
struct Datagram {
    route: Route,
    payload: Vec<u8>,
    copies: u8,
    delay: Duration,
}

/// A held-back datagram; the id tells its timeout whether it is still held.
struct Held {
    id: u64,
    datagram: Datagram,
}

/// State shared by the handle and the tasks. Lock order: `held`, then `rng`.
struct Shared {
    /// The listening socket, for sending (a `tokio` twin receives); sends
    /// go through std sockets so they never wait for reactor readiness.
    listen: StdUdpSocket,
    upstream: Mutex<SocketAddr>,
    faults: Mutex<[Faults; 2]>,
    rng: Mutex<Rng>,
    stats: Mutex<ProxyStats>,
    /// At most one held-back datagram per direction.
    held: Mutex<[Option<Held>; 2]>,
    next_id: AtomicU64,
    /// Datagrams held back or sleeping in a delay task.
    in_flight: AtomicUsize,
    /// Each client's upstream socket, for sending.
    clients: Mutex<HashMap<SocketAddr, Arc<StdUdpSocket>>>,
    /// Every task of the proxy; `None` once stopped.
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl Shared {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Some(tasks) = lock(&self.tasks).as_mut() {
            while tasks.try_join_next().is_some() {}
            tasks.spawn(task);
        }
    }

    fn count(&self, f: impl FnOnce(&mut ProxyStats)) {
        f(&mut lock(&self.stats));
    }

    /// Receives from clients and hands each datagram on towards upstream.
    async fn listen(self: Arc<Self>, socket: UdpSocket) {
        let mut buf = vec![0; BUF_SIZE];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                pause().await;
                continue;
            };
            match self.client(from) {
                Some(upstream) => self.arrive(Route::Upstream(upstream), &buf[..len]),
                None => self.count(|s| s.dropped += 1),
            }
        }
    }

    /// The upstream socket of `client`, made (with its reply task) on first
    /// use. Only the listen task calls this, so check-then-insert is safe.
    fn client(self: &Arc<Self>, client: SocketAddr) -> Option<Arc<StdUdpSocket>> {
        let mut clients = lock(&self.clients);
        if let Some(socket) = clients.get(&client) {
            return Some(Arc::clone(socket));
        }
        if clients.len() >= MAX_CLIENTS {
            return None;
        }
        let (recv, send) = bind().ok()?;
        let send = Arc::new(send);
        clients.insert(client, Arc::clone(&send));
        drop(clients);
        self.spawn(Arc::clone(self).replies(client, recv));
        Some(send)
    }

    /// Receives on one client's upstream socket and hands each datagram on
    /// towards that client.
    async fn replies(self: Arc<Self>, client: SocketAddr, socket: UdpSocket) {
        let mut buf = vec![0; BUF_SIZE];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((len, _)) => self.arrive(Route::Client(client), &buf[..len]),
                Err(_) => pause().await,
            }
        }
    }

    /// Decides the faults for one arriving datagram and acts on them.
    fn arrive(self: &Arc<Self>, route: Route, payload: &[u8]) {
        let direction = route.direction().index();
        let faults = lock(&self.faults)[direction];
        let mut held = lock(&self.held);
        let (dropped, copies, delay, hold) = {
            let mut rng = lock(&self.rng);
            let dropped = faults.cut || chance(&mut rng, faults.drop);
            let copies = 1 + u8::from(chance(&mut rng, faults.duplicate));
            let delay = pick_delay(&mut rng, faults.delay_ms);
            let hold = held[direction].is_none() && chance(&mut rng, faults.reorder);
            (dropped, copies, delay, hold)
        };
        if dropped {
            return self.count(|s| s.dropped += 1);
        }
        self.count(|s| {
            s.duplicated += u64::from(copies > 1);
            s.delayed += u64::from(!delay.is_zero());
        });
        let datagram = Datagram {
            route,
            payload: payload.to_vec(),
            copies,
            delay,
        };
        if hold {
            if !self.reserve() {
                return self.count(|s| s.dropped += 1);
            }
            let id = self.next_id.fetch_add(1, Ordering::SeqCst);
            held[direction] = Some(Held { id, datagram });
            drop(held);
            self.count(|s| s.reordered += 1);
            let this = Arc::clone(self);
            self.spawn(async move {
                tokio::time::sleep(REORDER_TIMEOUT).await;
                this.release(direction, id);
            });
            return;
        }
        // This is the "next one": a held-back datagram goes right after it.
        let previous = held[direction].take();
        drop(held);
        self.send(datagram);
        if let Some(previous) = previous {
            self.unhold(previous);
        }
    }

    /// Sends the datagram held in `direction` if it is still `id`.
    fn release(self: &Arc<Self>, direction: usize, id: u64) {
        let mut held = lock(&self.held);
        if let Some(h) = held[direction].take_if(|h| h.id == id) {
            drop(held);
            self.unhold(h);
        }
    }

    /// Sends a datagram that was held back, freeing its place.
    fn unhold(self: &Arc<Self>, held: Held) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.send(held.datagram);
    }

    /// Sends now, or from a task after the datagram's delay.
    fn send(self: &Arc<Self>, datagram: Datagram) {
        if datagram.delay.is_zero() {
            return self.emit(&datagram);
        }
        if !self.reserve() {
            return self.count(|s| s.dropped += u64::from(datagram.copies));
        }
        let this = Arc::clone(self);
        self.spawn(async move {
            tokio::time::sleep(datagram.delay).await;
            this.in_flight.fetch_sub(1, Ordering::SeqCst);
            this.emit(&datagram);
        });
    }

    /// Puts the datagram's copies on the wire, unless its direction is cut.
    fn emit(&self, datagram: &Datagram) {
        let cut = lock(&self.faults)[datagram.route.direction().index()].cut;
        let copies = u64::from(datagram.copies);
        let sent = (0..copies).filter(|_| !cut && self.put(datagram)).count() as u64;
        self.count(|s| {
            s.forwarded += sent;
            s.dropped += copies - sent;
        });
    }

    /// One send; a full buffer or an error is a lost datagram, as on a network.
    fn put(&self, datagram: &Datagram) -> bool {
        let sent = match &datagram.route {
            Route::Upstream(socket) => socket.send_to(&datagram.payload, *lock(&self.upstream)),
            Route::Client(client) => self.listen.send_to(&datagram.payload, client),
        };
        sent.is_ok()
    }

    /// Takes one of the [`MAX_IN_FLIGHT`] places, if one is free.
    fn reserve(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_IN_FLIGHT).then_some(n + 1)
            })
            .is_ok()
    }
}

impl Route {
    fn direction(&self) -> Direction {
        match self {
            Route::Upstream(_) => Direction::ToUpstream,
            Route::Client(_) => Direction::ToClient,
        }
    }
}

/// A non-blocking socket on `127.0.0.1:0`: a `tokio` handle to receive and a
/// std clone to send.
fn bind() -> std::io::Result<(UdpSocket, StdUdpSocket)> {
    let socket = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.set_nonblocking(true)?;
    let send = socket.try_clone()?;
    Ok((UdpSocket::from_std(socket)?, send))
}

/// True with probability `p`; draws from `rng` only when `p > 0`.
fn chance(rng: &mut Rng, p: f64) -> bool {
    p > 0.0 && ((rng.next_u64() >> 11) as f64) < p * (1u64 << 53) as f64
}

/// A delay uniform in `lo..=hi` ms; draws from `rng` only when `hi > 0`.
fn pick_delay(rng: &mut Rng, (lo, hi): (u64, u64)) -> Duration {
    if hi == 0 {
        return Duration::ZERO;
    }
    let lo = lo.min(hi);
    Duration::from_millis(lo + rng.below(hi - lo + 1))
}

/// Keeps a receive loop from spinning on a persistent socket error.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tokio::sync::mpsc;
    use tokio::time::{Instant, timeout};

    use super::*;
    use crate::poll::{self, Check};

    const WAIT: Duration = Duration::from_secs(5);

    /// An upstream that echoes every datagram and reports what it received.
    struct Echo {
        addr: SocketAddr,
        seen: mpsc::UnboundedReceiver<Vec<u8>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Echo {
        async fn start() -> Echo {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let (tx, seen) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                let mut buf = vec![0; BUF_SIZE];
                while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                    let _ = tx.send(buf[..len].to_vec());
                    let _ = socket.send_to(&buf[..len], from).await;
                }
            });
            Echo { addr, seen, task }
        }

        async fn next(&mut self) -> Vec<u8> {
            timeout(WAIT, self.seen.recv()).await.unwrap().unwrap()
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn client(proxy: &FaultProxy) -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(proxy.addr()).await.unwrap();
        socket
    }

    /// An echo server, a proxy in front of it with `faults` towards it, and a client.
    async fn setup(seed: u64, faults: Faults) -> (Echo, FaultProxy, UdpSocket) {
        let echo = Echo::start().await;
        let proxy = FaultProxy::start(echo.addr, seed).unwrap();
        proxy.set(Direction::ToUpstream, faults);
        let client = client(&proxy).await;
        (echo, proxy, client)
    }

    async fn recv(socket: &UdpSocket) -> Vec<u8> {
        let mut buf = vec![0; BUF_SIZE];
        let len = timeout(WAIT, socket.recv(&mut buf)).await.unwrap().unwrap();
        buf[..len].to_vec()
    }

    async fn wait_stats(proxy: &FaultProxy, done: impl Fn(&ProxyStats) -> bool) {
        poll::until("proxy stats", WAIT, || async {
            let stats = proxy.stats();
            let seen = format!("{stats:?}");
            Ok(if done(&stats) {
                Check::Done(())
            } else {
                Check::NotYet(seen)
            })
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn no_faults_echoes_in_order_to_each_client() {
        let (_echo, proxy, a) = setup(1, Faults::default()).await;
        let b = client(&proxy).await;
        for i in 0..20u8 {
            a.send(&[b'a', i]).await.unwrap();
            b.send(&[b'b', i]).await.unwrap();
        }
        for i in 0..20u8 {
            assert_eq!(recv(&a).await, [b'a', i]);
            assert_eq!(recv(&b).await, [b'b', i]);
        }
        assert_eq!(proxy.stats().dropped, 0);
    }

    #[tokio::test]
    async fn cut_to_upstream_drops_until_healed() {
        let cut = Faults {
            cut: true,
            ..Faults::default()
        };
        let (mut echo, proxy, c) = setup(2, cut).await;
        c.send(b"lost1").await.unwrap();
        c.send(b"lost2").await.unwrap();
        wait_stats(&proxy, |s| s.dropped == 2).await;
        assert_eq!(proxy.stats().forwarded, 0);
        proxy.heal();
        c.send(b"found").await.unwrap();
        assert_eq!(
            echo.next().await,
            b"found",
            "the cut datagrams must not arrive"
        );
        assert_eq!(recv(&c).await, b"found");
    }

    #[tokio::test]
    async fn cut_to_client_reaches_upstream_only() {
        let (mut echo, proxy, c) = setup(3, Faults::default()).await;
        proxy.partition(Some(Direction::ToClient));
        c.send(b"lost").await.unwrap();
        assert_eq!(echo.next().await, b"lost");
        wait_stats(&proxy, |s| s.dropped == 1).await;
        proxy.heal();
        c.send(b"found").await.unwrap();
        assert_eq!(recv(&c).await, b"found", "the cut reply must not arrive");
    }

    /// Sends 100 numbered datagrams with `drop = 0.5` towards upstream and
    /// returns the numbers that came back.
    async fn survivors(seed: u64) -> Vec<u8> {
        let (_echo, proxy, c) = setup(
            seed,
            Faults {
                drop: 0.5,
                ..Faults::default()
            },
        )
        .await;
        for i in 0..100u8 {
            c.send(&[i]).await.unwrap();
        }
        // Each datagram is either dropped (and counted) or echoed once.
        let (mut got, mut buf, deadline) = (Vec::new(), [0; 8], Instant::now() + WAIT);
        while (got.len() as u64) + proxy.stats().dropped < 100 {
            assert!(
                Instant::now() < deadline,
                "got {got:?}, {:?}",
                proxy.stats()
            );
            if let Ok(Ok(_)) = timeout(poll::POLL_INTERVAL, c.recv(&mut buf)).await {
                got.push(buf[0]);
            }
        }
        got
    }

    #[tokio::test]
    async fn drop_is_random_but_repeats_with_the_seed() {
        let first = survivors(42).await;
        assert!(
            !first.is_empty() && first.len() < 100,
            "{} of 100",
            first.len()
        );
        assert_eq!(survivors(42).await, first);
        assert_ne!(survivors(43).await, first);
    }

    #[tokio::test]
    async fn duplicate_sends_every_datagram_twice() {
        let twice = Faults {
            duplicate: 1.0,
            ..Faults::default()
        };
        let (mut echo, proxy, c) = setup(5, twice).await;
        for m in [b"a", b"b", b"c"] {
            c.send(m).await.unwrap();
        }
        for m in [b"a", b"a", b"b", b"b", b"c", b"c"] {
            assert_eq!(echo.next().await, m);
            assert_eq!(recv(&c).await, m);
        }
        assert_eq!(proxy.stats().duplicated, 3);
    }

    #[tokio::test]
    async fn delayed_datagrams_still_arrive() {
        let (_echo, proxy, c) = setup(6, Faults::default()).await;
        proxy.set_both(Faults {
            delay_ms: (1, 40),
            ..Faults::default()
        });
        for i in 0..10u8 {
            c.send(&[i]).await.unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..10 {
            got.extend(recv(&c).await);
        }
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<u8>>());
        assert_eq!(proxy.stats().delayed, 20);
    }

    #[tokio::test]
    async fn reorder_swaps_back_to_back_datagrams() {
        let swap = Faults {
            reorder: 1.0,
            ..Faults::default()
        };
        let (mut echo, proxy, c) = setup(7, swap).await;
        c.send(b"first").await.unwrap();
        c.send(b"second").await.unwrap();
        assert_eq!(echo.next().await, b"second");
        assert_eq!(echo.next().await, b"first");
        assert_eq!(recv(&c).await, b"second");
        assert_eq!(recv(&c).await, b"first");
        assert_eq!(proxy.stats().reordered, 1);
    }

    #[tokio::test]
    async fn set_upstream_retargets_existing_clients() {
        let (mut one, proxy, c) = setup(8, Faults::default()).await;
        let mut two = Echo::start().await;
        c.send(b"one").await.unwrap();
        assert_eq!(one.next().await, b"one");
        assert_eq!(recv(&c).await, b"one");
        proxy.set_upstream(two.addr);
        c.send(b"two").await.unwrap();
        assert_eq!(two.next().await, b"two");
        assert_eq!(recv(&c).await, b"two");
        assert!(one.seen.try_recv().is_err());
    }

    #[tokio::test]
    async fn dead_upstream_does_not_stop_forwarding() {
        let (echo, proxy, c) = setup(9, Faults::default()).await;
        drop(echo);
        c.send(b"nobody").await.unwrap();
        wait_stats(&proxy, |s| s.forwarded + s.dropped == 1).await;
        let mut echo = Echo::start().await;
        proxy.set_upstream(echo.addr);
        c.send(b"back").await.unwrap();
        assert_eq!(echo.next().await, b"back");
        assert_eq!(recv(&c).await, b"back");
    }

    #[tokio::test]
    async fn drop_closes_the_listening_socket() {
        let (_echo, proxy, c) = setup(10, Faults::default()).await;
        c.send(b"hello").await.unwrap();
        assert_eq!(recv(&c).await, b"hello");
        let addr = proxy.addr();
        drop(proxy);
        poll::until("proxy port freed", WAIT, || async {
            Ok(match StdUdpSocket::bind(addr) {
                Ok(_) => Check::Done(()),
                Err(e) => Check::NotYet(e.to_string()),
            })
        })
        .await
        .unwrap();
    }

    #[test]
    fn stats_add_up() {
        let one = ProxyStats {
            forwarded: 1,
            dropped: 2,
            duplicated: 3,
            delayed: 4,
            reordered: 5,
        };
        let mut total = one;
        total += one;
        assert_eq!((total.forwarded, total.reordered), (2, 10));
    }
}
