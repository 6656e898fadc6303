//! The embedded default store: an append-only JSON-lines file.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, BufRead as _, BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use super::store::{DeadLetterStore, StoreFuture};
use super::DeadLetter;

/// Default [`FileStore::with_compaction_threshold`].
pub const DEFAULT_COMPACTION_THRESHOLD: usize = 64;

/// Dead letters in an append-only JSON-lines file, one letter per line, readable by a person
/// (`jq . dead_letters.jsonl`).
///
/// * **Durable**: every append is written and `fsync`ed (`sync_data`) before it resolves; a
///   newly created file and every compaction also sync the directory entry.
/// * **Crash-safe**: a line counts only once its newline is on disk. A process killed
///   mid-write leaves a torn last line; [`open`](FileStore::open) drops it (truncating the
///   file back to the last newline, so later appends are clean) and loses nothing before it.
///   A complete line that does not parse is not a crash artefact: `open` refuses with
///   [`io::ErrorKind::InvalidData`] and its line number rather than skip data.
/// * **One writer**: `open` takes an exclusive lock (`flock`-style) on the data file itself,
///   before reading it, held until the last clone is dropped. A second opener, in this
///   process or another, gets [`FileStoreError::Locked`], whatever name it opens the file by
///   (a symlink, a hard link): the lock belongs to the file, not to its name. A compaction
///   locks the new file before renaming it over the old one, so the lock never lapses. The
///   kernel releases the lock when a process dies, so a crash never leaves a stale lock
///   behind. `<file>.lock` is locked as well, so that a process running an earlier version of
///   this crate (which locks only that file) is refused too; deleting it does not let a
///   second writer in. A compaction writes a new file, so a hard link made before it keeps
///   naming the old one (no longer the store, and no longer locked): open a store by its
///   path or a symlink to it.
/// * **Private** (Unix): the file, its compaction temp file and `<file>.lock` are created
///   with mode `0600` (letters hold request bodies: customers' personal data), and a
///   compaction gives the new file the mode of the old one, so a mode chosen on purpose
///   (`0640` for a group of readers) is kept. Opening a file that others can read (any of
///   the `0o077` bits set, as stores created by earlier versions are under the usual umask)
///   logs a warning naming the mode and the fix (`chmod 600`), and
///   [`readable_by_others`](FileStore::readable_by_others) says so. It does not refuse: a
///   dead-letter store that refused to open would lose every letter written meanwhile.
/// * **Ids never repeat** for a path: they increase, and the next id survives compaction
///   and reopening (a `{"next_id":N}` line heads a compacted file).
/// * **Removal** appends a tombstone line `{"removed":<id>}`. When tombstones outnumber live
///   letters (and there are at least the compaction threshold of them), the file is rewritten
///   with only the live letters into `<file>.tmp`, synced, and renamed over the original: a
///   crash at any point leaves either the old file or the new one, both complete. The store
///   switches to the new file before the steps that can still fail (syncing the directory);
///   while the directory cannot be synced, appends and removals fail with
///   [`FileStoreError::NotDurable`] instead of confirming letters a crash could lose.
/// * **Memory flat in the file's size**: `open` streams the file and keeps an index of
///   offsets (a few dozen bytes per live letter), not the letters; [`list_page`] reads only
///   the page asked for.
///
/// Clones share the file and its index. File I/O runs on tokio's blocking pool; `len` and
/// [`list_page`](DeadLetterStore::list_page) never wait for an append's `fsync`.
///
/// Files written by earlier versions (without a `next_id` line) are read as they are. A
/// compacted file starts with a `next_id` line, which earlier versions of this crate refuse
/// as "not a dead letter".
///
/// ```
/// use tower_throttle::{dead_letter::{DeadLetterStore, FileStoreError}, FileStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("dead_letters.jsonl");
/// let store = FileStore::open(&path).await?;
/// assert_eq!(store.len().await?, 0);
///
/// // One writer per file: a second opener is refused while `store` is alive.
/// let err = FileStore::open(&path).await.unwrap_err();
/// assert!(matches!(FileStoreError::of(&err), Some(FileStoreError::Locked { .. })));
/// # Ok(()) }
/// ```
///
/// [`list_page`]: DeadLetterStore::list_page
#[derive(Clone)]
pub struct FileStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// Held across writes and their `fsync`, only on the blocking pool.
    writer: Mutex<Writer>,
    /// Never held across I/O: readers on the async thread take it only to copy offsets.
    index: Mutex<Index>,
    /// The open `<file>.lock`, locked for earlier versions of the crate (the data file's own
    /// lock is what refuses a second writer); closing it releases the lock.
    _lock: File,
    /// The data file's mode bits beyond the owner's, when there were any at open (Unix).
    exposed_mode: Option<u32>,
}

struct Writer {
    /// The same open file as `Index::file` (opened for append).
    file: Arc<File>,
    /// Bytes of complete lines in the file: where the next line starts.
    len: u64,
    next_id: u64,
    threshold: usize,
    /// Set when a failed write could not be rolled back: the file's tail is unknown.
    broken: Option<String>,
    /// A compaction renamed the file but could not sync the directory: retried before the
    /// next write, which is refused while it fails.
    dir_sync_pending: bool,
    #[cfg(test)]
    fail_dir_sync: bool,
}

struct Index {
    file: Arc<File>,
    spans: BTreeMap<u64, Span>,
    tombstones: usize,
    torn_bytes: u64,
}

/// Where a letter's line is: `len` bytes at `offset`, without the newline.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    len: u64,
}

/// Why a [`FileStore`] refused: the inner error of the [`io::Error`] it returns (find it
/// with [`FileStoreError::of`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum FileStoreError {
    /// Another `FileStore`, in this process or another, has the file open
    /// ([`io::ErrorKind::WouldBlock`]).
    Locked {
        /// The store's file.
        path: PathBuf,
    },
    /// The store cannot promise that a letter would survive a crash, so it refuses to
    /// append or remove ([`io::ErrorKind::Other`]). A directory that could not be synced
    /// after a compaction is retried on every call; a write that could not be rolled back
    /// leaves the file's end unknown until the store is reopened (which drops a torn line).
    NotDurable {
        /// The store's file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

impl FileStoreError {
    /// The `FileStoreError` inside an error a [`FileStore`] returned, if it is one.
    pub fn of(err: &io::Error) -> Option<&FileStoreError> {
        err.get_ref()?.downcast_ref()
    }

    fn into_io(self) -> io::Error {
        let kind = match self {
            FileStoreError::Locked { .. } => io::ErrorKind::WouldBlock,
            FileStoreError::NotDurable { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

impl fmt::Display for FileStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileStoreError::Locked { path } => write!(
                f,
                "{}: dead-letter file is open in another FileStore (one writer per file)",
                path.display()
            ),
            FileStoreError::NotDurable { path, reason } => write!(
                f,
                "{}: dead-letter file cannot be made durable, refusing writes: {reason}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for FileStoreError {}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tombstone {
    removed: u64,
}

/// The id high-water mark: no letter in this file or appended later has an id below it
/// again. Written at the top of a compacted file, so removed ids stay spent.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NextId {
    next_id: u64,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("dead-letter file task failed: {e}")))?
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every mutation leaves the index matching the file (writes are rolled back on error, or
    // the store refuses further writes).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FileStore {
    /// Opens (or creates) the store at `path`: takes the lock, streams the file into an
    /// index of offsets and drops a torn last line.
    ///
    /// Fails with [`FileStoreError::Locked`] when another `FileStore` has the file open, and
    /// with [`io::ErrorKind::InvalidData`] on a complete line that is not a dead letter.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<FileStore> {
        let path = path.as_ref().to_path_buf();
        let shared = blocking(move || Shared::open(path)).await?;
        if let Some(mode) = shared.exposed_mode {
            // Logged on the caller's task (not the blocking pool's thread) so that the
            // caller's tracing subscriber sees it.
            tracing::warn!(
                path = %shared.path.display(),
                mode = format_args!("{mode:04o}"),
                "dead-letter file is readable by others and holds request bodies; \
                 restrict it with `chmod 600`"
            );
        }
        Ok(FileStore {
            shared: Arc::new(shared),
        })
    }

    /// Rewrites the file once tombstones outnumber live letters and there are at least
    /// `threshold` of them (default [`DEFAULT_COMPACTION_THRESHOLD`]; values below 1 count
    /// as 1).
    pub fn with_compaction_threshold(self, threshold: usize) -> FileStore {
        lock(&self.shared.writer).threshold = threshold.max(1);
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Whether the data file's mode let its group or others read or write it when it was
    /// opened (always `false` off Unix). [`open`](FileStore::open) logs a warning then.
    pub fn readable_by_others(&self) -> bool {
        self.shared.exposed_mode.is_some()
    }

    /// Bytes of a torn last line dropped by [`open`](FileStore::open) (0 after a clean
    /// shutdown).
    pub fn torn_bytes_dropped(&self) -> u64 {
        lock(&self.shared.index).torn_bytes
    }

    /// Tombstone lines currently in the file.
    pub fn tombstones(&self) -> usize {
        lock(&self.shared.index).tombstones
    }

    /// Rewrites the file with only the live letters (atomically, by rename).
    pub async fn compact(&self) -> io::Result<()> {
        let shared = self.shared.clone();
        blocking(move || {
            let mut w = lock(&shared.writer);
            w.ready(&shared.path)?;
            shared.compact(&mut w)
        })
        .await
    }

    #[cfg(test)]
    fn fail_dir_sync(&self, fail: bool) {
        lock(&self.shared.writer).fail_dir_sync = fail;
    }
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let index = lock(&self.shared.index);
        f.debug_struct("FileStore")
            .field("path", &self.shared.path)
            .field("letters", &index.spans.len())
            .field("tombstones", &index.tombstones)
            .finish()
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).append(true).open(path)
}

/// Options that create a file only its owner can read (Unix; elsewhere the defaults).
fn private() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Takes the exclusive lock on an open file, or says who holds it.
fn try_lock(file: &File, path: &Path) -> io::Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(FileStoreError::Locked {
            path: path.to_path_buf(),
        }
        .into_io()),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// The mode bits of `file` beyond its owner's, if any are set.
fn exposed_mode(file: &File) -> io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file.metadata()?.permissions().mode() & 0o777;
        Ok((mode & 0o077 != 0).then_some(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(None)
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Makes a rename or a creation in `path`'s directory durable (directories can be synced on
/// Unix only).
fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut offset) = (buf, offset);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(file, buf, offset)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = (file, buf, offset);
        Err(io::ErrorKind::Unsupported.into())
    }
}

fn invalid(path: &Path, what: impl fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// Reads the letter at `span` of `file`.
fn read_letter(
    path: &Path,
    file: &File,
    id: u64,
    span: Span,
    buf: &mut Vec<u8>,
) -> io::Result<DeadLetter> {
    buf.resize(span.len as usize, 0);
    read_exact_at(file, buf, span.offset)?;
    let letter: DeadLetter = serde_json::from_slice(buf)
        .map_err(|e| invalid(path, format_args!("letter {id} no longer parses: {e}")))?;
    if letter.id != id {
        return Err(invalid(
            path,
            format_args!("letter {id} reads back as letter {}", letter.id),
        ));
    }
    Ok(letter)
}

impl Shared {
    // `File::try_lock` (Rust 1.89, the crate's rust-version): no locking crate needed.
    fn open(path: PathBuf) -> io::Result<Shared> {
        let (file, created) = match private()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => (file, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (open_append(&path)?, false),
            Err(e) => return Err(e),
        };
        // The data file's own lock, before anything is read: a lock on a name beside it
        // would let in a second opener using another name for the same file (issue 29).
        try_lock(&file, &path)?;
        let lock_file = private()
            .write(true)
            .create(true)
            .truncate(false)
            .open(sibling(&path, ".lock"))?;
        try_lock(&lock_file, &path)?;
        // A `.tmp` left by a compaction that crashed before its rename: the lock says no one
        // else is writing it.
        let _ = std::fs::remove_file(sibling(&path, ".tmp"));

        // A new file's name must survive a crash as well as the letters in it. If it cannot
        // be synced, no file is left behind: the next open creates (and syncs) it again
        // rather than find it and skip the sync. An empty file found here may be one another
        // opener created and lost the lock race for, before syncing: synced too.
        if created || file.metadata()?.len() == 0 {
            if let Err(e) = sync_dir(&path) {
                if created {
                    let _ = std::fs::remove_file(&path);
                }
                return Err(e);
            }
        }
        let exposed_mode = exposed_mode(&file)?;
        let loaded = Loaded::read(&path, &file)?;
        if loaded.torn_bytes > 0 {
            tracing::warn!(
                path = %path.display(),
                torn_bytes = loaded.torn_bytes,
                "dead-letter file ends with a torn line (process killed mid-write); dropping it"
            );
            file.set_len(loaded.len)?;
            file.sync_data()?;
        }
        let file = Arc::new(file);
        Ok(Shared {
            writer: Mutex::new(Writer {
                file: file.clone(),
                len: loaded.len,
                next_id: loaded.next_id,
                threshold: DEFAULT_COMPACTION_THRESHOLD,
                broken: None,
                dir_sync_pending: false,
                #[cfg(test)]
                fail_dir_sync: false,
            }),
            index: Mutex::new(Index {
                file,
                spans: loaded.spans,
                tombstones: loaded.tombstones,
                torn_bytes: loaded.torn_bytes,
            }),
            path,
            _lock: lock_file,
            exposed_mode,
        })
    }

    fn append(&self, mut letter: DeadLetter) -> io::Result<u64> {
        let mut w = lock(&self.writer);
        w.ready(&self.path)?;
        let id = w.next_id;
        // The id is spent before the write: a failed write whose line stays in the file must
        // not share its id with the next letter.
        w.next_id = id
            .checked_add(1)
            .ok_or_else(|| io::Error::other("dead-letter ids exhausted"))?;
        letter.id = id;
        let line = serde_json::to_vec(&letter).map_err(io::Error::other)?;
        let span = w.write_line(&self.path, line)?;
        lock(&self.index).spans.insert(id, span);
        Ok(id)
    }

    fn remove(&self, id: u64) -> io::Result<bool> {
        let mut w = lock(&self.writer);
        if !lock(&self.index).spans.contains_key(&id) {
            return Ok(false);
        }
        w.ready(&self.path)?;
        let line = serde_json::to_vec(&Tombstone { removed: id }).map_err(io::Error::other)?;
        w.write_line(&self.path, line)?;
        let due = {
            let mut index = lock(&self.index);
            index.spans.remove(&id);
            index.tombstones += 1;
            index.tombstones >= w.threshold && index.tombstones > index.spans.len()
        };
        if due {
            // The removal is already durable; a failed compaction leaves a larger file, or
            // (directory not synced) a store that refuses writes until it can sync it.
            if let Err(e) = self.compact(&mut w) {
                tracing::warn!(path = %self.path.display(), error = %e, "dead-letter compaction failed");
            }
        }
        Ok(true)
    }

    /// Rewrites the live letters into `<file>.tmp` and renames it over the file. Until the
    /// rename nothing has changed; after it the store uses the new file at once (its handle
    /// was opened before the rename), and only then syncs the directory.
    fn compact(&self, w: &mut Writer) -> io::Result<()> {
        let tmp = sibling(&self.path, ".tmp");
        let built = self.write_compacted(w, &tmp).and_then(|built| {
            std::fs::rename(&tmp, &self.path)?;
            Ok(built)
        });
        let (file, spans, len) = match built {
            Ok(built) => built,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let file = Arc::new(file);
        w.file = file.clone();
        w.len = len;
        let old = {
            let mut index = lock(&self.index);
            index.file = file;
            index.tombstones = 0;
            std::mem::replace(&mut index.spans, spans)
        };
        drop(old);
        w.dir_sync_pending = true;
        w.sync_dir_if_pending(&self.path)
    }

    /// The compacted file at `tmp`, synced, with an append handle opened on it and the new
    /// index.
    fn write_compacted(
        &self,
        w: &Writer,
        tmp: &Path,
    ) -> io::Result<(File, BTreeMap<u64, Span>, u64)> {
        let (old, live): (Arc<File>, Vec<(u64, Span)>) = {
            let index = lock(&self.index);
            (
                index.file.clone(),
                index.spans.iter().map(|(id, s)| (*id, *s)).collect(),
            )
        };
        let out = private()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)?;
        // The new file replaces the old one: it keeps its mode (0600 unless the owner chose
        // another on purpose).
        out.set_permissions(old.metadata()?.permissions())?;
        let mut writer = BufWriter::new(&out);
        let mut header =
            serde_json::to_vec(&NextId { next_id: w.next_id }).map_err(io::Error::other)?;
        header.push(b'\n');
        writer.write_all(&header)?;
        let mut offset = header.len() as u64;
        let mut spans = BTreeMap::new();
        let mut buf = Vec::new();
        for (id, span) in live {
            // Lines are copied as they are (no re-serialization): what was confirmed stays
            // byte for byte.
            buf.resize(span.len as usize, 0);
            read_exact_at(&old, &mut buf, span.offset)?;
            buf.push(b'\n');
            writer.write_all(&buf)?;
            spans.insert(
                id,
                Span {
                    offset,
                    len: span.len,
                },
            );
            offset += span.len + 1;
        }
        writer.flush()?;
        drop(writer);
        out.sync_all()?;
        // Locked before the rename: from the rename on, the file at the store's path is this
        // one, and the old file's lock no longer refuses anyone who opens the path.
        let file = open_append(tmp)?;
        try_lock(&file, &self.path)?;
        Ok((file, spans, offset))
    }
}

impl Writer {
    /// Refuses to write while a letter could not be made durable.
    fn ready(&mut self, path: &Path) -> io::Result<()> {
        if let Some(reason) = &self.broken {
            return Err(FileStoreError::NotDurable {
                path: path.to_path_buf(),
                reason: reason.clone(),
            }
            .into_io());
        }
        self.sync_dir_if_pending(path)
    }

    fn sync_dir_if_pending(&mut self, path: &Path) -> io::Result<()> {
        if !self.dir_sync_pending {
            return Ok(());
        }
        #[cfg(test)]
        let synced = if self.fail_dir_sync {
            Err(io::Error::other("injected directory sync failure"))
        } else {
            sync_dir(path)
        };
        #[cfg(not(test))]
        let synced = sync_dir(path);
        match synced {
            Ok(()) => {
                self.dir_sync_pending = false;
                Ok(())
            }
            Err(e) => Err(FileStoreError::NotDurable {
                path: path.to_path_buf(),
                reason: format!("syncing the directory after compaction: {e}"),
            }
            .into_io()),
        }
    }

    /// Appends one line and syncs; on failure cuts the file back so no partial line stays,
    /// and refuses every later write if even that fails.
    fn write_line(&mut self, path: &Path, mut line: Vec<u8>) -> io::Result<Span> {
        let span = Span {
            offset: self.len,
            len: line.len() as u64,
        };
        line.push(b'\n');
        let result = (&*self.file)
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += line.len() as u64;
                Ok(span)
            }
            Err(e) => {
                let rollback = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data());
                if let Err(r) = rollback {
                    tracing::error!(path = %path.display(), error = %e, rollback = %r,
                        "dead-letter write failed and could not be rolled back; refusing writes");
                    self.broken = Some(format!("write failed ({e}) and rollback failed ({r})"));
                }
                Err(e)
            }
        }
    }
}

/// What `open` learns from streaming the file.
struct Loaded {
    spans: BTreeMap<u64, Span>,
    tombstones: usize,
    next_id: u64,
    /// Bytes of complete lines.
    len: u64,
    torn_bytes: u64,
}

impl Loaded {
    /// Streams `file` line by line, keeping offsets, never the letters (each is parsed to
    /// check it, then dropped).
    fn read(path: &Path, file: &File) -> io::Result<Loaded> {
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut loaded = Loaded {
            spans: BTreeMap::new(),
            tombstones: 0,
            next_id: 1,
            len: 0,
            torn_bytes: 0,
        };
        let mut max_id = 0;
        let mut line = Vec::new();
        for n in 1.. {
            line.clear();
            let read = reader.read_until(b'\n', &mut line)?;
            if read == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                loaded.torn_bytes = read as u64;
                break;
            }
            let offset = loaded.len;
            loaded.len += read as u64;
            let text = &line[..read - 1];
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            // Tombstones and the high-water line fail on their first key when the line is a
            // letter, so trying them first costs little.
            if let Ok(t) = serde_json::from_slice::<Tombstone>(text) {
                loaded.spans.remove(&t.removed);
                loaded.tombstones += 1;
                max_id = max_id.max(t.removed);
            } else if let Ok(h) = serde_json::from_slice::<NextId>(text) {
                loaded.next_id = loaded.next_id.max(h.next_id);
            } else {
                let letter: DeadLetter = serde_json::from_slice(text).map_err(|e| {
                    invalid(path, format_args!("line {n} is not a dead letter: {e}"))
                })?;
                max_id = max_id.max(letter.id);
                let span = Span {
                    offset,
                    len: text.len() as u64,
                };
                loaded.spans.insert(letter.id, span);
            }
        }
        // A hand-edited id of u64::MAX leaves no fresh id: wrapping to 0 would let new letters
        // overwrite old ones (found by fuzzing, fuzz/fuzz_targets/dead_letter_file.rs).
        let after_max = max_id.checked_add(1).ok_or_else(|| {
            invalid(
                path,
                format_args!("id {max_id} leaves no id for new letters"),
            )
        })?;
        loaded.next_id = loaded.next_id.max(after_max);
        Ok(loaded)
    }
}

impl FileStore {
    fn read_page(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<DeadLetter>> {
        let (file, page): (Arc<File>, Vec<(u64, Span)>) = {
            let index = lock(&self.shared.index);
            let page = index
                .spans
                .range(after.saturating_add(1)..)
                .take(limit)
                .map(|(id, s)| (*id, *s))
                .collect();
            (index.file.clone(), page)
        };
        let shared = self.shared.clone();
        Box::pin(blocking(move || {
            let mut buf = Vec::new();
            page.into_iter()
                .map(|(id, span)| read_letter(&shared.path, &file, id, span, &mut buf))
                .collect()
        }))
    }
}

impl DeadLetterStore for FileStore {
    fn append(&self, letter: DeadLetter) -> StoreFuture<'_, u64> {
        let shared = self.shared.clone();
        Box::pin(blocking(move || shared.append(letter)))
    }

    /// Every letter, read from the file: for large stores prefer
    /// [`list_page`](DeadLetterStore::list_page).
    fn list(&self) -> StoreFuture<'_, Vec<DeadLetter>> {
        self.read_page(0, usize::MAX)
    }

    fn list_page(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<DeadLetter>> {
        self.read_page(after, limit)
    }

    fn remove(&self, id: u64) -> StoreFuture<'_, bool> {
        let shared = self.shared.clone();
        Box::pin(blocking(move || shared.remove(id)))
    }

    fn len(&self) -> StoreFuture<'_, usize> {
        let n = lock(&self.shared.index).spans.len();
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

    fn letter(n: u32) -> DeadLetter {
        DeadLetter {
            id: 0,
            method: "POST".into(),
            uri: format!("https://api.example.com/v1/users/{n}"),
            headers: vec![],
            body: super::super::StoredBody::Text(format!("{{\"user\":{n}}}")),
            status: Some(503),
            error: None,
            attempts: 1,
            outcome_unknown: false,
            first_attempt: std::time::SystemTime::UNIX_EPOCH,
            last_attempt: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    async fn ids(store: &FileStore) -> Vec<u64> {
        store.list().await.unwrap().iter().map(|l| l.id).collect()
    }

    /// Issue 14 item 6: the rename succeeded but the directory could not be synced, and the
    /// store went on confirming letters into a file it had replaced. Root ignores directory
    /// modes, so the failure is injected at the directory sync itself (tests/dead_letter.rs
    /// has the real-permission version for non-root runs).
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
        store.fail_dir_sync(true);
        assert!(store.remove(1).await.unwrap());
        // Two tombstones against one live letter: compaction, whose directory sync fails.
        assert!(
            store.remove(2).await.unwrap(),
            "the removal itself is durable"
        );
        assert_eq!(store.tombstones(), 0, "the rename happened");

        let err = store.append(letter(4)).await.unwrap_err();
        assert!(
            matches!(
                FileStoreError::of(&err),
                Some(FileStoreError::NotDurable { .. })
            ),
            "{err}"
        );
        assert!(store.remove(3).await.is_err(), "removals are refused too");
        assert_eq!(
            ids(&store).await,
            [3],
            "the refused letter was never confirmed"
        );

        // Once the directory syncs again, the store takes letters again, into the new file.
        store.fail_dir_sync(false);
        let id = store.append(letter(5)).await.unwrap();
        assert_eq!(ids(&store).await, [3, id]);
        drop(store);
        let reopened = FileStore::open(&path).await.unwrap();
        assert_eq!(
            ids(&reopened).await,
            [3, id],
            "every confirmed letter survives"
        );
        assert_eq!(reopened.list().await.unwrap()[1].uri, letter(5).uri);
    }

    /// Issue 14 item 10: `len` and `list` locked the one mutex an append holds across
    /// `sync_data`, so every reader on the async thread waited for the disk.
    #[tokio::test]
    async fn readers_do_not_wait_for_an_appends_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("dl.jsonl")).await.unwrap();
        let id = store.append(letter(1)).await.unwrap();
        // Hold the writer on another thread, as an append does across its fsync.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let shared = store.shared.clone();
        let holder = std::thread::spawn(move || {
            let _writer = lock(&shared.writer);
            held_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        held_rx.recv().unwrap();
        let reads = async {
            assert_eq!(store.len().await.unwrap(), 1);
            assert_eq!(store.list_page(0, 10).await.unwrap()[0].id, id);
            assert_eq!(ids(&store).await, [id]);
        };
        let finished = tokio::time::timeout(std::time::Duration::from_secs(10), reads).await;
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        finished.expect("readers finish while the writer is held");
    }

    /// Issue 14 item 9: open kept every letter in memory. The index holds offsets only: its
    /// entries have the same size whatever the size of the letters.
    #[tokio::test]
    async fn open_indexes_offsets_not_letters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl.jsonl");
        let mut big = letter(1);
        big.body = super::super::StoredBody::Text("x".repeat(100_000));
        let line = serde_json::to_string(&big).unwrap();
        let mut text = String::new();
        for id in 1..=50u64 {
            text.push_str(&line.replacen("\"id\":0", &format!("\"id\":{id}"), 1));
            text.push('\n');
        }
        std::fs::write(&path, &text).unwrap();
        let store = FileStore::open(&path).await.unwrap();
        {
            let index = lock(&store.shared.index);
            assert_eq!(index.spans.len(), 50);
            // An offset and a length per letter, pointing at its line.
            let span = index.spans[&2];
            assert_eq!(span.offset, line.len() as u64 + 1);
            assert_eq!(span.len, line.len() as u64);
        }
        assert_eq!(std::mem::size_of::<Span>(), 16);
        let page = store.list_page(10, 3).await.unwrap();
        assert_eq!(page.iter().map(|l| l.id).collect::<Vec<_>>(), [11, 12, 13]);
        assert_eq!(page[0].body, big.body);
    }

    /// Warning events, as `field=value` text, from the code run under it.
    #[derive(Clone, Default)]
    struct Warnings(Arc<Mutex<Vec<String>>>);

    struct Text(String);

    impl tracing::field::Visit for Text {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }

    impl tracing::Subscriber for Warnings {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if *event.metadata().level() == tracing::Level::WARN {
                let mut text = Text(String::new());
                event.record(&mut text);
                lock(&self.0).push(text.0);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// Issue 29 item 8: opening a store others can read warns, naming the mode and the fix,
    /// on the caller's task (so the caller's subscriber sees it); a private one does not.
    #[cfg(unix)]
    #[test]
    fn opening_a_store_others_can_read_logs_a_warning() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl.jsonl");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let warnings = Warnings::default();
        let open = |warnings: &Warnings| {
            tracing::subscriber::with_default(warnings.clone(), || {
                drop(rt.block_on(FileStore::open(&path)).unwrap());
            });
        };
        open(&warnings);
        assert!(lock(&warnings.0).is_empty(), "{:?}", lock(&warnings.0));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        open(&warnings);
        let logged = lock(&warnings.0).join("\n");
        assert!(
            logged.contains("mode=0644") && logged.contains("chmod 600"),
            "{logged}"
        );
    }
}
