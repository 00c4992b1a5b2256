//! The clock state against the kernel read independently (`adjtimex` called
//! here directly, `/dev` listed here) and the clocks against std's.

use std::time::{SystemTime, UNIX_EPOCH};

use ricochet_protocol::time::TimeFormat;
use ricochet_reflector::clock::{
    now_tai_ns, now_utc_ns, phc_devices, ClockSource, ClockState, UNSYNCHRONIZED_ERROR_NS,
};

/// `adjtimex` in read-only mode, straight from libc.
fn kernel() -> (i32, libc::timex) {
    // SAFETY: all-zero is a valid timex; modes = 0 only reads.
    unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut tx);
        (state, tx)
    }
}

#[test]
fn clock_state_matches_the_kernel() {
    let (state, tx) = kernel();
    assert!(state >= 0, "adjtimex failed");
    let s = ClockState::read().unwrap();

    assert_eq!(s.tai_offset_s, tx.tai, "TAI offset is read, not assumed");
    assert_eq!(s.tai_offset().0, tx.tai);
    let synced = state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0;
    assert_eq!(s.synchronized, synced);
    assert_eq!(s.source == ClockSource::Unsynchronized, !synced);
    // The error fields move with time (maxerror grows while unsynchronized,
    // up to its 16 s cap); allow a little drift between the two reads.
    let close = |a: u64, b: libc::c_long| a.abs_diff(b.max(0) as u64 * 1_000) <= 1_000_000;
    assert!(
        close(s.est_error_ns, tx.esterror),
        "{s:?} vs {}",
        tx.esterror
    );
    assert!(
        close(s.max_error_ns, tx.maxerror),
        "{s:?} vs {}",
        tx.maxerror
    );

    let ptp_in_dev = std::fs::read_dir("/dev")
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.len() > 3 && n.starts_with("ptp") && n[3..].chars().all(|c| c.is_ascii_digit())
        });
    assert_eq!(s.phc_present, ptp_in_dev);
    assert_eq!(phc_devices().is_empty(), !ptp_in_dev);
}

#[test]
fn error_estimate_follows_the_state() {
    let s = ClockState::read().unwrap();
    for f in [TimeFormat::Ntp, TimeFormat::Ptp] {
        let e = s.error_estimate(f);
        assert_eq!(e.synchronized(), s.synchronized, "S bit = synchronized");
        assert_eq!(e.format(), f);
        assert!(e.multiplier() >= 1);
        assert!(e.error_ns() >= s.error_ns() as f64 * (1.0 - 1e-9));
    }
    if !s.synchronized {
        // Conservative: never below what the kernel calls its maximum error.
        assert!(s.error_ns() >= s.max_error_ns);
        assert!(s.error_ns() > 0 && s.error_ns() <= UNSYNCHRONIZED_ERROR_NS.max(s.max_error_ns));
    } else {
        assert_eq!(s.error_ns(), s.est_error_ns);
    }
}

#[test]
fn tai_and_utc_clocks_differ_by_the_kernel_offset() {
    let s = ClockState::read().unwrap();
    let utc = now_utc_ns();
    let tai = now_tai_ns();
    let utc2 = now_utc_ns();
    let offset = i128::from(s.tai_offset_s) * 1_000_000_000;
    let diff = i128::from(tai) - i128::from(utc);
    // tai was read between utc and utc2.
    assert!(
        diff >= offset && diff <= offset + i128::from(utc2 - utc),
        "CLOCK_TAI − CLOCK_REALTIME = {diff} ns, kernel offset {} s",
        s.tai_offset_s
    );
}

#[test]
fn utc_clock_agrees_with_std() {
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let ours = now_utc_ns();
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!((before..=after).contains(&ours));
}
