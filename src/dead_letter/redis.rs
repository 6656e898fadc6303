//! A dead-letter store on a Redis stream (feature `redis`).

use std::fmt;
use std::io;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::Script;

use super::{DeadLetter, DeadLetterStore, StoreFuture};

/// Appends atomically: the id comes from a counter and becomes the entry's stream id
/// `"{id}-1"`, so ids are unique, increasing, and never reused after a removal.
const APPEND: &str = r#"
local id = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], id .. '-1', 'letter', ARGV[1])
return id
"#;

/// Entries read per `XRANGE` call when listing.
const PAGE: usize = 500;

/// A [`DeadLetterStore`] on a Redis stream, shared by every worker of a fleet.
///
/// Letters are JSON entries of the stream `"{prefix}:dead-letters"`; ids come from the counter
/// `"{prefix}:dead-letters:seq"`. `list` reads the stream oldest first, `remove` deletes one
/// entry (`XDEL`), so [`replay`](crate::replay()) removes a letter only after it was delivered.
/// Every call is bounded by a timeout and fails with an `io::Error` (kind `TimedOut` or
/// `Other`) rather than hanging when Redis is unreachable.
///
/// Durability is the server's: a letter is acknowledged once Redis has it in memory, and
/// survives a Redis restart only with persistence on (`appendonly yes`, with
/// `appendfsync always` for the same guarantee as [`FileStore`](crate::FileStore)).
///
/// **Privacy.** A letter holds the request body (customers' personal data; credentials are
/// redacted). Redis has no per-key modes, so keep the keys private with an ACL user that
/// only the dead-letter workers use, allowed the two keys and the commands this store sends,
/// and make sure no other user's key patterns (`~*`, `allkeys`) cover them:
///
/// ```text
/// ACL SETUSER dead-letters on >long-random-password resetkeys ~workspace:42:dead-letters* \
///     resetchannels -@all +incr +xadd +xrange +xdel +xlen +evalsha +eval +script|load
/// ACL SETUSER default off
/// ```
///
/// and connect as that user (`redis://dead-letters:password@host/`). The `default` user (no
/// password) otherwise reads every key.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_throttle::bucket::RedisBucket;
/// use tower_throttle::{dead_letter::{DeadLetterStore, RedisStore}, DeadLetterLayer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = RedisBucket::connection_manager("redis://127.0.0.1/", Duration::from_millis(500)).await?;
/// let store = RedisStore::new(conn, "workspace:42");
/// let layer = DeadLetterLayer::new(store.clone());
/// # drop(layer);
/// println!("{} letters waiting", store.len().await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    seq: String,
    stream: String,
    timeout: Duration,
    append: Script,
}

impl RedisStore {
    /// A store under `prefix` (e.g. the workspace id), with a 2 s timeout per call.
    pub fn new(conn: ConnectionManager, prefix: &str) -> RedisStore {
        let stream = format!("{prefix}:dead-letters");
        RedisStore {
            conn,
            seq: format!("{stream}:seq"),
            stream,
            timeout: Duration::from_secs(2),
            append: Script::new(APPEND),
        }
    }

    /// Sets the longest a call may take before it fails with `io::ErrorKind::TimedOut`
    /// (`Duration::MAX`: no bound).
    pub fn with_timeout(mut self, timeout: Duration) -> RedisStore {
        self.timeout = timeout;
        self
    }

    /// The stream holding the letters.
    pub fn stream_key(&self) -> &str {
        &self.stream
    }

    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = ::redis::RedisResult<T>>,
    ) -> io::Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "redis dead-letter store: {what} got no answer within {:?}",
                    self.timeout
                ),
            )),
            Ok(Err(e)) => Err(io::Error::other(format!(
                "redis dead-letter store: {what} failed: {e}"
            ))),
            Ok(Ok(v)) => Ok(v),
        }
    }
}

fn entry_id(id: u64) -> String {
    format!("{id}-1")
}

impl RedisStore {
    /// At most `count` letters with ids above `after`, in one `XRANGE`.
    async fn range(&self, after: u64, count: usize) -> io::Result<Vec<DeadLetter>> {
        let mut conn = self.conn.clone();
        // An exclusive start ("(" prefix) resumes after the entry of id `after`.
        let start = if after == 0 {
            "-".to_string()
        } else {
            format!("({}", entry_id(after))
        };
        let page: Vec<Entry> = self
            .bounded(
                "list",
                ::redis::cmd("XRANGE")
                    .arg(&self.stream)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn),
            )
            .await?;
        page.iter().map(parse_letter).collect()
    }
}

/// One `XRANGE` entry: its stream id and its flat `[field, value, ...]` list.
type Entry = (String, Vec<Vec<u8>>);

fn parse_letter((stream_id, fields): &Entry) -> io::Result<DeadLetter> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("redis dead-letter entry {stream_id}: {why}"),
        )
    };
    let id = stream_id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .ok_or_else(|| bad("not an id this store wrote"))?;
    let json = fields
        .chunks(2)
        .find(|pair| pair.len() == 2 && pair[0] == b"letter")
        .map(|pair| &pair[1])
        .ok_or_else(|| bad("no letter field"))?;
    let mut letter: DeadLetter =
        serde_json::from_slice(json).map_err(|e| bad(&format!("invalid JSON: {e}")))?;
    letter.id = id;
    Ok(letter)
}

impl DeadLetterStore for RedisStore {
    fn append(&self, mut letter: DeadLetter) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            letter.id = 0;
            let json = serde_json::to_string(&letter).map_err(io::Error::other)?;
            let mut conn = self.conn.clone();
            let mut invocation = self.append.prepare_invoke();
            invocation.key(&self.seq).key(&self.stream).arg(json);
            self.bounded("append", invocation.invoke_async::<u64>(&mut conn))
                .await
        })
    }

    fn list(&self) -> StoreFuture<'_, Vec<DeadLetter>> {
        Box::pin(async move {
            let mut letters = Vec::new();
            let mut after = 0;
            loop {
                let page = self.range(after, PAGE).await?;
                let full = page.len() == PAGE;
                after = page.last().map_or(after, |l| l.id);
                letters.extend(page);
                if !full {
                    break;
                }
            }
            Ok(letters)
        })
    }

    fn list_page(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<DeadLetter>> {
        Box::pin(async move {
            let mut letters = Vec::new();
            let mut after = after;
            while letters.len() < limit {
                let want = (limit - letters.len()).min(PAGE);
                let page = self.range(after, want).await?;
                let full = page.len() == want;
                after = page.last().map_or(after, |l| l.id);
                letters.extend(page);
                if !full {
                    break;
                }
            }
            Ok(letters)
        })
    }

    fn remove(&self, id: u64) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let removed: u64 = self
                .bounded(
                    "remove",
                    ::redis::cmd("XDEL")
                        .arg(&self.stream)
                        .arg(entry_id(id))
                        .query_async(&mut conn),
                )
                .await?;
            Ok(removed > 0)
        })
    }

    fn len(&self) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            self.bounded(
                "len",
                ::redis::cmd("XLEN")
                    .arg(&self.stream)
                    .query_async(&mut conn),
            )
            .await
        })
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("stream", &self.stream)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
