//! The host clock state and the provenance of every timestamp.
//!
//! TWAMP's Error Estimate (RFC 4656 §4.1.2, reused by RFC 5357 §4.1.2 and
//! RFC 8762 §4.2.1) carries an S bit ("the clock is synchronized to UTC by an
//! external source") and an error bound. Neither may be hard-coded: both come
//! from the kernel's NTP state, read here with `adjtimex(2)` in read-only mode
//! (`modes = 0`, no privilege needed).
//!
//! The TAI−UTC offset is read from the same call (`timex.tai`). It is whatever
//! the time daemon told the kernel: 0 when nobody did, in which case
//! `CLOCK_TAI` equals `CLOCK_REALTIME` and this module reports exactly that.
//!
//! Every timestamp the data plane produces is a [`Stamp`]: a value, the time
//! scale it counts in (UTC or TAI) and where it was taken ([`StampSource`]).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use ricochet_protocol::time::{ErrorEstimate, TaiOffset, TimeFormat, Timestamp};

const NS_PER_US: u64 = 1_000;
const NS_PER_SEC: u64 = 1_000_000_000;

/// The kernel's cap on `maxerror` (`NTP_PHASE_LIMIT`, 16 s): it sets
/// `STA_UNSYNC` once the bound grows past it. Used as the error of an
/// unsynchronized clock whose kernel reports no bound at all.
pub const UNSYNCHRONIZED_ERROR_NS: u64 = 16 * NS_PER_SEC;

/// Where a timestamp was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StampSource {
    /// The NIC's hardware clock (PHC), reported by `SO_TIMESTAMPING` as a raw
    /// hardware stamp or by the XDP metadata kfunc.
    NicHardware,
    /// The kernel's software stamp at packet reception (`SO_TIMESTAMPING`
    /// software stamp or `SO_TIMESTAMPNS`), read from the system clock.
    KernelSoftware,
    /// A `clock_gettime` call in this process: the packet or reply was
    /// stamped by user space, after (or before) the kernel handled it.
    UserSpace,
}

/// The time scale a nanosecond count is in. Both count from 1970-01-01
/// (the Unix epoch for UTC, the PTP epoch for TAI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeScale {
    /// `CLOCK_REALTIME`: UTC, leap seconds not counted.
    Utc,
    /// `CLOCK_TAI`, or a PHC run on PTP time: TAI, no leap seconds.
    Tai,
}

/// A timestamp with its time scale and provenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// Nanoseconds since 1970-01-01 in `scale`.
    pub ns: u64,
    /// The scale `ns` counts in.
    pub scale: TimeScale,
    /// Where the stamp was taken.
    pub source: StampSource,
}

impl Stamp {
    /// A user-space stamp from `CLOCK_TAI`, taken now.
    pub fn now() -> Stamp {
        Stamp {
            ns: now_tai_ns(),
            scale: TimeScale::Tai,
            source: StampSource::UserSpace,
        }
    }

    /// The stamp as TAI nanoseconds, given the host's TAI−UTC offset.
    pub fn tai_ns(self, offset: TaiOffset) -> u64 {
        match self.scale {
            TimeScale::Tai => self.ns,
            TimeScale::Utc => offset.utc_to_tai_ns(self.ns),
        }
    }

    /// The stamp as UTC nanoseconds, given the host's TAI−UTC offset.
    pub fn utc_ns(self, offset: TaiOffset) -> u64 {
        match self.scale {
            TimeScale::Utc => self.ns,
            TimeScale::Tai => offset.tai_to_utc_ns(self.ns),
        }
    }

    /// The stamp encoded as a TWAMP/STAMP timestamp field: NTP (UTC) or
    /// PTPv2 truncated (TAI), RFC 4656 §4.1.2 and RFC 8186 §2.3.
    pub fn to_timestamp(self, offset: TaiOffset, format: TimeFormat) -> Timestamp {
        Timestamp::from_tai_ns(self.tai_ns(offset), offset, format)
    }
}

/// What keeps the system clock on time, as far as the kernel's NTP state
/// tells (`timex.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockSource {
    /// The kernel reports the clock unsynchronized (`STA_UNSYNC`,
    /// `STA_CLOCKERR` or state `TIME_ERROR`): free-running.
    Unsynchronized,
    /// Synchronized and disciplined by the kernel's PLL/FLL (`STA_PLL` /
    /// `STA_FLL`), as ntpd does.
    KernelDiscipline,
    /// Synchronized with a PPS signal disciplining the kernel
    /// (`STA_PPSTIME` / `STA_PPSFREQ`).
    Pps,
    /// Synchronized, steered from user space without the kernel's discipline
    /// flags (chronyd, systemd-timesyncd, phc2sys).
    External,
}

/// A pending or ongoing leap second, from the return state of `adjtimex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeapState {
    /// No leap second announced (`TIME_OK`, `TIME_WAIT`, `TIME_ERROR`).
    None,
    /// A leap second will be inserted at the end of the UTC day (`TIME_INS`).
    Insert,
    /// A leap second will be deleted at the end of the UTC day (`TIME_DEL`).
    Delete,
    /// A leap second is being inserted right now (`TIME_OOP`).
    InProgress,
}

/// The host clock state, read with `adjtimex(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockState {
    /// TAI − UTC in seconds, as the kernel knows it (`timex.tai`). 0 when no
    /// time daemon has set it; then `CLOCK_TAI` equals `CLOCK_REALTIME`.
    pub tai_offset_s: i32,
    /// The clock is synchronized to an external source (TWAMP's S bit).
    pub synchronized: bool,
    /// Estimated error (`timex.esterror`), nanoseconds.
    pub est_error_ns: u64,
    /// Maximum error (`timex.maxerror`), nanoseconds.
    pub max_error_ns: u64,
    /// What disciplines the clock.
    pub source: ClockSource,
    /// Announced leap second.
    pub leap: LeapState,
    /// A PTP hardware clock (`/dev/ptp*`) is present (information only: the
    /// system clock may or may not follow it).
    pub phc_present: bool,
}

impl ClockState {
    /// Reads the current state from the kernel and looks for `/dev/ptp*`.
    pub fn read() -> io::Result<ClockState> {
        // SAFETY: `timex` is a plain C struct for which all-zero bytes are a
        // valid value; `modes = 0` makes adjtimex a pure read. The pointer is
        // to a live, exclusively borrowed local for the duration of the call.
        let (state, tx) = unsafe {
            let mut tx: libc::timex = std::mem::zeroed();
            tx.modes = 0;
            let state = libc::adjtimex(&mut tx);
            (state, tx)
        };
        if state < 0 {
            return Err(io::Error::last_os_error());
        }
        // c_long is i32 on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let raw = KernelClock {
            state,
            status: tx.status,
            tai: tx.tai,
            esterror_us: i64::from(tx.esterror),
            maxerror_us: i64::from(tx.maxerror),
        };
        Ok(raw.into_state(!phc_devices().is_empty()))
    }

    /// The TAI−UTC offset in the protocol crate's type.
    pub fn tai_offset(&self) -> TaiOffset {
        TaiOffset(self.tai_offset_s)
    }

    /// The error bound to report, nanoseconds.
    ///
    /// Synchronized: the kernel's estimated error. Unsynchronized: the larger
    /// of the estimated and the maximum error (the kernel lets `maxerror` grow
    /// by 500 ppm of elapsed time up to 16 s), and 16 s when the kernel gives
    /// neither — a free-running clock must not claim a small error.
    pub fn error_ns(&self) -> u64 {
        if self.synchronized {
            self.est_error_ns
        } else {
            match self.est_error_ns.max(self.max_error_ns) {
                0 => UNSYNCHRONIZED_ERROR_NS,
                e => e,
            }
        }
    }

    /// The Error Estimate for timestamps in `format` (RFC 4656 §4.1.2):
    /// S = synchronized, Z = format, and the smallest Scale/Multiplier
    /// covering [`Self::error_ns`] (Multiplier never 0).
    pub fn error_estimate(&self, format: TimeFormat) -> ErrorEstimate {
        ErrorEstimate::from_error_ns(self.synchronized, format, self.error_ns())
    }
}

/// The clock state shared between the housekeeping task that refreshes it
/// and the packet handlers that read it for every reply: lock-free, no
/// system call on the read side, and never a torn mix of two states (a
/// sequence lock over atomics).
#[derive(Debug, Default)]
pub struct ClockCell {
    seq: AtomicU64,
    /// TAI offset (bits 0–31), synchronized (32), source (33–34), leap
    /// (35–36), PHC present (37).
    word: AtomicU64,
    est_error_ns: AtomicU64,
    max_error_ns: AtomicU64,
}

impl ClockCell {
    /// A cell holding `state`.
    pub fn new(state: &ClockState) -> ClockCell {
        let c = ClockCell::default();
        c.store(state);
        c
    }

    /// Publishes a new state (writers are serialized).
    pub fn store(&self, st: &ClockState) {
        let mut seq = self.seq.load(Ordering::Relaxed);
        loop {
            if seq & 1 == 1 {
                std::hint::spin_loop();
                seq = self.seq.load(Ordering::Relaxed);
                continue;
            }
            match self.seq.compare_exchange_weak(
                seq,
                seq.wrapping_add(1),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => seq = now,
            }
        }
        fence(Ordering::Release);
        let source = match st.source {
            ClockSource::Unsynchronized => 0u64,
            ClockSource::KernelDiscipline => 1,
            ClockSource::Pps => 2,
            ClockSource::External => 3,
        };
        let leap = match st.leap {
            LeapState::None => 0u64,
            LeapState::Insert => 1,
            LeapState::Delete => 2,
            LeapState::InProgress => 3,
        };
        let word = u64::from(st.tai_offset_s as u32)
            | (u64::from(st.synchronized) << 32)
            | (source << 33)
            | (leap << 35)
            | (u64::from(st.phc_present) << 37);
        self.word.store(word, Ordering::Relaxed);
        self.est_error_ns.store(st.est_error_ns, Ordering::Relaxed);
        self.max_error_ns.store(st.max_error_ns, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The last published state.
    pub fn load(&self) -> ClockState {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let word = self.word.load(Ordering::Relaxed);
            let est_error_ns = self.est_error_ns.load(Ordering::Relaxed);
            let max_error_ns = self.max_error_ns.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) != before {
                continue;
            }
            return ClockState {
                tai_offset_s: word as u32 as i32,
                synchronized: (word >> 32) & 1 == 1,
                est_error_ns,
                max_error_ns,
                source: match (word >> 33) & 3 {
                    0 => ClockSource::Unsynchronized,
                    1 => ClockSource::KernelDiscipline,
                    2 => ClockSource::Pps,
                    _ => ClockSource::External,
                },
                leap: match (word >> 35) & 3 {
                    0 => LeapState::None,
                    1 => LeapState::Insert,
                    2 => LeapState::Delete,
                    _ => LeapState::InProgress,
                },
                phc_present: (word >> 37) & 1 == 1,
            };
        }
    }
}

/// The raw fields of `struct timex` this module uses, and the decoding rules.
/// Split from the system call so the rules can be tested on any input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelClock {
    /// The return value of `adjtimex` (`TIME_OK` … `TIME_ERROR`).
    pub state: i32,
    /// `timex.status` (`STA_*` flags).
    pub status: i32,
    /// `timex.tai`, seconds.
    pub tai: i32,
    /// `timex.esterror`, microseconds.
    pub esterror_us: i64,
    /// `timex.maxerror`, microseconds.
    pub maxerror_us: i64,
}

impl KernelClock {
    /// Decodes the kernel fields. Negative errors (never seen, but the fields
    /// are signed) count as 0.
    pub fn into_state(self, phc_present: bool) -> ClockState {
        let unsync = self.state == libc::TIME_ERROR
            || self.status & (libc::STA_UNSYNC | libc::STA_CLOCKERR) != 0;
        let source = if unsync {
            ClockSource::Unsynchronized
        } else if self.status & (libc::STA_PPSTIME | libc::STA_PPSFREQ) != 0 {
            ClockSource::Pps
        } else if self.status & (libc::STA_PLL | libc::STA_FLL) != 0 {
            ClockSource::KernelDiscipline
        } else {
            ClockSource::External
        };
        let leap = match self.state {
            libc::TIME_INS => LeapState::Insert,
            libc::TIME_DEL => LeapState::Delete,
            libc::TIME_OOP => LeapState::InProgress,
            _ => LeapState::None,
        };
        let us_to_ns = |us: i64| u64::try_from(us).unwrap_or(0).saturating_mul(NS_PER_US);
        ClockState {
            tai_offset_s: self.tai,
            synchronized: !unsync,
            est_error_ns: us_to_ns(self.esterror_us),
            max_error_ns: us_to_ns(self.maxerror_us),
            source,
            leap,
            phc_present,
        }
    }
}

/// The PTP hardware clock devices present (`/dev/ptp<N>`), sorted.
pub fn phc_devices() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = dir
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix("ptp")
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, exclusively borrowed timespec; clock_gettime
    // writes only into it. CLOCK_REALTIME and CLOCK_TAI exist on every Linux
    // since 3.10, so the call cannot fail with a valid pointer; should it,
    // `ts` stays zero.
    unsafe {
        libc::clock_gettime(clock, &mut ts);
    }
    // time_t and c_long are i32 on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let (sec, nsec) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
    timespec_ns(sec, nsec).unwrap_or(0)
}

/// Nanoseconds of a `timespec`, or `None` if negative or out of range.
pub(crate) fn timespec_ns(sec: i64, nsec: i64) -> Option<u64> {
    let sec = u64::try_from(sec).ok()?;
    let nsec = u64::try_from(nsec).ok()?;
    if nsec >= NS_PER_SEC {
        return None;
    }
    sec.checked_mul(NS_PER_SEC)?.checked_add(nsec)
}

/// `CLOCK_TAI` now, nanoseconds since the PTP epoch. Equal to
/// [`now_utc_ns`] when the kernel's TAI offset is 0.
pub fn now_tai_ns() -> u64 {
    clock_ns(libc::CLOCK_TAI)
}

/// `CLOCK_REALTIME` now, UTC nanoseconds since the Unix epoch.
pub fn now_utc_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kc(state: i32, status: i32) -> KernelClock {
        KernelClock {
            state,
            status,
            tai: 37,
            esterror_us: 250,
            maxerror_us: 40_000,
        }
    }

    #[test]
    fn unsync_flag_or_time_error_means_unsynchronized() {
        let s = kc(libc::TIME_ERROR, libc::STA_UNSYNC).into_state(false);
        assert!(!s.synchronized);
        assert_eq!(s.source, ClockSource::Unsynchronized);
        // TIME_ERROR alone (e.g. STA_CLOCKERR) also counts.
        assert!(!kc(libc::TIME_ERROR, 0).into_state(false).synchronized);
        assert!(
            !kc(libc::TIME_OK, libc::STA_CLOCKERR)
                .into_state(false)
                .synchronized
        );
    }

    #[test]
    fn synchronized_sources() {
        let s = kc(libc::TIME_OK, libc::STA_PLL).into_state(true);
        assert!(s.synchronized);
        assert_eq!(s.source, ClockSource::KernelDiscipline);
        assert!(s.phc_present);
        assert_eq!(s.tai_offset_s, 37);
        assert_eq!(s.est_error_ns, 250_000);
        assert_eq!(s.max_error_ns, 40_000_000);
        let pps = kc(libc::TIME_OK, libc::STA_PLL | libc::STA_PPSTIME).into_state(false);
        assert_eq!(pps.source, ClockSource::Pps);
        assert_eq!(
            kc(libc::TIME_OK, 0).into_state(false).source,
            ClockSource::External
        );
    }

    #[test]
    fn leap_states() {
        assert_eq!(
            kc(libc::TIME_INS, 0).into_state(false).leap,
            LeapState::Insert
        );
        assert_eq!(
            kc(libc::TIME_DEL, 0).into_state(false).leap,
            LeapState::Delete
        );
        assert_eq!(
            kc(libc::TIME_OOP, 0).into_state(false).leap,
            LeapState::InProgress
        );
        assert_eq!(kc(libc::TIME_OK, 0).into_state(false).leap, LeapState::None);
    }

    #[test]
    fn error_estimate_synchronized_uses_esterror() {
        let s = kc(libc::TIME_OK, libc::STA_PLL).into_state(false);
        let e = s.error_estimate(TimeFormat::Ntp);
        assert!(e.synchronized());
        assert_eq!(e.format(), TimeFormat::Ntp);
        // 250 µs covered, within a factor 2.
        assert!(
            e.error_ns() >= 250_000.0 && e.error_ns() < 500_000.0,
            "{e:?}"
        );
    }

    #[test]
    fn error_estimate_unsynchronized_is_conservative() {
        let s = kc(libc::TIME_ERROR, libc::STA_UNSYNC).into_state(false);
        // maxerror (40 ms) wins over esterror (250 µs).
        assert_eq!(s.error_ns(), 40_000_000);
        let e = s.error_estimate(TimeFormat::Ptp);
        assert!(!e.synchronized());
        assert_eq!(e.format(), TimeFormat::Ptp);
        assert!(e.error_ns() >= 40e6);
        // No bound from the kernel: 16 s, never a tiny error.
        let none = KernelClock {
            esterror_us: 0,
            maxerror_us: 0,
            ..kc(libc::TIME_ERROR, libc::STA_UNSYNC)
        }
        .into_state(false);
        assert_eq!(none.error_ns(), UNSYNCHRONIZED_ERROR_NS);
        assert!(none.error_estimate(TimeFormat::Ntp).multiplier() >= 1);
    }

    #[test]
    fn negative_errors_are_zero() {
        let s = KernelClock {
            esterror_us: -5,
            maxerror_us: -1,
            ..kc(libc::TIME_OK, 0)
        }
        .into_state(false);
        assert_eq!((s.est_error_ns, s.max_error_ns), (0, 0));
        // Still a valid estimate (Multiplier ≥ 1).
        assert!(s.error_estimate(TimeFormat::Ntp).multiplier() >= 1);
    }

    #[test]
    fn stamp_scales() {
        let off = TaiOffset(37);
        let utc = Stamp {
            ns: 1_700_000_000 * NS_PER_SEC + 5,
            scale: TimeScale::Utc,
            source: StampSource::KernelSoftware,
        };
        assert_eq!(utc.tai_ns(off), 1_700_000_037 * NS_PER_SEC + 5);
        assert_eq!(utc.utc_ns(off), utc.ns);
        let tai = Stamp {
            ns: 1_700_000_037 * NS_PER_SEC + 5,
            scale: TimeScale::Tai,
            source: StampSource::NicHardware,
        };
        assert_eq!(tai.utc_ns(off), utc.ns);
        // Both encode to the same NTP (UTC) and PTP (TAI) fields.
        for f in [TimeFormat::Ntp, TimeFormat::Ptp] {
            assert_eq!(utc.to_timestamp(off, f), tai.to_timestamp(off, f));
        }
        assert_eq!(
            tai.to_timestamp(off, TimeFormat::Ptp).to_bytes()[..4],
            1_700_000_037u32.to_be_bytes()
        );
    }

    #[test]
    fn timespec_conversion_rejects_garbage() {
        assert_eq!(timespec_ns(1, 2), Some(1_000_000_002));
        assert_eq!(timespec_ns(-1, 0), None);
        assert_eq!(timespec_ns(0, -1), None);
        assert_eq!(timespec_ns(0, 1_000_000_000), None);
        assert_eq!(timespec_ns(i64::MAX, 0), None);
    }

    #[test]
    fn cell_round_trips_every_field() {
        let states = [
            kc(libc::TIME_OK, libc::STA_PLL).into_state(true),
            kc(libc::TIME_ERROR, libc::STA_UNSYNC).into_state(false),
            KernelClock {
                tai: -3,
                ..kc(libc::TIME_OOP, libc::STA_PPSTIME)
            }
            .into_state(true),
            kc(libc::TIME_DEL, 0).into_state(false),
            kc(libc::TIME_INS, 0).into_state(false),
        ];
        let cell = ClockCell::default();
        for st in &states {
            cell.store(st);
            assert_eq!(&cell.load(), st);
        }
        assert_eq!(ClockCell::new(&states[2]).load(), states[2]);
    }

    #[test]
    fn cell_readers_never_see_a_torn_state() {
        use std::sync::Arc;
        let a = kc(libc::TIME_OK, libc::STA_PLL).into_state(true);
        let b = KernelClock {
            tai: 0,
            esterror_us: 16_000_000,
            maxerror_us: 16_000_000,
            ..kc(libc::TIME_ERROR, libc::STA_UNSYNC)
        }
        .into_state(false);
        let cell = Arc::new(ClockCell::new(&a));
        let writer = {
            let cell = Arc::clone(&cell);
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    cell.store(if i % 2 == 0 { &b } else { &a });
                }
            })
        };
        for _ in 0..50_000 {
            let s = cell.load();
            assert!(s == a || s == b, "torn: {s:?}");
        }
        writer.join().unwrap();
        let last = cell.load();
        assert_eq!(last, a);
    }
}
