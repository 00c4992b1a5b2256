//! Output of a STAMP run: a human summary, JSON (the [`StampReport`]
//! through serde) and raw per-packet lines for scripts.

use std::fmt::Write;

use super::tlvs::{method_name, sync_source_name, type_name};
use super::StampReport;
use crate::ping::report::{describe_error_estimate, fmt_ns};
use crate::stats::Distribution;

fn dist(d: &Distribution) -> String {
    if d.count == 0 {
        return "n/a".into();
    }
    format!(
        "min {}  p50 {}  p99 {}  max {}  ({} values)",
        fmt_ns(d.min_ns),
        fmt_ns(d.p50_ns),
        fmt_ns(d.p99_ns),
        fmt_ns(d.max_ns),
        d.count
    )
}

fn ns(v: u64) -> String {
    fmt_ns(v.min(i64::MAX as u64) as i64)
}

/// The human summary; with `verbose`, one line per reply and lost packet first.
pub fn text(r: &StampReport, verbose: bool) -> String {
    let mut out = String::new();
    if verbose {
        for p in &r.packets {
            let _ = writeln!(
                out,
                "seq={} rseq={} rtt={} res={} t3={}{}{}{}",
                p.sender_seq,
                p.reflector_seq,
                fmt_ns(p.rtt_ns),
                fmt_ns(p.t3_ns as i64 - p.t2_ns as i64),
                p.t3_ns,
                p.followup_minus_t3_ns
                    .map_or(String::new(), |d| format!(" followup-t3={}", fmt_ns(d))),
                if p.unrecognized_tlvs.is_empty() {
                    String::new()
                } else {
                    format!(" U={:?}", p.unrecognized_tlvs)
                },
                if p.duplicate { " DUP" } else { "" }
            );
        }
        for s in &r.lost {
            let _ = writeln!(out, "seq={s} lost");
        }
    }
    let m = &r.summary;
    let _ = writeln!(
        out,
        "ricochet-ping --stamp {} -> {}: {}, SSID {}, {} octets, TLVs [{}]",
        r.sender,
        r.target,
        r.mode,
        r.ssid,
        r.packet_len,
        r.tlvs.join(", ")
    );
    let _ = writeln!(
        out,
        "our clock: {}, ±{}, {}; T1 {}",
        if r.clock.synchronized {
            "synchronized"
        } else {
            "not synchronized"
        },
        ns(r.clock.error_ns),
        r.clock.source,
        r.clock.t1_format
    );
    if r.interrupted {
        let _ = writeln!(out, "(interrupted: sending stopped early)");
    }
    let split = match (m.lost_forward, m.lost_backward) {
        (Some(f), Some(b)) => format!(": {f} forward, {b} backward"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "{} sent, {} received, {} lost ({:.3}%{split}), {} duplicates, {} reordered; reflector {}",
        m.sent,
        m.received,
        m.lost,
        m.loss_ratio * 100.0,
        m.duplicates,
        m.reordered,
        r.reflector_mode
    );
    let _ = writeln!(out, "round trip       {}", dist(&m.rtt));
    let _ = writeln!(out, "IPDV |RTT diff|  {}", dist(&m.ipdv));
    let _ = writeln!(out, "residence T3-T2  {}", dist(&m.residence));
    let _ = writeln!(out, "forward T2-T1    {}", dist(&m.forward));
    let _ = writeln!(out, "backward T4-T3   {}", dist(&m.backward));
    let _ = writeln!(out, "one-way error    ±{}", ns(m.one_way_error_ns));
    let _ = writeln!(
        out,
        "timestamps       T1 {}; T4 {} ({}); T2/T3 PTPv2 in {} of {} replies",
        r.clock.t1_format,
        r.t4_sources.describe(),
        r.rx_timestamping,
        r.reflector_ptp_replies,
        m.received + m.duplicates
    );
    let _ = writeln!(
        out,
        "reflector clock  {}",
        r.reflector_error_estimate
            .map_or_else(|| "no valid Error Estimate".into(), describe_error_estimate)
    );
    for t in &r.timestamp_info {
        let _ = writeln!(out, "timestamp info   {} (×{})", t.meaning, t.replies);
    }
    if let Some(f) = &r.follow_up {
        let _ = writeln!(
            out,
            "follow-up        {} replies: {} zeroed, {} without timestamp, {} paired, {} unpaired, {} not naming the previous packet; mode {}",
            f.replies,
            f.zeroed,
            f.unstamped,
            f.paired,
            f.unpaired,
            f.not_previous,
            if f.modes.is_empty() {
                "n/a".to_string()
            } else {
                f.modes
                    .iter()
                    .map(|(m, name, n)| format!("{m} ({name}) ×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let _ = writeln!(
            out,
            "follow-up T3 - in-packet T3  {}",
            dist(&f.followup_minus_t3)
        );
    }
    for t in &r.tlv_types {
        let _ = writeln!(
            out,
            "TLV {:<18} type {:>3}: understood in {}, returned U=1 in {}",
            t.name, t.tlv_type, t.recognized, t.unrecognized
        );
    }
    if let Some(c) = &r.cos {
        let _ = writeln!(
            out,
            "class of service asked DSCP {} back; sent DSCP {} ECN {}; reflector saw DSCP {} ECN {}; RP=1 in {}, DSCP1 not applied in {}, forward DSCP changed in {}, ECN in {} (of {})",
            c.dscp1_requested,
            c.dscp_sent,
            c.ecn_sent,
            c.last_dscp2.map_or("-".into(), |v| v.to_string()),
            c.last_ecn.map_or("-".into(), |v| v.to_string()),
            c.rp_set,
            c.dscp1_not_applied,
            c.forward_dscp_changed,
            c.forward_ecn_changed,
            c.replies
        );
    }
    if let Some(d) = &r.direct_measurement {
        let _ = writeln!(
            out,
            "direct measure.  last S_TxC {} R_RxC {} R_TxC {}; S_TxC not echoed in {} of {}",
            d.last_s_txc, d.last_r_rxc, d.last_r_txc, d.s_txc_mismatch, d.replies
        );
    }
    if let Some((id, rc)) = r.access_report {
        let _ = writeln!(
            out,
            "access report    ID {id} return code {rc} ({} echoes differ)",
            r.access_report_mismatch
        );
    }
    if let Some((s, refl)) = r.micro_session {
        let _ = writeln!(
            out,
            "micro-session    ours {s}, reflector's {refl} ({} echoes differ)",
            r.micro_session_mismatch
        );
    }
    if let Some(l) = &r.location {
        let _ = writeln!(
            out,
            "location         reflector saw ports {} <- {}, dst {}, src {}, MAC {} ({} replies with other ports)",
            l.dst_port,
            l.src_port,
            l.dst_ip.map_or("-".into(), |a| a.to_string()),
            l.src_ip.map_or("-".into(), |a| a.to_string()),
            l.src_mac.as_deref().unwrap_or("-"),
            r.location_mismatch
        );
    }
    if !r.backward_tos.is_empty() {
        let tos: Vec<String> = r
            .backward_tos
            .iter()
            .map(|&(t, n)| format!("DSCP {} ECN {} ×{n}", t >> 2, t & 3))
            .collect();
        let _ = writeln!(out, "replies TOS      {}", tos.join(", "));
    }
    let _ = writeln!(
        out,
        "sending          {} packets in {} ({:.0} pps achieved, latest send {} behind schedule)",
        m.sent,
        ns(r.send_duration_ns),
        r.achieved_pps,
        ns(r.max_send_lateness_ns)
    );
    let a = &r.anomalies;
    let items = [
        (a.send_errors, "send errors"),
        (a.bad_hmac, "failed HMAC (dropped)"),
        (a.truncated, "truncated (dropped)"),
        (a.wrong_ssid, "wrong SSID (dropped)"),
        (a.unknown_sequence, "unknown sender sequence (dropped)"),
        (a.foreign, "from other addresses (dropped)"),
        (a.invalid_error_estimate, "invalid Error Estimate"),
        (a.length_mismatch, "not as long as the request"),
        (a.bad_tlv_hmac, "failed HMAC TLV (TLVs ignored)"),
        (a.tlv_integrity_flagged, "TLVs flagged I by the reflector"),
        (a.tlv_malformed_flagged, "a TLV flagged M by the reflector"),
        (a.tlv_framing_error, "broken TLV framing"),
        (a.tlv_value_error, "a TLV value invalid for its type"),
        (a.receive_errors, "receive errors"),
    ];
    let bad: Vec<String> = items
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    if !bad.is_empty() {
        let _ = writeln!(out, "anomalies        {}", bad.join(", "));
    }
    out
}

/// The report as pretty JSON.
pub fn json(r: &StampReport) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The header line of [`raw`].
pub const RAW_HEADER: &str =
    "# sender_seq reflector_seq t1_ns t2_ns t3_ns t4_ns rtt_ns sender_ttl reply_ttl \
followup_t3_ns followup_minus_t3_ns t2_sync t2_method t3_sync t3_method unrecognized_tlvs status";

/// One line per reply in arrival order (`ok`/`dup`), then one per packet
/// never answered (`lost`, other fields `-`). Times are UTC ns since 1970;
/// `followup_t3_ns` is this reply's T3 as a later reply's Follow-Up
/// Telemetry reported it; the Timestamp Information sources in words with
/// `_` for spaces; `unrecognized_tlvs` the types returned with U = 1
/// (comma-separated, `-` for none).
pub fn raw(r: &StampReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{RAW_HEADER}");
    let w = |s: &str| s.replace(' ', "_");
    for p in &r.packets {
        let (s2, m2, s3, m3) = p.timestamp_info.map_or(
            (
                "-".to_string(),
                "-".to_string(),
                "-".to_string(),
                "-".to_string(),
            ),
            |t| {
                (
                    w(sync_source_name(t[0])),
                    w(method_name(t[1])),
                    w(sync_source_name(t[2])),
                    w(method_name(t[3])),
                )
            },
        );
        let u = if p.unrecognized_tlvs.is_empty() {
            "-".to_string()
        } else {
            p.unrecognized_tlvs
                .iter()
                .map(|t| format!("{t}:{}", type_name(*t)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let _ = writeln!(
            out,
            "{} {} {} {} {} {} {} {} {} {} {} {s2} {m2} {s3} {m3} {u} {}",
            p.sender_seq,
            p.reflector_seq,
            p.t1_ns,
            p.t2_ns,
            p.t3_ns,
            p.t4_ns,
            p.rtt_ns,
            p.sender_ttl,
            p.reply_ttl.map_or("-".into(), |t| t.to_string()),
            p.followup_t3_ns.map_or("-".into(), |t| t.to_string()),
            p.followup_minus_t3_ns.map_or("-".into(), |t| t.to_string()),
            if p.duplicate { "dup" } else { "ok" }
        );
    }
    for s in &r.lost {
        let _ = writeln!(out, "{s} - - - - - - - - - - - - - - - lost");
    }
    out
}
