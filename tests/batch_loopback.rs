//! BatchLayer against the mock server's batch endpoints over loopback: every record delivered
//! once or dead-lettered on its own, the vendors' item and byte limits respected, one batch
//! one call against the limit.
#![cfg(feature = "mock")]

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_throttle::mock::{BatchEndpoint, MockServer, ServerLimit};
use tower_throttle::{
    batch::{
        BrazeTrack, CustomerIoBatch, HubSpotBatch, JsonArrayBatch, MailchimpBatch, MailchimpMembers,
    },
    BatchLayer,
};
use tower_throttle::{
    dead_letter::{DeadLetterStore, MemoryStore},
    DeadLetterLayer,
};
use tower_throttle::{run_bulk, BulkOptions};
use tower_throttle::{LocalBucket, Quota, RateLimitLayer};
use tower_throttle::{RetryLayer, RetryPolicy};

mod common;

const HUBSPOT_PATH: &str = "/crm/v3/objects/contacts/batch/upsert";

fn contact(server: &MockServer, n: u64) -> http::Request<Full<Bytes>> {
    http::Request::post(server.uri("/crm/v3/objects/contacts"))
        .header("authorization", "Bearer pat-na1-secret")
        .body(Full::from(format!(
            r#"{{"id":"c{n}@example.com","idProperty":"email","properties":{{"firstname":"C{n}"}}}}"#
        )))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_batches_deliver_every_contact_once_and_dead_letter_the_invalid_ones() {
    const CONTACTS: u64 = 3_000;
    let server = MockServer::builder()
        .limit(ServerLimit::sliding_window(20, Duration::from_secs(1)).unwrap())
        .batch_route(HUBSPOT_PATH, BatchEndpoint::hubspot())
        .item_fail_ratio(0.03)
        .item_reject_ratio(0.01)
        .start()
        .await
        .unwrap();
    let bucket = LocalBucket::new(Quota::per_second(18).unwrap());
    let store = MemoryStore::new();
    let batching = BatchLayer::new(HubSpotBatch::upsert("contacts"));
    let batch_stats = batching.stats();
    let client = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(store.clone()))
        .layer(batching)
        .layer(RetryLayer::new(
            RetryPolicy::default().with_bucket(bucket.clone()),
        ))
        .layer(RateLimitLayer::with_bucket(bucket))
        .service(common::client());
    let jobs = stream::iter((0..CONTACTS).map(|n| contact(&server, n)));
    let report = run_bulk(jobs, client, BulkOptions::default().concurrency(1_000)).await;

    let stats = server.stats();
    assert_eq!(report.processed, CONTACTS);
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.succeeded, stats.items_accepted);
    assert_eq!(report.dead_lettered, stats.items_rejected);
    assert_eq!(store.len().await.unwrap() as u64, stats.items_rejected);
    assert!(
        stats.items_rejected > 0 && stats.items_failed > 0,
        "{stats:?}"
    );
    // Every written contact is distinct: nothing delivered twice.
    assert_eq!(stats.distinct_ids, stats.items_accepted);
    assert_eq!(stats.duplicate_ids, 0);
    assert_eq!(stats.rate_limited + stats.invalid, 0, "{stats:?}");
    // Only failed items went out again.
    assert_eq!(
        stats.items_received,
        CONTACTS + batch_stats.rebatched(),
        "{stats:?}"
    );
    assert_eq!(stats.accepted, batch_stats.batches());
    // Full batches, plus the items sent again: each answer's failed items wait out one
    // back-off together and then fill the next batch first, so only the last few answers'
    // failures go out in part-filled batches of their own.
    assert!(
        batch_stats.batches() <= CONTACTS / 100 + 25,
        "{}",
        batch_stats.batches()
    );
    // A dead letter is the contact's own request, credentials redacted.
    let letter = &store.list().await.unwrap()[0];
    assert!(letter.uri.ends_with("/crm/v3/objects/contacts"));
    assert!(letter
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v == "[REDACTED]"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customerio_batches_stay_under_the_byte_limit() {
    const PEOPLE: u64 = 600;
    const MAX_BYTES: usize = 4_000;
    let server = MockServer::builder()
        .batch_route(
            "/api/v2/batch",
            BatchEndpoint::customerio()
                .with_max_bytes(MAX_BYTES)
                .unwrap(),
        )
        .start()
        .await
        .unwrap();
    // A linger far above the time the 600 jobs take to queue, even on a loaded machine:
    // batches then go out because they are full, which is what the count below checks
    // (the default 20 ms let a slow scheduler send part-filled ones).
    let batching = BatchLayer::new(CustomerIoBatch::new())
        .with_max_bytes(MAX_BYTES)
        .unwrap()
        .with_linger(Duration::from_secs(1));
    let batch_stats = batching.stats();
    let client = ServiceBuilder::new()
        .layer(batching)
        .service(common::client());
    let person = |n: u64| {
        http::Request::post(server.uri("/api/v1/customers"))
            .body(Full::from(format!(
                r#"{{"type":"person","identifiers":{{"id":"{n}"}},"action":"identify","attributes":{{"email":"p{n}@example.com","plan":"pro"}}}}"#
            )))
            .unwrap()
    };
    let report = run_bulk(
        stream::iter((0..PEOPLE).map(person)),
        client,
        BulkOptions::default().concurrency(600),
    )
    .await;
    let stats = server.stats();
    assert_eq!(report.succeeded, PEOPLE, "{report:?}");
    assert_eq!(stats.invalid, 0, "a batch broke the byte limit: {stats:?}");
    assert_eq!((stats.distinct_ids, stats.duplicate_ids), (PEOPLE, 0));
    // About 100 bytes per person: full batches hold 35 to 40.
    assert!(
        batch_stats.batches() <= PEOPLE / 35 + 2,
        "{}",
        batch_stats.batches()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailchimp_operations_go_500_to_a_call_and_are_accepted_not_delivered() {
    let server = MockServer::builder()
        .limit(ServerLimit::sliding_window(10, Duration::from_secs(1)).unwrap())
        .batch_route("/3.0/batches", BatchEndpoint::mailchimp())
        .start()
        .await
        .unwrap();
    let client = ServiceBuilder::new()
        // A linger far longer than submitting 1,200 items takes, even on a loaded machine: only
        // full batches go before it, so the count of calls does not depend on scheduling.
        .layer(BatchLayer::new(MailchimpBatch).with_linger(Duration::from_secs(3)))
        .service(common::client());
    let member = |n: u64| {
        http::Request::put(server.uri(&format!("/3.0/lists/abc123/members/{n:032x}")))
            .body(Full::from(format!(
                r#"{{"email_address":"m{n}@example.com","status_if_new":"subscribed"}}"#
            )))
            .unwrap()
    };
    let report = run_bulk(
        stream::iter((0..1_200).map(member)),
        client,
        BulkOptions::default().concurrency(1_200),
    )
    .await;
    // Mailchimp only queued them: accepted, outcome not yet known, never "delivered".
    assert_eq!(
        (report.accepted, report.succeeded),
        (1_200, 0),
        "{report:?}"
    );
    let stats = server.stats();
    assert_eq!(stats.accepted, 3, "{stats:?}");
    assert_eq!((stats.items_accepted, stats.distinct_ids), (1_200, 1_200));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_array_multi_status_is_split_per_item() {
    let server = MockServer::builder()
        .batch_route(
            "/v1/events/bulk",
            BatchEndpoint::json_array(50, 1 << 20).unwrap(),
        )
        .item_reject_ratio(0.2)
        .seed(3)
        .start()
        .await
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(BatchLayer::new(
            JsonArrayBatch::new("/v1/events/bulk", 50, 1 << 20).unwrap(),
        ))
        .service(common::client());
    let event = |n: u64| {
        http::Request::post(server.uri("/v1/events"))
            .body(Full::from(format!(r#"{{"id":{n},"name":"signup"}}"#)))
            .unwrap()
    };
    let calls = (0..200).map(|n| client.clone().oneshot(event(n)));
    let mut statuses = Vec::new();
    for res in futures_util::future::join_all(calls).await {
        let res = res.unwrap();
        let status = res.status().as_u16();
        if status == 400 {
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], br#"{"error":"rejected","status":400}"#);
        }
        statuses.push(status);
    }
    let stats = server.stats();
    let rejected = statuses.iter().filter(|s| **s == 400).count() as u64;
    assert_eq!(rejected, stats.items_rejected);
    assert_eq!(200 - rejected, stats.items_accepted);
    assert!(rejected > 10 && rejected < 70, "{rejected}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_mock_refuses_batches_over_its_limits_without_consuming_the_limit() {
    let server = MockServer::builder()
        .limit(ServerLimit::sliding_window(1, Duration::from_secs(60)).unwrap())
        .batch_route(HUBSPOT_PATH, BatchEndpoint::hubspot())
        .batch_route(
            "/api/v2/batch",
            BatchEndpoint::customerio().with_max_bytes(100).unwrap(),
        )
        .start()
        .await
        .unwrap();
    let client = common::client();
    let post = |path: &str, body: String| {
        http::Request::post(server.uri(path))
            .body(Full::from(body))
            .unwrap()
    };
    let inputs: Vec<String> = (0..101).map(|n| format!(r#"{{"id":"{n}"}}"#)).collect();
    let too_many = format!(r#"{{"inputs":[{}]}}"#, inputs.join(","));
    let res = client.request(post(HUBSPOT_PATH, too_many)).await.unwrap();
    assert_eq!(res.status(), 400);
    let too_big = format!(
        r#"{{"batch":[{{"type":"person","attributes":{{"x":"{}"}}}}]}}"#,
        "y".repeat(100)
    );
    let res = client
        .request(post("/api/v2/batch", too_big))
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let not_a_batch = post(HUBSPOT_PATH, r#"{"input":[]}"#.into());
    assert_eq!(client.request(not_a_batch).await.unwrap().status(), 400);
    // The one call the limit allows is still there.
    let ok = format!(r#"{{"inputs":[{}]}}"#, inputs[..100].join(","));
    let res = client.request(post(HUBSPOT_PATH, ok)).await.unwrap();
    assert_eq!(res.status(), 200);
    let stats = server.stats();
    assert_eq!(
        (stats.invalid, stats.accepted, stats.items_accepted),
        (3, 1, 100)
    );
    server.shutdown().await;
}

// ---- Batch truth over loopback, through `Throttle::builder().batch(..)` against the mock
// server's vendor answers. Each asserts what the server holds against what callers heard, so
// nothing depends on scheduling.

const HUBSPOT_ROUTE: &str = "/crm/v3/objects/{type}/batch/{action}";

/// The usual stack with batching, dead letters in `store`, 40 calls/s against the mock's 50.
fn batched<F: tower_throttle::batch::BatchFormat>(
    batch: BatchLayer<F>,
    store: &MemoryStore,
) -> tower_throttle::Batched<F> {
    tower_throttle::Throttle::builder()
        .limits(Quota::per_second(40).unwrap())
        .retry(RetryPolicy::default())
        .timeout(Duration::from_secs(1))
        .dead_letters(store.clone())
        .batch(batch)
        .build(common::client())
        .unwrap()
}

async fn mock(builder: tower_throttle::mock::MockServerBuilder) -> MockServer {
    builder
        .limit(ServerLimit::sliding_window(50, Duration::from_secs(1)).unwrap())
        .seed(11)
        .start()
        .await
        .unwrap()
}

fn hubspot_create(server: &MockServer, n: u64) -> http::Request<Full<Bytes>> {
    http::Request::post(server.uri("/crm/v3/objects/contacts"))
        .body(Full::from(format!(
            r#"{{"properties":{{"email":"c{n}@example.com"}}}}"#
        )))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_unattributed_hubspot_errors_are_never_reported_delivered() {
    let server = mock(
        MockServer::builder()
            .batch_route(HUBSPOT_ROUTE, BatchEndpoint::hubspot())
            .unattributed_error_ratio(0.05),
    )
    .await;
    let store = MemoryStore::new();
    let client = batched(BatchLayer::new(HubSpotBatch::upsert("contacts")), &store);
    let jobs = stream::iter((0..1_000).map(|n| contact(&server, n)));
    let report = run_bulk(jobs, client, BulkOptions::default().concurrency(1_000)).await;
    let stats = server.stats();
    assert!(stats.items_unattributed > 0, "{stats:?}");
    // Every "delivered" is a record the server holds; nothing is lost.
    assert_eq!(
        report.succeeded,
        stats.records_applied(),
        "{report:?} {stats:?}"
    );
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.succeeded + report.dead_lettered, 1_000);
    assert_eq!(stats.records_written_twice(), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_customerio_200_with_errors_fails_only_the_named_items() {
    let server = mock(
        MockServer::builder()
            .batch_route("/api/v2/batch", BatchEndpoint::customerio())
            .errors_in_ok_ratio(1.0)
            .item_reject_ratio(0.03),
    )
    .await;
    let store = MemoryStore::new();
    let client = batched(BatchLayer::new(CustomerIoBatch::new()), &store);
    let person = |n: u64| {
        http::Request::post(server.uri("/api/v2/entity"))
            .body(Full::from(format!(
                r#"{{"type":"person","identifiers":{{"id":"{n}"}},"action":"identify","attributes":{{}}}}"#
            )))
            .unwrap()
    };
    let report = run_bulk(
        stream::iter((0..1_000).map(person)),
        client,
        BulkOptions::default().concurrency(1_000),
    )
    .await;
    let stats = server.stats();
    assert!(stats.items_rejected > 0);
    assert_eq!(
        report.dead_lettered, stats.items_rejected,
        "{report:?} {stats:?}"
    );
    assert_eq!(report.succeeded, stats.records_applied());
    assert_eq!(report.succeeded + report.dead_lettered, 1_000);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_a_whole_batch_400_from_one_input_is_bisected_to_that_input() {
    let server = mock(
        MockServer::builder()
            .batch_route(HUBSPOT_ROUTE, BatchEndpoint::hubspot())
            .bad_input_marker("invalid"),
    )
    .await;
    let store = MemoryStore::new();
    let layer = BatchLayer::new(HubSpotBatch::upsert("contacts"));
    let client = batched(layer, &store);
    let stats_handle = client.batch_stats().clone();
    let bad = [17u64, 140, 222];
    let jobs = stream::iter((0..300).map(|n| {
        let email = if bad.contains(&n) {
            format!("invalid-{n}@example.com")
        } else {
            format!("c{n}@example.com")
        };
        http::Request::post(server.uri("/crm/v3/objects/contacts"))
            .body(Full::from(format!(
                r#"{{"id":"{email}","idProperty":"email","properties":{{}}}}"#
            )))
            .unwrap()
    }));
    let report = run_bulk(jobs, client, BulkOptions::default().concurrency(300)).await;
    let stats = server.stats();
    assert_eq!(
        (report.succeeded, report.dead_lettered),
        (297, 3),
        "{report:?}"
    );
    assert_eq!(stats.records_applied(), 297);
    let letters = store.list().await.unwrap();
    assert!(letters
        .iter()
        .all(|l| format!("{:?}", l.body).contains("invalid-")));
    // At most about log2(100) = 7 splits per bad input.
    assert!(
        stats_handle.bisections() <= 3 * 7,
        "{}",
        stats_handle.bisections()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_a_create_whose_answer_was_lost_is_not_created_twice() {
    let server = mock(
        MockServer::builder()
            .batch_route(HUBSPOT_ROUTE, BatchEndpoint::hubspot())
            .timeout_after_apply(0.3, Duration::from_secs(30)),
    )
    .await;
    // Without a unique property: at-most-once, the lost records kept for reconciliation.
    let store = MemoryStore::new();
    let client = batched(
        BatchLayer::new(HubSpotBatch::create("contacts"))
            .with_max_items(20)
            .unwrap(),
        &store,
    );
    let jobs = stream::iter((0..200).map(|n| hubspot_create(&server, n)));
    let report = run_bulk(jobs, client, BulkOptions::default().concurrency(200)).await;
    let stats = server.stats();
    assert!(stats.answers_withheld > 0, "{stats:?}");
    assert_eq!(stats.records_written_twice(), 0, "{stats:?}");
    assert_eq!(stats.records_applied(), 200, "every batch was applied");
    let letters = store.list().await.unwrap();
    assert_eq!(report.dead_lettered as usize, letters.len());
    assert!(!letters.is_empty() && letters.iter().all(|l| l.outcome_unknown));
    assert_eq!(report.succeeded + report.dead_lettered, 200);

    // Proven by the email: resent, and OBJECT_ALREADY_EXISTS counts as delivered.
    let server = mock(
        MockServer::builder()
            .batch_route(HUBSPOT_ROUTE, BatchEndpoint::hubspot())
            .timeout_after_apply(0.3, Duration::from_secs(30)),
    )
    .await;
    let store = MemoryStore::new();
    let client = batched(
        BatchLayer::new(HubSpotBatch::create("contacts").proven_by("email"))
            .with_max_items(20)
            .unwrap(),
        &store,
    );
    let jobs = stream::iter((0..200).map(|n| hubspot_create(&server, n)));
    let report = run_bulk(jobs, client, BulkOptions::default().concurrency(200)).await;
    let stats = server.stats();
    assert!(stats.items_refused_existing > 0, "{stats:?}");
    assert_eq!(stats.records_written_twice(), 0);
    assert_eq!(report.succeeded, 200, "{report:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_item_level_429s_are_retried_after_their_wait_and_delivered() {
    let server = mock(
        MockServer::builder()
            .batch_route(HUBSPOT_ROUTE, BatchEndpoint::hubspot())
            .item_rate_limit_ratio(0.05)
            .item_retry_after(Duration::from_millis(500)),
    )
    .await;
    let store = MemoryStore::new();
    let client = batched(BatchLayer::new(HubSpotBatch::upsert("contacts")), &store);
    let jobs = stream::iter((0..1_000).map(|n| contact(&server, n)));
    let report = run_bulk(jobs, client, BulkOptions::default().concurrency(1_000)).await;
    let stats = server.stats();
    assert!(stats.items_rate_limited > 0);
    // Three sends per record: a record refused three times in a row (1 in 8,000) fails.
    assert_eq!(report.succeeded + report.dead_lettered, 1_000, "{report:?}");
    assert_eq!(report.succeeded, stats.records_applied());
    assert_eq!(stats.records_written_twice(), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_braze_and_mailchimp_members_fail_only_the_named_records() {
    let server = mock(
        MockServer::builder()
            .batch_route("/users/track", BatchEndpoint::braze())
            .batch_route("/3.0/lists/{list_id}", BatchEndpoint::mailchimp_list())
            .item_reject_ratio(0.05),
    )
    .await;
    let store = MemoryStore::new();
    let braze = batched(BatchLayer::new(BrazeTrack::attributes()), &store);
    let profile = |n: u64| {
        http::Request::post(server.uri("/users/track"))
            .body(Full::from(format!(
                r#"{{"external_id":"u{n}","plan":"pro"}}"#
            )))
            .unwrap()
    };
    let report = run_bulk(
        stream::iter((0..300).map(profile)),
        braze,
        BulkOptions::default().concurrency(300),
    )
    .await;
    let braze_stats = server.records_on("/users/track");
    assert_eq!(report.succeeded, braze_stats.applied, "{report:?}");
    assert_eq!(report.succeeded + report.dead_lettered, 300);
    assert!(report.dead_lettered > 0);

    let list = batched(
        BatchLayer::new(MailchimpMembers::upsert("abc123").unwrap()),
        &store,
    );
    let member = |n: u64| {
        http::Request::post(server.uri("/3.0/lists/abc123"))
            .body(Full::from(format!(
                r#"{{"email_address":"m{n}@example.com","status":"subscribed"}}"#
            )))
            .unwrap()
    };
    let report = run_bulk(
        stream::iter((0..600).map(member)),
        list,
        BulkOptions::default().concurrency(600),
    )
    .await;
    let members = server.records_on("/3.0/lists/abc123");
    assert_eq!(report.succeeded, members.applied, "{report:?}");
    assert_eq!(report.succeeded + report.dead_lettered, 600);
    server.shutdown().await;
}

/// Braze's attributes with every object counted against the limit (as plans that count data
/// points do): the format is Braze's own but for its cost.
#[derive(Debug)]
struct BrazePerObject(BrazeTrack);

impl tower_throttle::batch::BatchFormat for BrazePerObject {
    fn max_items(&self) -> usize {
        self.0.max_items()
    }
    fn max_bytes(&self) -> usize {
        self.0.max_bytes()
    }
    fn endpoint(&self) -> (http::Method, &str) {
        self.0.endpoint()
    }
    fn envelope(&self) -> tower_throttle::batch::Envelope {
        self.0.envelope()
    }
    fn encode_item(
        &self,
        id: u64,
        head: &http::request::Parts,
        body: &Bytes,
    ) -> Result<Bytes, tower::BoxError> {
        self.0.encode_item(id, head, body)
    }
    fn decode(
        &self,
        status: http::StatusCode,
        body: &Bytes,
        items: &[tower_throttle::batch::Sent<'_>],
    ) -> Result<Vec<tower_throttle::batch::ItemResult>, tower::BoxError> {
        self.0.decode(status, body, items)
    }
    fn cost(&self, items: usize, _bytes: usize) -> u32 {
        items as u32
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_a_batch_costing_more_than_the_gate_burst_is_cut_to_fit() {
    let server =
        mock(MockServer::builder().batch_route("/users/track", BatchEndpoint::braze())).await;
    // 100 objects per second, a burst of 50: a full batch of 75 could never be admitted.
    let gate = tower_throttle::rate_limit::WeightedRateLimitLayer::new(
        Quota::per_second(100).unwrap().with_burst(50).unwrap(),
    );
    let layer = BatchLayer::new(BrazePerObject(BrazeTrack::attributes()));
    let stats = layer.stats();
    let client = ServiceBuilder::new()
        .layer(layer)
        .layer(gate)
        .service(common::client());
    let profile = |n: u64| {
        http::Request::post(server.uri("/users/track"))
            .body(Full::from(format!(r#"{{"external_id":"u{n}"}}"#)))
            .unwrap()
    };
    let report = run_bulk(
        stream::iter((0..300).map(profile)),
        client,
        BulkOptions::default().concurrency(300),
    )
    .await;
    assert_eq!(report.succeeded, 300, "{report:?}");
    assert_eq!(server.records_on("/users/track").applied, 300);
    // Every batch fit the burst: at least 300 / 50 calls, and none refused by the gate.
    assert!(stats.batches() >= 6, "{}", stats.batches());
    assert_eq!(stats.failed(), 0);
    server.shutdown().await;
}
