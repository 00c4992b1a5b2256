//! The four AF_XDP rings (fill, completion, RX, TX): single-producer /
//! single-consumer queues shared with the kernel (Documentation/networking/
//! af_xdp.rst, "Rings").
//!
//! Each ring is a power-of-two array of descriptors plus a free-running
//! 32-bit producer and consumer index; the entry of index `i` is at
//! `i & (size - 1)`, and `producer - consumer` (wrapping) is the number of
//! filled entries. User space is the producer of the fill and TX rings and
//! the consumer of the completion and RX rings. The index arithmetic lives in
//! the pure [`ProdIndex`] and [`ConsIndex`] (unit-tested across the 2^32
//! wrap); [`ProducerRing`] and [`ConsumerRing`] add the shared memory and the
//! acquire/release ordering:
//!
//! * producer: read the consumer index with Acquire (the other side has
//!   finished reading the entries it released), write entries, publish the
//!   producer index with Release;
//! * consumer: read the producer index with Acquire (the entries are
//!   written), copy the entries out, publish the consumer index with Release.
//!
//! Entries are copied in and out in batches, so no reference into shared
//! memory outlives a call.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::umem::Mmap;

/// `struct xdp_desc`: an RX or TX descriptor (UMEM address of the packet,
/// its length, `XDP_PKT_CONTD` / `XDP_TX_METADATA` options).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpDesc {
    /// UMEM offset of the first packet octet.
    pub addr: u64,
    /// Packet length.
    pub len: u32,
    /// `XDP_*` descriptor options.
    pub options: u32,
}

/// `XDP_RING_NEED_WAKEUP` in a ring's flags word.
const NEED_WAKEUP: u32 = libc::XDP_RING_NEED_WAKEUP;

/// Producer-side index bookkeeping: the next index to write and the first
/// index the producer may not write (consumer + size), both cached so the
/// shared consumer index is read only when the cached room runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProdIndex {
    size: u32,
    /// Next index to write (== published producer index between calls).
    prod: u32,
    /// Consumer index + size, as last read.
    limit: u32,
}

impl ProdIndex {
    /// Bookkeeping for a ring of `size` entries (a power of two) whose
    /// shared indices currently read `producer` and `consumer`.
    pub fn new(size: u32, producer: u32, consumer: u32) -> ProdIndex {
        ProdIndex {
            size,
            prod: producer,
            limit: consumer.wrapping_add(size),
        }
    }

    /// Entries that may be written without reading the consumer index.
    pub fn cached_room(&self) -> u32 {
        self.limit.wrapping_sub(self.prod).min(self.size)
    }

    /// Claims up to `want` entries; `consumer` is called (once) only if the
    /// cached room is smaller than `want`. Returns the first claimed index
    /// and the number claimed.
    pub fn claim(&mut self, want: u32, consumer: impl FnOnce() -> u32) -> (u32, u32) {
        if self.cached_room() < want {
            self.limit = consumer().wrapping_add(self.size);
        }
        let n = want.min(self.cached_room());
        let start = self.prod;
        self.prod = start.wrapping_add(n);
        (start, n)
    }

    /// The producer index to publish.
    pub fn producer(&self) -> u32 {
        self.prod
    }
}

/// Consumer-side index bookkeeping: the next index to read and the
/// producer index as last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsIndex {
    size: u32,
    /// Next index to read (== published consumer index between calls).
    cons: u32,
    /// Producer index as last read.
    prod: u32,
}

impl ConsIndex {
    /// Bookkeeping for a ring of `size` entries whose shared indices read
    /// `producer` and `consumer`.
    pub fn new(size: u32, producer: u32, consumer: u32) -> ConsIndex {
        ConsIndex {
            size,
            cons: consumer,
            prod: producer,
        }
    }

    /// Entries known to be filled without reading the producer index. A
    /// producer index more than `size` ahead (a broken peer) counts as a
    /// full ring, never more.
    pub fn cached_filled(&self) -> u32 {
        self.prod.wrapping_sub(self.cons).min(self.size)
    }

    /// Takes up to `want` entries; `producer` is called (once) only if fewer
    /// than `want` are known. Returns the first index and the number taken.
    pub fn take(&mut self, want: u32, producer: impl FnOnce() -> u32) -> (u32, u32) {
        if self.cached_filled() < want {
            self.prod = producer();
        }
        let n = want.min(self.cached_filled());
        let start = self.cons;
        self.cons = start.wrapping_add(n);
        (start, n)
    }

    /// The consumer index to publish.
    pub fn consumer(&self) -> u32 {
        self.cons
    }
}

/// What keeps a ring's memory mapped.
enum Backing {
    /// The kernel's ring, mmap'd from the socket.
    Mmap(#[allow(dead_code)] Mmap),
    /// Heap memory laid out like a kernel ring (tests, simulations).
    Heap(#[allow(dead_code)] Arc<HeapRing>),
}

/// The shared words and the descriptor array of one ring.
struct RingMem<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    size: u32,
    _backing: Backing,
    _t: PhantomData<T>,
}

// SAFETY: the pointers refer into memory owned by `_backing`, which moves
// with the ring; the shared words are atomics and the descriptor slots are
// only accessed under the producer/consumer protocol, so the ring may be
// used from whichever single thread owns it.
unsafe impl<T: Send> Send for RingMem<T> {}

/// Offsets of a ring's parts in its mapping (`struct xdp_ring_offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingOffsets {
    pub producer: u64,
    pub consumer: u64,
    pub desc: u64,
    pub flags: u64,
}

impl<T: Copy> RingMem<T> {
    /// A ring over `map`, checking that every part lies inside it and is
    /// aligned.
    fn from_mmap(map: Mmap, off: RingOffsets, size: u32) -> Result<RingMem<T>, String> {
        let len = map.len() as u64;
        let desc_end = (size as u64)
            .checked_mul(std::mem::size_of::<T>() as u64)
            .and_then(|b| b.checked_add(off.desc));
        let word_ok = |o: u64| o % 4 == 0 && o + 4 <= len;
        if !size.is_power_of_two()
            || !word_ok(off.producer)
            || !word_ok(off.consumer)
            || !word_ok(off.flags)
            || off.desc % std::mem::align_of::<T>() as u64 != 0
            || desc_end.is_none_or(|e| e > len)
        {
            return Err(format!(
                "ring layout {off:?} with {size} entries does not fit its {len}-octet mapping"
            ));
        }
        let base = map.as_ptr();
        // SAFETY: every offset was checked above to lie inside the mapping
        // (and to be aligned for its type); the mapping lives as long as the
        // ring (it is moved into `_backing`).
        unsafe {
            Ok(RingMem {
                producer: NonNull::new_unchecked(base.add(off.producer as usize).cast()),
                consumer: NonNull::new_unchecked(base.add(off.consumer as usize).cast()),
                flags: NonNull::new_unchecked(base.add(off.flags as usize).cast()),
                descs: NonNull::new_unchecked(base.add(off.desc as usize).cast()),
                size,
                _backing: Backing::Mmap(map),
                _t: PhantomData,
            })
        }
    }

    fn from_heap(heap: &Arc<HeapRing>) -> RingMem<T> {
        assert!(
            heap.desc_size == std::mem::size_of::<T>(),
            "heap ring built for another descriptor type"
        );
        let words = heap.words.as_ptr();
        // SAFETY: HeapRing::new laid out producer, consumer and flags as the
        // first three u64 words and `size` descriptors (u64-aligned) after
        // them; the words are atomics (interior mutability), so writing
        // through pointers derived from a shared reference is allowed; the
        // Arc keeps the allocation alive. Index and flags words are used
        // through their first 4 octets, as HeapRing::word does.
        unsafe {
            RingMem {
                producer: NonNull::new_unchecked(words.cast_mut().cast()),
                consumer: NonNull::new_unchecked(words.add(1).cast_mut().cast()),
                flags: NonNull::new_unchecked(words.add(2).cast_mut().cast()),
                descs: NonNull::new_unchecked(words.add(3).cast_mut().cast()),
                size: heap.size,
                _backing: Backing::Heap(Arc::clone(heap)),
                _t: PhantomData,
            }
        }
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping, aligned (checked at
        // construction); AtomicU32 has the layout of u32.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.flags.as_ref() }
    }

    /// Writes the entry of index `idx`. The caller owns that slot (claimed
    /// through the producer protocol).
    fn write(&self, idx: u32, v: T) {
        let slot = (idx & (self.size - 1)) as usize;
        // SAFETY: `slot < size`, and the array of `size` entries lies inside
        // the mapping (checked at construction). The slot is ours until the
        // producer index is published; volatile because the other side
        // reads it concurrently with our access to other slots.
        unsafe { self.descs.as_ptr().add(slot).write_volatile(v) }
    }

    /// Reads the entry of index `idx`, which the producer has published.
    fn read(&self, idx: u32) -> T {
        let slot = (idx & (self.size - 1)) as usize;
        // SAFETY: as in `write`; the slot is published by the producer and
        // not reused before we release it.
        unsafe { self.descs.as_ptr().add(slot).read_volatile() }
    }
}

/// A ring user space produces into (fill, TX).
pub struct ProducerRing<T: Copy> {
    mem: RingMem<T>,
    idx: ProdIndex,
}

impl<T: Copy> ProducerRing<T> {
    pub(crate) fn from_mmap(
        map: Mmap,
        off: RingOffsets,
        size: u32,
    ) -> Result<ProducerRing<T>, String> {
        Ok(Self::over(RingMem::from_mmap(map, off, size)?))
    }

    /// A producer over a heap ring (tests and simulations).
    pub fn over_heap(heap: &Arc<HeapRing>) -> ProducerRing<T> {
        Self::over(RingMem::from_heap(heap))
    }

    fn over(mem: RingMem<T>) -> ProducerRing<T> {
        let idx = ProdIndex::new(
            mem.size,
            mem.producer().load(Ordering::Relaxed),
            mem.consumer().load(Ordering::Acquire),
        );
        ProducerRing { mem, idx }
    }

    /// Number of entries.
    pub fn size(&self) -> u32 {
        self.mem.size
    }

    /// Writes as many of `items` as fit and publishes them; returns how many
    /// (always a prefix of `items`).
    pub fn produce(&mut self, items: &[T]) -> usize {
        let want = u32::try_from(items.len()).unwrap_or(u32::MAX);
        let cons = self.mem.consumer();
        let (start, n) = self.idx.claim(want, || cons.load(Ordering::Acquire));
        for (i, v) in items.iter().take(n as usize).enumerate() {
            self.mem.write(start.wrapping_add(i as u32), *v);
        }
        if n > 0 {
            self.mem
                .producer()
                .store(self.idx.producer(), Ordering::Release);
        }
        n as usize
    }

    /// Free entries right now (reads the consumer index).
    pub fn room(&self) -> u32 {
        let c = self.mem.consumer().load(Ordering::Acquire);
        c.wrapping_add(self.mem.size)
            .wrapping_sub(self.idx.producer())
            .min(self.mem.size)
    }

    /// Entries published and not yet consumed by the other side.
    pub fn outstanding(&self) -> u32 {
        self.idx
            .producer()
            .wrapping_sub(self.mem.consumer().load(Ordering::Acquire))
            .min(self.mem.size)
    }

    /// Whether the kernel asked to be woken up (`XDP_RING_NEED_WAKEUP`).
    pub fn needs_wakeup(&self) -> bool {
        self.mem.flags().load(Ordering::Acquire) & NEED_WAKEUP != 0
    }
}

/// A ring user space consumes from (RX, completion).
pub struct ConsumerRing<T: Copy> {
    mem: RingMem<T>,
    idx: ConsIndex,
}

impl<T: Copy> ConsumerRing<T> {
    pub(crate) fn from_mmap(
        map: Mmap,
        off: RingOffsets,
        size: u32,
    ) -> Result<ConsumerRing<T>, String> {
        Ok(Self::over(RingMem::from_mmap(map, off, size)?))
    }

    /// A consumer over a heap ring (tests and simulations).
    pub fn over_heap(heap: &Arc<HeapRing>) -> ConsumerRing<T> {
        Self::over(RingMem::from_heap(heap))
    }

    fn over(mem: RingMem<T>) -> ConsumerRing<T> {
        let idx = ConsIndex::new(
            mem.size,
            mem.producer().load(Ordering::Acquire),
            mem.consumer().load(Ordering::Relaxed),
        );
        ConsumerRing { mem, idx }
    }

    /// Number of entries.
    pub fn size(&self) -> u32 {
        self.mem.size
    }

    /// Copies up to `out.len()` entries into `out`, releases them to the
    /// producer and returns how many.
    pub fn consume(&mut self, out: &mut [T]) -> usize {
        let want = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let prod = self.mem.producer();
        let (start, n) = self.idx.take(want, || prod.load(Ordering::Acquire));
        for (i, o) in out.iter_mut().take(n as usize).enumerate() {
            *o = self.mem.read(start.wrapping_add(i as u32));
        }
        if n > 0 {
            self.mem
                .consumer()
                .store(self.idx.consumer(), Ordering::Release);
        }
        n as usize
    }

    /// Whether the kernel asked to be woken up (`XDP_RING_NEED_WAKEUP`).
    pub fn needs_wakeup(&self) -> bool {
        self.mem.flags().load(Ordering::Acquire) & NEED_WAKEUP != 0
    }
}

/// Heap memory laid out like a kernel ring: producer, consumer and flags
/// words (one u64 each) and `size` descriptors. Lets tests and simulations
/// drive the same [`ProducerRing`]/[`ConsumerRing`] code the sockets use,
/// with one side playing the kernel.
pub struct HeapRing {
    /// Atomics so that both sides may write through shared references
    /// (interior mutability, as the kernel's mapping has).
    words: Box<[std::sync::atomic::AtomicU64]>,
    size: u32,
    desc_size: usize,
}

impl HeapRing {
    /// A ring of `size` (a power of two) descriptors of type `T` (at most
    /// 16 octets, 8-aligned: `u64` or [`XdpDesc`]) whose indices start at
    /// `start` (to exercise the 2^32 wrap).
    pub fn new<T: Copy>(size: u32, start: u32) -> Arc<HeapRing> {
        assert!(size.is_power_of_two(), "ring size must be a power of two");
        let desc_size = std::mem::size_of::<T>();
        assert!(desc_size % 8 == 0 && desc_size <= 16 && std::mem::align_of::<T>() <= 8);
        let words: Box<[std::sync::atomic::AtomicU64]> = (0..3 + size as usize * desc_size / 8)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect();
        let ring = HeapRing {
            words,
            size,
            desc_size,
        };
        ring.word(0).store(start, Ordering::Relaxed);
        ring.word(1).store(start, Ordering::Relaxed);
        Arc::new(ring)
    }

    /// Word `i` (0 producer, 1 consumer, 2 flags) as the rings see it.
    fn word(&self, i: usize) -> &AtomicU32 {
        assert!(i < 3);
        // SAFETY: words 0–2 are live atomics inside the boxed slice; their
        // first 4 octets viewed as AtomicU32 (u64 alignment covers u32) are
        // exactly what RingMem::from_heap points the rings at.
        unsafe { &*self.words.as_ptr().add(i).cast::<AtomicU32>() }
    }

    /// Sets or clears `XDP_RING_NEED_WAKEUP` as the kernel would.
    pub fn set_need_wakeup(&self, on: bool) {
        self.word(2)
            .store(if on { NEED_WAKEUP } else { 0 }, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn producer_room_and_wrap_across_u32() {
        // indices just below 2^32
        let start = u32::MAX - 2;
        let mut p = ProdIndex::new(8, start, start);
        assert_eq!(p.cached_room(), 8);
        let (s, n) = p.claim(5, || unreachable!("room is cached"));
        assert_eq!((s, n), (start, 5));
        assert_eq!(p.producer(), start.wrapping_add(5)); // wrapped past 0
        assert_eq!(p.producer(), 2);
        // 3 left; asking for 6 re-reads the consumer: nothing consumed yet
        let (_, n) = p.claim(6, || start);
        assert_eq!(n, 3);
        assert_eq!(p.cached_room(), 0);
        // the consumer took 4: room 4
        let (s, n) = p.claim(10, || start.wrapping_add(4));
        assert_eq!((s, n), (start.wrapping_add(8), 4));
        assert_eq!(p.cached_room(), 0);
    }

    #[test]
    fn consumer_takes_only_what_was_published_across_wrap() {
        let start = u32::MAX;
        let mut c = ConsIndex::new(4, start, start);
        assert_eq!(c.take(4, || start), (start, 0));
        let (s, n) = c.take(2, || start.wrapping_add(3));
        assert_eq!((s, n), (start, 2));
        // one more is cached, no read needed for 1
        assert_eq!(
            c.take(1, || unreachable!("cached")),
            (start.wrapping_add(2), 1)
        );
        assert_eq!(c.consumer(), 2);
        // a broken producer 100 ahead counts as a full ring, not more
        let (_, n) = c.take(1000, || start.wrapping_add(103));
        assert_eq!(n, 4);
    }

    #[test]
    fn heap_ring_round_trip_with_wrap_and_backpressure() {
        let heap = HeapRing::new::<XdpDesc>(4, u32::MAX - 1);
        let mut tx = ProducerRing::<XdpDesc>::over_heap(&heap);
        let mut kernel = ConsumerRing::<XdpDesc>::over_heap(&heap);
        let d = |a: u64| XdpDesc {
            addr: a,
            len: a as u32 + 1,
            options: 0,
        };
        let items: Vec<XdpDesc> = (0..6).map(d).collect();
        assert_eq!(tx.produce(&items), 4, "only the ring's size fits");
        assert_eq!(tx.outstanding(), 4);
        assert_eq!(tx.room(), 0);
        let mut out = [XdpDesc::default(); 3];
        assert_eq!(kernel.consume(&mut out), 3);
        assert_eq!(out.to_vec(), items[..3].to_vec());
        assert_eq!(tx.room(), 3);
        assert_eq!(tx.produce(&items[4..]), 2);
        let mut out = [XdpDesc::default(); 8];
        assert_eq!(kernel.consume(&mut out), 3);
        assert_eq!(out[..3].to_vec(), vec![items[3], items[4], items[5]]);
        assert_eq!(kernel.consume(&mut out), 0);
        assert_eq!(tx.outstanding(), 0);
        assert!(!tx.needs_wakeup());
        heap.set_need_wakeup(true);
        assert!(tx.needs_wakeup() && kernel.needs_wakeup());
    }

    proptest! {
        /// Any interleaving of produce/consume batches delivers every item
        /// once, in order, never more than `size` in flight, wherever the
        /// indices start (including just below the 2^32 wrap).
        #[test]
        fn fifo_under_any_interleaving(
            start in prop_oneof![Just(u32::MAX - 5), any::<u32>()],
            ops in proptest::collection::vec((any::<bool>(), 0usize..12), 1..200),
        ) {
            let heap = HeapRing::new::<u64>(8, start);
            let mut p = ProducerRing::<u64>::over_heap(&heap);
            let mut c = ConsumerRing::<u64>::over_heap(&heap);
            let (mut next_in, mut next_out) = (0u64, 0u64);
            let mut buf = [0u64; 12];
            for (produce, k) in ops {
                if produce {
                    let items: Vec<u64> = (next_in..next_in + k as u64).collect();
                    let n = p.produce(&items);
                    prop_assert!(n <= k);
                    next_in += n as u64;
                } else {
                    let n = c.consume(&mut buf[..k]);
                    for v in &buf[..n] {
                        prop_assert_eq!(*v, next_out);
                        next_out += 1;
                    }
                }
                prop_assert!(next_in - next_out <= 8);
                prop_assert_eq!(u64::from(p.outstanding()), next_in - next_out);
            }
        }
    }
}
