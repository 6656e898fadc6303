//! Dead letters: the layer, the file store's crash safety and compaction, redaction, replay
//! after a crash.
#![cfg(feature = "file-store")]

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
use tower_throttle::{
    dead_letter::{
        DeadLetter, DeadLetterStore, DeadLettered, DeadLetteredError, FileStoreError, MemoryStore,
        StoredBody,
    },
    replay,
    retry::Attempts,
    DeadLetterLayer, FileStore, ReplayOptions,
};
use tower_throttle::{metrics::Stats, Quota};

fn letter(n: u32) -> DeadLetter {
    DeadLetter {
        id: 0,
        method: "POST".into(),
        uri: format!("https://api.example.com/v1/users/{n}"),
        headers: vec![("content-type".into(), "application/json".into())],
        body: StoredBody::Text(format!(
            "{{\"user\":{n},\"name\":\"n\u{e9}e \\\"quoted\\\"\"}}"
        )),
        status: Some(503),
        error: None,
        attempts: 3,
        outcome_unknown: false,
        first_attempt: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_457_742_123),
        last_attempt: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_457_745_000),
    }
}

fn status(code: u16) -> Response<()> {
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap();
    resp
}

#[tokio::test]
async fn torn_last_record_at_every_byte_offset_is_dropped_and_appends_still_work() {
    const N: u32 = 5;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    {
        let store = FileStore::open(&path).await.unwrap();
        for n in 1..=N {
            assert_eq!(store.append(letter(n)).await.unwrap(), u64::from(n));
        }
    }
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.last(), Some(&b'\n'));
    // The last record spans [last_start, len): its text and its newline.
    let last_start = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    assert!(bytes.len() - last_start > 100, "a realistic record");

    let copy = dir.path().join("torn.jsonl");
    for cut in last_start..bytes.len() {
        std::fs::write(&copy, &bytes[..cut]).unwrap();
        let store = FileStore::open(&copy).await.unwrap();
        let ids: Vec<u64> = store.list().await.unwrap().iter().map(|l| l.id).collect();
        assert_eq!(ids, [1, 2, 3, 4], "cut at byte {cut}");
        assert_eq!(store.torn_bytes_dropped(), (cut - last_start) as u64);
        // Nothing before the torn line changed.
        let letters = store.list().await.unwrap();
        for (i, l) in letters.iter().enumerate() {
            assert_eq!(
                *l,
                DeadLetter {
                    id: i as u64 + 1,
                    ..letter(i as u32 + 1)
                }
            );
        }

        // Appending after recovery gives a clean file that reopens completely.
        let id = store.append(letter(99)).await.unwrap();
        drop(store);
        let reopened = FileStore::open(&copy).await.unwrap();
        assert_eq!(reopened.torn_bytes_dropped(), 0);
        let letters = reopened.list().await.unwrap();
        assert_eq!(letters.len(), 5, "cut at byte {cut}");
        assert_eq!(letters[4], DeadLetter { id, ..letter(99) });
    }
}

#[tokio::test]
async fn a_corrupt_complete_line_is_refused_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let store = FileStore::open(&path).await.unwrap();
    store.append(letter(1)).await.unwrap();
    drop(store);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{not json}\n");
    std::fs::write(&path, &bytes).unwrap();
    let err = FileStore::open(&path).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[tokio::test]
async fn file_is_one_readable_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let store = FileStore::open(&path).await.unwrap();
    store.append(letter(7)).await.unwrap();
    let mut binary = letter(8);
    binary.body = StoredBody::Base64("/wAQ".into());
    store.append(binary).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["uri"], "https://api.example.com/v1/users/7");
    assert_eq!(v["status"], 503);
    assert_eq!(v["attempts"], 3);
    assert_eq!(v["first_attempt"], "2026-11-23T18:15:42.123Z");
    // Valid UTF-8 is kept as text (JSON-escaped, so quotes survive).
    assert_eq!(v["body"]["text"], r#"{"user":7,"name":"née \"quoted\""}"#);
    let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(v["body"]["base64"], "/wAQ");
}

#[tokio::test]
async fn tombstones_survive_reopen_and_compaction_rewrites_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let store = FileStore::open(&path)
        .await
        .unwrap()
        .with_compaction_threshold(4);
    for n in 1..=6 {
        store.append(letter(n)).await.unwrap();
    }
    assert!(store.remove(2).await.unwrap());
    assert!(!store.remove(2).await.unwrap(), "already removed");
    assert!(!store.remove(77).await.unwrap(), "never existed");
    assert!(store.remove(4).await.unwrap());
    assert_eq!(store.tombstones(), 2);
    drop(store);

    let store = FileStore::open(&path)
        .await
        .unwrap()
        .with_compaction_threshold(4);
    let ids = |letters: Vec<DeadLetter>| letters.iter().map(|l| l.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list().await.unwrap()), [1, 3, 5, 6]);
    assert_eq!(store.tombstones(), 2);
    // 4 tombstones vs 2 live letters: compaction.
    store.remove(1).await.unwrap();
    store.remove(5).await.unwrap();
    assert_eq!(store.tombstones(), 0);
    let text = std::fs::read_to_string(&path).unwrap();
    // The id high-water mark, then the two live letters.
    assert_eq!(text.lines().count(), 3);
    assert_eq!(text.lines().next(), Some("{\"next_id\":7}"));
    assert!(!text.contains("removed"));
    assert!(!dir.path().join("dl.jsonl.tmp").exists());
    // Ids continue after the highest id seen.
    let id = store.append(letter(9)).await.unwrap();
    assert_eq!(id, 7);
    drop(store);
    let store = FileStore::open(&path).await.unwrap();
    assert_eq!(ids(store.list().await.unwrap()), [3, 6, 7]);
}

#[tokio::test]
async fn redaction_secret_never_reaches_the_file() {
    const SECRET: &str = "s3cr3t-7f1d2a";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let store = FileStore::open(&path).await.unwrap();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(store.clone()).redact_header("x-api-key".parse().unwrap()))
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(status(401))
        }));
    let req = Request::post("https://api.example.com/v1/track")
        .header("authorization", format!("Bearer {SECRET}"))
        .header("Proxy-Authorization", format!("Basic {SECRET}"))
        .header("cookie", format!("session={SECRET}"))
        .header("set-cookie", format!("session={SECRET}"))
        .header("x-api-key", SECRET)
        .header("x-request-id", "req-1")
        .body(r#"{"event":"signup"}"#.to_string())
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.extensions().get::<DeadLettered>().is_some());
    drop(store);

    let bytes = std::fs::read(&path).unwrap();
    let needle = SECRET.as_bytes();
    assert!(
        !bytes.windows(needle.len()).any(|w| w == needle),
        "secret written to disk"
    );
    let store = FileStore::open(&path).await.unwrap();
    let letters = store.list().await.unwrap();
    let headers: Vec<(&str, &str)> = letters[0]
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        headers,
        [
            ("authorization", "[REDACTED]"),
            ("proxy-authorization", "[REDACTED]"),
            ("cookie", "[REDACTED]"),
            ("set-cookie", "[REDACTED]"),
            ("x-api-key", "[REDACTED]"),
            ("x-request-id", "req-1"),
        ]
    );
}

#[tokio::test]
async fn layer_keeps_failures_and_errors_with_attempts_and_lets_successes_pass() {
    let store = MemoryStore::new();
    let stats = Stats::new();
    let svc = ServiceBuilder::new()
        .layer(
            DeadLetterLayer::new(store.clone())
                .failure_if(|s| !s.is_success() && s != StatusCode::NOT_FOUND)
                .with_stats(stats.clone()),
        )
        .service(service_fn(|req: Request<bytes::Bytes>| async move {
            match req.uri().path() {
                "/ok" => Ok(status(200)),
                "/missing" => Ok(status(404)),
                "/retried" => {
                    let mut resp = status(503);
                    resp.extensions_mut().insert(Attempts(4));
                    Ok(resp)
                }
                _ => Err(BoxError::from("connection reset")),
            }
        }));
    let req = |path: &str| {
        Request::put(format!("http://api.test{path}"))
            .body(bytes::Bytes::from_static(&[0xff, 0xfe]))
            .unwrap()
    };
    let ok = svc.clone().oneshot(req("/ok")).await.unwrap();
    assert!(ok.extensions().get::<DeadLettered>().is_none());
    let missing = svc.clone().oneshot(req("/missing")).await.unwrap();
    assert!(missing.extensions().get::<DeadLettered>().is_none());
    let retried = svc.clone().oneshot(req("/retried")).await.unwrap();
    assert_eq!(
        retried.extensions().get::<DeadLettered>(),
        Some(&DeadLettered { id: 1 })
    );

    let mut with_attempts = req("/broken");
    with_attempts.extensions_mut().insert(Attempts(2));
    let err = svc.clone().oneshot(with_attempts).await.unwrap_err();
    let dl = DeadLetteredError::find(&err).expect("error is marked");
    assert_eq!(dl.id(), 2);
    assert_eq!(dl.source_ref().to_string(), "connection reset");

    let letters = store.list().await.unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(
        (
            letters[0].status,
            letters[0].attempts,
            letters[0].method.as_str()
        ),
        (Some(503), 4, "PUT")
    );
    assert_eq!(letters[0].body, StoredBody::Base64("//4=".into()));
    assert!(letters[0].first_attempt <= letters[0].last_attempt);
    assert_eq!(
        (
            letters[1].status,
            letters[1].error.as_deref(),
            letters[1].attempts
        ),
        (None, Some("connection reset"), 2)
    );
    assert_eq!(stats.snapshot().dead_letters_written, 2);
}

/// Records every delivered body; answers 500 for bodies listed in `failing`.
#[derive(Clone, Default)]
struct Api {
    delivered: Arc<Mutex<Vec<String>>>,
    failing: Arc<Mutex<BTreeSet<String>>>,
    auth_seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl Api {
    fn service(
        &self,
    ) -> impl tower::Service<
        Request<String>,
        Response = Response<()>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        let api = self.clone();
        service_fn(move |req: Request<String>| {
            let api = api.clone();
            async move {
                api.auth_seen.lock().unwrap().push(
                    req.headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_owned()),
                );
                if api.failing.lock().unwrap().contains(req.body()) {
                    return Ok(status(500));
                }
                api.delivered.lock().unwrap().push(req.body().clone());
                Ok(status(200))
            }
        })
    }
}

async fn fill(store: &FileStore, n: u32) {
    let layer = DeadLetterLayer::new(store.clone());
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(status(503))
        }));
    for i in 0..n {
        let req = Request::post("http://api.test/v1/users")
            .header("authorization", "Bearer old")
            .body(format!("user-{i}"))
            .unwrap();
        svc.clone().oneshot(req).await.unwrap();
    }
}

#[tokio::test]
async fn replay_after_a_crash_delivers_everything_at_least_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let store = FileStore::open(&path).await.unwrap();
    fill(&store, 10).await;
    assert_eq!(store.len().await.unwrap(), 10);

    // First replay "crashes": the 5th request hangs and the replay future is dropped there.
    let api = Api::default();
    let crash = Arc::new(tokio::sync::Notify::new());
    let hanging = {
        let inner = api.service();
        let crash = crash.clone();
        let count = Arc::new(Mutex::new(0));
        service_fn(move |req: Request<String>| {
            let n = {
                let mut c = count.lock().unwrap();
                *c += 1;
                *c
            };
            let fut = inner.clone().oneshot(req);
            let crash = crash.clone();
            async move {
                if n == 5 {
                    crash.notify_one();
                    std::future::pending::<()>().await;
                }
                fut.await
            }
        })
    };
    let options = ReplayOptions::new(Quota::per_second(1000).unwrap());
    tokio::select! {
        _ = replay(&store, hanging, options.clone()) => panic!("replay should hang"),
        _ = crash.notified() => {}
    }
    drop(store);
    assert_eq!(api.delivered.lock().unwrap().len(), 4);

    // Restart: reopen from disk. Exactly the undelivered letters are left.
    let store = FileStore::open(&path).await.unwrap();
    assert_eq!(store.len().await.unwrap(), 6);
    // One of them fails again on the second replay and stays.
    api.failing.lock().unwrap().insert("user-7".into());
    let report = replay(&store, api.service(), options.clone())
        .await
        .unwrap();
    assert_eq!((report.attempted, report.delivered), (6, 5));
    assert_eq!(
        report.failed,
        [(8, "HTTP 500 Internal Server Error".to_string())]
    );
    assert_eq!(report.remaining, 1);

    api.failing.lock().unwrap().clear();
    let report = replay(&store, api.service(), options).await.unwrap();
    assert_eq!(
        (report.attempted, report.delivered, report.remaining),
        (1, 1, 0)
    );
    drop(store);
    let store = FileStore::open(&path).await.unwrap();
    assert!(store.is_empty().await.unwrap());

    let delivered: BTreeSet<String> = api.delivered.lock().unwrap().iter().cloned().collect();
    let expected: BTreeSet<String> = (0..10).map(|i| format!("user-{i}")).collect();
    assert_eq!(delivered, expected, "every request delivered at least once");
}

#[tokio::test(start_paused = true)]
async fn replay_is_paced_capped_and_re_adds_credentials() {
    let store = MemoryStore::new();
    for n in 0..5 {
        store
            .append(DeadLetter {
                headers: vec![
                    ("authorization".into(), "[REDACTED]".into()),
                    ("x-n".into(), n.to_string()),
                ],
                body: StoredBody::Text(format!("user-{n}")),
                ..letter(n)
            })
            .await
            .unwrap();
    }
    let api = Api::default();
    let times = Arc::new(Mutex::new(Vec::new()));
    let start = tokio::time::Instant::now();
    let timed = {
        let inner = api.service();
        let times = times.clone();
        service_fn(move |req: Request<String>| {
            times.lock().unwrap().push(start.elapsed());
            inner.clone().oneshot(req)
        })
    };
    let options = ReplayOptions::new(Quota::per_second(2).unwrap())
        .max(3)
        .prepare(|parts| {
            parts
                .headers
                .insert("authorization", "Bearer fresh".parse().unwrap());
        });
    let report = replay(&store, timed, options).await.unwrap();
    assert_eq!(
        (report.attempted, report.delivered, report.remaining),
        (3, 3, 2)
    );
    assert_eq!(
        *times.lock().unwrap(),
        [
            Duration::ZERO,
            Duration::from_millis(500),
            Duration::from_millis(1000)
        ]
    );
    assert_eq!(
        *api.auth_seen.lock().unwrap(),
        vec![Some("Bearer fresh".to_string()); 3]
    );
    // Without a prepare hook the redacted header is left out, never sent as "[REDACTED]".
    let report = replay(
        &store,
        api.service(),
        ReplayOptions::new(Quota::per_second(100).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(report.delivered, 2);
    assert_eq!(api.auth_seen.lock().unwrap()[3..], [None, None]);
}

fn ids_of(letters: &[DeadLetter]) -> Vec<u64> {
    letters.iter().map(|l| l.id).collect()
}

/// Issue 14 item 6, on a real file system and as root too: the compaction fails before its
/// rename (`<file>.tmp` cannot be created: a directory is in the way), and every letter
/// confirmed afterwards is in the file that reopens.
#[tokio::test]
async fn a_failed_compaction_never_loses_later_letters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let store = FileStore::open(&path)
        .await
        .unwrap()
        .with_compaction_threshold(1);
    for n in 1..=3 {
        store.append(letter(n)).await.unwrap();
    }
    let tmp = dir.path().join("dl.jsonl.tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::write(tmp.join("occupied"), b"").unwrap();
    assert!(store.remove(1).await.unwrap());
    assert!(store.remove(2).await.unwrap(), "the tombstone is durable");
    assert_eq!(
        store.tombstones(),
        2,
        "compaction failed: the tombstones stay"
    );
    assert!(store.compact().await.is_err());
    let later = [
        store.append(letter(4)).await.unwrap(),
        store.append(letter(5)).await.unwrap(),
    ];
    assert_eq!(
        ids_of(&store.list().await.unwrap()),
        [3, later[0], later[1]]
    );
    drop(store);
    let reopened = FileStore::open(&path).await.unwrap();
    assert_eq!(
        ids_of(&reopened.list().await.unwrap()),
        [3, later[0], later[1]]
    );
}

/// Whether directory modes bind this process: root (with `CAP_DAC_OVERRIDE`) opens a directory
/// of mode 0300 all the same.
#[cfg(unix)]
fn directory_modes_bind(scratch: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let probe = scratch.join("mode-probe");
    std::fs::create_dir(&probe).unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o300)).unwrap();
    let binds = std::fs::File::open(&probe).is_err();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::remove_dir(&probe).unwrap();
    binds
}

/// Issue 14 item 6 with the failure the issue reported: a directory of mode 0300 lets the
/// rename through but not the directory sync after it. Needs a user whom directory modes
/// bind; the caller makes sure of one.
#[cfg(unix)]
async fn compaction_in_an_unreadable_directory(scratch: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let sub = scratch.join("dl");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("dl.jsonl");
    let store = FileStore::open(&path)
        .await
        .unwrap()
        .with_compaction_threshold(1);
    for n in 1..=3 {
        store.append(letter(n)).await.unwrap();
    }
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o300)).unwrap();
    assert!(
        std::fs::File::open(&sub).is_err(),
        "directory modes must bind this user, or the case tests nothing"
    );
    assert!(store.remove(1).await.unwrap());
    assert!(store.remove(2).await.unwrap());
    let refused = store.append(letter(4)).await;
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
    let err = refused.unwrap_err();
    assert!(
        matches!(
            FileStoreError::of(&err),
            Some(FileStoreError::NotDurable { .. })
        ),
        "{err}"
    );
    let id = store.append(letter(5)).await.unwrap();
    drop(store);
    let reopened = FileStore::open(&path).await.unwrap();
    assert_eq!(ids_of(&reopened.list().await.unwrap()), [3, id]);
}

#[cfg(unix)]
const UNPRIVILEGED_DIR: &str = "TOWER_THROTTLE_UNPRIVILEGED_DIR";

/// The unprivileged child's side of the test below, run by it as uid 65534. Ignored, so a
/// plain run lists it as ignored rather than as a pass that tested nothing.
#[cfg(unix)]
#[tokio::test]
#[ignore = "entry point of the uid-65534 child that a_failed_compaction_never_loses_later_letters_in_an_unreadable_directory spawns"]
async fn unprivileged_child_compaction_in_an_unreadable_directory() {
    let scratch = std::path::PathBuf::from(
        std::env::var_os(UNPRIVILEGED_DIR).expect("spawned by the parent test only"),
    );
    compaction_in_an_unreadable_directory(&scratch).await;
    println!("\n@@ tested");
}

/// Issue 27 item 1: as root (CI's user) directory modes do not bind, and this case returned
/// early, reporting a pass having tested nothing. As root it now runs the case in a child
/// process as uid 65534 (`nobody`): a copy of this test binary in a directory that user owns,
/// so no part of the build directory's path needs to be open to it. A child that cannot
/// start, skips or fails fails the test.
#[cfg(unix)]
#[tokio::test]
async fn a_failed_compaction_never_loses_later_letters_in_an_unreadable_directory() {
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().unwrap();
    if directory_modes_bind(dir.path()) {
        compaction_in_an_unreadable_directory(dir.path()).await;
        return;
    }
    const NOBODY: u32 = 65534;
    let scratch = dir.path().join("nobody");
    std::fs::create_dir(&scratch).unwrap();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::chown(&scratch, Some(NOBODY), Some(NOBODY)).unwrap();
    let exe = dir.path().join("dead_letter_test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let out = std::process::Command::new(&exe)
        .args([
            "--exact",
            "unprivileged_child_compaction_in_an_unreadable_directory",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(UNPRIVILEGED_DIR, &scratch)
        .current_dir(&scratch)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("start the test binary as uid 65534 (needs CAP_SETUID, which root has)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\n@@ tested"),
        "the uid-65534 child failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 14 item 7: two stores on one path both wrote, handed out the same ids, and half the
/// letters were gone on reopen. The second opener now gets a typed error until the first
/// (every clone of it) is dropped.
#[tokio::test]
async fn two_stores_on_one_file_the_second_opener_gets_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let first = FileStore::open(&path).await.unwrap();
    let clone = first.clone();
    let err = FileStore::open(&path).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    match FileStoreError::of(&err) {
        Some(FileStoreError::Locked { path: locked }) => assert_eq!(*locked, path),
        other => panic!("expected Locked, got {other:?} ({err})"),
    }
    drop(first);
    assert!(
        FileStore::open(&path).await.is_err(),
        "a clone still holds it"
    );
    let id = clone.append(letter(1)).await.unwrap();
    drop(clone);
    let second = FileStore::open(&path).await.unwrap();
    assert_eq!(ids_of(&second.list().await.unwrap()), [id]);
}

/// Issue 14 item 8: append 2, remove both (compacting to empty), reopen, append: the new
/// letter got id 1 again, so removing by a logged id could delete the wrong letter.
#[tokio::test]
async fn ids_are_never_reused_after_compaction_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let store = FileStore::open(&path)
        .await
        .unwrap()
        .with_compaction_threshold(1);
    let a = store.append(letter(1)).await.unwrap();
    let b = store.append(letter(2)).await.unwrap();
    store.remove(a).await.unwrap();
    store.remove(b).await.unwrap();
    assert_eq!(store.tombstones(), 0, "compacted to empty");
    drop(store);
    let store = FileStore::open(&path).await.unwrap();
    let c = store.append(letter(3)).await.unwrap();
    assert!(c > b, "id {c} after {a} and {b}");
    // And again after an explicit compaction that leaves only the high-water mark.
    store.remove(c).await.unwrap();
    store.compact().await.unwrap();
    drop(store);
    let store = FileStore::open(&path).await.unwrap();
    let d = store.append(letter(4)).await.unwrap();
    assert!(d > c, "id {d} after {c}");
    assert!(!store.remove(a).await.unwrap(), "an old id names no letter");
    assert_eq!(ids_of(&store.list().await.unwrap()), [d]);
}

/// A file written before the `next_id` line existed (letters and tombstones only) opens as
/// it is, and ids continue after the highest one in it.
#[tokio::test]
async fn a_file_in_the_old_format_opens_and_ids_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let mut text = String::new();
    for id in [3u64, 8] {
        text.push_str(
            &serde_json::to_string(&DeadLetter {
                id,
                ..letter(id as u32)
            })
            .unwrap(),
        );
        text.push('\n');
    }
    text.push_str("{\"removed\":11}\n");
    std::fs::write(&path, text).unwrap();
    let store = FileStore::open(&path).await.unwrap();
    assert_eq!(ids_of(&store.list().await.unwrap()), [3, 8]);
    assert_eq!(store.append(letter(1)).await.unwrap(), 12);
}

/// `list_page` pages by id: removals between pages skip nothing and repeat nothing.
#[tokio::test]
async fn list_page_pages_by_id_under_removals() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("dl.jsonl"))
        .await
        .unwrap()
        .with_compaction_threshold(2);
    for n in 1..=10 {
        store.append(letter(n)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = store.list_page(after, 3).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        for l in &page {
            seen.push(l.id);
            // Remove every other letter, compacting on the way.
            if l.id % 2 == 0 {
                assert!(store.remove(l.id).await.unwrap());
            }
        }
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    assert_eq!(ids_of(&store.list().await.unwrap()), [1, 3, 5, 7, 9]);
    assert_eq!(ids_of(&store.list_page(4, 2).await.unwrap()), [5, 7]);
    let memory = MemoryStore::new();
    for n in 1..=5 {
        memory.append(letter(n)).await.unwrap();
    }
    assert_eq!(ids_of(&memory.list_page(2, 2).await.unwrap()), [3, 4]);
}

/// `replay` pages through the store: more letters than one page, letters that fail again are
/// not sent twice in a run, and `max` counts across pages.
#[tokio::test(start_paused = true)]
async fn replay_pages_through_a_store_larger_than_a_page() {
    let store = MemoryStore::new();
    for n in 0..600 {
        let body = StoredBody::Text(format!("user-{n}"));
        store
            .append(DeadLetter { body, ..letter(n) })
            .await
            .unwrap();
    }
    let api = Api::default();
    for n in (0..600).step_by(7) {
        api.failing.lock().unwrap().insert(format!("user-{n}"));
    }
    let rate = Quota::per_second(10_000).unwrap();
    let first = replay(&store, api.service(), ReplayOptions::new(rate).max(300))
        .await
        .unwrap();
    assert_eq!(first.attempted, 300);
    assert_eq!((first.delivered, first.failed.len()), (257, 43));
    assert_eq!(first.remaining, 343);
    let second = replay(
        &store,
        api.service(),
        ReplayOptions::new(rate).concurrency(8),
    )
    .await
    .unwrap();
    assert_eq!(second.attempted, 343);
    assert_eq!((second.delivered, second.remaining), (257, 86));
    let delivered = api.delivered.lock().unwrap().clone();
    let unique: BTreeSet<&String> = delivered.iter().collect();
    assert_eq!((delivered.len(), unique.len()), (514, 514));
}

/// `err` is the one-writer refusal.
fn assert_locked(opened: std::io::Result<FileStore>, how: &str) {
    match opened {
        Ok(_) => panic!("{how}: a second writer got in"),
        Err(err) => assert!(
            matches!(
                FileStoreError::of(&err),
                Some(FileStoreError::Locked { .. })
            ),
            "{how}: {err}"
        ),
    }
}

/// Issue 29 item 1: the lock was on `<name>.lock`, so the same file opened under another
/// name (a symlink, a hard link) or after the lock file was deleted took a second writer,
/// and the two handed out the same ids. The data file itself is locked now; the first
/// store's letters are all there after the refusals.
#[cfg(unix)]
#[tokio::test]
async fn a_second_opener_by_another_name_or_without_the_lock_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let store = FileStore::open(&path).await.unwrap();
    let id = store.append(letter(1)).await.unwrap();

    let symlink = dir.path().join("symlink.jsonl");
    std::os::unix::fs::symlink(&path, &symlink).unwrap();
    assert_locked(FileStore::open(&symlink).await, "through a symlink");
    let hard_link = dir.path().join("hard_link.jsonl");
    std::fs::hard_link(&path, &hard_link).unwrap();
    assert_locked(FileStore::open(&hard_link).await, "through a hard link");
    std::fs::remove_file(dir.path().join("dl.jsonl.lock")).unwrap();
    assert_locked(FileStore::open(&path).await, "with the lock file deleted");

    assert_eq!(ids_of(&store.list().await.unwrap()), [id]);
    drop(store);
    let reopened = FileStore::open(&symlink).await.unwrap();
    assert_eq!(ids_of(&reopened.list().await.unwrap()), [id]);
}

/// Issue 29 item 1, the lock across a compaction: the rename puts a new file at the path, so
/// a lock kept on the old one would refuse nobody. The new file is locked before the rename.
#[cfg(unix)]
#[tokio::test]
async fn a_second_opener_after_a_compaction_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let symlink = dir.path().join("symlink.jsonl");
    std::os::unix::fs::symlink(&path, &symlink).unwrap();
    let store = FileStore::open(&path)
        .await
        .unwrap()
        .with_compaction_threshold(1);
    let ids = [
        store.append(letter(1)).await.unwrap(),
        store.append(letter(2)).await.unwrap(),
        store.append(letter(3)).await.unwrap(),
    ];
    // Two tombstones over one live letter: the removal compacts.
    store.remove(ids[0]).await.unwrap();
    store.remove(ids[1]).await.unwrap();
    assert_eq!(store.tombstones(), 0, "compacted");
    std::fs::remove_file(dir.path().join("dl.jsonl.lock")).unwrap();
    assert_locked(FileStore::open(&path).await, "after a compaction");
    assert_locked(
        FileStore::open(&symlink).await,
        "symlink, after a compaction",
    );

    // And after an explicit one, with a letter appended to the new file first.
    let later = store.append(letter(4)).await.unwrap();
    store.compact().await.unwrap();
    assert_locked(FileStore::open(&path).await, "after compact()");
    assert_eq!(ids_of(&store.list().await.unwrap()), [ids[2], later]);
    drop(store);
    let reopened = FileStore::open(&path).await.unwrap();
    assert_eq!(ids_of(&reopened.list().await.unwrap()), [ids[2], later]);
}

#[cfg(unix)]
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Issue 29 item 8: the data file and the lock were created world-readable under the usual
/// umask, and a letter holds a request body (customers' personal data). They are created
/// 0600, the compacted file keeps the mode, and the temp file is never more open than 0600.
#[cfg(unix)]
#[tokio::test]
async fn dead_letter_files_are_created_private_and_stay_private_across_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let store = FileStore::open(&path)
        .await
        .unwrap()
        .with_compaction_threshold(1);
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(mode_of(&dir.path().join("dl.jsonl.lock")), 0o600);
    assert!(!store.readable_by_others());
    let a = store.append(letter(1)).await.unwrap();
    store.append(letter(2)).await.unwrap();
    store.remove(a).await.unwrap();
    store.compact().await.unwrap();
    assert_eq!(store.tombstones(), 0, "compacted");
    assert_eq!(mode_of(&path), 0o600, "after compaction");
    assert!(!dir.path().join("dl.jsonl.tmp").exists());
}

/// Issue 29 item 8, a store others can read (as earlier versions created them): it opens,
/// since refusing would lose every letter meanwhile, but says so (a warning, and
/// `readable_by_others`); a mode the owner chose is kept across compaction, not reset.
#[cfg(unix)]
#[tokio::test]
async fn a_store_others_can_read_opens_with_a_warning_and_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    drop(FileStore::open(&path).await.unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let store = FileStore::open(&path).await.unwrap();
    assert!(store.readable_by_others());
    let a = store.append(letter(1)).await.unwrap();
    store.remove(a).await.unwrap();
    store.compact().await.unwrap();
    assert_eq!(
        mode_of(&path),
        0o640,
        "the owner's choice survives compaction"
    );
    drop(store);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(!FileStore::open(&path).await.unwrap().readable_by_others());
}

/// Issue 29 item 6: a transport error's dead letter said `"attempts": 1` after every retry,
/// because attempts were read from the response's extensions and an error has none. Through
/// the one-call builder against a closed port: five attempts, five counted, and the error the
/// caller gets is still the client's own (nothing wraps it to carry the count).
#[tokio::test]
async fn a_transport_errors_dead_letter_counts_every_attempt() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower_throttle::{backoff::Backoff, RetryPolicy, Throttle};

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let backoff = Backoff::builder()
        .base(Duration::from_millis(1))
        .max_delay(Duration::from_millis(5))
        .max_retries(4)
        .build()
        .unwrap();
    let store = MemoryStore::new();
    let client = Throttle::builder()
        .limits(Quota::per_second(1000).unwrap())
        .retry(
            RetryPolicy::default()
                .with_backoff(backoff)
                .without_budget(),
        )
        .dead_letters(store.clone())
        .build(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>())
        .unwrap();
    let req = Request::post(format!("http://{closed}/v1/users"))
        .body(Full::new(Bytes::from_static(b"{\"id\":1}")))
        .unwrap();
    let err = client.oneshot(req).await.unwrap_err();
    let stored = DeadLetteredError::find(&err).expect("dead-lettered");
    assert!(
        stored
            .source_ref()
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some(),
        "the client's error type is kept: {err}"
    );
    let letters = store.list().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id, stored.id());
    assert_eq!(letters[0].attempts, 5, "{:?}", letters[0]);
    assert_eq!(letters[0].status, None);
    assert!(letters[0].error.is_some());
}

/// Issue 29 item 9: header credentials were redacted, but a secret in the query string (GA4's
/// `api_secret`, Google's `key`, HubSpot's `hapikey`, Klaviyo's `api_key`, or one the user
/// names) was stored in clear, in the URI and in the error text a client quotes it in. Now it
/// reads `[REDACTED]` in the file, the letter, the error's `Display` and `Debug` and a failed
/// replay's report; the replay sends the request without it and `prepare` puts it back.
#[tokio::test]
async fn secret_query_parameters_never_reach_the_store_and_replay_puts_them_back() {
    use tower_throttle::dead_letter::with_query_param;
    const SECRETS: [&str; 3] = ["S3cr3tGA4", "hubspotKEY", "myT0ken"];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let store = FileStore::open(&path).await.unwrap();
    let uri = "https://www.google-analytics.com/mp/collect?measurement_id=G-1\
               &api_secret=S3cr3tGA4&HAPIKEY=hubspotKEY&monkey=3&token=myT0ken";
    // A client error that quotes the URL, as reqwest's and many others do.
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(store.clone()).redact_query_param("token"))
        .service(service_fn(|req: Request<String>| async move {
            Err::<Response<()>, BoxError>(
                format!("error sending request for url ({})", req.uri()).into(),
            )
        }));
    let err = svc
        .oneshot(Request::post(uri).body("{}".to_string()).unwrap())
        .await
        .unwrap_err();
    let shown = format!("{err} / {err:?}");
    let letter = &store.list().await.unwrap()[0];
    let file = std::fs::read_to_string(&path).unwrap();
    for secret in SECRETS {
        for (what, text) in [
            ("the error", shown.as_str()),
            ("the letter", &format!("{letter:?}")),
            ("the file", file.as_str()),
        ] {
            assert!(!text.contains(secret), "{secret} in {what}: {text}");
        }
    }
    assert_eq!(
        letter.uri,
        "https://www.google-analytics.com/mp/collect?measurement_id=G-1\
         &api_secret=[REDACTED]&HAPIKEY=[REDACTED]&monkey=3&token=[REDACTED]"
    );
    assert!(letter.error.as_ref().unwrap().contains("token=[REDACTED])"));
    assert!(
        shown.contains("monkey=3"),
        "other parameters are kept: {shown}"
    );

    // Replay: the request goes out without the redacted parameters unless `prepare` puts
    // them back; a failure that quotes the URL (secret restored) stays out of the report.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let api = |fail: bool| {
        let seen = seen.clone();
        service_fn(move |req: Request<String>| {
            seen.lock().unwrap().push(req.uri().to_string());
            let uri = req.uri().to_string();
            async move {
                if fail {
                    return Err::<Response<()>, BoxError>(format!("refused: {uri}").into());
                }
                Ok(status(200))
            }
        })
    };
    let restore = |parts: &mut http::request::Parts| {
        let uri = with_query_param(&parts.uri, "api_secret", "S3cr3tGA4").unwrap();
        parts.uri = with_query_param(&uri, "token", "myT0ken").unwrap();
    };
    let options = || ReplayOptions::new(Quota::per_second(100).unwrap());
    let report = replay(&store, api(true), options().prepare(restore))
        .await
        .unwrap();
    assert_eq!(report.failed.len(), 1);
    let reason = &report.failed[0].1;
    assert!(reason.contains("api_secret=[REDACTED]"), "{reason}");
    for secret in SECRETS {
        assert!(!reason.contains(secret), "{secret} in the report: {reason}");
    }
    let report = replay(&store, api(false), options().prepare(restore))
        .await
        .unwrap();
    assert_eq!((report.delivered, report.remaining), (1, 0));
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[1],
        "https://www.google-analytics.com/mp/collect?measurement_id=G-1&monkey=3\
         &api_secret=S3cr3tGA4&token=myT0ken",
        "HAPIKEY, not restored, stays out; the others are back"
    );
}
