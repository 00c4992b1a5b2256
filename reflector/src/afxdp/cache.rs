//! The per-poller key cache: one prepared `SecuredSlot` per slot, read
//! from the `keys` map only when a packet's metadata carries a generation
//! the cache does not hold (ARCHITECTURE.md: "no syscall on the hot path").
//!
//! A slot whose map entry does not match (unused, another generation,
//! unusable values) is remembered as failed for that generation and
//! re-read at most every [`RETRY_NS`], so a stream of packets for a stale
//! or unknown slot costs one `bpf(2)` call per 10 ms, not one per packet.

use super::secured::SecuredSlot;
use super::stats::DropReason;
use crate::bpf::{BpfError, KeysReader, SlotKeys, MAX_SLOTS};

/// How long a failed lookup is remembered before the map is read again.
pub const RETRY_NS: u64 = 10_000_000;

/// Where the cache reads slot state from (the `keys` map; a fake in tests).
pub(crate) trait KeySource {
    /// The state of `slot`, `None` if unused.
    fn read(&self, slot: u32) -> Result<Option<SlotKeys>, BpfError>;
}

impl KeySource for KeysReader {
    fn read(&self, slot: u32) -> Result<Option<SlotKeys>, BpfError> {
        KeysReader::read(self, slot)
    }
}

enum Entry {
    Empty,
    Ready(Box<SecuredSlot>),
    Failed {
        generation: u32,
        retry_at_ns: u64,
        reason: DropReason,
    },
}

/// Prepared slots of one poller.
pub(crate) struct KeyCache<S: KeySource> {
    entries: Vec<Entry>,
    source: S,
    /// Map reads done (for tests and statistics).
    pub reads: u64,
}

impl<S: KeySource> KeyCache<S> {
    pub fn new(source: S) -> Self {
        KeyCache {
            entries: (0..MAX_SLOTS).map(|_| Entry::Empty).collect(),
            source,
            reads: 0,
        }
    }

    /// The prepared state of `slot` at `generation`. `now_ns` is any
    /// monotonic-enough time (the batch's), used only for retry pacing.
    pub fn lookup(
        &mut self,
        slot: u32,
        generation: u32,
        now_ns: u64,
    ) -> Result<&mut SecuredSlot, DropReason> {
        let i = slot as usize;
        let Some(entry) = self.entries.get(i) else {
            return Err(DropReason::UnknownSlot);
        };
        match entry {
            Entry::Ready(s) if s.generation == generation => {}
            Entry::Failed {
                generation: g,
                retry_at_ns,
                reason,
            } if *g == generation && now_ns < *retry_at_ns => return Err(*reason),
            _ => {
                self.reads += 1;
                let fail = |reason| Entry::Failed {
                    generation,
                    retry_at_ns: now_ns.saturating_add(RETRY_NS),
                    reason,
                };
                let old = std::mem::replace(&mut self.entries[i], Entry::Empty);
                self.entries[i] = match self.source.read(slot) {
                    // Same session, same configuration, new generation (an
                    // entry change that does not touch the keys): keep the
                    // engine and its sequence counter.
                    Ok(Some(k)) if k.generation == generation => match old {
                        Entry::Ready(mut s) if s.same_config(&k) => {
                            s.generation = generation;
                            Entry::Ready(s)
                        }
                        _ => match SecuredSlot::new(&k) {
                            Ok(s) => Entry::Ready(Box::new(s)),
                            Err(why) => {
                                tracing::warn!(slot, generation, %why, "unusable keys entry");
                                fail(DropReason::BadKeys)
                            }
                        },
                    },
                    Ok(Some(_)) => fail(DropReason::StaleGeneration),
                    Ok(None) => fail(DropReason::UnknownSlot),
                    Err(e) => {
                        tracing::warn!(slot, error = %e, "keys map read failed");
                        fail(DropReason::BadKeys)
                    }
                };
            }
        }
        match &mut self.entries[i] {
            Entry::Ready(s) => Ok(s),
            Entry::Failed { reason, .. } => Err(*reason),
            Entry::Empty => Err(DropReason::UnknownSlot),
        }
    }
}

impl<S: KeySource> KeyCache<S> {
    /// The prepared slot `slot` as it is now (no map read), if ready.
    pub fn ready_mut(&mut self, slot: u32) -> Option<&mut SecuredSlot> {
        match self.entries.get_mut(slot as usize)? {
            Entry::Ready(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::{EntryFlags, KeyMaterial};
    use ricochet_protocol::crypto::SessionKeys;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    struct Fake {
        map: RefCell<HashMap<u32, SlotKeys>>,
        reads: Cell<u32>,
    }

    impl KeySource for &Fake {
        fn read(&self, slot: u32) -> Result<Option<SlotKeys>, BpfError> {
            self.reads.set(self.reads.get() + 1);
            Ok(self.map.borrow().get(&slot).cloned())
        }
    }

    fn keys(generation: u32) -> SlotKeys {
        SlotKeys {
            generation,
            instance: 1,
            keys: KeyMaterial::TwampAuthenticated(SessionKeys {
                aes: [1; 16],
                hmac: [2; 32],
            }),
            flags: EntryFlags::empty(),
            dscp: 0,
            reflect_octets: 0,
            sender_mbz: 0,
            sender: None,
        }
    }

    #[test]
    fn reads_only_on_generation_change_and_paces_failures() {
        let fake = Fake {
            map: RefCell::new(HashMap::new()),
            reads: Cell::new(0),
        };
        fake.map.borrow_mut().insert(4, keys(1));
        let mut c = KeyCache::new(&fake);
        for _ in 0..100 {
            assert_eq!(c.lookup(4, 1, 0).unwrap().generation, 1);
        }
        assert_eq!(fake.reads.get(), 1, "one read for 100 packets");

        // metadata shows generation 2, map still at 1: stale, paced
        for t in 0..100 {
            assert_eq!(c.lookup(4, 2, t).err(), Some(DropReason::StaleGeneration));
        }
        assert_eq!(fake.reads.get(), 2);
        // the control plane writes generation 2; after the retry delay it is seen
        fake.map.borrow_mut().insert(4, keys(2));
        assert!(c.lookup(4, 2, 5).is_err(), "still paced");
        assert_eq!(c.lookup(4, 2, RETRY_NS).unwrap().generation, 2);
        assert_eq!(fake.reads.get(), 3);

        // generation 3, same configuration: the prepared state is kept
        fake.map.borrow_mut().insert(4, keys(3));
        let ptr = c.lookup(4, 2, RETRY_NS).unwrap() as *const SecuredSlot;
        let kept = c.lookup(4, 3, RETRY_NS).unwrap();
        assert_eq!(kept.generation, 3);
        assert!(std::ptr::eq(ptr, kept), "same state, not rebuilt");

        assert_eq!(c.lookup(9, 1, 0).err(), Some(DropReason::UnknownSlot));
        assert_eq!(
            c.lookup(MAX_SLOTS, 1, 0).err(),
            Some(DropReason::UnknownSlot)
        );
        assert_eq!(fake.reads.get(), 5, "out-of-range slots are not read");
    }
}
