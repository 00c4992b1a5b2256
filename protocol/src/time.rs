//! Timestamps and the Error Estimate (RFC 4656 §4.1.2, RFC 8186, RFC 8762 §4.2.1).
//!
//! Two 8-octet formats exist on the wire:
//! * NTP 64-bit: seconds since 1900-01-01 UTC and a binary fraction (2^-32 s);
//! * PTPv2 truncated: seconds since 1970-01-01 **TAI** (the PTP epoch) and
//!   nanoseconds.
//!
//! Which one a timestamp uses is told by the Z bit of the Error Estimate that
//! covers it. Conversions take TAI or UTC nanoseconds since the Unix/PTP epoch
//! and an explicit TAI−UTC offset: this crate never reads a clock itself.

use crate::error::WireError;

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;
const NS_PER_SEC: u64 = 1_000_000_000;

/// TAI − UTC in whole seconds (37 since 2017-01-01). Must be read from the
/// host (adjtimex), never assumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TaiOffset(pub i32);

impl TaiOffset {
    fn ns(self) -> i128 {
        i128::from(self.0) * i128::from(NS_PER_SEC)
    }

    /// UTC nanoseconds from TAI nanoseconds (saturating at the epoch).
    pub fn tai_to_utc_ns(self, tai_ns: u64) -> u64 {
        (i128::from(tai_ns) - self.ns()).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// TAI nanoseconds from UTC nanoseconds (saturating).
    pub fn utc_to_tai_ns(self, utc_ns: u64) -> u64 {
        (i128::from(utc_ns) + self.ns()).clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// The NTP 64-bit timestamp format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct NtpTimestamp {
    pub seconds: u32,
    pub fraction: u32,
}

impl NtpTimestamp {
    pub const fn from_bits(bits: u64) -> Self {
        NtpTimestamp {
            seconds: (bits >> 32) as u32,
            fraction: bits as u32,
        }
    }

    pub const fn to_bits(self) -> u64 {
        ((self.seconds as u64) << 32) | self.fraction as u64
    }

    pub fn from_bytes(b: [u8; 8]) -> Self {
        Self::from_bits(u64::from_be_bytes(b))
    }

    pub fn to_bytes(self) -> [u8; 8] {
        self.to_bits().to_be_bytes()
    }

    /// From UTC nanoseconds since the Unix epoch. The fraction is truncated
    /// (floor), so converting back with [`Self::to_utc_ns`] is exact.
    pub fn from_utc_ns(utc_ns: u64) -> Self {
        let secs = utc_ns / NS_PER_SEC + NTP_UNIX_OFFSET_SECS;
        let ns = utc_ns % NS_PER_SEC;
        NtpTimestamp {
            // NTP era rollover (2036) wraps the seconds field, as the format does.
            seconds: secs as u32,
            fraction: ((u128::from(ns) << 32) / u128::from(NS_PER_SEC)) as u32,
        }
    }

    /// From TAI nanoseconds since the PTP epoch and the TAI−UTC offset.
    pub fn from_tai_ns(tai_ns: u64, offset: TaiOffset) -> Self {
        Self::from_utc_ns(offset.tai_to_utc_ns(tai_ns))
    }

    /// UTC nanoseconds since the Unix epoch. Seconds values below 2^31 are
    /// taken as NTP era 1 (after 2036-02-07), the usual pivot (RFC 4330 §3).
    pub fn to_utc_ns(self) -> u64 {
        let mut secs = u64::from(self.seconds);
        if secs < 0x8000_0000 {
            secs += 1 << 32;
        }
        let secs = secs.saturating_sub(NTP_UNIX_OFFSET_SECS);
        let ns =
            ((u128::from(self.fraction) * u128::from(NS_PER_SEC) + (1u128 << 31)) >> 32) as u64;
        secs * NS_PER_SEC + ns
    }

    /// An interval (Timeout fields) as nanoseconds.
    pub fn interval_ns(self) -> u64 {
        u64::from(self.seconds) * NS_PER_SEC
            + ((u128::from(self.fraction) * u128::from(NS_PER_SEC)) >> 32) as u64
    }

    /// An interval from nanoseconds.
    pub fn from_interval_ns(ns: u64) -> Self {
        NtpTimestamp {
            seconds: (ns / NS_PER_SEC).min(u64::from(u32::MAX)) as u32,
            fraction: ((u128::from(ns % NS_PER_SEC) << 32) / u128::from(NS_PER_SEC)) as u32,
        }
    }
}

/// The PTPv2 truncated timestamp format (RFC 8186 §2.3): TAI seconds since
/// the PTP epoch (1970-01-01 00:00:00 TAI), truncated to 32 bits, and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct PtpTimestamp {
    pub seconds: u32,
    pub nanoseconds: u32,
}

impl PtpTimestamp {
    pub fn from_bytes(b: [u8; 8]) -> Self {
        PtpTimestamp {
            seconds: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            nanoseconds: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.seconds.to_be_bytes());
        b[4..].copy_from_slice(&self.nanoseconds.to_be_bytes());
        b
    }

    pub fn from_tai_ns(tai_ns: u64) -> Self {
        PtpTimestamp {
            seconds: (tai_ns / NS_PER_SEC) as u32,
            nanoseconds: (tai_ns % NS_PER_SEC) as u32,
        }
    }

    pub fn from_utc_ns(utc_ns: u64, offset: TaiOffset) -> Self {
        Self::from_tai_ns(offset.utc_to_tai_ns(utc_ns))
    }

    /// TAI nanoseconds since the PTP epoch. A nanoseconds field of 10^9 or
    /// more is not a valid PTP value; it is carried over rather than rejected.
    pub fn to_tai_ns(self) -> u64 {
        u64::from(self.seconds) * NS_PER_SEC + u64::from(self.nanoseconds)
    }
}

/// Which format a timestamp is in (the Z bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum TimeFormat {
    #[default]
    Ntp,
    Ptp,
}

/// A timestamp field decoded according to the Z bit that covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timestamp {
    Ntp(NtpTimestamp),
    Ptp(PtpTimestamp),
}

impl Timestamp {
    pub fn from_bytes(b: [u8; 8], format: TimeFormat) -> Self {
        match format {
            TimeFormat::Ntp => Timestamp::Ntp(NtpTimestamp::from_bytes(b)),
            TimeFormat::Ptp => Timestamp::Ptp(PtpTimestamp::from_bytes(b)),
        }
    }

    pub fn to_bytes(self) -> [u8; 8] {
        match self {
            Timestamp::Ntp(t) => t.to_bytes(),
            Timestamp::Ptp(t) => t.to_bytes(),
        }
    }

    /// Encodes TAI nanoseconds in the given format.
    pub fn from_tai_ns(tai_ns: u64, offset: TaiOffset, format: TimeFormat) -> Self {
        match format {
            TimeFormat::Ntp => Timestamp::Ntp(NtpTimestamp::from_tai_ns(tai_ns, offset)),
            TimeFormat::Ptp => Timestamp::Ptp(PtpTimestamp::from_tai_ns(tai_ns)),
        }
    }

    pub fn format(self) -> TimeFormat {
        match self {
            Timestamp::Ntp(_) => TimeFormat::Ntp,
            Timestamp::Ptp(_) => TimeFormat::Ptp,
        }
    }

    /// UTC nanoseconds since the Unix epoch.
    pub fn to_utc_ns(self, offset: TaiOffset) -> u64 {
        match self {
            Timestamp::Ntp(t) => t.to_utc_ns(),
            Timestamp::Ptp(t) => offset.tai_to_utc_ns(t.to_tai_ns()),
        }
    }

    /// TAI nanoseconds since the PTP epoch.
    pub fn to_tai_ns(self, offset: TaiOffset) -> u64 {
        match self {
            Timestamp::Ntp(t) => offset.utc_to_tai_ns(t.to_utc_ns()),
            Timestamp::Ptp(t) => t.to_tai_ns(),
        }
    }
}

/// The 2-octet Error Estimate: S (synchronized), Z (format), Scale, Multiplier.
///
/// A Multiplier of 0 is invalid (RFC 4656 §4.1.2) and perfSONAR's `twping`
/// aborts a test that receives one, so it can be neither parsed nor built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorEstimate {
    synchronized: bool,
    format: TimeFormat,
    scale: u8,
    multiplier: u8,
}

impl ErrorEstimate {
    const WHAT: &'static str = "Error Estimate";

    /// Builds an estimate; `scale` must fit 6 bits and `multiplier` be non-zero.
    pub fn new(
        synchronized: bool,
        format: TimeFormat,
        scale: u8,
        multiplier: u8,
    ) -> Result<Self, WireError> {
        if scale > 0x3f {
            return Err(WireError::BadField {
                what: Self::WHAT,
                field: "Scale",
                value: scale.into(),
            });
        }
        if multiplier == 0 {
            return Err(WireError::BadField {
                what: Self::WHAT,
                field: "Multiplier",
                value: 0,
            });
        }
        Ok(ErrorEstimate {
            synchronized,
            format,
            scale,
            multiplier,
        })
    }

    /// The smallest (Scale, Multiplier) whose error is at least `error_ns`
    /// (never below one unit: Multiplier ≥ 1).
    pub fn from_error_ns(synchronized: bool, format: TimeFormat, error_ns: u64) -> Self {
        // Error in units of 2^-32 s, rounded up.
        let units = (u128::from(error_ns) << 32).div_ceil(u128::from(NS_PER_SEC));
        let mut scale = 0u8;
        let mut mult = units;
        while mult > 255 && scale < 63 {
            scale += 1;
            mult = units.div_ceil(1u128 << scale);
        }
        ErrorEstimate {
            synchronized,
            format,
            scale,
            multiplier: mult.clamp(1, 255) as u8,
        }
    }

    pub fn from_bits(bits: u16) -> Result<Self, WireError> {
        let [hi, lo] = bits.to_be_bytes();
        Self::new(
            hi & 0x80 != 0,
            if hi & 0x40 != 0 {
                TimeFormat::Ptp
            } else {
                TimeFormat::Ntp
            },
            hi & 0x3f,
            lo,
        )
    }

    pub fn to_bits(self) -> u16 {
        let mut hi = self.scale;
        if self.synchronized {
            hi |= 0x80;
        }
        if self.format == TimeFormat::Ptp {
            hi |= 0x40;
        }
        u16::from_be_bytes([hi, self.multiplier])
    }

    pub fn synchronized(self) -> bool {
        self.synchronized
    }
    pub fn format(self) -> TimeFormat {
        self.format
    }
    pub fn scale(self) -> u8 {
        self.scale
    }
    pub fn multiplier(self) -> u8 {
        self.multiplier
    }

    /// The error bound in nanoseconds: Multiplier × 2^(Scale − 32) s.
    pub fn error_ns(self) -> f64 {
        f64::from(self.multiplier) * 2f64.powi(i32::from(self.scale) - 32) * 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tv14_unix_to_ntp() {
        // TV-14: Unix 1700000000.5 → NTP e8fe6f80 80000000.
        let t = NtpTimestamp::from_utc_ns(1_700_000_000_500_000_000);
        assert_eq!(t.to_bits(), 0xe8fe6f80_80000000);
        assert_eq!(t.to_utc_ns(), 1_700_000_000_500_000_000);
    }

    #[test]
    fn ntp_round_trip_is_exact_to_the_nanosecond() {
        for ns in [
            0u64,
            1,
            999_999_999,
            1_234_567_891,
            1_795_752_668_741_563_123,
        ] {
            let utc = 1_600_000_000 * NS_PER_SEC + ns % NS_PER_SEC + (ns / NS_PER_SEC) % 1000;
            assert_eq!(NtpTimestamp::from_utc_ns(utc).to_utc_ns(), utc);
        }
    }

    #[test]
    fn ntp_era_one_after_2036() {
        // 2040-01-01 UTC = 2208988800 s after 1970.
        let utc = 2_208_988_800u64 * NS_PER_SEC;
        let t = NtpTimestamp::from_utc_ns(utc);
        assert!(t.seconds < 0x8000_0000);
        assert_eq!(t.to_utc_ns(), utc);
    }

    #[test]
    fn ptp_is_tai_and_ntp_is_utc() {
        let off = TaiOffset(37);
        let tai = 1_700_000_037 * NS_PER_SEC + 250;
        let ptp = Timestamp::from_tai_ns(tai, off, TimeFormat::Ptp);
        let ntp = Timestamp::from_tai_ns(tai, off, TimeFormat::Ntp);
        assert_eq!(ptp.to_bytes()[..4], 1_700_000_037u32.to_be_bytes());
        assert_eq!(ntp.to_utc_ns(off), 1_700_000_000 * NS_PER_SEC + 250);
        assert_eq!(ptp.to_utc_ns(off), ntp.to_utc_ns(off));
        assert_eq!(ptp.to_tai_ns(off), tai);
    }

    #[test]
    fn error_estimate_bits() {
        let e = ErrorEstimate::from_bits(0x8001).unwrap();
        assert!(e.synchronized());
        assert_eq!(e.format(), TimeFormat::Ntp);
        assert_eq!((e.scale(), e.multiplier()), (0, 1));
        assert_eq!(e.to_bits(), 0x8001);
        let p = ErrorEstimate::from_bits(0x4a05).unwrap();
        assert_eq!(p.format(), TimeFormat::Ptp);
        assert_eq!((p.scale(), p.multiplier()), (0x0a, 5));
        assert_eq!(p.to_bits(), 0x4a05);
        assert!(ErrorEstimate::from_bits(0x8000).is_err());
        assert!(ErrorEstimate::new(false, TimeFormat::Ntp, 64, 1).is_err());
    }

    #[test]
    fn error_estimate_from_ns_covers_the_error() {
        for ns in [0u64, 1, 100, 1_000, 1_000_000, 5_000_000_000, u64::MAX / 4] {
            let e = ErrorEstimate::from_error_ns(false, TimeFormat::Ntp, ns);
            assert!(e.multiplier() >= 1);
            assert!(e.error_ns() >= ns as f64 * (1.0 - 1e-12), "{ns}: {e:?}");
            // Not wastefully large: within a factor ~2 once the multiplier saturates.
            if ns > 100 {
                assert!(e.error_ns() <= ns as f64 * 2.01 + 1.0, "{ns}: {e:?}");
            }
        }
    }
}
