//! Helpers shared by the loopback integration tests.
#![allow(dead_code)]

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
    let mut tasks = Vec::new();
    for w in 0..workers {
        let svc = svc.clone();
        let uri = uri.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for id in (w..n).step_by(workers) {
                let req = http::Request::post(uri.clone())
                    .header("x-request-id", id.to_string())
                    .body(Full::new(Bytes::from(format!("{{\"id\":{id}}}"))))
                    .unwrap();
                let res = svc.clone().oneshot(req).await.unwrap();
                let attempts = res.extensions().get::<Attempts>().map_or(0, |a| a.0);
                out.push((res.status().as_u16(), attempts));
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
