//! Live metrics: Prometheus text on `/metrics` and a liveness check on `/health`, served on a local
//! address while a job runs. Metric names are documented in the README.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets (seconds) for commit latency and freshness.
const BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 30.0, 60.0,
];

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> std::io::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(std::io::Error::other)
}

/// Serves `/metrics` and `/health` on `addr` until the returned future is dropped.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/health", get(|| std::future::ready("ok\n")));
    Ok(async move { axum::serve(listener, app).await })
}
