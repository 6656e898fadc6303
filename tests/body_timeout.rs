//! The body-covering timeout: a server that sends its headers at once and then drips the body
//! cannot hold a caller past the timeout. In paused time (exact), and over loopback against a
//! real dripping server (a few lines of tokio), side by side with the head-only timeout.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::time::Instant;
use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
use tower_throttle::retry::Attempts;
use tower_throttle::timeout::BodyTimeoutLayer;
use tower_throttle::{
    backoff::{Backoff, Jitter},
    Quota, RetryPolicy, Throttle,
};

// Only the scripted server: the rest of `common` needs the `mock` feature.
#[path = "common/scripted.rs"]
#[allow(dead_code)]
mod scripted;

type Drip = StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, BoxError>>>;

/// A body of `n` bytes, one every `every`.
fn drip(n: usize, every: Duration) -> Drip {
    let s = stream::unfold(0, move |i| async move {
        if i == n {
            return None;
        }
        tokio::time::sleep(every).await;
        Some((Ok(Frame::data(Bytes::from_static(b"x"))), i + 1))
    });
    StreamBody::new(futures_util::StreamExt::boxed(s))
}

fn fast(body: &'static [u8]) -> Drip {
    let s = stream::once(async move { Ok(Frame::data(Bytes::from_static(body))) });
    StreamBody::new(futures_util::StreamExt::boxed(s))
}

fn is_elapsed(e: &BoxError) -> bool {
    e.is::<tower::timeout::error::Elapsed>()
}

#[tokio::test(start_paused = true)]
async fn a_dripping_body_cannot_hold_the_caller_past_the_timeout() {
    // Headers at once, then 30 bytes at 1 byte/s, under a 5 s timeout. The head-only
    // timeout lets the caller wait 30 s for the body.
    let api = service_fn(|_req: http::Request<()>| async {
        Ok::<_, BoxError>(http::Response::new(drip(30, Duration::from_secs(1))))
    });
    let start = Instant::now();
    let err = ServiceBuilder::new()
        .layer(BodyTimeoutLayer::new(Duration::from_secs(5)).unwrap())
        .service(api)
        .oneshot(http::Request::new(()))
        .await
        .unwrap_err();
    assert!(is_elapsed(&err), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(5));

    // What the head-only timeout covers: the response comes at once, the body 30 s later.
    let start = Instant::now();
    let res = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .service(api)
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes().len(),
        30
    );
    assert_eq!(start.elapsed(), Duration::from_secs(30));

    // A body complete within the timeout is handed over whole.
    let ok = service_fn(|_req: http::Request<()>| async {
        Ok::<_, BoxError>(http::Response::new(drip(4, Duration::from_secs(1))))
    });
    let res = ServiceBuilder::new()
        .layer(BodyTimeoutLayer::new(Duration::from_secs(5)).unwrap())
        .service(ok)
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "xxxx");
    assert!(BodyTimeoutLayer::new(Duration::ZERO).is_err());
}

#[tokio::test(start_paused = true)]
async fn the_throttle_builders_timeout_covers_the_body_and_retries_it() {
    // First attempt drips; the retry answers at once. The caller gets the whole body after
    // the 5 s timeout plus the 1 s backoff, in two attempts.
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let api = service_fn(move |_req: http::Request<Full<Bytes>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let body = if n == 0 {
                drip(30, Duration::from_secs(1))
            } else {
                fast(b"{\"ok\":true}")
            };
            Ok::<_, BoxError>(http::Response::new(body))
        }
    });
    let backoff = Backoff::builder().jitter(Jitter::None).build().unwrap();
    let client = Throttle::builder()
        .limits(Quota::per_second(10).unwrap())
        .retry(RetryPolicy::default().with_backoff(backoff))
        .timeout(Duration::from_secs(5))
        .build(api)
        .unwrap();
    let start = Instant::now();
    let res = client
        .oneshot(http::Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(6));
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "{\"ok\":true}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[cfg(feature = "mock")]
mod loopback {
    use super::*;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    /// Answers every request with its head at once, then `len` bytes one every `every`.
    async fn dripping_server(len: usize, every: Duration) -> std::net::SocketAddr {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
        let mut script = vec![(Duration::ZERO, head.into_bytes())];
        script.extend((0..len).map(|_| (every, b"x".to_vec())));
        crate::scripted::scripted(script).await
    }

    fn request(addr: std::net::SocketAddr) -> http::Request<Full<Bytes>> {
        http::Request::get(format!("http://{addr}/v1/slow"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    #[tokio::test]
    async fn a_dripping_server_over_loopback_is_cut_off_at_the_timeout() {
        // 20 bytes at 50 ms: a 1 s body, under a 200 ms timeout.
        let addr = dripping_server(20, Duration::from_millis(50)).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

        let start = std::time::Instant::now();
        let err = ServiceBuilder::new()
            .layer(BodyTimeoutLayer::new(Duration::from_millis(200)).unwrap())
            .service(client.clone())
            .oneshot(request(addr))
            .await
            .unwrap_err();
        let took = start.elapsed();
        assert!(is_elapsed(&err), "{err}");
        // The 200 ms deadline, not the 1 s body (scheduling on a loaded machine may add a
        // little; the body would add 800 ms).
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_millis(700),
            "{took:?}"
        );

        // The head-only timeout is satisfied by the headers, and the caller then waits out
        // the whole body.
        let start = std::time::Instant::now();
        let res = ServiceBuilder::new()
            .timeout(Duration::from_millis(200))
            .service(client)
            .oneshot(request(addr))
            .await
            .unwrap();
        assert!(start.elapsed() < Duration::from_millis(200));
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 20);
        assert!(
            start.elapsed() >= Duration::from_millis(950),
            "{:?}",
            start.elapsed()
        );
    }
}
