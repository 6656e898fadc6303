//! The file store across OS processes: a writer killed with SIGKILL at random moments loses
//! nothing it confirmed, and a second process cannot open a file another one holds.
//!
//! The child is this test binary run again (`current_exe`), selected by an environment
//! variable and running only `child_entry`: no helper binary to build or install.
#![cfg(feature = "file-store")]
#![cfg(unix)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rand::{rngs::SmallRng, Rng as _, SeedableRng as _};
use tower_throttle::{
    dead_letter::{DeadLetter, DeadLetterStore, FileStoreError, StoredBody},
    FileStore,
};

const ROLE: &str = "TOWER_THROTTLE_DEAD_LETTER_CHILD";
const PATH: &str = "TOWER_THROTTLE_DEAD_LETTER_PATH";
const FIRST: &str = "TOWER_THROTTLE_DEAD_LETTER_FIRST";

/// Letter `n`, the same in the child that writes it and the parent that checks it. Every
/// fifth is 32 KiB, so a kill can land inside its write and tear it.
fn letter(n: u64) -> DeadLetter {
    let body = if n % 5 == 4 {
        format!("{n}:{}", "x".repeat(32 << 10))
    } else {
        format!("{{\"record\":{n}}}")
    };
    DeadLetter {
        id: 0,
        method: "POST".into(),
        uri: format!("https://api.example.com/v1/records/{n}"),
        headers: vec![("x-request-id".into(), n.to_string())],
        body: StoredBody::Text(body),
        status: Some(503),
        error: None,
        attempts: 3,
        outcome_unknown: false,
        first_attempt: SystemTime::UNIX_EPOCH + Duration::from_millis(n),
        last_attempt: SystemTime::UNIX_EPOCH + Duration::from_millis(n + 1),
    }
}

/// Every third letter is removed right after it is confirmed (tombstones, and compactions
/// every few removals, under the kill too).
fn removed_after_append(n: u64) -> bool {
    n.is_multiple_of(3)
}

/// Not a test on its own: the child processes' entry point. Returns at once unless a test
/// below spawned this binary with [`ROLE`] set.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = PathBuf::from(std::env::var(PATH).expect("the store path"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let say = |line: String| {
            // Straight to the pipe (not println!, which the test harness may capture): a
            // line the parent reads was written after the operation it reports returned.
            // The harness prints "test child_entry ... " without a newline first: a marker
            // finds our lines whatever precedes them.
            let mut out = std::io::stdout().lock();
            out.write_all(b"\n@@ ").unwrap();
            out.write_all(line.as_bytes()).unwrap();
            out.write_all(b"\n").unwrap();
            out.flush().unwrap();
        };
        match role.as_str() {
            "writer" => {
                let first: u64 = std::env::var(FIRST).unwrap().parse().unwrap();
                let store = FileStore::open(&path)
                    .await
                    .unwrap()
                    .with_compaction_threshold(4);
                for n in first.. {
                    let id = store.append(letter(n)).await.unwrap();
                    say(format!("appended {id} {n}"));
                    if removed_after_append(n) {
                        assert!(store.remove(id).await.unwrap());
                        say(format!("removed {id}"));
                    }
                }
            }
            "open" => match FileStore::open(&path).await {
                Ok(_) => say("opened".into()),
                Err(e) if matches!(FileStoreError::of(&e), Some(FileStoreError::Locked { .. })) => {
                    say("locked".into())
                }
                Err(e) => say(format!("error {e}")),
            },
            "hold" => {
                let _store = FileStore::open(&path).await.unwrap();
                say("holding".into());
                // Until the parent kills us.
                std::future::pending::<()>().await;
            }
            "hold-compacted" => {
                // The file at the path after this is the compaction's, not the one opened.
                let store = FileStore::open(&path)
                    .await
                    .unwrap()
                    .with_compaction_threshold(1);
                let a = store.append(letter(1)).await.unwrap();
                let b = store.append(letter(2)).await.unwrap();
                store.remove(a).await.unwrap();
                store.remove(b).await.unwrap();
                assert_eq!(store.tombstones(), 0, "compacted");
                say("holding".into());
                // Until the parent kills us.
                std::future::pending::<()>().await;
            }
            other => panic!("unknown child role {other}"),
        }
    });
}

fn spawn(role: &str, path: &Path, first: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(PATH, path)
        .env(FIRST, first.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The child's report lines, read on a thread so a full pipe never stalls the child.
fn read_lines(child: &mut Child) -> std::thread::JoinHandle<Vec<String>> {
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        out.lines()
            .map_while(Result::ok)
            .filter_map(|l| Some(l.split_once("@@ ")?.1.to_owned()))
            .collect()
    })
}

fn first_line(child: &mut Child) -> String {
    let out = BufReader::new(child.stdout.take().unwrap());
    out.lines()
        .map_while(Result::ok)
        .find_map(|l| Some(l.split_once("@@ ")?.1.to_owned()))
        .unwrap_or_default()
}

/// A writer process killed with SIGKILL at random moments, 24 times, each run continuing the
/// file the last one left: every letter a child confirmed (reported after `append` returned)
/// reads back intact, every confirmed removal stays removed, a torn tail is dropped, and ids
/// never repeat across the kills and reopens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_at_random_moments_loses_nothing_it_confirmed() {
    const KILLS: u64 = 24;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead_letters.jsonl");
    let mut rng = SmallRng::seed_from_u64(0xdead_1e77e5);
    // What must be in the store: id -> record number (confirmed, or found durable earlier).
    let mut live: BTreeMap<u64, u64> = BTreeMap::new();
    let mut ever: BTreeSet<u64> = BTreeSet::new();
    let (mut torn_runs, mut confirmed_total) = (0, 0);
    let started = Instant::now();
    for run in 0..KILLS {
        let first = run * 1_000_000;
        let mut child = spawn("writer", &path, first);
        let lines = read_lines(&mut child);
        std::thread::sleep(Duration::from_millis(rng.gen_range(60..300)));
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = lines.join().unwrap();

        let mut appended = BTreeMap::new();
        let mut removed = BTreeSet::new();
        for line in &lines {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["appended", id, n] => {
                    let id: u64 = id.parse().unwrap();
                    assert!(ever.insert(id), "run {run}: id {id} handed out twice");
                    appended.insert(id, n.parse::<u64>().unwrap());
                }
                ["removed", id] => {
                    removed.insert(id.parse::<u64>().unwrap());
                }
                _ => {}
            }
        }
        confirmed_total += appended.len();

        // A kill rarely lands inside a write (the fsync takes far longer), so every fourth
        // run also leaves what one would: the first half of a letter's line, no newline.
        let injected = if run % 4 == 3 {
            let line = serde_json::to_vec(&DeadLetter {
                id: u64::MAX - 1,
                ..letter(1)
            })
            .unwrap();
            let half = &line[..line.len() / 2];
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            file.write_all(half).unwrap();
            half.len() as u64
        } else {
            0
        };
        let store = FileStore::open(&path).await.unwrap();
        assert!(
            store.torn_bytes_dropped() >= injected,
            "run {run}: torn tail kept"
        );
        if store.torn_bytes_dropped() > injected {
            torn_runs += 1;
        }
        let stored = store.list().await.unwrap();
        let stored_ids: BTreeMap<u64, &DeadLetter> = stored.iter().map(|l| (l.id, l)).collect();
        for (id, n) in live.iter().chain(&appended) {
            if removed.contains(id) {
                assert!(
                    !stored_ids.contains_key(id),
                    "run {run}: removed {id} is back"
                );
                continue;
            }
            let removal_unreported = appended.contains_key(id) && removed_after_append(*n);
            match stored_ids.get(id) {
                Some(got) => {
                    assert_eq!(
                        **got,
                        DeadLetter {
                            id: *id,
                            ..letter(*n)
                        },
                        "run {run}: letter {id}"
                    )
                }
                // Killed between the removal and its report.
                None if removal_unreported => {}
                None => panic!("run {run}: confirmed letter {id} (record {n}) lost"),
            }
        }
        // Beyond the confirmed ones, the store may hold only what the child wrote after its
        // last report: one letter appended but not yet reported, or one whose reported
        // removal had not happened yet.
        let unreported: Vec<&DeadLetter> = stored
            .iter()
            .filter(|l| !live.contains_key(&l.id) && !appended.contains_key(&l.id))
            .collect();
        assert!(
            unreported.len() <= 1,
            "run {run}: unexpected {unreported:?}"
        );
        for l in unreported {
            assert!(ever.insert(l.id), "run {run}: id {} handed out twice", l.id);
            let n: u64 = l.headers[0].1.parse().unwrap();
            assert!(n >= first, "run {run}: letter {} from an earlier run", l.id);
            assert_eq!(
                *l,
                DeadLetter {
                    id: l.id,
                    ..letter(n)
                }
            );
        }
        live = stored
            .iter()
            .map(|l| {
                let n: u64 = l.headers[0].1.parse().unwrap();
                (l.id, n)
            })
            .collect();
        // The parent's store must be gone before the next child opens the file.
        drop(store);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{KILLS} kills, {confirmed_total} confirmed appends, {} letters live, {torn_runs} torn tails left by a kill, {elapsed:?}",
        live.len()
    );
    assert!(
        confirmed_total > KILLS as usize,
        "the children got to write"
    );
}

/// Issue 14 item 7 across processes: while one process has the store open, another gets
/// `FileStoreError::Locked`; when the holder dies (SIGKILL, no clean-up), the lock is free.
#[tokio::test]
async fn a_second_process_cannot_open_a_file_another_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead_letters.jsonl");

    let store = FileStore::open(&path).await.unwrap();
    let mut child = spawn("open", &path, 0);
    assert_eq!(first_line(&mut child), "locked");
    child.wait().unwrap();
    drop(store);

    let mut child = spawn("hold", &path, 0);
    assert_eq!(first_line(&mut child), "holding");
    let err = FileStore::open(&path).await.unwrap_err();
    assert!(
        matches!(
            FileStoreError::of(&err),
            Some(FileStoreError::Locked { .. })
        ),
        "{err}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    FileStore::open(&path)
        .await
        .expect("a dead holder leaves no stale lock");
}

/// Issue 29 item 1 across processes: the lock was on `<name>.lock`, so a second process
/// opening the same file by another name (a symlink, a hard link), or after the lock file was
/// deleted, became a second writer. With the data file locked (and the compaction's new file
/// locked before its rename), every one of them is refused while the holder lives.
#[tokio::test]
async fn a_second_process_by_another_name_or_without_the_lock_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead_letters.jsonl");
    let symlink = dir.path().join("symlink.jsonl");
    std::os::unix::fs::symlink(&path, &symlink).unwrap();

    for role in ["hold", "hold-compacted"] {
        let mut holder = spawn(role, &path, 0);
        assert_eq!(first_line(&mut holder), "holding", "{role}");
        // Made now, so it names the file the holder has after its compaction.
        let hard_link = dir.path().join("hard_link.jsonl");
        let _ = std::fs::remove_file(&hard_link);
        std::fs::hard_link(&path, &hard_link).unwrap();
        let lock_file = dir.path().join("dead_letters.jsonl.lock");
        for (how, name) in [
            ("path", &path),
            ("symlink", &symlink),
            ("hard link", &hard_link),
        ] {
            let mut opener = spawn("open", name, 0);
            assert_eq!(first_line(&mut opener), "locked", "{role}, {how}");
            opener.wait().unwrap();
        }
        std::fs::remove_file(&lock_file).unwrap();
        let mut opener = spawn("open", &path, 0);
        assert_eq!(
            first_line(&mut opener),
            "locked",
            "{role}, lock file deleted"
        );
        opener.wait().unwrap();
        holder.kill().unwrap();
        holder.wait().unwrap();
    }
    let store = FileStore::open(&path).await.unwrap();
    assert_eq!(
        store.len().await.unwrap(),
        0,
        "the compacted holder removed both"
    );
}
