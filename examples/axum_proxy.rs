//! An axum app whose handlers call a rate-limited API through ONE shared throttled client.
//!
//! Every inbound request is turned into an outbound call to the mock "MarTech" API (a
//! Customer.io-like `PUT /v1/customers/{id}`). The throttled client lives in the app state;
//! axum clones the state per request, and every clone shares one bucket and one concurrency
//! cap, so however many requests arrive at once, the API sees at most the configured rate and
//! at most the configured number in flight. Inbound requests simply take longer to answer
//! while they wait for their slot; a 429 from the API pauses all of them at once.
//!
//! ```sh
//! cargo run --example axum_proxy --features mock
//! ```
//!
//! The example starts the mock API (at most 10 requests in any second) and the app on free
//! ports, sends 40 concurrent requests to the app, and prints what the API saw.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::put;
use axum::Router;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;
use tower_throttle::mock::{MockServer, ServerLimit};
use tower_throttle::timeout::BodyTimeout;
use tower_throttle::{Limits, Quota, RetryPolicy, Throttle, ThrottleError};

/// The outbound client: hyper behind the shared gate and the 429-aware retry.
pub type Upstream = Throttle<BodyTimeout<Client<HttpConnector, Full<Bytes>>>>;

/// What every handler gets: the one shared client and where the API lives.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Shared by every inbound request; cloning it shares the bucket.
    pub client: Upstream,
    /// The API's base URL, e.g. `http://127.0.0.1:4000`.
    pub api: String,
}

/// The throttled client for `limits`: retries 429s and transient failures, and gives up on a
/// slot more than `max_wait` away so inbound requests do not hang forever.
pub fn upstream(
    limits: Limits,
    max_wait: Duration,
) -> Result<Upstream, tower_throttle::ConfigError> {
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    Throttle::builder()
        .limits(limits)
        .retry(RetryPolicy::default())
        .timeout(Duration::from_secs(10))
        .max_wait(max_wait)
        .build(hyper)
}

/// The app: `PUT /customers/{id}` forwards the body to the API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/customers/:id", put(update_customer))
        .with_state(state)
}

async fn update_customer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Bytes), (StatusCode, String)> {
    let req = http::Request::put(format!("{}/v1/customers/{id}", state.api))
        .header("x-request-id", &id)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let res = state.client.oneshot(req).await.map_err(|err| {
        // Load shedding is ours, not the API's: say so with 503 and the reason.
        let status = match ThrottleError::from_box(&err) {
            Some(ThrottleError::WaitTooLong { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        };
        (status, err.to_string())
    })?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

/// Serves `app` on `127.0.0.1:0`; returns the address and the server task.
pub async fn serve(app: Router) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            eprintln!("app server stopped: {err}");
        }
    });
    Ok((addr, task))
}

/// Sends `n` concurrent `PUT /customers/{i}` to the app; returns the statuses.
pub async fn hit(addr: SocketAddr, n: usize) -> Vec<StatusCode> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        tasks.spawn(async move {
            let req = http::Request::put(format!("http://{addr}/customers/{i}"))
                .body(Full::new(Bytes::from(format!("{{\"id\":{i}}}"))))
                .expect("valid request");
            match client.request(req).await {
                Ok(res) => res.status(),
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
            }
        });
    }
    let mut statuses = Vec::with_capacity(n);
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    }
    statuses
}

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    let api = MockServer::builder()
        .limit(ServerLimit::sliding_window(10, Duration::from_secs(1))?)
        .latency(Duration::from_millis(50))
        .start()
        .await?;
    // 8/s (headroom under the API's 10/s) and at most 4 calls in flight, for the whole app.
    let limits = Limits::new(Quota::per_second(8)?).with_concurrency(4)?;
    let state = AppState {
        client: upstream(limits, Duration::from_secs(30))?,
        api: api.url(""),
    };
    let (addr, server) = serve(app(state)).await?;
    println!("app at http://{addr}, API at {}", api.url("/"));

    let started = Instant::now();
    let statuses = hit(addr, 40).await;
    let ok = statuses.iter().filter(|s| s.is_success()).count();
    let stats = api.stats();
    println!(
        "{ok}/40 inbound requests answered 200 in {:.1?}",
        started.elapsed()
    );
    println!(
        "the API saw {} requests, {} answered 429, at most {} in any second, at most {} at once",
        stats.received,
        stats.rate_limited,
        api.max_accepted_in_any_window(Duration::from_secs(1)),
        stats.max_in_flight
    );
    server.abort();
    api.shutdown().await;
    assert_eq!(ok, 40, "every inbound request must be answered");
    Ok(())
}
