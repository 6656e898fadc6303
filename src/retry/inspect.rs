//! Reading a refusal's body below the retry layer, so a streaming client's 429 can be told
//! apart by what it says (HubSpot's daily refusal names its policy only there).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::{Classify, MAX_BODY_INSPECTED};
use crate::ConfigError;

/// How long a body is waited for by default: a refusal's JSON comes with its headers, so
/// anything slower is not one worth holding the attempt for.
const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(2);

/// The whole body of a response, read by [`InspectBody`] and put into the response's
/// extensions, where the retry policy reads it before anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedBody(pub Bytes);

/// The statuses whose bodies are read: one bit per code (codes are 100 to 999).
#[derive(Clone, Copy, PartialEq, Eq)]
struct StatusSet([u64; 16]);

impl StatusSet {
    const EMPTY: StatusSet = StatusSet([0; 16]);

    fn insert(&mut self, status: StatusCode) {
        let code = usize::from(status.as_u16());
        self.0[code / 64] |= 1 << (code % 64);
    }

    fn contains(&self, status: StatusCode) -> bool {
        let code = usize::from(status.as_u16());
        self.0[code / 64] & (1 << (code % 64)) != 0
    }

    /// Every status code `http` accepts, in order.
    fn all() -> impl Iterator<Item = StatusCode> {
        (100..1000u16).filter_map(|c| StatusCode::from_u16(c).ok())
    }

    /// Every status code for which `pred` holds.
    fn matching(pred: impl Fn(StatusCode) -> bool) -> StatusSet {
        let mut set = StatusSet::EMPTY;
        Self::all().filter(|s| pred(*s)).for_each(|s| set.insert(s));
        set
    }

    fn iter(&self) -> impl Iterator<Item = StatusCode> + '_ {
        Self::all().filter(|s| self.contains(*s))
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|s| s.as_u16()))
            .finish()
    }
}

/// Applies [`InspectBody`]: reads the bodies of refusals, within bounds, so the retry policy
/// above can classify them.
///
/// The retry policy is generic over the client's response body and cannot wait for a
/// stream, so it reads only a body that is already buffered. [`InspectBodyLayer`] sits
/// between the retry layer and a streaming client (a hyper client's `Incoming`, or
/// [`ThrottleBuilder::head_timeout`](crate::ThrottleBuilder::head_timeout)); for responses
/// whose status the classifier reads bodies of ([`Classify::reads_body`]: 429 by default)
/// it reads the body up to [`MAX_BODY_INSPECTED`] bytes and a time bound (2 s by default):
///
/// * the whole body in time: its bytes go into the response's extensions as
///   [`InspectedBody`], where the policy looks first, and the caller gets the same frames;
/// * larger, slower, or failing: the caller gets the frames read so far followed by the rest
///   of the stream (or the body's error), nothing lost, and the policy decides from the
///   headers as it would without this layer.
///
/// Every other response is handed on at once, its body untouched: a 200 is never waited for.
/// Unlike [`BodyTimeoutLayer`](crate::timeout::BodyTimeoutLayer), which buffers every body
/// under a deadline, this layer keeps bodies streaming and never fails an attempt.
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full, StreamBody};
/// use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
/// use tower_throttle::{retry::{Attempts, InspectBodyLayer}, RetryLayer, RetryPolicy};
/// use tower_throttle::{presets, LocalBucket};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// // A streaming API whose first answer is HubSpot's daily refusal, without the private-app
/// // header that would also say so.
/// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
/// let counter = calls.clone();
/// let api = service_fn(move |_req: http::Request<Full<Bytes>>| {
///     let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
///     async move {
///         let (status, text) = match n {
///             0 => (429, r#"{"errorType":"RATE_LIMIT","policyName":"DAILY"}"#),
///             _ => (200, r#"{"id":"42"}"#),
///         };
///         let frames = futures_util::stream::iter([
///             Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(text.as_bytes()))),
///         ]);
///         Ok::<_, BoxError>(
///             http::Response::builder()
///                 .status(status)
///                 .header("date", "Wed, 02 Dec 2026 23:50:00 GMT")
///                 .body(StreamBody::new(frames))?,
///         )
///     }
/// });
/// let bucket = LocalBucket::new(presets::hubspot());
/// let client = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryPolicy::default().with_bucket(bucket.clone())))
///     .layer(tower_throttle::RateLimitLayer::with_bucket(bucket))
///     .layer(InspectBodyLayer::new())
///     .service(api);
///
/// let start = tokio::time::Instant::now();
/// let res = client.oneshot(http::Request::new(Full::new(Bytes::new()))).await?;
/// assert_eq!(res.status(), 200);
/// // Held until midnight (the server's clock said ten to), not retried at once.
/// assert!(start.elapsed() >= Duration::from_secs(599));
/// assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
/// assert_eq!(res.into_body().collect().await?.to_bytes(), r#"{"id":"42"}"#);
/// # Ok(()) }
/// ```
///
/// Defaults: 429s only, at most [`MAX_BODY_INSPECTED`] bytes, within 2 s of the head.
#[derive(Debug, Clone, Copy)]
pub struct InspectBodyLayer {
    statuses: StatusSet,
    time_limit: Duration,
}

impl Default for InspectBodyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl InspectBodyLayer {
    /// Reads 429 bodies, within 2 s.
    pub fn new() -> Self {
        let mut statuses = StatusSet::EMPTY;
        statuses.insert(StatusCode::TOO_MANY_REQUESTS);
        InspectBodyLayer {
            statuses,
            time_limit: DEFAULT_TIME_LIMIT,
        }
    }

    /// Reads the bodies of exactly the statuses `classifier` reads
    /// ([`Classify::reads_body`]); none, for a classifier that reads no body (the layer
    /// then only wraps bodies).
    pub fn for_classifier<C: Classify>(classifier: &C) -> Self {
        InspectBodyLayer {
            statuses: StatusSet::matching(|s| classifier.reads_body(s)),
            ..Self::new()
        }
    }

    /// Reads the bodies of these statuses (replacing the default 429).
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = StatusSet::EMPTY;
        for status in statuses {
            self.statuses.insert(status);
        }
        self
    }

    /// Waits at most `limit` after the head for the whole body (default 2 s); a slower body
    /// is handed on as it streams, uninspected.
    ///
    /// # Errors
    /// [`ConfigError::Zero`] for zero, which would never inspect anything.
    pub fn time_limit(mut self, limit: Duration) -> Result<Self, ConfigError> {
        if limit.is_zero() {
            return Err(ConfigError::Zero {
                name: "inspect time limit",
            });
        }
        self.time_limit = limit;
        Ok(self)
    }

    /// Whether bodies of `status` are read.
    pub(crate) fn inspects(&self, status: StatusCode) -> bool {
        self.statuses.contains(status)
    }

    /// Reads `res`'s body within these bounds whatever its status, for a caller that has
    /// already asked the classifier (the reqwest middleware, which has no service below it
    /// to wrap).
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn read<B: Body>(
        &self,
        res: http::Response<B>,
    ) -> InspectFuture<std::future::Ready<Result<http::Response<B>, Infallible>>, B> {
        let mut config = *self;
        config.statuses = StatusSet::EMPTY;
        config.statuses.insert(res.status());
        InspectFuture {
            config,
            state: State::Head {
                fut: std::future::ready(Ok(res)),
            },
        }
    }
}

impl<S> Layer<S> for InspectBodyLayer {
    type Service = InspectBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InspectBody {
            inner,
            config: *self,
        }
    }
}

/// Reads the bodies of selected responses within bounds and records them as
/// [`InspectedBody`]; built by [`InspectBodyLayer`], see there.
#[derive(Debug, Clone)]
pub struct InspectBody<S> {
    inner: S,
    config: InspectBodyLayer,
}

impl<S> InspectBody<S> {
    inner_accessors!();
}

impl<S, Req, B> Service<Req> for InspectBody<S>
where
    S: Service<Req, Response = http::Response<B>>,
    B: Body,
{
    type Response = http::Response<PrefixedBody<B>>;
    type Error = S::Error;
    type Future = InspectFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        InspectFuture {
            config: self.config,
            state: State::Head {
                fut: self.inner.call(req),
            },
        }
    }
}

pin_project! {
    /// The response future of [`InspectBody`].
    pub struct InspectFuture<F, B: Body> {
        config: InspectBodyLayer,
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B: Body> {
        Head { #[pin] fut: F },
        Reading { #[pin] sleep: Sleep, read: Option<Read<B>> },
    }
}

/// A body being read: the head waiting for it, the frames so far and a copy of their bytes.
struct Read<B: Body> {
    parts: http::response::Parts,
    // Boxed so a body that is not `Unpin` can be polled here and still be moved into the
    // response afterwards; only inspected responses pay for it.
    body: Pin<Box<B>>,
    frames: VecDeque<Frame<B::Data>>,
    copy: BytesMut,
}

/// How a read ended.
enum End<E> {
    /// The whole body arrived within the bounds.
    Whole,
    /// Too large, too slow, or data the copy cannot take: the rest streams on.
    Partial,
    /// The body failed; the caller gets the error after the frames read.
    Failed(E),
}

impl<B: Body> Read<B> {
    /// Takes one frame into the read; `false` when it cannot be inspected (too large, or data
    /// not in one piece), and the rest must stream.
    fn take(&mut self, frame: Frame<B::Data>) -> bool {
        let fits = match frame.data_ref() {
            // A `Buf` in several pieces cannot be copied without consuming it, and the
            // caller still needs it: such a body streams on.
            Some(data) => {
                let chunk = data.chunk();
                let fits = chunk.len() == data.remaining()
                    && self.copy.len() + chunk.len() <= MAX_BODY_INSPECTED;
                if fits {
                    self.copy.extend_from_slice(chunk);
                }
                fits
            }
            None => true,
        };
        self.frames.push_back(frame);
        fits
    }

    fn finish(self, end: End<B::Error>) -> http::Response<PrefixedBody<B>> {
        let Read {
            mut parts,
            body,
            frames,
            copy,
        } = self;
        let rest = match end {
            End::Whole => {
                parts.extensions.insert(InspectedBody(copy.freeze()));
                Rest::End
            }
            End::Partial => Rest::Stream(body),
            End::Failed(e) => Rest::Failed(Some(e)),
        };
        let body = PrefixedBody {
            kind: Kind::Prefixed { frames, rest },
        };
        http::Response::from_parts(parts, body)
    }
}

impl<F, B, E> Future for InspectFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body,
{
    type Output = Result<http::Response<PrefixedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Head { fut } => {
                    let res = ready!(fut.poll(cx))?;
                    let (parts, body) = res.into_parts();
                    let known_too_large = body
                        .size_hint()
                        .lower()
                        .try_into()
                        .map_or(true, |n: usize| n > MAX_BODY_INSPECTED);
                    if !this.config.inspects(parts.status) || known_too_large {
                        let body = PrefixedBody::plain(body);
                        return Poll::Ready(Ok(http::Response::from_parts(parts, body)));
                    }
                    let read = Read {
                        parts,
                        body: Box::pin(body),
                        frames: VecDeque::new(),
                        copy: BytesMut::new(),
                    };
                    if read.body.is_end_stream() {
                        return Poll::Ready(Ok(read.finish(End::Whole)));
                    }
                    this.state.set(State::Reading {
                        sleep: tokio::time::sleep(this.config.time_limit),
                        read: Some(read),
                    });
                }
                StateProj::Reading { sleep, read } => {
                    let r = read.as_mut().expect("polled after completion");
                    // The body first: a body complete at the deadline is still inspected.
                    let end = loop {
                        match r.body.as_mut().poll_frame(cx) {
                            Poll::Ready(Some(Ok(frame))) => {
                                if !r.take(frame) {
                                    break Some(End::Partial);
                                }
                                if r.body.is_end_stream() {
                                    break Some(End::Whole);
                                }
                            }
                            Poll::Ready(Some(Err(e))) => break Some(End::Failed(e)),
                            Poll::Ready(None) => break Some(End::Whole),
                            Poll::Pending => break None,
                        }
                    };
                    let end = match end {
                        Some(end) => end,
                        None => {
                            ready!(sleep.poll(cx));
                            tracing::debug!(
                                limit = ?this.config.time_limit,
                                "response body not complete in time; not inspected"
                            );
                            End::Partial
                        }
                    };
                    let read = read.take().expect("polled after completion");
                    return Poll::Ready(Ok(read.finish(end)));
                }
            }
        }
    }
}

impl<F, B: Body> fmt::Debug for InspectFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match &self.state {
            State::Head { .. } => "head",
            State::Reading { .. } => "body",
        };
        f.debug_struct("InspectFuture")
            .field("config", &self.config)
            .field("phase", &phase)
            .finish()
    }
}

pin_project! {
    /// The response body behind [`InspectBody`]: the client's body as it was, or, for an
    /// inspected response, the frames read followed by the rest of the stream (or the error
    /// the stream ended with). Same `Data` and `Error` as the client's body; `Unpin` when it
    /// is.
    pub struct PrefixedBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Plain { #[pin] body: B },
        Prefixed { frames: VecDeque<Frame<B::Data>>, rest: Rest<B> },
    }
}

/// What follows the frames read.
enum Rest<B: Body> {
    Stream(Pin<Box<B>>),
    Failed(Option<B::Error>),
    End,
}

impl<B: Body> PrefixedBody<B> {
    /// `body`, untouched.
    pub fn plain(body: B) -> Self {
        PrefixedBody {
            kind: Kind::Plain { body },
        }
    }
}

impl<B: Body> Body for PrefixedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Plain { body } => body.poll_frame(cx),
            KindProj::Prefixed { frames, rest } => {
                if let Some(frame) = frames.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                match rest {
                    Rest::Stream(body) => body.as_mut().poll_frame(cx),
                    Rest::Failed(e) => Poll::Ready(e.take().map(Err)),
                    Rest::End => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain { body } => body.is_end_stream(),
            Kind::Prefixed { frames, rest } => {
                frames.is_empty()
                    && match rest {
                        Rest::Stream(body) => body.is_end_stream(),
                        Rest::Failed(e) => e.is_none(),
                        Rest::End => true,
                    }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain { body } => body.size_hint(),
            Kind::Prefixed { frames, rest } => {
                let read: u64 = frames
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.remaining() as u64)
                    .sum();
                let mut hint = match rest {
                    Rest::Stream(body) => body.size_hint(),
                    Rest::Failed(_) | Rest::End => SizeHint::with_exact(0),
                };
                // Upper first: `set_lower` refuses a lower bound above the upper one.
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint.set_lower(hint.lower().saturating_add(read));
                hint
            }
        }
    }
}

impl<B: Body> fmt::Debug for PrefixedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("PrefixedBody");
        match &self.kind {
            Kind::Plain { .. } => d.field("prefix_frames", &0usize),
            Kind::Prefixed { frames, rest } => d.field("prefix_frames", &frames.len()).field(
                "rest",
                &match rest {
                    Rest::Stream(_) => "stream",
                    Rest::Failed(_) => "error",
                    Rest::End => "end",
                },
            ),
        };
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tower::{service_fn, ServiceExt};

    const DAILY: &[u8] = br#"{"errorType":"RATE_LIMIT","policyName":"DAILY"}"#;

    async fn through<B>(status: u16, body: B) -> http::Response<PrefixedBody<B>>
    where
        B: Body + Send + 'static,
    {
        let mut body = Some(body);
        let api = service_fn(move |_req: ()| {
            let body = body.take().expect("called once");
            async move {
                let res = http::Response::builder().status(status).body(body);
                Ok::<_, http::Error>(res.unwrap())
            }
        });
        InspectBodyLayer::new()
            .layer(api)
            .oneshot(())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn trailers_read_with_the_body_are_handed_on_after_it() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "8".parse().unwrap());
        let frames = stream::iter([
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(&DAILY[..10]))),
            Ok(Frame::data(Bytes::from_static(&DAILY[10..]))),
            Ok(Frame::trailers(trailers.clone())),
        ]);
        let res = through(429, StreamBody::new(frames)).await;
        assert_eq!(
            res.extensions().get::<InspectedBody>(),
            Some(&InspectedBody(Bytes::from_static(DAILY)))
        );
        let collected = res.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), DAILY);
    }

    #[tokio::test]
    async fn data_in_several_pieces_streams_on_uninspected_and_whole() {
        // A `Buf` whose bytes are not one slice cannot be copied without consuming it.
        let chained = Bytes::from_static(&DAILY[..10]).chain(Bytes::from_static(&DAILY[10..]));
        let frames = stream::iter([Ok::<_, std::io::Error>(Frame::data(chained))]);
        let res = through(429, StreamBody::new(frames)).await;
        assert!(res.extensions().get::<InspectedBody>().is_none());
        let mut body = res.into_body();
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            let mut chunk = frame.unwrap().into_data().unwrap();
            data.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        assert_eq!(data, DAILY);
    }

    /// A body that never yields, with a size hint.
    struct Stalled(u64);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Pending
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_length_above_the_bound_is_not_waited_for() {
        let start = tokio::time::Instant::now();
        let too_large = MAX_BODY_INSPECTED as u64 + 1;
        let res = through(429, Stalled(too_large)).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(res.body().size_hint().exact(), Some(too_large));

        // Within the bound, the same body is waited for up to the time limit, then streams.
        let res = through(429, Stalled(100)).await;
        assert_eq!(start.elapsed(), DEFAULT_TIME_LIMIT);
        assert!(res.extensions().get::<InspectedBody>().is_none());
        assert_eq!(res.body().size_hint().exact(), Some(100));
    }

    #[tokio::test]
    async fn an_empty_429_is_inspected_as_empty() {
        let res = through(429, Full::new(Bytes::new())).await;
        assert_eq!(
            res.extensions().get::<InspectedBody>(),
            Some(&InspectedBody(Bytes::new()))
        );
        assert!(res.body().is_end_stream());
    }

    #[test]
    fn configuration() {
        assert!(matches!(
            InspectBodyLayer::new().time_limit(Duration::ZERO),
            Err(ConfigError::Zero { .. })
        ));
        let layer = InspectBodyLayer::for_classifier(&crate::classify::HttpClassifier::new());
        assert!(layer.inspects(StatusCode::TOO_MANY_REQUESTS));
        assert!(!layer.inspects(StatusCode::OK) && !layer.inspects(StatusCode::FORBIDDEN));
        let off = crate::classify::HttpClassifier::new().hubspot_daily(false);
        assert_eq!(
            format!("{:?}", InspectBodyLayer::for_classifier(&off).statuses),
            "[]"
        );
        let layer = InspectBodyLayer::new().statuses([StatusCode::FORBIDDEN]);
        assert!(layer.inspects(StatusCode::FORBIDDEN));
        assert!(!layer.inspects(StatusCode::TOO_MANY_REQUESTS));
    }

    #[test]
    fn the_policy_reads_an_inspected_body_before_the_body_itself() {
        use tower::retry::Policy;
        // No retries: only a spent quota (which spends no attempt) is retried at all.
        let backoff = crate::backoff::Backoff::builder()
            .max_retries(0)
            .build()
            .unwrap();
        let mut policy = crate::RetryPolicy::default().with_backoff(backoff);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let refusal = |inspected: Option<&'static [u8]>| {
            let mut res = http::Response::builder()
                .status(429)
                .header("date", "Wed, 02 Dec 2026 23:50:00 GMT")
                .body(())
                .unwrap();
            if let Some(bytes) = inspected {
                res.extensions_mut()
                    .insert(InspectedBody(Bytes::from_static(bytes)));
            }
            Ok::<_, tower::BoxError>(res)
        };
        let mut req = http::Request::new(Bytes::new());
        let mut plain = refusal(None);
        assert!(policy.clone().retry(&mut req, &mut plain).is_none());
        let mut daily = refusal(Some(DAILY));
        assert!(policy.retry(&mut req, &mut daily).is_some());
    }
}
