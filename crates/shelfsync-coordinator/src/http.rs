//! The coordinator's HTTP side: `/healthz`, `/readyz` and `/metrics`; in a
//! build with failpoints also `/debug/failpoints` ([`crate::failpoints`]).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::service::Service;

/// The HTTP routes.
pub fn router(service: Arc<Service>) -> Router {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    #[cfg(feature = "failpoints")]
    let router = router.merge(crate::failpoints::routes());
    router.with_state(service)
}

async fn readyz(State(service): State<Arc<Service>>) -> impl IntoResponse {
    if service.pipeline().has_failed() {
        (StatusCode::SERVICE_UNAVAILABLE, "storage failed\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(service): State<Arc<Service>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            shelfsync_runtime::metrics_text::CONTENT_TYPE,
        )],
        shelfsync_runtime::metrics_text::prometheus_text(&service.metrics().render()),
    )
}

/// Serves the routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(service))
        .with_graceful_shutdown(shutdown)
        .await
}
