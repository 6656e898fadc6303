//! The store trait and the in-memory store.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use super::DeadLetter;

/// The boxed future returned by [`DeadLetterStore`] methods (object-safe, no `async-trait`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// Where dead letters are kept. Object-safe: the layer holds an `Arc<dyn DeadLetterStore>`.
///
/// An implementation must make a letter durable before `append` resolves (the layer reports
/// the failure to the caller only afterwards), and must forget an entry only on `remove`.
pub trait DeadLetterStore: Send + Sync + 'static {
    /// Stores `letter` under a new id (its `id` field is ignored) and returns the id.
    fn append(&self, letter: DeadLetter) -> StoreFuture<'_, u64>;

    /// Every stored letter, oldest (lowest id) first.
    fn list(&self) -> StoreFuture<'_, Vec<DeadLetter>>;

    /// At most `limit` letters with ids above `after`, oldest first: a page of
    /// [`list`](DeadLetterStore::list) (`after = 0` starts at the oldest; the next page starts
    /// after the last id returned). Paging by id is stable under removals, and a store that
    /// grew large need not hold every letter in memory at once.
    ///
    /// The default filters [`list`](DeadLetterStore::list); the crate's stores read only the
    /// page.
    fn list_page(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<DeadLetter>> {
        Box::pin(async move {
            let mut all = self.list().await?;
            all.retain(|l| l.id > after);
            all.truncate(limit);
            Ok(all)
        })
    }

    /// Forgets the letter `id`; `false` if there was none.
    fn remove(&self, id: u64) -> StoreFuture<'_, bool>;

    /// How many letters are stored.
    fn len(&self) -> StoreFuture<'_, usize>;

    /// Whether the store holds no letter.
    fn is_empty(&self) -> StoreFuture<'_, bool> {
        Box::pin(async move { Ok(self.len().await? == 0) })
    }
}

impl<T: DeadLetterStore + ?Sized> DeadLetterStore for Arc<T> {
    fn append(&self, letter: DeadLetter) -> StoreFuture<'_, u64> {
        (**self).append(letter)
    }
    fn list(&self) -> StoreFuture<'_, Vec<DeadLetter>> {
        (**self).list()
    }
    fn list_page(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<DeadLetter>> {
        (**self).list_page(after, limit)
    }
    fn remove(&self, id: u64) -> StoreFuture<'_, bool> {
        (**self).remove(id)
    }
    fn len(&self) -> StoreFuture<'_, usize> {
        (**self).len()
    }
}

/// A store in memory: for tests, and for runs where a crash may lose the letters. Clones
/// share the same letters.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    letters: BTreeMap<u64, DeadLetter>,
    next_id: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryInner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl DeadLetterStore for MemoryStore {
    fn append(&self, mut letter: DeadLetter) -> StoreFuture<'_, u64> {
        let id = self.with(|m| {
            m.next_id += 1;
            letter.id = m.next_id;
            m.letters.insert(m.next_id, letter);
            m.next_id
        });
        Box::pin(async move { Ok(id) })
    }

    fn list(&self) -> StoreFuture<'_, Vec<DeadLetter>> {
        let all = self.with(|m| m.letters.values().cloned().collect());
        Box::pin(async move { Ok(all) })
    }

    fn list_page(&self, after: u64, limit: usize) -> StoreFuture<'_, Vec<DeadLetter>> {
        let page = self.with(|m| {
            m.letters
                .range(after.saturating_add(1)..)
                .take(limit)
                .map(|(_, l)| l.clone())
                .collect()
        });
        Box::pin(async move { Ok(page) })
    }

    fn remove(&self, id: u64) -> StoreFuture<'_, bool> {
        let found = self.with(|m| m.letters.remove(&id).is_some());
        Box::pin(async move { Ok(found) })
    }

    fn len(&self) -> StoreFuture<'_, usize> {
        let n = self.with(|m| m.letters.len());
        Box::pin(async move { Ok(n) })
    }
}
