//! A HubSpot-like portal for the daily-quota tests: the refusal bodies HubSpot sends, and a
//! mock server whose clock stands ten minutes before midnight UTC.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::Full;
use tokio::time::Instant;
use tower::{BoxError, ServiceExt};
use tower_throttle::mock::{MockServer, RetryAfterFormat, ServerLimit};

/// HubSpot's refusal of a spent daily allowance.
pub const DAILY: &str = r#"{"status":"error","message":"You have reached your daily limit.","errorType":"RATE_LIMIT","correlationId":"c033cdaa","policyName":"DAILY","requestId":"3d3e35b7"}"#;
/// HubSpot's refusal of its ten-secondly limit: an ordinary 429.
pub const SECONDLY: &str = r#"{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","policyName":"TEN_SECONDLY_ROLLING"}"#;
/// The `Date` of every refusal: the daily reset is 600 s away whatever the account's zone is
/// assumed to be (quarter-hour probing agrees).
pub const TEN_TO_MIDNIGHT: &str = "Wed, 02 Dec 2026 23:50:00 GMT";
/// From [`TEN_TO_MIDNIGHT`] to the daily reset.
pub const TO_RESET: Duration = Duration::from_secs(600);

/// A portal of an OAuth app: `allowance` requests per `window`, then refused with `body`,
/// `headers` and a `Date` of [`TEN_TO_MIDNIGHT`], with neither `Retry-After` (HubSpot's daily
/// refusal gives none) nor the private-app daily header.
pub async fn portal(
    allowance: u32,
    window: Duration,
    body: impl Into<Bytes>,
    mut headers: HeaderMap,
) -> MockServer {
    headers.insert(http::header::DATE, TEN_TO_MIDNIGHT.parse().unwrap());
    MockServer::builder()
        .limit(ServerLimit::sliding_window(allowance, window).unwrap())
        .retry_after(RetryAfterFormat::Omit)
        .limited_answer(body, headers)
        .start()
        .await
        .unwrap()
}

/// A response head dated [`TEN_TO_MIDNIGHT`], with `framing` (a length or chunked).
pub fn head(status: &str, framing: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\ndate: {TEN_TO_MIDNIGHT}\r\n{framing}\r\n\r\n").into_bytes()
}

/// Contact `i`'s create request to `uri`, with its own `x-request-id`.
pub fn post(uri: http::Uri, i: usize) -> http::Request<Full<Bytes>> {
    http::Request::post(uri)
        .header("x-request-id", format!("contact-{i}"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

/// One request's end: its status and attempts (or its error's text), and when it ended.
pub type Outcome = (Result<(u16, u32), String>, Duration);

/// Sends `n` contact requests to `server` at once through `client`.
pub async fn send<S, R>(client: S, server: &MockServer, n: usize) -> Vec<Outcome>
where
    S: tower::Service<http::Request<Full<Bytes>>, Response = http::Response<R>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    R: Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let req = post(server.uri("/crm/v3/objects/contacts"), i);
            let client = client.clone();
            tokio::spawn(async move {
                let result = client.oneshot(req).await;
                let result =
                    result.map(|res| (res.status().as_u16(), super::attempts(res.extensions())));
                (result.map_err(|e| e.to_string()), start.elapsed())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
