//! The whole stack against raw hyper on loopback, limits far above the load: what does
//! throttling cost when it does not throttle? Target: at least 95% of raw throughput.
//!
//! Run: `cargo bench -p tower-throttle-benches --bench stack -- --warm-up-time 1 --measurement-time 5`
//!
//! Each iteration sends a batch of 64 concurrent requests to the mock server (no limit, no
//! latency) and waits for all answers; criterion reports time per batch, so the ratio of two
//! rows is the ratio of their throughputs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, Service, ServiceExt};
use tower_throttle::mock::MockServer;
use tower_throttle::Probe;
use tower_throttle::{dead_letter::MemoryStore, Quota, RetryPolicy, Throttle};

const BATCH: usize = 64;

async fn batch<S, R>(svc: &S, uri: &http::Uri)
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<R>> + Clone,
    S::Error: Into<BoxError>,
{
    let calls = (0..BATCH).map(|_| {
        let req = http::Request::post(uri.clone())
            .body(Full::new(Bytes::from_static(b"{\"event\":\"signup\"}")))
            .expect("valid request");
        svc.clone().oneshot(req)
    });
    for res in futures_util::future::join_all(calls).await {
        let res = res.map_err(Into::into).expect("loopback request failed");
        assert!(res.status().is_success());
    }
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt
        .block_on(MockServer::builder().start())
        .expect("mock server");
    let uri = server.uri("/v1/track");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let far_above = || Quota::per_second(1_000_000_000).expect("valid quota");

    let gate_and_retry = Throttle::builder()
        .limits(far_above())
        .retry(RetryPolicy::default())
        .build(client.clone())
        .expect("stack");
    let full = {
        let _guard = rt.enter();
        Throttle::builder()
            .limits(far_above())
            .retry(RetryPolicy::default())
            .adaptive(Probe::new(1e8, 1.0, 1e9).expect("controller"))
            .dead_letters(Arc::new(MemoryStore::new()))
            .timeout(Duration::from_secs(10))
            .build(client.clone())
            .expect("stack")
    };

    let mut group = c.benchmark_group("loopback_batch_of_64");
    group.throughput(criterion::Throughput::Elements(BATCH as u64));
    group.bench_function("raw_hyper", |b| {
        b.to_async(&rt).iter(|| batch(&client, &uri))
    });
    group.bench_function("gate_and_retry", |b| {
        b.to_async(&rt).iter(|| batch(&gate_and_retry, &uri))
    });
    group.bench_function("full_stack", |b| {
        b.to_async(&rt).iter(|| batch(&full, &uri))
    });
    group.finish();
    rt.block_on(server.shutdown());
}

criterion_group!(benches, stack);
criterion_main!(benches);
