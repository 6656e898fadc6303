//! How long opening a large dead-letter file takes, and how much memory it needs.
//!
//! ```sh
//! # write a 1 GiB file of 1 KiB letters, then open it in a fresh process
//! cargo run --release --example dead_letter_open -- gen /tmp/dl.jsonl 1024
//! cargo run --release --example dead_letter_open -- open /tmp/dl.jsonl
//! ```
//!
//! `open` prints the letters found, the time `FileStore::open` took and the process's peak
//! resident set (`VmHWM`, Linux).

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime};

use tower_throttle::{
    dead_letter::{DeadLetter, DeadLetterStore, StoredBody},
    FileStore,
};

fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn generate(path: &str, mib: u64) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut written = 0;
    let mut id = 0;
    while written < mib << 20 {
        id += 1;
        let letter = DeadLetter {
            id,
            method: "POST".into(),
            uri: format!("https://api.example.com/v1/contacts/{id}"),
            headers: vec![("content-type".into(), "application/json".into())],
            body: StoredBody::Text(format!("{{\"id\":{id},\"note\":\"{}\"}}", "x".repeat(1000))),
            status: Some(503),
            error: None,
            attempts: 4,
            outcome_unknown: false,
            first_attempt: SystemTime::now(),
            last_attempt: SystemTime::now() + Duration::from_secs(3),
        };
        let mut line = serde_json::to_vec(&letter).map_err(std::io::Error::other)?;
        line.push(b'\n');
        out.write_all(&line)?;
        written += line.len() as u64;
    }
    out.flush()?;
    println!("wrote {id} letters, {written} bytes to {path}");
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1..).unwrap_or_default() {
        [cmd, path, mib] if cmd == "gen" => generate(path, mib.parse().expect("size in MiB")),
        [cmd, path] if cmd == "open" => {
            let start = Instant::now();
            let store = FileStore::open(path).await?;
            let took = start.elapsed();
            let n = store.len().await?;
            println!(
                "opened {n} letters in {took:?}, peak RSS {} MiB",
                peak_rss_mib().map_or("?".into(), |m| m.to_string())
            );
            Ok(())
        }
        _ => {
            eprintln!("usage: dead_letter_open gen <path> <MiB> | open <path>");
            std::process::exit(2);
        }
    }
}
