//! Helpers shared by the loopback integration tests.
#![allow(dead_code)]

#[cfg(feature = "mock")]
pub mod hubspot;
#[cfg(feature = "redis")]
pub mod redis;
pub mod scripted;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceExt};
use tower_throttle::retry::Attempts;

/// A plain hyper-util client over loopback, with a replayable body type.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `n` requests, each with a distinct `x-request-id`, from `workers` tasks; returns the
/// final statuses and attempt counts.
pub async fn send_all<S>(svc: S, uri: http::Uri, n: usize, workers: usize) -> Vec<(u16, u32)>
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>
        + Clone
        + Send
        + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    fan_out(n, workers, move |id| {
        let svc = svc.clone();
        let req = http::Request::post(uri.clone())
            .header("x-request-id", id.to_string())
            .body(Full::new(Bytes::from(format!("{{\"id\":{id}}}"))))
            .unwrap();
        async move {
            let res = svc.oneshot(req).await.unwrap();
            (res.status().as_u16(), attempts(res.extensions()))
        }
    })
    .await
}

/// Runs `send(id)` for ids `0..n`, spread over `workers` tasks that each go in order; returns
/// every result (grouped by worker).
pub async fn fan_out<T, F, Fut>(n: usize, workers: usize, send: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let mut tasks = Vec::new();
    for w in 0..workers {
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for id in (w..n).step_by(workers) {
                out.push(send(id).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// The attempt count the retry layer recorded on a response (0 without one).
pub fn attempts(extensions: &http::Extensions) -> u32 {
    extensions.get::<Attempts>().map_or(0, |a| a.0)
}

/// The 429-storm server: 40/s with a burst of 10, answering 429 with `Retry-After` in seconds.
/// A client paced at 40/s but configured with a burst of 40 opens against it with a storm.
pub async fn storm_server() -> tower_throttle::mock::MockServer {
    use tower_throttle::mock::{MockServer, RetryAfterFormat, ServerLimit};
    MockServer::builder()
        .limit(ServerLimit::token_bucket(40.0, 10).expect("valid server limit"))
        .retry_after(RetryAfterFormat::Seconds)
        .start()
        .await
        .expect("mock server starts")
}
