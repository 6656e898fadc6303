//! Opening a large dead-letter file keeps memory flat in the file's size (issue 14 item 9:
//! open read the whole file and kept every letter, 2.1 GB of peak RSS for a 1 GB file).
//!
//! Alone in its test binary, so the resident set it measures is its own.
#![cfg(feature = "file-store")]
#![cfg(target_os = "linux")]

use std::io::Write as _;
use std::time::{Duration, SystemTime};

use tower_throttle::{
    dead_letter::{DeadLetter, DeadLetterStore, StoredBody},
    FileStore,
};

/// `VmRSS` or `VmHWM` (peak) of this process, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

const LETTERS: u64 = 256;
const BODY: usize = 64 << 10;

#[tokio::test(flavor = "current_thread")]
async fn open_of_a_large_file_keeps_memory_flat_in_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead_letters.jsonl");
    // One letter serialized once and written with each id: writing the file raises
    // neither the peak nor the test's time.
    {
        let letter = DeadLetter {
            id: 0,
            method: "POST".into(),
            uri: "https://api.example.com/v1/records".into(),
            headers: vec![],
            body: StoredBody::Text("x".repeat(BODY)),
            status: Some(503),
            error: None,
            attempts: 1,
            outcome_unknown: false,
            first_attempt: SystemTime::UNIX_EPOCH,
            last_attempt: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
        };
        let line = serde_json::to_string(&letter).unwrap();
        let rest = line.strip_prefix("{\"id\":0").unwrap();
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for id in 1..=LETTERS {
            writeln!(out, "{{\"id\":{id}{rest}").unwrap();
        }
    }
    let file_size = std::fs::metadata(&path).unwrap().len();
    assert!(file_size > 16 << 20, "a file of {file_size} bytes");

    let before = status_bytes("VmRSS:");
    let store = FileStore::open(&path).await.unwrap();
    assert_eq!(store.len().await.unwrap() as u64, LETTERS);
    let page = store.list_page(100, 4).await.unwrap();
    assert_eq!(page.len(), 4);
    let peak = status_bytes("VmHWM:");
    let grew = peak.saturating_sub(before);
    eprintln!("file {file_size} bytes, peak RSS grew {grew} bytes");
    // Reading the file (or keeping its letters) would add its whole size; streaming adds a
    // line buffer, a page of letters and the offset index.
    assert!(
        grew < file_size / 8,
        "peak RSS grew {grew} bytes opening a {file_size}-byte file"
    );
}
