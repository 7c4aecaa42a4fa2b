//! Waiting for a condition with a deadline, instead of sleeping.
//!
//! [`until`] calls a check every few milliseconds until it reports
//! [`Check::Done`], and fails after a timeout with what the check saw last,
//! so a test that waits for "the replica has the write" says what it had
//! instead when it gives up.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Time between two checks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// One look at a condition.
#[derive(Debug)]
pub enum Check<T> {
    /// The condition holds; the wait ends with this value.
    Done(T),
    /// Not yet; the text says what was seen (quoted if the wait times out).
    NotYet(String),
}

/// Calls `check` every [`POLL_INTERVAL`] until it is [`Check::Done`] and
/// returns its value. Fails when `check` fails or `timeout` passes; `what`
/// names the condition in the error.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Check<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match check().await? {
            Check::Done(value) => return Ok(value),
            Check::NotYet(seen) => seen,
        };
        if Instant::now() >= deadline {
            anyhow::bail!("{what}: not within {timeout:?}; last seen: {seen}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
