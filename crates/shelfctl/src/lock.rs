//! `shelfctl lock` and `shelfctl unlock`: take and give back the lock on one
//! item from the shell, for a stock count (SPEC §5 "Locks"). The grant is a
//! write at the coordinator like any other; while it is held, every write to
//! the item needs the printed token. Taking a lock another holder has is not
//! an error of shelfctl: it says who has it and exits 1.

use std::time::Duration;

use serde::Serialize;
use shelfsync_core::{ItemKey, Op};
use shelfsync_proto::{ErrorCode, ProtoError};

use crate::Outcome;
use crate::config::Config;
use crate::coordinator;

/// What `shelfctl lock` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSettings {
    /// The item (already validated).
    pub key: ItemKey,
    /// Who takes the lock.
    pub holder: String,
    /// The lease.
    pub ttl: Duration,
    /// Print JSON instead of a line of text.
    pub json: bool,
}

/// What `shelfctl unlock` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlockSettings {
    /// The item (already validated).
    pub key: ItemKey,
    /// The token `shelfctl lock` printed.
    pub token: u64,
}

/// A granted lock, as printed.
#[derive(Debug, Serialize)]
struct Granted {
    token: u64,
    holder: String,
    expires_in_ms: u64,
}

/// A key of its own for each run, so that a retry inside the run is safe.
fn idempotency_key(what: &str) -> String {
    let now = shelfsync_proto::time::now_ms();
    format!("shelfctl-{what}-{now}-{}", std::process::id())
}

/// Runs `shelfctl lock`.
pub async fn lock(config: &Config, settings: &LockSettings) -> anyhow::Result<Outcome> {
    let client = coordinator::connect(config).await?;
    let op = Op::LockGrant {
        holder: settings.holder.clone(),
        ttl_ms: u64::try_from(settings.ttl.as_millis()).unwrap_or(u64::MAX),
    };
    let ack = coordinator::write(&client, idempotency_key("lock"), &settings.key, op, None).await;
    client.close().await;
    let ack = match ack {
        Err(ProtoError::Refused(err)) if err.code == ErrorCode::Locked => {
            let (holder, secs) = err
                .locked
                .map(|l| (l.holder, l.expires_in_ms.div_ceil(1000)))
                .unwrap_or_default();
            eprintln!("{} is locked by {holder} for {secs} s more", settings.key);
            return Ok(Outcome::Attention);
        }
        other => other?,
    };
    let Some(lock) = ack.state.item().and_then(|item| item.lock.clone()) else {
        anyhow::bail!("the coordinator accepted the lock but answered without one");
    };
    let granted = Granted {
        token: lock.token,
        expires_in_ms: lock.expires_in_ms(shelfsync_proto::time::now_ms()),
        holder: lock.holder,
    };
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&granted)?);
    } else {
        println!(
            "locked {} for {}: token {} (send it as Lock-Token with every write; \
             `shelfctl unlock {} {} --token {}` ends it)",
            settings.key,
            granted.holder,
            granted.token,
            settings.key.location,
            settings.key.sku,
            granted.token
        );
    }
    Ok(Outcome::Success)
}

/// Runs `shelfctl unlock`: a lock already gone counts as released.
pub async fn unlock(config: &Config, settings: &UnlockSettings) -> anyhow::Result<Outcome> {
    let client = coordinator::connect(config).await?;
    let op = Op::LockRelease {
        token: settings.token,
    };
    let done =
        coordinator::write(&client, idempotency_key("unlock"), &settings.key, op, None).await;
    client.close().await;
    match done {
        Ok(_) => println!("unlocked {}", settings.key),
        Err(ProtoError::Refused(err)) if err.code == ErrorCode::LockLost => {
            println!(
                "{} holds no lock with token {}",
                settings.key, settings.token
            );
        }
        Err(err) => return Err(err.into()),
    }
    Ok(Outcome::Success)
}
