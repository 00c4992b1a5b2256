//! Reflector UDP port allocation over the configured test-port range.
//!
//! Every accepted Request-TW-Session gets a reflector (Session-Reflector) UDP
//! port, returned in the Port field of Accept-Session (RFC 5357 §3.5). The
//! client's requested Receiver Port is honoured when it is inside the range
//! and free; otherwise the server MAY answer with another port and Accept = 0
//! (RFC 5357 §3.5, erratum EID 1587; `twamp-control.md` §3 rule 2). perfSONAR's
//! `twping` asks for its own sender port and always uses the returned Port, so
//! a request is never refused because of the port it asked for. When the range
//! is exhausted the allocator returns `None` and the server answers Accept = 5
//! (temporary resource limitation, RFC 4656 §3.3).
//!
//! The allocator is a bitset: allocation scans whole 64-bit words, so finding
//! the next free port costs at most `range_len / 64` word reads.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An inclusive range of UDP ports, written `first-last` (e.g. `18760-19960`)
/// or as a single port (`862`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

/// Why a port range string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    /// Not of the form `first-last` with decimal ports.
    #[error("port range {0:?} is not of the form FIRST-LAST (for example 18760-19960)")]
    Syntax(String),
    /// Port 0 cannot be used as a reflector port.
    #[error("port range {0:?} contains port 0, which cannot be bound; start at 1 or above")]
    Zero(String),
    /// `first` is greater than `last`.
    #[error("port range {0:?} is reversed: the first port must not exceed the last")]
    Reversed(String),
}

impl PortRange {
    /// A range from `first` to `last`, both inclusive.
    pub fn new(first: u16, last: u16) -> Result<Self, PortRangeError> {
        let text = format!("{first}-{last}");
        if first == 0 {
            return Err(PortRangeError::Zero(text));
        }
        if first > last {
            return Err(PortRangeError::Reversed(text));
        }
        Ok(PortRange { first, last })
    }

    /// `const` form of [`PortRange::new`]: `None` when `first` is 0 or
    /// greater than `last`.
    pub const fn checked(first: u16, last: u16) -> Option<Self> {
        if first == 0 || first > last {
            None
        } else {
            Some(PortRange { first, last })
        }
    }

    /// First port of the range.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// Last port of the range (inclusive).
    pub fn last(&self) -> u16 {
        self.last
    }

    /// Number of ports in the range (at least 1).
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    /// Always false: a range holds at least one port. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `port` lies inside the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || PortRangeError::Syntax(s.to_owned());
        let (a, b) = match s.trim().split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let first: u16 = a.parse().map_err(|_| syntax())?;
        let last: u16 = b.parse().map_err(|_| syntax())?;
        if first == 0 {
            return Err(PortRangeError::Zero(s.to_owned()));
        }
        if first > last {
            return Err(PortRangeError::Reversed(s.to_owned()));
        }
        Ok(PortRange { first, last })
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Hands out reflector ports from a [`PortRange`], each at most once until
/// released.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    range: PortRange,
    /// Bit `i` set = port `first + i` allocated. Bits past the range end in the
    /// last word are kept set so scans never return them.
    words: Vec<u64>,
    in_use: usize,
    /// Index where the next search without a usable request starts, so that a
    /// just-released port is not handed out again at once (late test packets
    /// of the old session must not land in the new one).
    cursor: usize,
}

impl PortAllocator {
    /// An allocator with every port of `range` free.
    pub fn new(range: PortRange) -> Self {
        let len = range.len();
        let mut words = vec![0u64; len.div_ceil(64)];
        let tail = len % 64;
        if tail != 0 {
            if let Some(last) = words.last_mut() {
                *last = !0u64 << tail;
            }
        }
        PortAllocator {
            range,
            words,
            in_use: 0,
            cursor: 0,
        }
    }

    /// The range this allocator serves.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// Number of ports currently allocated.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Number of ports still free.
    pub fn available(&self) -> usize {
        self.range.len() - self.in_use
    }

    /// Whether `port` is currently allocated.
    pub fn is_allocated(&self, port: u16) -> bool {
        match self.index(port) {
            Some(i) => self.words[i / 64] & (1 << (i % 64)) != 0,
            None => false,
        }
    }

    /// Allocate a port: `requested` itself when it is inside the range and
    /// free, otherwise the next free port after it (wrapping inside the
    /// range). A requested port outside the range (including 0) starts the
    /// search at the port after the last one handed out. `None` when every
    /// port is taken.
    pub fn allocate(&mut self, requested: u16) -> Option<u16> {
        if self.in_use == self.range.len() {
            return None;
        }
        let start = self.index(requested).unwrap_or(self.cursor);
        let index = self.find_free_from(start)?;
        self.words[index / 64] |= 1 << (index % 64);
        self.in_use += 1;
        self.cursor = (index + 1) % self.range.len();
        // Lossless: index < range.len() <= 65535 - first + 1.
        Some(self.range.first + index as u16)
    }

    /// Return `port` to the pool. Returns false (and changes nothing) when the
    /// port was not allocated, so a double release is harmless and visible.
    pub fn release(&mut self, port: u16) -> bool {
        let Some(i) = self.index(port) else {
            return false;
        };
        let bit = 1u64 << (i % 64);
        if self.words[i / 64] & bit == 0 {
            return false;
        }
        self.words[i / 64] &= !bit;
        self.in_use -= 1;
        true
    }

    fn index(&self, port: u16) -> Option<usize> {
        self.range
            .contains(port)
            .then(|| usize::from(port - self.range.first))
    }

    /// First free index at or after `start`, wrapping once around the range.
    fn find_free_from(&self, start: usize) -> Option<usize> {
        let n_words = self.words.len();
        let first_word = start / 64;
        // The first word is visited twice: once for bits >= start, and again
        // at the end of the wrap for bits < start.
        for step in 0..=n_words {
            let w = (first_word + step) % n_words;
            let mut free = !self.words[w];
            if step == 0 {
                free &= !0u64 << (start % 64);
            } else if step == n_words {
                free &= !(!0u64 << (start % 64));
            }
            if free != 0 {
                return Some(w * 64 + free.trailing_zeros() as usize);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn range(a: u16, b: u16) -> PortRange {
        PortRange::new(a, b).expect("valid range")
    }

    #[test]
    fn parses_and_prints_ranges() {
        assert_eq!("18760-19960".parse::<PortRange>(), Ok(range(18760, 19960)));
        assert_eq!(" 862 ".parse::<PortRange>(), Ok(range(862, 862)));
        assert_eq!(range(862, 862).to_string(), "862");
        assert_eq!(range(1, 65535).len(), 65535);
        assert!(matches!(
            "10-5".parse::<PortRange>(),
            Err(PortRangeError::Reversed(_))
        ));
        assert!(matches!(
            "0-5".parse::<PortRange>(),
            Err(PortRangeError::Zero(_))
        ));
        assert!(matches!(
            "a-5".parse::<PortRange>(),
            Err(PortRangeError::Syntax(_))
        ));
        assert!(matches!(
            "1-70000".parse::<PortRange>(),
            Err(PortRangeError::Syntax(_))
        ));
    }

    #[test]
    fn honours_a_free_requested_port() {
        // The perfSONAR capture twamp-open-v4-reqport18790: requested 18790 in
        // range 18760-18799, answered 18790.
        let mut a = PortAllocator::new(range(18760, 18799));
        assert_eq!(a.allocate(18790), Some(18790));
        assert!(a.is_allocated(18790));
    }

    #[test]
    fn taken_request_gets_next_free_and_wraps() {
        let mut a = PortAllocator::new(range(100, 103));
        assert_eq!(a.allocate(103), Some(103));
        // 103 taken: wraps to the start of the range.
        assert_eq!(a.allocate(103), Some(100));
        assert_eq!(a.allocate(100), Some(101));
        assert_eq!(a.allocate(101), Some(102));
        assert_eq!(a.allocate(101), None);
        assert_eq!(a.available(), 0);
        assert!(a.release(101));
        assert!(!a.release(101), "double release must be refused");
        assert!(!a.release(99), "out of range release must be refused");
        assert_eq!(a.allocate(0), Some(101));
    }

    #[test]
    fn out_of_range_request_round_robins() {
        let mut a = PortAllocator::new(range(5000, 5009));
        assert_eq!(a.allocate(0), Some(5000));
        assert_eq!(a.allocate(0), Some(5001));
        assert!(a.release(5000));
        // The cursor moved on: the released port is not reused at once.
        assert_eq!(a.allocate(40000), Some(5002));
    }

    #[test]
    fn full_u16_range_works() {
        let mut a = PortAllocator::new(range(1, 65535));
        assert_eq!(a.allocate(65535), Some(65535));
        assert_eq!(a.allocate(65535), Some(1));
        assert_eq!(a.in_use(), 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u16),
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => any::<u16>().prop_map(Op::Alloc),
            3 => (990u16..1140).prop_map(Op::Alloc),
            2 => any::<usize>().prop_map(Op::Release),
        ]
    }

    proptest! {
        #[test]
        fn never_hands_out_a_port_twice(
            first in 1000u16..1100,
            len in 1u16..140,
            ops in proptest::collection::vec(op(), 1..400),
        ) {
            let r = range(first, first + len - 1);
            let mut a = PortAllocator::new(r);
            let mut held: Vec<u16> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc(req) => match a.allocate(req) {
                        Some(p) => {
                            prop_assert!(r.contains(p), "port {} outside {}", p, r);
                            prop_assert!(!held.contains(&p), "port {} handed out twice", p);
                            if r.contains(req) && !held.contains(&req) {
                                prop_assert_eq!(p, req, "a free requested port must be honoured");
                            }
                            held.push(p);
                        }
                        None => prop_assert_eq!(held.len(), r.len(), "None only when exhausted"),
                    },
                    Op::Release(i) => {
                        if !held.is_empty() {
                            let p = held.swap_remove(i % held.len());
                            prop_assert!(a.release(p));
                        }
                    }
                }
                prop_assert_eq!(a.in_use(), held.len());
                let set: HashSet<u16> = held.iter().copied().collect();
                prop_assert_eq!(set.len(), held.len());
            }
        }

        #[test]
        fn range_parsing_never_panics_and_round_trips(text in "\\PC{0,20}", a in 1u16.., b in 1u16..) {
            let _ = text.parse::<PortRange>();
            let r = range(a.min(b), a.max(b));
            prop_assert_eq!(r.to_string().parse::<PortRange>(), Ok(r));
        }

        #[test]
        fn exhausts_exactly_at_range_len(first in 1u16..65000, len in 1u16..300, req in any::<u16>()) {
            let last = first.saturating_add(len - 1);
            let r = range(first, last);
            let mut a = PortAllocator::new(r);
            let mut seen = HashSet::new();
            for _ in 0..r.len() {
                let p = a.allocate(req);
                prop_assert!(p.is_some());
                prop_assert!(seen.insert(p));
            }
            prop_assert_eq!(a.allocate(req), None);
        }
    }
}
