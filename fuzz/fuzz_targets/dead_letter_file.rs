//! The dead-letter file reader (`FileStore::open`): any file contents (a hand-edited file, a
//! torn write, garbage) give a store or an `io::Error`, never a panic; a store that opened
//! reopens to the same letters, pages read the same letters as `list`, and every letter either
//! rebuilds a request or says why not.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tower_throttle::{
    dead_letter::{DeadLetter, DeadLetterStore},
    FileStore,
};

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("tower-throttle-fuzz-{}.jsonl", std::process::id()))
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    std::fs::write(path, data).expect("write the fuzz file");
    runtime().block_on(async {
        let Ok(store) = FileStore::open(path).await else {
            return;
        };
        let letters = store.list().await.expect("list an opened store");
        assert_eq!(store.len().await.expect("len"), letters.len());
        for letter in &letters {
            let _ = letter.to_request::<Bytes>();
        }
        // Paging by id reads the same letters as one `list`.
        let mut paged = Vec::new();
        loop {
            let after = paged.last().map_or(0, |l: &DeadLetter| l.id);
            let page = store.list_page(after, 3).await.expect("list a page");
            if page.is_empty() {
                break;
            }
            paged.extend(page);
        }
        assert_eq!(paged, letters);
        drop(store);
        let again = FileStore::open(path).await.expect("an opened file reopens");
        assert_eq!(
            again.torn_bytes_dropped(),
            0,
            "the torn line was cut on the first open"
        );
        assert_eq!(again.list().await.expect("list"), letters);
    });
});
