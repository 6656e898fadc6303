//! The embedded default store: an append-only JSON-lines file.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::store::{DeadLetterStore, StoreFuture};
use super::DeadLetter;

/// Default [`FileStore::with_compaction_threshold`].
pub const DEFAULT_COMPACTION_THRESHOLD: usize = 64;

/// Dead letters in an append-only JSON-lines file, one letter per line, readable by a person
/// (`jq . dead_letters.jsonl`).
///
/// * **Durable**: every append is written and `fsync`ed (`sync_data`) before it resolves.
/// * **Crash-safe**: a line counts only once its newline is on disk. A process killed
///   mid-write leaves a torn last line; [`open`](FileStore::open) drops it (truncating the
///   file back to the last newline, so later appends are clean) and loses nothing before it.
///   A complete line that does not parse is not a crash artefact: `open` refuses with
///   [`io::ErrorKind::InvalidData`] and its line number rather than skip data.
/// * **Removal** appends a tombstone line `{"removed":<id>}`. When tombstones outnumber live
///   letters (and there are at least the compaction threshold of them), the file is rewritten
///   with only the live letters into `<file>.tmp`, synced, and renamed over the original: a
///   crash at any point leaves either the old file or the new one, both complete.
///
/// Clones share the file and its index. File I/O runs on tokio's blocking pool.
///
/// ```
/// use tower_throttle::dead_letter::{DeadLetterStore, FileStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let dir = tempfile::tempdir()?;
/// let store = FileStore::open(dir.path().join("dead_letters.jsonl")).await?;
/// assert_eq!(store.len().await?, 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Mutex<Inner>>,
    path: Arc<PathBuf>,
}

struct Inner {
    file: File,
    path: PathBuf,
    /// Bytes of complete lines in the file: where the next line starts.
    len: u64,
    letters: BTreeMap<u64, DeadLetter>,
    tombstones: usize,
    next_id: u64,
    threshold: usize,
    torn_bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tombstone {
    removed: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Removed(Tombstone),
    Letter(Box<DeadLetter>),
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("dead-letter file task failed: {e}")))?
}

impl FileStore {
    /// Opens (or creates) the store at `path`, reading every letter in it and dropping a torn
    /// last line.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<FileStore> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let inner = blocking(move || Inner::load(p)).await?;
        Ok(FileStore {
            inner: Arc::new(Mutex::new(inner)),
            path: Arc::new(path),
        })
    }

    /// Rewrites the file once tombstones outnumber live letters and there are at least
    /// `threshold` of them (default [`DEFAULT_COMPACTION_THRESHOLD`]; values below 1 count
    /// as 1).
    pub fn with_compaction_threshold(self, threshold: usize) -> FileStore {
        self.lock().threshold = threshold.max(1);
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of a torn last line dropped by [`open`](FileStore::open) (0 after a clean
    /// shutdown).
    pub fn torn_bytes_dropped(&self) -> u64 {
        self.lock().torn_bytes
    }

    /// Tombstone lines currently in the file.
    pub fn tombstones(&self) -> usize {
        self.lock().tombstones
    }

    /// Rewrites the file with only the live letters (atomically, by rename).
    pub async fn compact(&self) -> io::Result<()> {
        let inner = self.inner.clone();
        blocking(move || lock(&inner).compact()).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // Every mutation leaves the index matching the file (writes are rolled back on error).
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .field("letters", &inner.letters.len())
            .field("tombstones", &inner.tombstones)
            .finish()
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}

impl Inner {
    fn load(path: PathBuf) -> io::Result<Inner> {
        let mut file = open_append(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let torn_bytes = (bytes.len() - complete) as u64;
        if torn_bytes > 0 {
            tracing::warn!(
                path = %path.display(),
                torn_bytes,
                "dead-letter file ends with a torn line (process killed mid-write); dropping it"
            );
            file.set_len(complete as u64)?;
            file.sync_data()?;
        }
        let mut letters = BTreeMap::new();
        let mut tombstones = 0;
        let mut max_id = 0;
        for (n, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parsed: Line = serde_json::from_slice(line).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: line {} is not a dead letter: {e}",
                        path.display(),
                        n + 1
                    ),
                )
            })?;
            match parsed {
                Line::Removed(t) => {
                    letters.remove(&t.removed);
                    tombstones += 1;
                    max_id = max_id.max(t.removed);
                }
                Line::Letter(l) => {
                    max_id = max_id.max(l.id);
                    letters.insert(l.id, *l);
                }
            }
        }
        // A hand-edited id of u64::MAX leaves no fresh id: wrapping to 0 would let new letters
        // overwrite old ones (found by fuzzing, fuzz/fuzz_targets/dead_letter_file.rs).
        let next_id = max_id.checked_add(1).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: id {max_id} leaves no id for new letters",
                    path.display()
                ),
            )
        })?;
        Ok(Inner {
            file,
            path,
            len: complete as u64,
            letters,
            tombstones,
            next_id,
            threshold: DEFAULT_COMPACTION_THRESHOLD,
            torn_bytes,
        })
    }

    /// Appends one line and syncs; on failure cuts the file back so no partial line stays.
    fn write_line(&mut self, mut line: Vec<u8>) -> io::Result<()> {
        line.push(b'\n');
        let result = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Best effort: if this fails too, the next open drops the torn line.
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    fn append(&mut self, mut letter: DeadLetter) -> io::Result<u64> {
        letter.id = self.next_id;
        let next_id = self
            .next_id
            .checked_add(1)
            .ok_or_else(|| io::Error::other("dead-letter ids exhausted"))?;
        let line = serde_json::to_vec(&letter).map_err(io::Error::other)?;
        self.write_line(line)?;
        let id = letter.id;
        self.next_id = next_id;
        self.letters.insert(id, letter);
        Ok(id)
    }

    fn remove(&mut self, id: u64) -> io::Result<bool> {
        if !self.letters.contains_key(&id) {
            return Ok(false);
        }
        let line = serde_json::to_vec(&Tombstone { removed: id }).map_err(io::Error::other)?;
        self.write_line(line)?;
        self.letters.remove(&id);
        self.tombstones += 1;
        if self.tombstones >= self.threshold && self.tombstones > self.letters.len() {
            // The removal is already durable; a failed compaction only leaves a larger file.
            if let Err(e) = self.compact() {
                tracing::warn!(path = %self.path.display(), error = %e, "dead-letter compaction failed");
            }
        }
        Ok(true)
    }

    fn compact(&mut self) -> io::Result<()> {
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = self.path.with_file_name(tmp_name);
        let mut out = Vec::new();
        for letter in self.letters.values() {
            serde_json::to_writer(&mut out, letter).map_err(io::Error::other)?;
            out.push(b'\n');
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        // Make the rename itself durable (directories can be synced on Unix only).
        #[cfg(unix)]
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)?.sync_all()?;
        }
        self.file = open_append(&self.path)?;
        self.len = out.len() as u64;
        self.tombstones = 0;
        Ok(())
    }
}

impl DeadLetterStore for FileStore {
    fn append(&self, letter: DeadLetter) -> StoreFuture<'_, u64> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || lock(&inner).append(letter)))
    }

    fn list(&self) -> StoreFuture<'_, Vec<DeadLetter>> {
        let all = self.lock().letters.values().cloned().collect();
        Box::pin(async move { Ok(all) })
    }

    fn remove(&self, id: u64) -> StoreFuture<'_, bool> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || lock(&inner).remove(id)))
    }

    fn len(&self) -> StoreFuture<'_, usize> {
        let n = self.lock().letters.len();
        Box::pin(async move { Ok(n) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzzing regression: a file whose largest id is `u64::MAX` overflowed `next_id`
    /// (a panic with overflow checks, silently reused ids without them).
    #[tokio::test]
    async fn an_id_of_u64_max_is_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead_letters.jsonl");
        std::fs::write(&path, "{\"removed\":18446744073709551615}\n").unwrap();
        let err = FileStore::open(&path).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
