//! The coordinator's failpoints, for the fault suite (docs/testing.md).
//!
//! The points sit in [`crate::pipeline`]; their names below are an
//! interface of the fault suite. They are set from `FAILPOINTS` at start
//! and through `PUT /debug/failpoints/{name}` ([`routes`]), with the
//! machinery of [`shelfsync_proto::failpoints`]. All of it is compiled in
//! only with the `failpoints` feature; otherwise the routes answer 404.

#[cfg(feature = "failpoints")]
pub use shelfsync_proto::failpoints::set;
pub use shelfsync_proto::failpoints::{crash_point, io_error, setup_from_env, triggered};

/// Crash (`abort`, as a `kill -9` would) after a group's ledger commit
/// returned (durable) and before any of its jobs is answered. Any
/// triggered action crashes.
pub const AFTER_COMMIT_BEFORE_ACK: &str = "coordinator-after-commit-before-ack";
/// The sequencer's ledger commit fails before anything is written:
/// `return` or `return(eio)` with EIO, `return(enospc)` with ENOSPC.
pub const LEDGER_COMMIT: &str = "coordinator-ledger-commit";
/// A deliberate bug, to prove the fault suite catches it: the sequencer
/// answers a group before committing it and commits it 50 ms later, so a
/// crash in between loses acknowledged writes.
pub const ACK_BEFORE_DURABLE: &str = "coordinator-ack-before-durable";
/// A deliberate bug, to prove the fault suite catches it: the sequencer
/// ignores existing idempotency records, so a retried write is applied
/// again.
pub const SKIP_IDEMPOTENCY_LOOKUP: &str = "coordinator-skip-idempotency-lookup";

/// `PUT /debug/failpoints/{name}` and `GET /debug/failpoints`.
#[cfg(feature = "failpoints")]
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::routing::{get, put};

    async fn configure(Path(name): Path<String>, actions: String) -> (StatusCode, String) {
        match set(&name, &actions) {
            Ok(()) => (StatusCode::OK, "ok\n".into()),
            Err(err) => (StatusCode::BAD_REQUEST, format!("{err}\n")),
        }
    }
    async fn list() -> axum::Json<std::collections::BTreeMap<String, String>> {
        axum::Json(shelfsync_proto::failpoints::list())
    }
    axum::Router::new()
        .route("/debug/failpoints", get(list))
        .route("/debug/failpoints/{name}", put(configure))
}
