//! The mock's vendor batch answers and injected faults over real loopback sockets: one test
//! per answer shape and per fault, each asserting the server's exact counts. Requests go one
//! at a time and nothing sleeps, so no assertion depends on timing or scheduling.
#![cfg(feature = "mock")]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tower_throttle::mock::{BatchEndpoint, MockServer, MockServerBuilder};
use tower_throttle::ConfigError;

mod common;

const UPSERT: &str = "/crm/v3/objects/contacts/batch/upsert";
const CREATE: &str = "/crm/v3/objects/contacts/batch/create";
const UPDATE: &str = "/crm/v3/objects/contacts/batch/update";
const CIO: &str = "/api/v2/batch";
const BRAZE: &str = "/users/track";
const BATCHES: &str = "/3.0/batches";
const LIST: &str = "/3.0/lists/abc123";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn call(method: Method, url: &str, body: Option<&Value>) -> Reply {
    let payload = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(payload))
        .unwrap();
    let resp = common::client().request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).expect("a JSON answer"),
    }
}

async fn post(server: &MockServer, path: &str, body: Value) -> Reply {
    call(Method::POST, &server.url(path), Some(&body)).await
}

async fn get(url: &str) -> Reply {
    call(Method::GET, url, None).await
}

/// A server with HubSpot's three contact routes, Customer.io, Braze, Mailchimp batches and
/// one Mailchimp list.
fn vendors() -> MockServerBuilder {
    MockServer::builder()
        .batch_route(
            "/crm/v3/objects/{type}/batch/upsert",
            BatchEndpoint::hubspot(),
        )
        .batch_route(
            "/crm/v3/objects/{type}/batch/create",
            BatchEndpoint::hubspot(),
        )
        .batch_route(
            "/crm/v3/objects/{type}/batch/update",
            BatchEndpoint::hubspot(),
        )
        .batch_route(CIO, BatchEndpoint::customerio())
        .batch_route(BRAZE, BatchEndpoint::braze())
        .batch_route(BATCHES, BatchEndpoint::mailchimp())
        .batch_route("/3.0/lists/{list_id}", BatchEndpoint::mailchimp_list())
}

/// HubSpot upsert inputs for contacts `range`, by email, each traced by its number.
fn upserts(range: std::ops::Range<u32>) -> Value {
    let inputs: Vec<Value> = range
        .map(|n| {
            json!({"id": format!("c{n}@example.com"), "idProperty": "email",
                   "objectWriteTraceId": n.to_string(), "properties": {"firstname": format!("C{n}")}})
        })
        .collect();
    json!({ "inputs": inputs })
}

fn creates(emails: &[&str]) -> Value {
    let inputs: Vec<Value> = emails
        .iter()
        .enumerate()
        .map(|(n, email)| json!({"objectWriteTraceId": n.to_string(), "properties": {"email": email}}))
        .collect();
    json!({ "inputs": inputs })
}

fn people(range: std::ops::Range<u32>) -> Value {
    let batch: Vec<Value> = range
        .map(|n| {
            json!({"type": "person", "action": "identify", "identifiers": {"id": n.to_string()},
                   "attributes": {"email": format!("p{n}@example.com")}})
        })
        .collect();
    json!({ "batch": batch })
}

fn trace_ids(errors: &Value) -> Vec<String> {
    errors
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.pointer("/context/objectWriteTraceId/0"))
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn hubspot_upsert_answers_results_by_trace_id_and_says_which_records_are_new() {
    let server = vendors().start().await.unwrap();
    let first = post(&server, UPSERT, upserts(0..3)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["status"], "COMPLETE");
    let results = first.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[1]["objectWriteTraceId"], "1");
    assert_eq!(results[1]["properties"], json!({"firstname": "C1"}));
    assert!(results.iter().all(|r| r["new"] == true));
    assert!(first.body.get("numErrors").is_none());

    let again = post(&server, UPSERT, upserts(2..4)).await;
    let results = again.body["results"].as_array().unwrap();
    assert_eq!(
        (results[0]["new"].clone(), results[1]["new"].clone()),
        (json!(false), json!(true))
    );
    // The same HubSpot object answers both writes of c2.
    assert_eq!(results[0]["id"], first.body["results"][2]["id"]);

    let stats = server.stats();
    assert_eq!(
        (stats.records_applied(), stats.records_written_twice()),
        (4, 1)
    );
    assert_eq!(server.record_writes(UPSERT)["email=c2@example.com"], 2);
    let route = server.records_on(UPSERT);
    assert_eq!(
        (route.applied, route.written_twice, route.writes),
        (4, 1, 5)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn hubspot_create_of_an_existing_identity_is_object_already_exists_and_not_applied() {
    let server = vendors().start().await.unwrap();
    let first = post(
        &server,
        CREATE,
        creates(&["a@example.com", "b@example.com"]),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        first.body["results"][0].get("new").is_none(),
        "creates carry no `new`"
    );

    let resend = post(
        &server,
        CREATE,
        creates(&["c@example.com", "B@example.com"]),
    )
    .await;
    assert_eq!(resend.status, StatusCode::MULTI_STATUS);
    assert_eq!(resend.body["numErrors"], 1);
    assert_eq!(
        resend.body["errors"][0]["category"],
        "OBJECT_ALREADY_EXISTS"
    );
    assert_eq!(trace_ids(&resend.body["errors"]), ["1"]);
    let existing = first.body["results"][1]["id"].as_str().unwrap();
    assert!(resend.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains(existing));
    assert_eq!(resend.body["results"][0]["objectWriteTraceId"], "0");

    let route = server.records_on(CREATE);
    assert_eq!(
        (route.applied, route.written_twice, route.refused_existing),
        (3, 0, 1)
    );
    let stats = server.stats();
    assert_eq!((stats.items_accepted, stats.items_refused_existing), (3, 1));
    server.shutdown().await;
}

#[tokio::test]
async fn hubspot_creates_without_a_unique_value_are_new_objects_and_a_repeat_is_written_twice() {
    let server = vendors().start().await.unwrap();
    let anonymous =
        json!({"inputs": [{"objectWriteTraceId": "0", "properties": {"firstname": "Ann"}}]});
    let first = post(&server, CREATE, anonymous.clone()).await;
    let second = post(&server, CREATE, anonymous).await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::OK, StatusCode::OK)
    );
    assert_ne!(
        first.body["results"][0]["id"],
        second.body["results"][0]["id"]
    );
    assert_eq!(server.stats().records_written_twice(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn hubspot_update_rewrites_by_id_and_patterns_keep_each_object_type_apart() {
    let server = vendors().start().await.unwrap();
    let update = json!({"inputs": [{"id": "17", "objectWriteTraceId": "0", "properties": {"city": "Oslo"}}]});
    assert_eq!(
        post(&server, UPDATE, update.clone()).await.status,
        StatusCode::OK
    );
    let companies = "/crm/v3/objects/companies/batch/update";
    assert_eq!(
        post(&server, companies, update).await.status,
        StatusCode::OK
    );
    assert_eq!(server.record_writes(UPDATE)["hs_object_id=17"], 1);
    assert_eq!(server.records_on(companies).applied, 1);
    assert_eq!(server.stats().records_written_twice(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn customerio_answers_200_empty_or_207_with_errors_by_batch_index() {
    let server = vendors()
        .item_reject_ratio(0.3)
        .item_fail_ratio(0.1)
        .seed(5)
        .start()
        .await
        .unwrap();
    let reply = post(&server, CIO, people(0..40)).await;
    let stats = server.stats();
    let errors = reply.body["errors"].as_array().unwrap();
    assert_eq!(reply.status, StatusCode::MULTI_STATUS);
    assert_eq!(
        errors.len() as u64,
        stats.items_rejected + stats.items_failed
    );
    assert!(
        stats.items_rejected > 0 && stats.items_failed > 0,
        "{stats:?}"
    );
    let invalid = errors.iter().filter(|e| e["reason"] == "invalid").count() as u64;
    assert_eq!(invalid, stats.items_rejected);
    assert!(errors
        .iter()
        .all(|e| e["field"] == "identifiers" && e["batch_index"].is_u64()));
    assert_eq!(stats.records_applied(), 40 - errors.len() as u64);
    // An item named in `errors` was not stored; every other one was.
    let writes = server.record_writes(CIO);
    for e in errors {
        let index = e["batch_index"].as_u64().unwrap();
        assert!(!writes.contains_key(&format!("id={index}")));
    }

    let clean = MockServer::builder()
        .batch_route(CIO, BatchEndpoint::customerio())
        .start()
        .await
        .unwrap();
    let reply = post(&clean, CIO, people(0..5)).await;
    assert_eq!((reply.status, reply.body), (StatusCode::OK, json!({})));
    server.shutdown().await;
    clean.shutdown().await;
}

#[tokio::test]
async fn fault_customerio_200_carries_errors() {
    let server = vendors()
        .item_reject_ratio(0.25)
        .errors_in_ok_ratio(1.0)
        .seed(2)
        .start()
        .await
        .unwrap();
    let reply = post(&server, CIO, people(0..20)).await;
    let stats = server.stats();
    assert_eq!(reply.status, StatusCode::OK);
    let errors = reply.body["errors"].as_array().unwrap();
    assert!(!errors.is_empty());
    assert_eq!(errors.len() as u64, stats.items_rejected);
    assert_eq!(stats.records_applied(), 20 - stats.items_rejected);
    server.shutdown().await;
}

#[tokio::test]
async fn braze_answers_201_with_counts_non_fatal_errors_and_400_when_nothing_is_valid() {
    let server = vendors()
        .item_reject_ratio(0.3)
        .seed(11)
        .start()
        .await
        .unwrap();
    let attributes: Vec<Value> = (0..30)
        .map(|n| json!({"external_id": format!("u{n}"), "plan": "pro"}))
        .collect();
    let events: Vec<Value> = (0..30)
        .map(|n| json!({"external_id": format!("u{n}"), "name": "signup", "time": "2026-12-01T00:00:00Z"}))
        .collect();
    let reply = post(
        &server,
        BRAZE,
        json!({"attributes": attributes, "events": events}),
    )
    .await;
    let stats = server.stats();
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["message"], "success");
    let errors = reply.body["errors"].as_array().unwrap();
    assert_eq!(errors.len() as u64, stats.items_rejected);
    let processed = reply.body["attributes_processed"].as_u64().unwrap()
        + reply.body["events_processed"].as_u64().unwrap();
    assert_eq!(processed, stats.items_accepted);
    assert!(
        reply.body.get("purchases_processed").is_none(),
        "no purchases were sent"
    );
    assert!(errors.iter().all(|e| ["attributes", "events"]
        .contains(&e["input_array"].as_str().unwrap())
        && e["index"].as_u64().unwrap() < 30));

    let too_many: Vec<Value> = (0..76)
        .map(|n| json!({"external_id": format!("u{n}")}))
        .collect();
    let reply = post(&server, BRAZE, json!({ "attributes": too_many })).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    let all_bad = MockServer::builder()
        .batch_route(BRAZE, BatchEndpoint::braze())
        .item_reject_ratio(1.0)
        .start()
        .await
        .unwrap();
    let reply = post(
        &all_bad,
        BRAZE,
        json!({"purchases": [{"external_id": "u1", "product_id": "p", "price": -1}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body["errors"][0],
        json!({"type": "object is not valid", "input_array": "purchases", "index": 0})
    );
    assert_eq!(all_bad.stats().records_applied(), 0);
    server.shutdown().await;
    all_bad.shutdown().await;
}

fn operations(range: std::ops::Range<u32>) -> Value {
    let ops: Vec<Value> = range
        .map(|n| {
            json!({"method": "PUT", "path": format!("/lists/abc123/members/{n:032x}"),
                   "operation_id": format!("op-{n}"),
                   "body": json!({"email_address": format!("m{n}@example.com"), "status_if_new": "subscribed"}).to_string()})
        })
        .collect();
    json!({ "operations": ops })
}

#[tokio::test]
async fn mailchimp_batches_are_pending_then_finished_with_per_operation_results() {
    let server = vendors()
        .item_reject_ratio(0.2)
        .seed(4)
        .start()
        .await
        .unwrap();
    let submitted = post(&server, BATCHES, operations(0..50)).await;
    assert_eq!(submitted.status, StatusCode::OK);
    assert_eq!(
        (
            &submitted.body["status"],
            &submitted.body["total_operations"]
        ),
        (&json!("pending"), &json!(50))
    );
    let status_url = server.url(&format!(
        "{BATCHES}/{}",
        submitted.body["id"].as_str().unwrap()
    ));
    let started = get(&status_url).await;
    assert_eq!(started.body["status"], "started");
    let finished = get(&status_url).await;
    assert_eq!(finished.body["status"], "finished");
    assert_eq!(finished.body["finished_operations"], 50);
    let errored = finished.body["errored_operations"].as_u64().unwrap();
    let stats = server.stats();
    assert_eq!(errored, stats.items_rejected);
    assert!(errored > 0);

    let results_url = finished.body["response_body_url"].as_str().unwrap();
    let results = get(results_url).await;
    let results = results.body.as_array().unwrap();
    assert_eq!(results.len(), 50);
    assert_eq!(results[7]["operation_id"], "op-7");
    let failed: Vec<&Value> = results.iter().filter(|r| r["status_code"] == 400).collect();
    assert_eq!(failed.len() as u64, errored);
    let response: Value = serde_json::from_str(failed[0]["response"].as_str().unwrap()).unwrap();
    assert_eq!(response["status"], 400);
    assert_eq!(stats.records_applied(), 50 - errored);
    // Two status requests went through the limiter; the download did not.
    assert_eq!(server.stats().received, 3);

    let unknown = get(&server.url(&format!("{BATCHES}/nope"))).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    server.shutdown().await;
}

#[tokio::test]
async fn mailchimp_refuses_a_batch_beyond_the_pending_cap_with_429() {
    let server = MockServer::builder()
        .batch_route(
            BATCHES,
            BatchEndpoint::mailchimp().with_max_pending(2).unwrap(),
        )
        .start()
        .await
        .unwrap();
    let first = post(&server, BATCHES, operations(0..2)).await;
    assert_eq!(
        post(&server, BATCHES, operations(2..4)).await.status,
        StatusCode::OK
    );
    let refused = post(&server, BATCHES, operations(4..6)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.body["title"], "Too Many Requests");
    let status_url = server.url(&format!("{BATCHES}/{}", first.body["id"].as_str().unwrap()));
    get(&status_url).await;
    get(&status_url).await;
    assert_eq!(
        post(&server, BATCHES, operations(4..6)).await.status,
        StatusCode::OK
    );
    let stats = server.stats();
    assert_eq!((stats.pending_refused, stats.rate_limited), (1, 1));
    assert_eq!(stats.records_applied(), 6);
    assert_eq!(BatchEndpoint::mailchimp().max_pending(), 500);
    server.shutdown().await;
}

fn members(emails: &[&str], update_existing: bool) -> Value {
    let members: Vec<Value> = emails
        .iter()
        .map(|e| json!({"email_address": e, "status": "subscribed"}))
        .collect();
    json!({"members": members, "update_existing": update_existing})
}

#[tokio::test]
async fn mailchimp_list_batch_subscribe_sorts_members_into_new_updated_and_errors() {
    let server = vendors().start().await.unwrap();
    let first = post(
        &server,
        LIST,
        members(&["a@example.com", "b@example.com"], false),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        (&first.body["total_created"], &first.body["error_count"]),
        (&json!(2), &json!(0))
    );
    assert_eq!(first.body["new_members"][0]["list_id"], "abc123");

    let refused = post(
        &server,
        LIST,
        members(&["A@example.com", "c@example.com"], false),
    )
    .await;
    assert_eq!(refused.status, StatusCode::OK);
    assert_eq!(refused.body["error_count"], 1);
    assert_eq!(refused.body["errors"][0]["email_address"], "A@example.com");
    assert_eq!(
        refused.body["errors"][0]["error_code"],
        "ERROR_CONTACT_EXISTS"
    );

    let updated = post(&server, LIST, members(&["b@example.com"], true)).await;
    assert_eq!(
        (
            &updated.body["total_updated"],
            &updated.body["total_created"]
        ),
        (&json!(1), &json!(0))
    );

    let too_many: Vec<String> = (0..501).map(|n| format!("m{n}@example.com")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    assert_eq!(
        post(&server, LIST, members(&too_many, true)).await.status,
        StatusCode::BAD_REQUEST
    );

    let route = server.records_on(LIST);
    assert_eq!(
        (route.applied, route.written_twice, route.refused_existing),
        (3, 1, 1)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn fault_unattributed_hubspot_errors_count_in_num_errors_and_are_not_applied() {
    let server = vendors()
        .unattributed_error_ratio(0.3)
        .seed(8)
        .start()
        .await
        .unwrap();
    let reply = post(&server, UPSERT, upserts(0..40)).await;
    let stats = server.stats();
    assert_eq!(reply.status, StatusCode::MULTI_STATUS);
    let errors = reply.body["errors"].as_array().unwrap();
    assert!(stats.items_unattributed >= 2, "{stats:?}");
    assert_eq!(
        reply.body["numErrors"].as_u64().unwrap(),
        stats.items_unattributed
    );
    assert!(
        trace_ids(&reply.body["errors"]).is_empty(),
        "nothing names a trace id"
    );
    // Alternately `context.ids` and no context at all.
    assert!(errors[0]["context"]["ids"].is_array());
    assert!(errors[1].get("context").is_none());
    let results = reply.body["results"].as_array().unwrap();
    assert_eq!(results.len() as u64, 40 - stats.items_unattributed);
    assert_eq!(stats.records_applied(), results.len() as u64);
    server.shutdown().await;
}

#[tokio::test]
async fn fault_a_bad_input_refuses_the_whole_batch_and_bisection_converges_on_it() {
    let server = vendors().bad_input_marker("invalid").start().await.unwrap();
    let mut inputs: Vec<Value> = upserts(0..16)["inputs"].as_array().unwrap().clone();
    inputs[11]["id"] = json!("invalid-7@example.com");
    let refused = post(&server, UPSERT, json!({ "inputs": inputs })).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.body["status"], "error");
    assert_eq!(refused.body["category"], "VALIDATION_ERROR");
    let message = refused.body["message"].as_str().unwrap();
    assert!(message.starts_with("Property values were not valid: "));
    assert!(message.contains("invalid-7@example.com"), "{message}");
    assert_eq!(server.stats().records_applied(), 0);

    // Halve what was refused until only the bad input is left.
    let mut queue = vec![inputs];
    let mut refused_alone = Vec::new();
    while let Some(batch) = queue.pop() {
        let reply = post(&server, UPSERT, json!({ "inputs": batch })).await;
        match reply.status {
            StatusCode::OK => {}
            StatusCode::BAD_REQUEST if batch.len() == 1 => refused_alone.push(batch[0].clone()),
            StatusCode::BAD_REQUEST => {
                let (left, right) = batch.split_at(batch.len() / 2);
                queue.push(left.to_vec());
                queue.push(right.to_vec());
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(refused_alone.len(), 1);
    assert_eq!(refused_alone[0]["id"], "invalid-7@example.com");
    let stats = server.stats();
    assert_eq!(
        (stats.records_applied(), stats.records_written_twice()),
        (15, 0)
    );
    // 16 -> 8 -> 4 -> 2 -> 1: the first refusal and four on the way down.
    assert_eq!(stats.bad_input_batches, 1 + 5);
    assert_eq!(stats.invalid, stats.bad_input_batches);

    let cio = post(
        &server,
        CIO,
        json!({"batch": [{"type": "person", "identifiers": {"email": "invalid-7@example.com"}}]}),
    )
    .await;
    assert_eq!(cio.status, StatusCode::BAD_REQUEST);
    assert!(cio.body["errors"][0].get("batch_index").is_none());
    let braze = post(
        &server,
        BRAZE,
        json!({"attributes": [{"external_id": "u1", "email": "invalid-7@example.com"}]}),
    )
    .await;
    assert_eq!(braze.status, StatusCode::BAD_REQUEST);
    assert!(braze.body["message"]
        .as_str()
        .unwrap()
        .contains("invalid-7@example.com"));
    server.shutdown().await;
}

#[tokio::test]
async fn fault_timeout_after_apply_applies_the_batch_then_stays_silent() {
    let server = vendors()
        .timeout_after_apply(1.0, Duration::from_secs(3_600))
        .start()
        .await
        .unwrap();
    let url = server.url(CREATE);
    let body = creates(&["a@example.com", "b@example.com"]);
    let send = |body: Value| {
        let url = url.clone();
        tokio::spawn(async move {
            let req = Request::post(url)
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            common::client().request(req).await.map(|r| r.status())
        })
    };
    let lost = send(body.clone());
    let stats = server.wait_for(|s| s.answers_withheld == 1).await;
    assert_eq!((stats.records_applied(), stats.accepted), (2, 1));
    // The client gives up on its answer and, not knowing, sends the creates again.
    lost.abort();
    let resend = send(body);
    let stats = server.wait_for(|s| s.answers_withheld == 2).await;
    assert_eq!(stats.records_applied(), 2);
    assert_eq!(server.records_on(CREATE).refused_existing, 2);
    assert!(!resend.is_finished());
    resend.abort();
    // Shutdown ends the silence instead of waiting an hour for it.
    server.shutdown().await;
}

#[tokio::test]
async fn fault_item_level_429s_are_rate_limits_in_a_207_with_retry_after() {
    let server = vendors()
        .item_rate_limit_ratio(0.25)
        .item_retry_after(Duration::from_millis(1_500))
        .seed(3)
        .start()
        .await
        .unwrap();
    let reply = post(&server, UPSERT, upserts(0..40)).await;
    let stats = server.stats();
    assert_eq!(reply.status, StatusCode::MULTI_STATUS);
    assert_eq!(reply.headers["retry-after"], "2");
    let errors = reply.body["errors"].as_array().unwrap();
    assert!(stats.items_rate_limited > 0);
    assert_eq!(errors.len() as u64, stats.items_rate_limited);
    assert!(errors.iter().all(|e| e["category"] == "RATE_LIMITS"));
    assert_eq!(trace_ids(&reply.body["errors"]).len(), errors.len());
    assert_eq!(stats.records_applied(), 40 - stats.items_rate_limited);
    server.shutdown().await;
}

#[tokio::test]
async fn duplicates_are_counted_per_identity_and_per_route() {
    let server = vendors().start().await.unwrap();
    post(&server, UPSERT, upserts(0..10)).await;
    post(&server, UPSERT, upserts(5..15)).await;
    post(&server, CIO, people(0..3)).await;
    post(&server, CIO, people(0..3)).await;
    let stats = server.stats();
    assert_eq!(stats.records_applied(), 15 + 3);
    assert_eq!(stats.records_written_twice(), 5 + 3);
    assert_eq!(server.records_on(UPSERT).written_twice, 5);
    assert_eq!(server.records_on(CIO).writes, 6);
    assert_eq!(server.records_on("/nothing/here").applied, 0);
    // The request-level duplicate check agrees for batches whose items carry ids.
    assert_eq!(stats.duplicate_ids, 5 + 3);
    server.shutdown().await;
}

#[tokio::test]
async fn fault_options_are_checked() {
    let sum = MockServer::builder()
        .item_fail_ratio(0.5)
        .item_rate_limit_ratio(0.3)
        .unattributed_error_ratio(0.3)
        .check();
    assert!(matches!(sum, Err(ConfigError::OutOfRange { .. })));
    let nan = MockServer::builder().timeout_after_apply(f64::NAN, Duration::from_secs(1));
    assert!(nan.check().is_err());
    assert!(matches!(
        MockServer::builder().bad_input_marker("").check(),
        Err(ConfigError::Invalid(_))
    ));
    assert!(BatchEndpoint::mailchimp().with_max_pending(0).is_err());
}

#[tokio::test]
async fn every_fault_draw_is_the_same_for_the_same_seed() {
    let faulty = || {
        vendors()
            .item_fail_ratio(0.1)
            .item_reject_ratio(0.1)
            .item_rate_limit_ratio(0.1)
            .unattributed_error_ratio(0.1)
            .errors_in_ok_ratio(0.5)
            .seed(21)
    };
    let mut answers = Vec::new();
    for _ in 0..2 {
        let server = faulty().start().await.unwrap();
        let mut bodies = Vec::new();
        for round in 0..4 {
            bodies.push(
                post(&server, UPSERT, upserts(round * 10..round * 10 + 10))
                    .await
                    .body,
            );
            bodies.push(
                post(&server, CIO, people(round * 10..round * 10 + 10))
                    .await
                    .body,
            );
        }
        answers.push((bodies, server.stats()));
        server.shutdown().await;
    }
    assert_eq!(answers[0], answers[1]);
    let stats = answers[0].1;
    assert!(
        stats.items_unattributed > 0 && stats.items_rate_limited > 0,
        "{stats:?}"
    );
}
