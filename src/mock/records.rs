//! The records batch routes have stored, by identity, so a test can tell "applied once" from
//! "written twice" and from "never applied".

use std::collections::HashMap;

/// How one item writes its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    /// An idempotent write (upsert, update, identify, `PUT`): applying it again to a stored
    /// identity rewrites the record, which counts as written twice.
    Put(String),
    /// A create keyed by a unique value: a stored identity refuses it (`OBJECT_ALREADY_EXISTS`,
    /// "Member Exists") and nothing is written.
    Create(String),
    /// A create without a unique key (an event, a contact without an email): always applied;
    /// the key is the item's content, so the same content applied again is a duplicate.
    Append(String),
    /// Not a write at all (a `GET` operation of a Mailchimp batch).
    Read,
}

/// What applying a [`Write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Stored; `new` when the identity was not stored before.
    Stored { object_id: u64, new: bool },
    /// Refused because the identity exists.
    Exists { object_id: u64 },
    /// Nothing to store.
    Read,
}

/// Counts of the records of one batch route, or of all of them
/// ([`MockServer::records_on`](super::MockServer::records_on),
/// [`MockStats::records`](super::MockStats::records)).
///
/// `applied` counts distinct identities now stored (a create repeated without a unique key
/// is one identity, though the vendor would hold two objects). `written_twice` counts identities that
/// were written more than once: an idempotent route (upsert, update, identify, `PUT`) that
/// applied the same identity again, or a create without a unique key (an event, a HubSpot
/// contact without an email) applied twice with the same content, which the vendor would
/// have stored as two objects. A create refused as existing writes nothing and is counted in
/// `refused_existing`. `writes` counts every write, first ones included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordCounts {
    /// Distinct records stored.
    pub applied: u64,
    /// Records written more than once.
    pub written_twice: u64,
    /// Writes, each time a record was stored or rewritten.
    pub writes: u64,
    /// Creates refused because the identity was already stored.
    pub refused_existing: u64,
}

impl std::ops::AddAssign for RecordCounts {
    fn add_assign(&mut self, other: RecordCounts) {
        self.applied += other.applied;
        self.written_twice += other.written_twice;
        self.writes += other.writes;
        self.refused_existing += other.refused_existing;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Put,
    Create,
    Append,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    object_id: u64,
    writes: u32,
}

/// One route's store.
#[derive(Debug, Default)]
pub(crate) struct Records {
    stored: HashMap<String, Record>,
    counts: RecordCounts,
}

impl Records {
    /// Applies `write`, numbering new objects from `next_id`.
    pub(crate) fn apply(&mut self, write: Write, next_id: &mut u64) -> Applied {
        let (key, kind) = match write {
            Write::Read => return Applied::Read,
            Write::Create(key) => (key, Kind::Create),
            Write::Put(key) => (key, Kind::Put),
            Write::Append(key) => (key, Kind::Append),
        };
        if let Some(record) = self.stored.get_mut(&key) {
            if kind == Kind::Create {
                self.counts.refused_existing += 1;
                return Applied::Exists {
                    object_id: record.object_id,
                };
            }
            record.writes += 1;
            self.counts.writes += 1;
            if record.writes == 2 {
                self.counts.written_twice += 1;
            }
            if kind == Kind::Append {
                // Nothing unique to match on: the vendor makes another object.
                *next_id += 1;
                return Applied::Stored {
                    object_id: *next_id,
                    new: true,
                };
            }
            return Applied::Stored {
                object_id: record.object_id,
                new: false,
            };
        }
        *next_id += 1;
        let object_id = *next_id;
        self.stored.insert(
            key,
            Record {
                object_id,
                writes: 1,
            },
        );
        self.counts.applied += 1;
        self.counts.writes += 1;
        Applied::Stored {
            object_id,
            new: true,
        }
    }

    pub(crate) fn counts(&self) -> RecordCounts {
        self.counts
    }

    /// Each stored identity and how many times it was written.
    pub(crate) fn writes(&self) -> HashMap<String, u32> {
        self.stored
            .iter()
            .map(|(k, r)| (k.clone(), r.writes))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_count_rewrites_creates_refuse_and_appends_count_repeats() {
        let (mut r, mut id) = (Records::default(), 0);
        let put = |k: &str| Write::Put(k.to_owned());
        assert_eq!(
            r.apply(put("a"), &mut id),
            Applied::Stored {
                object_id: 1,
                new: true
            }
        );
        assert_eq!(
            r.apply(put("a"), &mut id),
            Applied::Stored {
                object_id: 1,
                new: false
            }
        );
        r.apply(put("a"), &mut id);
        assert_eq!(
            r.apply(Write::Create("a".into()), &mut id),
            Applied::Exists { object_id: 1 }
        );
        r.apply(Write::Append("e".into()), &mut id);
        r.apply(Write::Append("e".into()), &mut id);
        assert_eq!(r.apply(Write::Read, &mut id), Applied::Read);
        let c = r.counts();
        assert_eq!(
            (c.applied, c.written_twice, c.writes, c.refused_existing),
            (2, 2, 5, 1)
        );
        assert_eq!(r.writes()["a"], 3);
    }
}
