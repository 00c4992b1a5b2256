//! The ESP receiver's anti-replay window (RFC 4303 §3.4.3, Appendix A2;
//! spec `esp.md` §2).
//!
//! The right edge is the highest *authenticated* sequence number. Use it in
//! two steps around the ICV check, as RFC 4303 §3.4.3 orders them:
//!
//! 1. [`ReplayWindow::check`] before the ICV: infers the 64-bit number
//!    (ESN, App. A2.2) and refuses numbers left of the window or already
//!    seen — cheap, no state change;
//! 2. [`ReplayWindow::accept`] only after the ICV verified with that
//!    number: slides the window and marks it.
//!
//! The bitmap is a fixed 4096-bit ring (no allocation); the window size is
//! 64..=4096 packets.

/// The largest window supported.
pub const MAX_WINDOW: u32 = 4096;
const WORDS: usize = MAX_WINDOW as usize / 64;

/// Why a sequence number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Left of the window (or, without ESN, number 0, which no sender uses).
    #[error("ESP sequence number left of the replay window")]
    TooOld,
    /// Already received.
    #[error("ESP sequence number already received (replay)")]
    Duplicate,
}

/// One SA's receive window.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    size: u32,
    esn: bool,
    /// Highest authenticated number; 0 before the first packet.
    top: u64,
    /// Bit `n % MAX_WINDOW` set = number `n` seen (for n in the window).
    bits: [u64; WORDS],
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("size", &self.size)
            .field("esn", &self.esn)
            .field("top", &self.top)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// A window of `size` packets (clamped to 64..=4096; RFC 4303 §3.4.3
    /// says 32 at least, 64 by default), with or without ESN.
    pub fn new(size: u32, esn: bool) -> ReplayWindow {
        ReplayWindow {
            size: size.clamp(64, MAX_WINDOW),
            esn,
            top: 0,
            bits: [0; WORDS],
        }
    }

    /// The window size in packets.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The highest authenticated sequence number (0: none yet).
    pub fn top(&self) -> u64 {
        self.top
    }

    /// The 64-bit sequence number a received low half stands for: without
    /// ESN the low half itself; with ESN the high half inferred as
    /// RFC 4303 Appendix A2.2 prescribes (the ICV confirms the guess).
    pub fn infer(&self, seq_low: u32) -> u64 {
        if !self.esn {
            return u64::from(seq_low);
        }
        let tl = self.top as u32;
        let th = (self.top >> 32) as u32;
        let w = self.size;
        let bl = tl.wrapping_sub(w).wrapping_add(1);
        let sh = if tl >= w - 1 {
            // Case A: the window lies within one 2^32 block.
            if seq_low >= bl {
                th
            } else {
                th.wrapping_add(1)
            }
        } else if seq_low >= bl {
            // Case B, the number is in the previous block (below 2^32·th).
            match th.checked_sub(1) {
                Some(h) => h,
                None => return 0, // before the first block: refused by check
            }
        } else {
            th
        };
        (u64::from(sh) << 32) | u64::from(seq_low)
    }

    /// Step 1, before the ICV: the 64-bit number to authenticate with, or
    /// why the packet is refused. Changes nothing.
    pub fn check(&self, seq_low: u32) -> Result<u64, ReplayError> {
        let seq = self.infer(seq_low);
        if seq == 0 {
            return Err(ReplayError::TooOld);
        }
        if seq > self.top {
            return Ok(seq);
        }
        if self.top - seq >= u64::from(self.size) {
            return Err(ReplayError::TooOld);
        }
        if self.bit(seq) {
            return Err(ReplayError::Duplicate);
        }
        Ok(seq)
    }

    /// Step 2, after the ICV verified with `seq` (from [`check`]): marks it,
    /// sliding the window when it is a new right edge. Re-checks, so a
    /// caller that skipped step 1 still cannot accept a replay.
    ///
    /// [`check`]: ReplayWindow::check
    pub fn accept(&mut self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::TooOld);
        }
        if seq > self.top {
            let shift = seq - self.top;
            if shift >= u64::from(MAX_WINDOW) {
                self.bits = [0; WORDS];
            } else {
                for n in self.top + 1..seq {
                    self.set(n, false);
                }
            }
            self.top = seq;
            self.set(seq, true);
            return Ok(());
        }
        if self.top - seq >= u64::from(self.size) {
            return Err(ReplayError::TooOld);
        }
        if self.bit(seq) {
            return Err(ReplayError::Duplicate);
        }
        self.set(seq, true);
        Ok(())
    }

    fn bit(&self, n: u64) -> bool {
        let i = (n % u64::from(MAX_WINDOW)) as usize;
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, n: u64, on: bool) {
        let i = (n % u64::from(MAX_WINDOW)) as usize;
        if on {
            self.bits[i / 64] |= 1 << (i % 64);
        } else {
            self.bits[i / 64] &= !(1 << (i % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_duplicates_and_left_edge() {
        let mut w = ReplayWindow::new(64, false);
        assert_eq!(w.check(0), Err(ReplayError::TooOld), "0 is never sent");
        for n in 1..=100u32 {
            assert_eq!(w.check(n), Ok(u64::from(n)));
            w.accept(u64::from(n)).unwrap();
            assert_eq!(w.check(n), Err(ReplayError::Duplicate));
        }
        // window holds 37..=100
        assert_eq!(w.check(36), Err(ReplayError::TooOld));
        assert_eq!(w.check(37), Err(ReplayError::Duplicate));
        // a gap, then the late ones inside the window are accepted once
        w.accept(200).unwrap();
        assert_eq!(w.check(137), Ok(137));
        assert_eq!(w.check(136), Err(ReplayError::TooOld));
        w.accept(150).unwrap();
        assert_eq!(w.check(150), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(150), Err(ReplayError::Duplicate));
    }

    #[test]
    fn esn_high_half_inference_follows_appendix_a2() {
        // Case A: window inside one block; a low number means the next block.
        let mut w = ReplayWindow::new(64, true);
        w.accept(0x1_ffff_fff0).unwrap();
        assert_eq!(w.infer(0xffff_fff8), 0x1_ffff_fff8);
        assert_eq!(w.infer(5), 0x2_0000_0005);
        // Case B: the window straddles 2^32·2; high low halves are the old block.
        w.accept(0x2_0000_0005).unwrap();
        assert_eq!(w.infer(0xffff_fffe), 0x1_ffff_fffe);
        assert_eq!(w.infer(9), 0x2_0000_0009);
        assert_eq!(w.check(0xffff_fff0), Err(ReplayError::Duplicate));
        // below the window's left edge (Bl): taken as the current block,
        // far ahead; a sender never sends it, so the ICV refuses the guess
        assert_eq!(w.check(0xffff_ff00), Ok(0x2_ffff_ff00));
        // Case B at the very start: nothing before block 0.
        let w = ReplayWindow::new(64, true);
        assert_eq!(w.check(0xffff_fff0), Err(ReplayError::TooOld));
        assert_eq!(w.check(1), Ok(1));
    }

    proptest::proptest! {
        /// Against a model (the set of accepted numbers and the rule "newer
        /// than top - size"): the window accepts exactly the numbers that
        /// are in the window and new, and never one twice.
        #[test]
        fn matches_a_set_model(
            size in 64u32..=512,
            steps in proptest::collection::vec(0u64..2000, 1..400),
        ) {
            let mut w = ReplayWindow::new(size, false);
            let mut seen = BTreeSet::new();
            let mut top = 0u64;
            for s in steps {
                let s = s + 1;
                let fresh = s > top || (top - s < u64::from(size) && !seen.contains(&s));
                let r = w.check(s as u32);
                proptest::prop_assert_eq!(r.is_ok(), fresh, "seq {} top {}", s, top);
                if r.is_ok() {
                    w.accept(s).unwrap();
                    seen.insert(s);
                    top = top.max(s);
                } else {
                    proptest::prop_assert!(w.accept(s).is_err());
                }
            }
        }

        /// With ESN, a sender that never falls more than the window behind
        /// is always understood, across 2^32 boundaries.
        #[test]
        fn esn_tracks_a_sender_across_block_boundaries(
            start in 0u64..(1 << 40),
            jumps in proptest::collection::vec(-60i64..2000, 1..200),
        ) {
            let mut w = ReplayWindow::new(64, true);
            let mut cur = start.max(1);
            w.accept(cur).unwrap();
            for j in jumps {
                let next = (cur as i64 + j).max(1) as u64;
                if next + 63 < w.top() { continue; }
                let inferred = w.infer(next as u32);
                proptest::prop_assert_eq!(inferred, next);
                if w.check(next as u32).is_ok() {
                    w.accept(next).unwrap();
                }
                cur = w.top();
            }
        }
    }
}
