//! The coordinator on its own: durability across `kill -9`, who may connect,
//! garbage on its QUIC port, and its metrics.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shelfsync_core::{ItemKey, KeyState, Op, Precondition, apply};
use shelfsync_proto::{
    Change, Client, ErrorCode, HistoryRequest, ProtoError, ReadRequest, Request, Response,
    WriteAck, WriteRequest,
};
use shelfsync_tests::{Certs, Cluster, Rng, StoreSpec};
use tokio::sync::watch;

/// The only store of these tests, writing and reading its own location.
const STORE: &str = "store-1";
/// Items created before the load starts.
const ITEMS: usize = 50;
/// Concurrent writers, each on its own connection.
const WRITERS: usize = 16;
/// Load acknowledgements to wait for before the SIGKILL.
const ACKS_BEFORE_KILL: usize = 1000;
/// Bound on anything a test waits for that should take far less.
const PATIENCE: Duration = Duration::from_secs(60);

fn one_store() -> Vec<StoreSpec> {
    vec![StoreSpec::new(STORE)]
}

fn key(sku: &str) -> ItemKey {
    ItemKey::new(STORE, sku).unwrap()
}

fn write_request(idempotency_key: &str, key: &ItemKey, op: Op) -> WriteRequest {
    WriteRequest {
        idempotency_key: idempotency_key.to_string(),
        key: key.clone(),
        op,
        expected_version: None,
        lock_token: None,
    }
}

/// Sends a write that must be accepted.
async fn accepted(client: &Client, request: &WriteRequest) -> WriteAck {
    match client.call(&Request::Write(request.clone())).await.unwrap() {
        Response::Write(ack) => ack,
        other => panic!("{request:?} was not accepted: {other:?}"),
    }
}

async fn strong_read(client: &Client, key: &ItemKey) -> shelfsync_core::Item {
    let request = Request::Read(ReadRequest { key: key.clone() });
    match client.call(&request).await.unwrap() {
        Response::Read(reply) => reply.item,
        other => panic!("strong read of {key}: {other:?}"),
    }
}

async fn history(admin: &Client, key: &ItemKey) -> Vec<Change> {
    let request = Request::History(HistoryRequest {
        key: key.clone(),
        limit: 1000,
    });
    match admin.call(&request).await.unwrap() {
        Response::History(reply) => reply.changes,
        other => panic!("history of {key}: {other:?}"),
    }
}

/// The log must not show a panic or an error-level line.
fn assert_clean_log(log: &str) {
    for line in log.lines() {
        assert!(
            !line.contains("panicked") && !line.contains(" ERROR "),
            "unexpected line in the coordinator log: {line}"
        );
    }
}

/// An acknowledged write: what was sent and what came back.
#[derive(Debug, Clone)]
struct Acked {
    writer: usize,
    request: WriteRequest,
    ack: WriteAck,
}

/// How a load writer ended.
#[derive(Debug)]
enum WriterEnd {
    /// Told to stop (after the kill) while waiting for the answer to
    /// `in_flight`, whose outcome is therefore unknown.
    Stopped {
        /// Writes answered before.
        answered: u64,
        /// The write sent last.
        in_flight: WriteRequest,
    },
    /// A transport failure (expected only once the coordinator is gone).
    Transport(String),
    /// An answer that should never come.
    Unexpected(String),
}

/// Adds (and sometimes removes) one unit on random items until told to stop
/// or a write fails; records every acknowledged write. Odd writers send all
/// their writes on one stream (a session), even ones a stream per write.
async fn writer(
    id: usize,
    client: Client,
    keys: Arc<Vec<ItemKey>>,
    mut rng: Rng,
    acked: Arc<Mutex<Vec<Acked>>>,
    acks: Arc<watch::Sender<usize>>,
    mut stop: watch::Receiver<bool>,
) -> WriterEnd {
    let mut session = if id % 2 == 1 {
        match client.session().await {
            Ok(session) => Some(session),
            Err(err) => return WriterEnd::Transport(format!("session: {err}")),
        }
    } else {
        None
    };
    for n in 0u64.. {
        let key = &keys[rng.below(keys.len() as u64) as usize];
        let op = if rng.below(8) == 0 {
            Op::Remove { amount: 1 }
        } else {
            Op::Add { amount: 1 }
        };
        let request = write_request(&format!("load-{id}-{n}"), key, op);
        let message = Request::Write(request.clone());
        let call = async {
            match session.as_mut() {
                Some(session) => session.call(&message).await,
                None => client.call(&message).await,
            }
        };
        let answer = tokio::select! {
            answer = call => answer,
            _ = stop.wait_for(|stop| *stop) => {
                return WriterEnd::Stopped { answered: n, in_flight: request };
            }
        };
        match answer {
            Ok(Response::Write(ack)) => {
                acked.lock().unwrap().push(Acked {
                    writer: id,
                    request,
                    ack,
                });
                acks.send_modify(|n| *n += 1);
            }
            Ok(Response::Error(err)) if err.code == ErrorCode::InsufficientStock => {}
            Ok(other) => return WriterEnd::Unexpected(format!("write {n}: {other:?}")),
            Err(err) => return WriterEnd::Transport(format!("write {n}: {err}")),
        }
    }
    unreachable!("a u64 counter of writes does not run out")
}

/// Guarantee 1 (no lost acknowledged write) and 3 (exactly-once under retry)
/// across a `kill -9` in the middle of a concurrent write load; checks
/// guarantee 4 (versions 1, 2, 3… per key) on the recovered change log too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let mut cluster = Cluster::start(one_store()).await.unwrap();
    let seed = Rng::seed_from_clock();
    eprintln!("load seed: {seed}");

    let keys: Arc<Vec<ItemKey>> =
        Arc::new((0..ITEMS).map(|i| key(&format!("sku-{i:03}"))).collect());
    let setup = cluster.connect(STORE).await.unwrap();
    let mut created = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let request = write_request(
            &format!("create-{i}"),
            key,
            Op::Create {
                name: format!("Item {i}"),
                quantity: 10,
            },
        );
        let ack = accepted(&setup, &request).await;
        created.push(Acked {
            writer: usize::MAX,
            request,
            ack,
        });
    }

    let acked = Arc::new(Mutex::new(created.clone()));
    let (acks_tx, mut acks_rx) = watch::channel(0usize);
    let acks_tx = Arc::new(acks_tx);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut writers = Vec::new();
    for id in 0..WRITERS {
        let client = cluster.connect(STORE).await.unwrap();
        writers.push(tokio::spawn(writer(
            id,
            client,
            keys.clone(),
            Rng::seeded(seed.wrapping_add(id as u64)),
            acked.clone(),
            acks_tx.clone(),
            stop_rx.clone(),
        )));
    }
    // Only the writers hold the sender now: if they all end early, the wait ends too.
    drop(acks_tx);
    let reached = tokio::time::timeout(PATIENCE, async {
        acks_rx
            .wait_for(|n| *n >= ACKS_BEFORE_KILL)
            .await
            .map(|n| *n)
    })
    .await;
    match reached {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => {
            let mut ends = Vec::new();
            for w in writers {
                ends.push(w.await.unwrap());
            }
            panic!("the writers stopped before {ACKS_BEFORE_KILL} acks: {ends:?}");
        }
        Err(_) => panic!("fewer than {ACKS_BEFORE_KILL} acks within {PATIENCE:?}"),
    }

    cluster.coordinator_mut().kill9();
    let acks_at_kill = *acks_rx.borrow();
    stop_tx.send(true).unwrap();
    let mut ends = Vec::new();
    for w in writers {
        ends.push(tokio::time::timeout(PATIENCE, w).await.unwrap().unwrap());
    }
    let mut answered = 0;
    let mut in_flight = Vec::new();
    let mut transport = Vec::new();
    let mut unexpected = Vec::new();
    for (id, end) in ends.into_iter().enumerate() {
        match end {
            WriterEnd::Stopped {
                answered: n,
                in_flight: request,
            } => {
                answered += n;
                in_flight.push(request);
            }
            WriterEnd::Transport(err) => transport.push(format!("writer {id}: {err}")),
            WriterEnd::Unexpected(answer) => unexpected.push(format!("writer {id}: {answer}")),
        }
    }
    eprintln!(
        "{acks_at_kill} load acks at the kill; {} writers had a write in flight, after {answered} \
         answered; transport failures: {transport:?}",
        in_flight.len()
    );
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    assert!(
        !in_flight.is_empty(),
        "no writer was still writing at the kill: {transport:?}"
    );
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.iter().all(|a| !a.ack.replayed),
        "a fresh key was replayed"
    );

    cluster.coordinator_mut().restart().await.unwrap();
    let store = cluster.connect(STORE).await.unwrap();
    let admin = cluster.connect("admin").await.unwrap();

    let mut by_key: BTreeMap<&ItemKey, Vec<&Acked>> = BTreeMap::new();
    for a in &acked {
        by_key.entry(&a.request.key).or_default().push(a);
    }
    for key in keys.iter() {
        let item = strong_read(&store, key).await;
        let changes = history(&admin, key).await;

        // The recovered log of the key is complete and consistent: versions
        // item.version down to 1 without a gap, each the result of applying
        // its op to the one before, the newest equal to the current item.
        let versions: Vec<u64> = changes.iter().map(|c| c.state.version()).collect();
        let expected: Vec<u64> = (1..=item.version).rev().collect();
        assert_eq!(versions, expected, "versions in the history of {key}");
        assert!(changes.windows(2).all(|w| w[0].seq > w[1].seq), "{key}");
        assert_eq!(changes[0].state, KeyState::Live(item.clone()), "{key}");
        let mut state = KeyState::Absent;
        for change in changes.iter().rev() {
            state = apply(
                key,
                &state,
                &change.op,
                Precondition::default(),
                change.at_ms,
            )
            .unwrap();
            assert_eq!(state, change.state, "{key} at seq {}", change.seq);
        }

        // Every acknowledged write is there, as acknowledged.
        let by_seq: HashMap<u64, &Change> = changes.iter().map(|c| (c.seq, c)).collect();
        let mine = by_key.get(key).map(Vec::as_slice).unwrap_or_default();
        for a in mine {
            let change = by_seq.get(&a.ack.seq).unwrap_or_else(|| {
                panic!(
                    "acknowledged write lost across the kill: {a:?}; history of {key}: {changes:?}"
                )
            });
            assert_eq!(change.state, a.ack.state, "{a:?}");
            assert_eq!(change.op, a.request.op, "{a:?}");
            assert_eq!(change.idempotency_key, a.request.idempotency_key);
            assert_eq!(change.store, STORE);
        }
        let highest = mine
            .iter()
            .map(|a| a.ack.state.version())
            .max()
            .unwrap_or(0);
        assert!(
            item.version >= highest,
            "{key} is at version {} after the restart, but version {highest} was acknowledged",
            item.version
        );
    }

    // Each writer's acks rise in sequence: a write acknowledged before the
    // next was sent got the lower number.
    for id in 0..WRITERS {
        let seqs: Vec<u64> = acked
            .iter()
            .filter(|a| a.writer == id)
            .map(|a| a.ack.seq)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "writer {id}: {seqs:?}"
        );
    }

    // Retrying an acknowledged write, across the restart, replays its outcome.
    let mut retried: Vec<&Acked> = vec![&created[0]];
    for id in 0..WRITERS {
        retried.extend(acked.iter().rev().find(|a| a.writer == id));
    }
    for a in retried {
        let again = accepted(&store, &a.request).await;
        assert!(
            again.replayed,
            "retry of {a:?} was applied again: {again:?}"
        );
        assert_eq!(
            (again.seq, &again.state),
            (a.ack.seq, &a.ack.state),
            "{a:?}"
        );
    }

    // The writes in flight at the kill may or may not have become durable;
    // retried with their keys they take effect exactly once either way.
    let mut replayed = 0;
    for request in &in_flight {
        match store.call(&Request::Write(request.clone())).await.unwrap() {
            Response::Write(ack) => {
                replayed += usize::from(ack.replayed);
                let changes = history(&admin, &request.key).await;
                let applied: Vec<&Change> = changes
                    .iter()
                    .filter(|c| c.idempotency_key == request.idempotency_key)
                    .collect();
                assert_eq!(
                    applied.len(),
                    1,
                    "{request:?} applied {} times",
                    applied.len()
                );
                assert_eq!((applied[0].seq, &applied[0].state), (ack.seq, &ack.state));
            }
            // A remove may find no stock; the refusal is recorded just the same.
            Response::Error(err) if err.code == ErrorCode::InsufficientStock => {}
            other => panic!("retry of the in-flight {request:?}: {other:?}"),
        }
    }
    eprintln!(
        "{replayed} of {} writes in flight at the kill had become durable",
        in_flight.len()
    );

    // New writes go on after every acknowledged sequence number.
    let max_seq = acked.iter().map(|a| a.ack.seq).max().unwrap();
    let after = accepted(
        &store,
        &write_request("after-restart", &keys[0], Op::Add { amount: 1 }),
    )
    .await;
    assert!(after.seq > max_seq, "{} <= {max_seq}", after.seq);
    assert_clean_log(&cluster.coordinator().log());
}

/// Guarantee 7: a certificate from the chain's CA whose store is not in the
/// registry gets a typed refusal at connect, and the coordinator logs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_store_certificate_is_refused() {
    let cluster = Cluster::start(one_store()).await.unwrap();
    cluster.certs().issue("store-9").unwrap();

    let err = cluster.connect("store-9").await.unwrap_err();
    match &err {
        ProtoError::Refused(refusal) => {
            assert_eq!(refusal.code, ErrorCode::UnknownPeer, "{refusal:?}");
        }
        other => panic!("expected a refusal with unknown_peer, got {other:?}"),
    }
    assert!(!err.is_retryable(), "{err:?}");

    // The coordinator logs the refusal before it answers, so it is there now.
    let log = cluster.coordinator().log();
    assert!(
        log.lines()
            .any(|l| l.contains("refused an unregistered peer") && l.contains("store-9")),
        "no refusal of store-9 in the coordinator log:\n{log}"
    );

    // The registered store is unaffected.
    let client = cluster.connect(STORE).await.unwrap();
    assert_eq!(client.hello().identity, STORE);
}

/// Guarantee 7: certificates from another CA never get in and fail fast.
///
/// Two ways to hold one: all files from the other CA (the client refuses the
/// coordinator's certificate before it shows its own), and the chain's CA
/// with a certificate of the other (the coordinator refuses it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let cluster = Cluster::start(one_store()).await.unwrap();
    let other = Certs::generate(&cluster.dir().join("other-ca"), &[STORE]).unwrap();
    let addr = cluster.coordinator().quic_addr();
    let connect = |tls| async move {
        match tokio::time::timeout(PATIENCE, shelfsync_tests::connect(addr, &tls)).await {
            Err(_) => panic!("connect hung for {PATIENCE:?}"),
            Ok(Ok(client)) => panic!("connected as {:?}", client.hello().identity),
            Ok(Err(err)) => err,
        }
    };

    let err = connect(other.tls_files(STORE)).await;
    assert!(!err.is_retryable(), "{err:?} is classified retryable");

    let mut foreign_cert = other.tls_files(STORE);
    foreign_cert.ca_cert = cluster.certs().ca_cert();
    let err = connect(foreign_cert).await;
    // The client has finished its half of the handshake when the coordinator
    // refuses its certificate, so the refusal may only show on the hello
    // stream; it must still be classified as permanent.
    assert!(!err.is_retryable(), "{err:?} is classified retryable");
    let refused = cluster
        .coordinator()
        .wait_for_log_line(PATIENCE, |l| {
            l.contains("handshake failed") && l.contains("invalid peer certificate")
        })
        .await;
    assert!(
        refused.is_some(),
        "the coordinator logged no refused certificate"
    );

    let client = cluster.connect(STORE).await.unwrap();
    assert_eq!(client.hello().identity, STORE);
}

/// Guarantee 8: thousands of random datagrams on the QUIC port, some shaped
/// like QUIC packets, neither crash nor wedge the coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_udp_does_not_hurt() {
    let mut cluster = Cluster::start(one_store()).await.unwrap();
    let addr = cluster.coordinator().quic_addr();
    let seed = Rng::seed_from_clock();
    eprintln!("garbage seed: {seed}");
    let mut rng = Rng::seeded(seed);

    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    for i in 0..4000 {
        let mut datagram = match i % 4 {
            // Long header, QUIC v1, at least the 1200 bytes an Initial needs.
            0 => {
                let mut d = vec![0; 1200 + rng.below(301) as usize];
                rng.fill(&mut d);
                d[0] = 0xc0 | (d[0] & 0x3f);
                d[1..5].copy_from_slice(&1u32.to_be_bytes());
                d[5] = 8;
                d
            }
            // Long header with an unknown version: asks for version negotiation.
            1 => {
                let mut d = vec![0; 1200 + rng.below(301) as usize];
                rng.fill(&mut d);
                d[0] |= 0x80;
                d[1..5].copy_from_slice(&0x1a2a_3a4au32.to_be_bytes());
                d
            }
            // Short header (1-RTT) for a connection that does not exist.
            2 => {
                let mut d = vec![0; 1 + rng.below(1500) as usize];
                rng.fill(&mut d);
                d[0] = 0x40 | (d[0] & 0x3f);
                d
            }
            // Plain noise, from empty to a full Ethernet payload.
            _ => vec![0; rng.below(1501) as usize],
        };
        if i % 4 == 3 {
            rng.fill(&mut datagram);
        }
        socket.send_to(&datagram, addr).unwrap();
    }

    assert!(
        cluster.coordinator_mut().is_running(),
        "the coordinator died"
    );
    let client = cluster.connect(STORE).await.unwrap();
    let item = key("after-garbage");
    let ack = accepted(
        &client,
        &write_request(
            "after-garbage",
            &item,
            Op::Create {
                name: "Survivor".into(),
                quantity: 1,
            },
        ),
    )
    .await;
    assert_eq!(ack.state.version(), 1);
    let health = cluster.coordinator().get("/healthz").await.unwrap();
    assert_eq!(health.status, 200, "{health:?}");
    let ready = cluster.coordinator().get("/readyz").await.unwrap();
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_clean_log(&cluster.coordinator().log());
}

/// The value of the sample `name{labels}` in a Prometheus text exposition,
/// if a line has that name and all of `labels` (in any order).
fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        if !(rest.is_empty() || rest.starts_with('{')) {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        if all { value.parse().ok() } else { None }
    })
}

/// `/metrics` is Prometheus text with the write counter by op and outcome,
/// the flush histogram and the durable head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_metrics_are_prometheus_text() {
    let cluster = Cluster::start(one_store()).await.unwrap();
    let client = cluster.connect(STORE).await.unwrap();
    let item = key("metered");
    let create = Op::Create {
        name: "Metered".into(),
        quantity: 3,
    };
    accepted(&client, &write_request("m-1", &item, create)).await;
    let last = accepted(&client, &write_request("m-2", &item, Op::Add { amount: 2 })).await;
    let refused = client
        .call(&Request::Write(write_request(
            "m-3",
            &item,
            Op::Remove { amount: 100 },
        )))
        .await
        .unwrap();
    assert!(
        matches!(&refused, Response::Error(e) if e.code == ErrorCode::InsufficientStock),
        "{refused:?}"
    );

    let metrics = cluster.coordinator().get("/metrics").await.unwrap();
    assert_eq!(metrics.status, 200);
    let content_type = metrics.content_type.clone().unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type:?}"
    );
    let body = &metrics.body;
    assert!(body.contains("shelfsync_writes_total{"), "{body}");
    for (op, outcome) in [
        ("create", "accepted"),
        ("add", "accepted"),
        ("remove", "insufficient_stock"),
    ] {
        let value = sample(
            body,
            "shelfsync_writes_total",
            &[("op", op), ("outcome", outcome)],
        );
        assert_eq!(
            value,
            Some(1.0),
            "writes_total for {op}/{outcome} in:\n{body}"
        );
    }
    assert!(body.contains("shelfsync_flush_seconds"), "{body}");
    let flushes = sample(body, "shelfsync_flush_seconds_count", &[]).unwrap_or(0.0);
    assert!(flushes >= 1.0, "no flush counted in:\n{body}");
    // Each of the three writes was answered, so each was timed.
    let timed = sample(body, "shelfsync_write_seconds_count", &[]);
    assert_eq!(timed, Some(3.0), "write_seconds_count in:\n{body}");
    let head = sample(body, "shelfsync_head_sequence", &[]);
    assert!(
        head.is_some_and(|h| h >= last.seq as f64),
        "head_sequence {head:?} below the last acknowledged seq {} in:\n{body}",
        last.seq
    );

    // Every line is a comment or `series value`, with a number for the value.
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').unwrap_or(("", ""));
        assert!(series.starts_with("shelfsync_"), "line {line:?}");
        assert!(value.parse::<f64>().is_ok(), "value in line {line:?}");
    }
}
