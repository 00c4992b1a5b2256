//! Output of a run: a human summary, JSON (the [`RunReport`] through
//! serde) and raw per-packet lines for scripts.

use std::fmt::Write;

use ricochet_protocol::time::{ErrorEstimate, TimeFormat};

use super::{RunReport, SessionReport};
use crate::stats::Distribution;

/// A signed nanosecond value with a readable unit: `850 ns`, `12.3 µs`,
/// `4.56 ms`, `1.234 s`.
pub fn fmt_ns(ns: i64) -> String {
    let a = ns.unsigned_abs() as f64;
    let sign = if ns < 0 { "-" } else { "" };
    if a < 1e3 {
        format!("{ns} ns")
    } else if a < 1e6 {
        format!("{sign}{:.1} µs", a / 1e3)
    } else if a < 1e9 {
        format!("{sign}{:.3} ms", a / 1e6)
    } else {
        format!("{sign}{:.3} s", a / 1e9)
    }
}

fn dist(d: &Distribution) -> String {
    if d.count == 0 {
        return "n/a".into();
    }
    format!(
        "min {}  p50 {}  p99 {}  max {}",
        fmt_ns(d.min_ns),
        fmt_ns(d.p50_ns),
        fmt_ns(d.p99_ns),
        fmt_ns(d.max_ns)
    )
}

/// An Error Estimate in words (RFC 4656 §4.1.2, RFC 8186 §2.3).
pub fn describe_error_estimate(raw: u16) -> String {
    match ErrorEstimate::from_bits(raw) {
        Ok(e) => format!(
            "{:04x}: {}, {}, ±{}",
            raw,
            if e.synchronized() {
                "synchronized (S=1)"
            } else {
                "not synchronized (S=0)"
            },
            if e.format() == TimeFormat::Ptp {
                "PTPv2"
            } else {
                "NTP"
            },
            fmt_ns(e.error_ns().min(i64::MAX as f64) as i64)
        ),
        Err(_) => format!("{raw:04x}: invalid (Multiplier 0)"),
    }
}

fn tos_list(v: &[(u8, u64)]) -> String {
    v.iter()
        .map(|&(tos, n)| format!("DSCP {} ECN {} ×{n}", tos >> 2, tos & 3))
        .collect::<Vec<_>>()
        .join(", ")
}

fn session_text(r: &RunReport, s: &SessionReport, out: &mut String) {
    let o = &s.outcome;
    let m = &o.summary;
    let _ = writeln!(
        out,
        "--- session {}: {} -> {}  SID {}  {} octets out, {} back ---",
        s.session, s.sender, s.reflector, s.sid, s.packet_len, s.reply_len
    );
    let split = match (m.lost_forward, m.lost_backward) {
        (Some(f), Some(b)) => format!(": {f} forward, {b} backward"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "{} sent, {} received, {} lost ({:.3}%{split}), {} duplicates, {} reordered",
        m.sent,
        m.received,
        m.lost,
        m.loss_ratio * 100.0,
        m.duplicates,
        m.reordered
    );
    let _ = writeln!(out, "round trip       {}", dist(&m.rtt));
    let _ = writeln!(out, "IPDV |RTT diff|  {}", dist(&m.ipdv));
    let _ = writeln!(out, "residence T3-T2  {}", dist(&m.residence));
    let sync = if r.clock.synchronized && m.reflector_synchronized {
        "both clocks claim synchronization"
    } else if r.clock.synchronized {
        "the reflector's clock does not claim synchronization"
    } else if m.reflector_synchronized {
        "our clock is not synchronized"
    } else {
        "neither clock is synchronized"
    };
    let err = fmt_ns(m.one_way_error_ns.min(i64::MAX as u64) as i64);
    let _ = writeln!(out, "forward T2-T1    {}", dist(&m.forward));
    let _ = writeln!(out, "backward T4-T3   {}", dist(&m.backward));
    let _ = writeln!(out, "one-way error    ±{err} ({sync})");
    let _ = writeln!(
        out,
        "timestamps       T1 {}; T4 {} ({})",
        r.clock.t1_format,
        o.t4_sources.describe(),
        s.rx_timestamping
    );
    let _ = writeln!(
        out,
        "reflector clock  {}{}",
        o.reflector_error_estimate
            .map_or_else(|| "no valid Error Estimate".into(), describe_error_estimate),
        if m.received > 0 {
            format!(
                "; S=1 in {} of {} replies",
                o.reflector_synchronized_replies, m.received
            )
        } else {
            String::new()
        }
    );
    if !o.backward_tos.is_empty() {
        let _ = writeln!(
            out,
            "reflections TOS  {} (requested DSCP {})",
            tos_list(&o.backward_tos),
            r.dscp
        );
    }
    if r.format.dscp_ecn_monitoring {
        let _ = writeln!(
            out,
            "arrived at refl. {} (RFC 7750)",
            if o.forward_dscp_ecn.is_empty() {
                "n/a".into()
            } else {
                tos_list(&o.forward_dscp_ecn)
            }
        );
    }
    let _ = writeln!(
        out,
        "sending          {} packets in {} ({:.0} pps achieved, latest send {} behind schedule)",
        m.sent,
        fmt_ns(o.send_duration_ns.min(i64::MAX as u64) as i64),
        o.achieved_pps,
        fmt_ns(o.max_send_lateness_ns.min(i64::MAX as u64) as i64)
    );
    let a = &o.anomalies;
    let items = [
        (a.send_errors, "send errors"),
        (a.bad_hmac, "failed HMAC"),
        (a.malformed, "malformed"),
        (a.unknown_sequence, "unknown sender sequence"),
        (a.foreign, "from other addresses"),
        (a.invalid_error_estimate, "invalid Error Estimate"),
        (a.reflect_octets_mismatch, "reflected octets differ"),
        (a.receive_errors, "receive errors"),
    ];
    let bad: Vec<String> = items
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    if !bad.is_empty() {
        let _ = writeln!(out, "not used         {}", bad.join(", "));
    }
}

/// The human summary; with `verbose`, one line per reply and per lost
/// packet first.
pub fn text(r: &RunReport, verbose: bool) -> String {
    let mut out = String::new();
    if verbose {
        for s in &r.sessions {
            for p in &s.outcome.packets {
                let _ = writeln!(
                    out,
                    "session {} seq={} rseq={} rtt={} fwd={} bwd={} res={} ttl={}/{}{}",
                    s.session,
                    p.sender_seq,
                    p.reflector_seq,
                    fmt_ns(p.rtt_ns),
                    fmt_ns(p.t2_ns as i64 - p.t1_ns as i64),
                    fmt_ns(p.t4_ns as i64 - p.t3_ns as i64),
                    fmt_ns(p.t3_ns as i64 - p.t2_ns as i64),
                    p.sender_ttl,
                    p.reply_ttl.map_or("-".into(), |t| t.to_string()),
                    if p.duplicate { " DUP" } else { "" }
                );
            }
            for seq in &s.outcome.lost {
                let _ = writeln!(out, "session {} seq={} lost", s.session, seq);
            }
        }
    }
    let _ = writeln!(
        out,
        "ricochet-ping {} -> {}: mode {} (server offers {}, selected {})",
        r.control_local, r.server, r.mode, r.offered_modes, r.selected_modes
    );
    let _ = writeln!(
        out,
        "our clock: {}, ±{}, {}; reflector timestamps {}",
        if r.clock.synchronized {
            "synchronized"
        } else {
            "not synchronized"
        },
        fmt_ns(r.clock.error_ns.min(i64::MAX as u64) as i64),
        r.clock.source,
        r.format.reflector_timestamps
    );
    if r.interrupted {
        let _ = writeln!(out, "(interrupted: sending stopped early)");
    }
    for s in &r.sessions {
        session_text(r, s, &mut out);
    }
    for f in &r.refused {
        let _ = writeln!(
            out,
            "--- session {}: refused at {}: Accept {} ({}) ---",
            f.session, f.stage, f.accept, f.meaning
        );
    }
    out
}

/// The report as pretty JSON.
pub fn json(r: &RunReport) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The header line of [`raw`].
pub const RAW_HEADER: &str =
    "# session sender_seq reflector_seq t1_ns t2_ns t3_ns t4_ns rtt_ns sender_ttl reply_ttl status";

/// One line per packet: replies in arrival order (`ok` or `dup`), then
/// every packet never answered (`lost`, missing fields as `-`). Times are
/// UTC nanoseconds since the Unix epoch.
pub fn raw(r: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{RAW_HEADER}");
    for s in &r.sessions {
        for p in &s.outcome.packets {
            let _ = writeln!(
                out,
                "{} {} {} {} {} {} {} {} {} {} {}",
                s.session,
                p.sender_seq,
                p.reflector_seq,
                p.t1_ns,
                p.t2_ns,
                p.t3_ns,
                p.t4_ns,
                p.rtt_ns,
                p.sender_ttl,
                p.reply_ttl.map_or("-".into(), |t| t.to_string()),
                if p.duplicate { "dup" } else { "ok" }
            );
        }
        for seq in &s.outcome.lost {
            let _ = writeln!(out, "{} {} - - - - - - - - lost", s.session, seq);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(fmt_ns(850), "850 ns");
        assert_eq!(fmt_ns(-850), "-850 ns");
        assert_eq!(fmt_ns(12_345), "12.3 µs");
        assert_eq!(fmt_ns(4_560_000), "4.560 ms");
        assert_eq!(fmt_ns(-1_234_000_000), "-1.234 s");
    }

    #[test]
    fn error_estimates_in_words() {
        // owamp-foundations.md §6.3: 0x8001 = S=1, ~233 ps; perfSONAR unsynced 0x0001.
        let s = describe_error_estimate(0x8001);
        assert!(
            s.contains("S=1") && s.contains("NTP") && s.contains("0 ns"),
            "{s}"
        );
        let z = describe_error_estimate(0x4001 | (32 << 8));
        assert!(
            z.contains("PTPv2") && z.contains("S=0") && z.contains("1.000 s"),
            "{z}"
        );
        assert!(describe_error_estimate(0x0100).contains("invalid"));
    }
}
