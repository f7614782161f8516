//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz` (the process serves),
//! `/readyz` (200 only while every route has a verified master and shutdown has not begun),
//! `/status` (JSON). It only reads route state.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::route::{FenceRecord, Route, SentinelStatus};

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Every route of the process.
    pub routes: Vec<Arc<Route>>,
    /// Renders `/metrics`; `None` when another recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// Cancelled when shutdown begins (readiness turns false).
    pub draining: CancellationToken,
}

/// Serves the admin endpoints on `listener` until `stop`.
pub async fn serve(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    match &s.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed\n").into_response(),
    }
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    if s.draining.is_cancelled() {
        problems.push("shutting down".to_string());
    }
    for r in &s.routes {
        let status = r.sentinel_status();
        let reachable = status.iter().filter(|st| st.reachable).count();
        let blind = reachable == 0;
        if r.current().is_none() {
            problems.push(format!(
                "route {}: no verified master{}",
                r.name(),
                if blind {
                    " and no sentinel reachable"
                } else {
                    ""
                }
            ));
        } else if blind {
            notes.push(format!(
                "route {}: no sentinel reachable, serving the last verified master",
                r.name()
            ));
        } else if reachable <= status.len() / 2 {
            notes.push(format!(
                "route {}: only {reachable}/{} sentinels reachable",
                r.name(),
                status.len()
            ));
        }
    }
    let mut body = if problems.is_empty() {
        "ready".to_string()
    } else {
        format!("not ready: {}", problems.join("; "))
    };
    if !notes.is_empty() {
        body.push_str(&format!(" (degraded: {})", notes.join("; ")));
    }
    body.push('\n');
    let code = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body).into_response()
}

#[derive(Serialize)]
struct StatusDoc {
    version: &'static str,
    draining: bool,
    routes: Vec<RouteDoc>,
}

#[derive(Serialize)]
struct RouteDoc {
    name: String,
    master_name: String,
    listen: String,
    state: &'static str,
    master: Option<MasterDoc>,
    clients_open: usize,
    clients_held: usize,
    last_fence: Option<FenceRecord>,
    last_node_error: Option<String>,
    sentinels_reachable: usize,
    sentinel_majority: bool,
    sentinels: Vec<SentinelStatus>,
}

#[derive(Serialize)]
struct MasterDoc {
    addr: String,
    announced: String,
    epoch: u64,
    config_epoch: u64,
    verified_unix: f64,
    sessions: usize,
}

async fn status(State(s): State<AdminState>) -> Response {
    let routes = s
        .routes
        .iter()
        .map(|r| {
            let master = r.current().map(|m| MasterDoc {
                addr: m.addr.to_string(),
                announced: m.announced.clone(),
                epoch: m.epoch,
                config_epoch: m.config_epoch,
                verified_unix: m
                    .verified_at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
                sessions: m.sessions(),
            });
            let sentinels = r.sentinel_status();
            RouteDoc {
                name: r.name().to_string(),
                master_name: r.config.master_name.clone(),
                listen: r.config.listen.to_string(),
                state: if master.is_some() {
                    "routing"
                } else {
                    "holding"
                },
                master,
                clients_open: r.open_clients(),
                clients_held: r.held_clients(),
                last_fence: r.last_fence(),
                last_node_error: r.node_error(),
                sentinels_reachable: sentinels.iter().filter(|s| s.reachable).count(),
                sentinel_majority: sentinels.iter().filter(|s| s.reachable).count()
                    > sentinels.len() / 2,
                sentinels,
            }
        })
        .collect();
    axum::Json(StatusDoc {
        version: env!("CARGO_PKG_VERSION"),
        draining: s.draining.is_cancelled(),
        routes,
    })
    .into_response()
}
