//! The Session-Sender's side of the RFC 8972 / RFC 9503 / RFC 9534 TLVs:
//! what `--tlv` asks for, how it is laid out in the request, and how the
//! reflected TLVs are read back (stamp.md §4, §5).
//!
//! Requests follow the RFC rules for senders: U = 1 on every TLV (RFC 8972
//! §4: a reflector that understands the TLV clears it), M = I = 0, the
//! reflector-filled fields zero (Timestamp Information, Location,
//! Follow-Up Telemetry, Direct Measurement's R_RxC/R_TxC), and the HMAC TLV
//! after every TLV it protects (only Extra Padding may follow it).
//!
//! Replies are read without trusting any length: the framing is checked by
//! [`TlvIter`] against the octets actually received, and the sender rules of
//! RFC 8972 §4 apply: TLVs with U = 1 are skipped, processing stops at
//! M = 1, and all TLVs are discarded when any carries I = 1.

use std::net::{IpAddr, Ipv6Addr};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use ricochet_protocol::stamp::tlv::{field, tlv_type as ty, FLAG_I, FLAG_M, FLAG_U};
use ricochet_protocol::stamp::tlvs::{parse_location_subs, LocationSub, StampTlv};
use ricochet_protocol::stamp::{TlvIter, TlvWriter};
use serde::Serialize;

/// The Follow-Up Telemetry type.
pub const FOLLOW_UP: u8 = ty::FOLLOW_UP_TELEMETRY;

/// Octets of a TLV header.
pub const HEADER_LEN: usize = field::HEADER_LEN;

/// One part of a Return Path TLV (RFC 9503 §4, stamp.md §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReturnPathPart {
    /// Control Code sub-TLV (type 1): bit 0 = 1 reply on the same link,
    /// 0 = no reply.
    ControlCode(u32),
    /// Return Address sub-TLV (type 2).
    Address(IpAddr),
    /// SR-MPLS Label Stack sub-TLV (type 3): 20-bit labels, top first
    /// (bottom-of-stack bit set on the last, TC 0, TTL 255).
    Labels(Vec<u32>),
    /// SRv6 Segment List sub-TLV (type 4), first segment first.
    Srv6(Vec<Ipv6Addr>),
}

/// A TLV named with `--tlv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlvSpec {
    /// Extra Padding (type 1) of N value octets.
    ExtraPadding(u16),
    /// Location (type 2) with the three request sub-TLVs: Source MAC,
    /// Destination IP, Source IP (types 1, 4, 7).
    Location,
    /// Timestamp Information (type 3), all fields zero.
    TimestampInfo,
    /// Class of Service (type 4): DSCP1 = the DSCP we ask the reply to carry;
    /// `ecn` is the ECN codepoint of our own test packets, which the
    /// reflector reports back in the ECN field.
    Cos { dscp1: u8, ecn: u8 },
    /// Direct Measurement (type 5): S_TxC = packets sent so far.
    DirectMeasurement,
    /// Access Report (type 6): ID (1 = 3GPP, 2 = non-3GPP) and Return Code
    /// (1 = available, 2 = unavailable).
    AccessReport { id: u8, return_code: u8 },
    /// Follow-Up Telemetry (type 7), zero.
    FollowUp,
    /// HMAC (type 8) over the Sequence Number and the preceding TLVs.
    Hmac,
    /// Destination Node Address (type 9, RFC 9503 §3).
    DestinationNode(IpAddr),
    /// Return Path (type 10, RFC 9503 §4).
    ReturnPath(Vec<ReturnPathPart>),
    /// Micro-session ID (type 11, RFC 9534): our micro-session ID.
    MicroSession(u16),
    /// Any type with a literal value (e.g. an unassigned type, to see U = 1).
    Raw { tlv_type: u8, value: Vec<u8> },
}

/// The `--tlv` syntax, for help texts and errors.
pub const TLV_SYNTAX: &str = "extra-padding=N, location, timestamp-info, cos=DSCP1[:ECN], \
direct-measurement, access-report[=ID:RC], follow-up, hmac, destination-node=ADDR, \
return-path=PART[+PART] (PART: no-reply, same-link, cc:N, addr:IP, labels:L/L..., srv6:SID/SID...), \
micro-session=ID, raw=TYPE[:HEX]";

fn num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    let t = s.trim();
    let parsed = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
            .ok()
            .and_then(|v| v.to_string().parse().ok())
    } else {
        t.parse().ok()
    };
    parsed.ok_or_else(|| format!("'{s}' is not a valid {what}"))
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    let t: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if t.len() % 2 != 0 {
        return Err(format!("'{s}' is not hex (odd number of digits)"));
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16).map_err(|_| format!("'{s}' is not hex")))
        .collect()
}

fn return_path_part(p: &str) -> Result<ReturnPathPart, String> {
    let (k, v) = p.split_once(':').unwrap_or((p, ""));
    match k {
        "no-reply" if v.is_empty() => Ok(ReturnPathPart::ControlCode(0)),
        "same-link" if v.is_empty() => Ok(ReturnPathPart::ControlCode(1)),
        "cc" => Ok(ReturnPathPart::ControlCode(num(v, "control code")?)),
        "addr" => v
            .parse()
            .map(ReturnPathPart::Address)
            .map_err(|_| format!("'{v}' is not an IP address")),
        "labels" => {
            let l = v
                .split('/')
                .map(|x| num::<u32>(x, "MPLS label").and_then(|l| {
                    if l < 1 << 20 {
                        Ok(l)
                    } else {
                        Err(format!("MPLS label {l} exceeds 20 bits"))
                    }
                }))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ReturnPathPart::Labels(l))
        }
        "srv6" => {
            let s = v
                .split('/')
                .map(|x| {
                    x.parse::<Ipv6Addr>()
                        .map_err(|_| format!("'{x}' is not an IPv6 SID"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ReturnPathPart::Srv6(s))
        }
        _ => Err(format!(
            "'{p}' is not a return-path part (no-reply, same-link, cc:N, addr:IP, labels:L/L, srv6:SID/SID)"
        )),
    }
}

/// Parses one `--tlv` value.
pub fn parse_tlv(s: &str) -> Result<TlvSpec, String> {
    let s = s.trim();
    let (name, arg) = match s.split_once('=') {
        Some((n, a)) => (n.trim(), Some(a.trim())),
        None => (s, None),
    };
    let need = |what: &str| arg.ok_or_else(|| format!("--tlv {name} needs ={what}"));
    let none = |spec: TlvSpec| match arg {
        None => Ok(spec),
        Some(_) => Err(format!("--tlv {name} takes no value")),
    };
    match name {
        "extra-padding" | "padding" => {
            let n: u16 = num(need("N")?, "padding length (0-65535)")?;
            Ok(TlvSpec::ExtraPadding(n))
        }
        "location" => none(TlvSpec::Location),
        "timestamp-info" | "timestamp-information" => none(TlvSpec::TimestampInfo),
        "cos" | "class-of-service" => {
            let v = need("DSCP1[:ECN]")?;
            let (d, e) = v.split_once(':').unwrap_or((v, "0"));
            let dscp1 = crate::ping::cli::parse_dscp(d)?;
            let ecn: u8 = num(e, "ECN codepoint (0-3)")?;
            if ecn > 3 {
                return Err(format!("ECN {ecn} is not a 2-bit codepoint (0-3)"));
            }
            Ok(TlvSpec::Cos { dscp1, ecn })
        }
        "direct-measurement" => none(TlvSpec::DirectMeasurement),
        "access-report" => {
            let (id, return_code) = match arg {
                None => (1, 1),
                Some(v) => {
                    let (i, r) = v.split_once(':').unwrap_or((v, "1"));
                    (num(i, "access ID")?, num(r, "return code")?)
                }
            };
            if id > 15 {
                return Err(format!("access ID {id} does not fit 4 bits"));
            }
            Ok(TlvSpec::AccessReport { id, return_code })
        }
        "follow-up" | "follow-up-telemetry" => none(TlvSpec::FollowUp),
        "hmac" => none(TlvSpec::Hmac),
        "destination-node" => need("ADDR")?
            .parse()
            .map(TlvSpec::DestinationNode)
            .map_err(|_| format!("'{}' is not an IP address", arg.unwrap_or(""))),
        "return-path" => {
            let parts = need("PART[+PART]")?
                .split('+')
                .map(return_path_part)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(TlvSpec::ReturnPath(parts))
        }
        "micro-session" => Ok(TlvSpec::MicroSession(num(need("ID")?, "micro-session ID")?)),
        "raw" => {
            let v = need("TYPE[:HEX]")?;
            let (t, h) = v.split_once(':').unwrap_or((v, ""));
            Ok(TlvSpec::Raw {
                tlv_type: num(t, "TLV type (0-255)")?,
                value: hex(h)?,
            })
        }
        _ => Err(format!("unknown TLV '{name}'; known: {TLV_SYNTAX}")),
    }
}

impl TlvSpec {
    /// The STAMP TLV Type it is sent as.
    pub fn tlv_type(&self) -> u8 {
        match self {
            TlvSpec::ExtraPadding(_) => ty::EXTRA_PADDING,
            TlvSpec::Location => ty::LOCATION,
            TlvSpec::TimestampInfo => ty::TIMESTAMP_INFORMATION,
            TlvSpec::Cos { .. } => ty::CLASS_OF_SERVICE,
            TlvSpec::DirectMeasurement => ty::DIRECT_MEASUREMENT,
            TlvSpec::AccessReport { .. } => ty::ACCESS_REPORT,
            TlvSpec::FollowUp => ty::FOLLOW_UP_TELEMETRY,
            TlvSpec::Hmac => ty::HMAC,
            TlvSpec::DestinationNode(_) => ty::DESTINATION_NODE_ADDRESS,
            TlvSpec::ReturnPath(_) => ty::RETURN_PATH,
            TlvSpec::MicroSession(_) => ty::MICRO_SESSION_ID,
            TlvSpec::Raw { tlv_type, .. } => *tlv_type,
        }
    }

    /// Writes the TLV (flags U = 1, RFC 8972 §4).
    fn write(&self, w: &mut TlvWriter<'_>, fill: &mut Option<SmallRng>) -> Result<(), String> {
        let t = self.tlv_type();
        let e = |e: ricochet_protocol::stamp::TlvError| e.to_string();
        match self {
            TlvSpec::ExtraPadding(n) => {
                let v = w.reserve(FLAG_U, t, *n).map_err(e)?;
                if let Some(rng) = fill {
                    rng.fill_bytes(v);
                }
            }
            TlvSpec::Location => {
                // Ports (4, zero), then the request sub-TLVs 1 (8), 4 (16), 7 (16).
                let v = w.reserve(FLAG_U, t, 4 + 12 + 20 + 20).map_err(e)?;
                let mut sub = TlvWriter::new(&mut v[4..]);
                for (st, len) in [(1u8, 8u16), (4, 16), (7, 16)] {
                    sub.reserve(0, st, len).map_err(e)?;
                }
            }
            TlvSpec::TimestampInfo => {
                w.reserve(FLAG_U, t, 4).map_err(e)?;
            }
            TlvSpec::Cos { dscp1, .. } => {
                // DSCP1 (6) DSCP2 (6) ECN (2) RP (2) Reserved (16).
                let word = u16::from(*dscp1) << 10;
                w.push(FLAG_U, t, &[(word >> 8) as u8, word as u8, 0, 0])
                    .map_err(e)?;
            }
            TlvSpec::DirectMeasurement => {
                w.reserve(FLAG_U, t, 12).map_err(e)?;
            }
            TlvSpec::AccessReport { id, return_code } => {
                w.push(FLAG_U, t, &[id << 4, *return_code, 0, 0])
                    .map_err(e)?;
            }
            TlvSpec::FollowUp | TlvSpec::Hmac => {
                w.reserve(FLAG_U, t, 16).map_err(e)?;
            }
            TlvSpec::DestinationNode(a) => match a {
                IpAddr::V4(v4) => w.push(FLAG_U, t, &v4.octets()).map_err(e)?,
                IpAddr::V6(v6) => w.push(FLAG_U, t, &v6.octets()).map_err(e)?,
            },
            TlvSpec::ReturnPath(parts) => {
                let mut value = Vec::new();
                for p in parts {
                    let (st, body): (u8, Vec<u8>) = match p {
                        ReturnPathPart::ControlCode(c) => (1, c.to_be_bytes().to_vec()),
                        ReturnPathPart::Address(IpAddr::V4(a)) => (2, a.octets().to_vec()),
                        ReturnPathPart::Address(IpAddr::V6(a)) => (2, a.octets().to_vec()),
                        ReturnPathPart::Labels(l) => {
                            let mut b = Vec::new();
                            for (i, label) in l.iter().enumerate() {
                                let bos = u32::from(i + 1 == l.len());
                                b.extend_from_slice(
                                    &((label << 12) | (bos << 8) | 255).to_be_bytes(),
                                );
                            }
                            (3, b)
                        }
                        ReturnPathPart::Srv6(s) => (4, s.iter().flat_map(|a| a.octets()).collect()),
                    };
                    let len = u16::try_from(body.len()).map_err(|_| "return path too long")?;
                    value.extend_from_slice(&[0, st]);
                    value.extend_from_slice(&len.to_be_bytes());
                    value.extend_from_slice(&body);
                }
                w.push(FLAG_U, t, &value).map_err(e)?;
            }
            TlvSpec::MicroSession(id) => {
                let b = id.to_be_bytes();
                w.push(FLAG_U, t, &[b[0], b[1], 0, 0]).map_err(e)?;
            }
            TlvSpec::Raw { value, .. } => w.push(FLAG_U, t, value).map_err(e)?,
        }
        Ok(())
    }
}

/// A STAMP TLV type in words.
pub fn type_name(t: u8) -> &'static str {
    match t {
        ty::EXTRA_PADDING => "extra-padding",
        ty::LOCATION => "location",
        ty::TIMESTAMP_INFORMATION => "timestamp-info",
        ty::CLASS_OF_SERVICE => "cos",
        ty::DIRECT_MEASUREMENT => "direct-measurement",
        ty::ACCESS_REPORT => "access-report",
        ty::FOLLOW_UP_TELEMETRY => "follow-up",
        ty::HMAC => "hmac",
        ty::DESTINATION_NODE_ADDRESS => "destination-node",
        ty::RETURN_PATH => "return-path",
        ty::MICRO_SESSION_ID => "micro-session",
        _ => "other",
    }
}

/// Where the per-packet fields of the request's TLV area are.
#[derive(Debug, Clone, Default)]
pub struct TlvLayout {
    /// The TLV area as sent, before the per-packet fields.
    pub template: Vec<u8>,
    /// Offset (in the area) of Direct Measurement's S_TxC.
    pub s_txc_at: Option<usize>,
    /// Offset (in the area) of the HMAC TLV's header.
    pub hmac_at: Option<usize>,
    /// The types in the order sent.
    pub types: Vec<u8>,
}

/// Lays out the TLV area for `specs`. The HMAC TLV, if asked for (or
/// `force_hmac`), goes right after the last TLV other than Extra Padding
/// (RFC 8972 §4.8: only Extra Padding may follow it).
pub fn layout(
    specs: &[TlvSpec],
    force_hmac: bool,
    fill_seed: Option<u64>,
) -> Result<TlvLayout, String> {
    let want_hmac = force_hmac || specs.contains(&TlvSpec::Hmac);
    let mut order: Vec<&TlvSpec> = specs.iter().filter(|s| **s != TlvSpec::Hmac).collect();
    let hmac = TlvSpec::Hmac;
    if want_hmac {
        let at = order
            .iter()
            .rposition(|s| !matches!(s, TlvSpec::ExtraPadding(_)))
            .map_or(0, |i| i + 1);
        order.insert(at, &hmac);
    }
    let total: usize = order.iter().map(|s| HEADER_LEN + value_len(s)).sum();
    let mut buf = vec![0u8; total];
    let mut rng = fill_seed.map(SmallRng::seed_from_u64);
    let mut out = TlvLayout::default();
    let mut w = TlvWriter::new(&mut buf);
    for s in &order {
        let pos = w.position();
        match s {
            TlvSpec::DirectMeasurement => out.s_txc_at = Some(pos + HEADER_LEN),
            TlvSpec::Hmac => out.hmac_at = Some(pos),
            _ => {}
        }
        out.types.push(s.tlv_type());
        s.write(&mut w, &mut rng)?;
    }
    let n = w.finish();
    buf.truncate(n);
    out.template = buf;
    Ok(out)
}

fn value_len(s: &TlvSpec) -> usize {
    match s {
        TlvSpec::ExtraPadding(n) => usize::from(*n),
        TlvSpec::Location => 56,
        TlvSpec::TimestampInfo | TlvSpec::Cos { .. } | TlvSpec::AccessReport { .. } => 4,
        TlvSpec::MicroSession(_) => 4,
        TlvSpec::DirectMeasurement => 12,
        TlvSpec::FollowUp | TlvSpec::Hmac => 16,
        TlvSpec::DestinationNode(IpAddr::V4(_)) => 4,
        TlvSpec::DestinationNode(IpAddr::V6(_)) => 16,
        TlvSpec::ReturnPath(parts) => parts
            .iter()
            .map(|p| {
                HEADER_LEN
                    + match p {
                        ReturnPathPart::ControlCode(_) => 4,
                        ReturnPathPart::Address(IpAddr::V4(_)) => 4,
                        ReturnPathPart::Address(IpAddr::V6(_)) => 16,
                        ReturnPathPart::Labels(l) => 4 * l.len(),
                        ReturnPathPart::Srv6(s) => 16 * s.len(),
                    }
            })
            .sum(),
        TlvSpec::Raw { value, .. } => value.len(),
    }
}

/// Location sub-TLV results (RFC 8972 §4.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LocationInfo {
    /// Destination and source UDP ports of our packet as the reflector saw them.
    pub dst_port: u16,
    pub src_port: u16,
    /// Source MAC (EUI-48) or EUI-64, as hex.
    pub src_mac: Option<String>,
    /// Destination and source IP address of our packet as the reflector saw them.
    pub dst_ip: Option<IpAddr>,
    pub src_ip: Option<IpAddr>,
    /// Sub-TLVs the reflector left as requests or flagged.
    pub unfilled_sub_tlvs: u32,
}

/// The reflected TLVs of one reply, after the sender rules of RFC 8972 §4.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyTlvs {
    /// Types returned with U = 1, in order.
    pub unrecognized: Vec<u8>,
    /// Types that came back with U = 0 (understood by the reflector).
    pub recognized: Vec<u8>,
    /// The reflector flagged a TLV malformed (M = 1): its type.
    pub malformed: Option<u8>,
    /// Some TLV carried I = 1: the reflector's HMAC TLV check failed and
    /// every TLV was discarded.
    pub integrity_failed: bool,
    /// Our own framing check of the reply failed (lengths that overrun the
    /// datagram, a truncated header): where, in the area.
    pub framing_error: Option<usize>,
    /// Offset and value octets of the HMAC TLV in the reply area.
    pub hmac_at: Option<usize>,
    /// Timestamp Information: Sync Src In, Timestamp In, Sync Src Out,
    /// Timestamp Out.
    pub timestamp_info: Option<[u8; 4]>,
    /// Follow-Up Telemetry: Sequence Number, Timestamp (raw), Mode.
    pub follow_up: Option<(u32, [u8; 8], u8)>,
    /// Class of Service: DSCP1, DSCP2, ECN, RP.
    pub cos: Option<(u8, u8, u8, u8)>,
    /// Direct Measurement: S_TxC, R_RxC, R_TxC.
    pub direct: Option<(u32, u32, u32)>,
    /// Access Report: ID, Return Code.
    pub access: Option<(u8, u8)>,
    /// Micro-session ID: sender's, reflector's.
    pub micro_session: Option<(u16, u16)>,
    pub location: Option<LocationInfo>,
    /// Understood TLVs whose value is invalid for their type (reserved
    /// values, sub-TLVs): their types.
    pub value_errors: Vec<u8>,
}

fn location(destination_port: u16, source_port: u16, value: &[u8]) -> LocationInfo {
    let mut l = LocationInfo {
        dst_port: destination_port,
        src_port: source_port,
        ..LocationInfo::default()
    };
    let mut subs = [LocationSub::SourceMacRequest; 8];
    let Ok(n) = parse_location_subs(value, &mut subs) else {
        // Sub-TLVs that do not frame or have the wrong Length for their type.
        l.unfilled_sub_tlvs += 1;
        return l;
    };
    let hexs = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for sub in &subs[..n] {
        match sub {
            LocationSub::SourceEui48(m) => l.src_mac = Some(hexs(m)),
            LocationSub::SourceEui64(m) => l.src_mac = Some(hexs(m)),
            LocationSub::DestinationIp(a) => l.dst_ip = Some(*a),
            LocationSub::SourceIp(a) => l.src_ip = Some(*a),
            _ => l.unfilled_sub_tlvs += 1,
        }
    }
    l
}

/// Reads the TLV area of a reply (the octets after the base packet, as
/// received). Never panics: every access is within a TLV whose framing
/// [`TlvIter`] checked against the octets present.
pub fn read_reply(area: &[u8]) -> ReplyTlvs {
    let mut r = ReplyTlvs::default();
    // First pass: I on any TLV discards them all (RFC 8972 §4.8).
    let mut it = TlvIter::new(area);
    loop {
        let pos = it.position();
        match it.next() {
            None => break,
            Some(Err(_)) => {
                // Broken framing: the reflector should have flagged it M.
                // Check the raw flags octet; anything else is ours to report.
                if area.get(pos).is_some_and(|f| f & FLAG_M != 0) {
                    r.malformed = Some(area.get(pos + 1).copied().unwrap_or(0));
                } else {
                    r.framing_error = Some(pos);
                }
                break;
            }
            Some(Ok(t)) => {
                if t.flags() & FLAG_I != 0 {
                    r.integrity_failed = true;
                }
                if t.flags() & FLAG_M != 0 {
                    r.malformed = Some(t.tlv_type());
                    break;
                }
                if t.tlv_type() == ty::HMAC && r.hmac_at.is_none() {
                    r.hmac_at = Some(pos);
                }
            }
        }
    }
    if r.integrity_failed {
        return r;
    }
    for t in TlvIter::new(area).map_while(Result::ok) {
        if t.flags() & FLAG_M != 0 {
            break;
        }
        if t.flags() & FLAG_U != 0 {
            r.unrecognized.push(t.tlv_type());
            continue;
        }
        r.recognized.push(t.tlv_type());
        // The protocol crate's typed views; lengths were checked by the
        // iterator, sub-TLVs and reserved values are checked here.
        match StampTlv::parse(t.tlv_type(), t.value()) {
            Ok(StampTlv::TimestampInformation(ti)) => {
                r.timestamp_info = Some([
                    ti.sync_in.to_u8(),
                    ti.method_in.to_u8(),
                    ti.sync_out.to_u8(),
                    ti.method_out.to_u8(),
                ])
            }
            Ok(StampTlv::FollowUpTelemetry(f)) => {
                r.follow_up = Some((f.sequence_number, f.timestamp, f.mode.to_u8()))
            }
            Ok(StampTlv::ClassOfService(c)) => r.cos = Some((c.dscp1, c.dscp2, c.ecn, c.rp)),
            Ok(StampTlv::DirectMeasurement(d)) => r.direct = Some((d.s_txc, d.r_rxc, d.r_txc)),
            Ok(StampTlv::AccessReport(a)) => r.access = Some((a.id, a.return_code)),
            Ok(StampTlv::MicroSessionId { sender, reflector }) => {
                r.micro_session = Some((sender, reflector))
            }
            Ok(StampTlv::Location {
                destination_port,
                source_port,
                ..
            }) => r.location = Some(location(destination_port, source_port, t.value())),
            Ok(_) => {}
            Err(_) => r.value_errors.push(t.tlv_type()),
        }
    }
    r
}

/// Synchronization source (RFC 8972 §4.3, IANA "Synchronization Source").
pub fn sync_source_name(v: u8) -> &'static str {
    match v {
        0 => "unfilled",
        1 => "NTP",
        2 => "PTP",
        3 => "SSU/BITS",
        4 => "GNSS/LORAN-C",
        5 => "free-running",
        _ => "unassigned",
    }
}

/// Timestamping method (RFC 8972 §4.3, IANA "Timestamping Method").
pub fn method_name(v: u8) -> &'static str {
    match v {
        0 => "unfilled",
        1 => "hardware assist",
        2 => "software local",
        3 => "control plane",
        _ => "unassigned",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_tlv() {
        assert_eq!(parse_tlv("extra-padding=32"), Ok(TlvSpec::ExtraPadding(32)));
        assert_eq!(
            parse_tlv("cos=EF:2"),
            Ok(TlvSpec::Cos { dscp1: 46, ecn: 2 })
        );
        assert_eq!(parse_tlv("cos=10"), Ok(TlvSpec::Cos { dscp1: 10, ecn: 0 }));
        assert_eq!(
            parse_tlv("access-report"),
            Ok(TlvSpec::AccessReport {
                id: 1,
                return_code: 1
            })
        );
        assert_eq!(
            parse_tlv("access-report=2:2"),
            Ok(TlvSpec::AccessReport {
                id: 2,
                return_code: 2
            })
        );
        assert_eq!(
            parse_tlv("destination-node=2001:2::1"),
            Ok(TlvSpec::DestinationNode("2001:2::1".parse().unwrap()))
        );
        assert_eq!(
            parse_tlv("return-path=same-link"),
            Ok(TlvSpec::ReturnPath(vec![ReturnPathPart::ControlCode(1)]))
        );
        assert_eq!(
            parse_tlv("return-path=addr:198.18.0.1+labels:16001/16002"),
            Ok(TlvSpec::ReturnPath(vec![
                ReturnPathPart::Address("198.18.0.1".parse().unwrap()),
                ReturnPathPart::Labels(vec![16001, 16002])
            ]))
        );
        assert_eq!(parse_tlv("micro-session=5"), Ok(TlvSpec::MicroSession(5)));
        assert_eq!(
            parse_tlv("raw=200:ab01"),
            Ok(TlvSpec::Raw {
                tlv_type: 200,
                value: vec![0xab, 1]
            })
        );
        for bad in [
            "bogus",
            "extra-padding",
            "extra-padding=70000",
            "cos=64",
            "cos=1:4",
            "hmac=1",
            "destination-node=x",
            "return-path=labels:1048576",
            "raw=300",
            "raw=1:abc",
            "access-report=16:1",
            "location=1",
        ] {
            assert!(parse_tlv(bad).is_err(), "{bad}");
        }
    }

    /// The wire layout of each TLV against RFC 8972 §4 / RFC 9503 / RFC 9534
    /// (stamp.md §4): type, Length, U = 1, the sender's fields.
    #[test]
    fn request_layouts() {
        let specs: Vec<TlvSpec> = [
            "cos=46:2",
            "timestamp-info",
            "location",
            "direct-measurement",
            "access-report=2:1",
            "follow-up",
            "destination-node=198.18.0.2",
            "return-path=same-link",
            "micro-session=5",
            "extra-padding=3",
            "hmac",
        ]
        .iter()
        .map(|s| parse_tlv(s).unwrap())
        .collect();
        let l = layout(&specs, false, None).unwrap();
        let a = &l.template;
        let mut expect: Vec<u8> = Vec::new();
        expect.extend([0x80, 4, 0, 4, 0xb8, 0, 0, 0]); // DSCP1 46 in the top 6 bits
        expect.extend([0x80, 3, 0, 4, 0, 0, 0, 0]);
        expect.extend([0x80, 2, 0, 56, 0, 0, 0, 0]);
        expect.extend([0, 1, 0, 8]);
        expect.extend([0; 8]);
        expect.extend([0, 4, 0, 16]);
        expect.extend([0; 16]);
        expect.extend([0, 7, 0, 16]);
        expect.extend([0; 16]);
        expect.extend([0x80, 5, 0, 12]);
        expect.extend([0; 12]);
        expect.extend([0x80, 6, 0, 4, 0x20, 1, 0, 0]);
        expect.extend([0x80, 7, 0, 16]);
        expect.extend([0; 16]);
        expect.extend([0x80, 9, 0, 4, 198, 18, 0, 2]);
        expect.extend([0x80, 10, 0, 8, 0, 1, 0, 4, 0, 0, 0, 1]);
        expect.extend([0x80, 11, 0, 4, 0, 5, 0, 0]);
        let hmac_at = expect.len();
        expect.extend([0x80, 8, 0, 16]);
        expect.extend([0; 16]);
        expect.extend([0x80, 1, 0, 3, 0, 0, 0]);
        assert_eq!(a, &expect);
        assert_eq!(
            l.hmac_at,
            Some(hmac_at),
            "HMAC after the last non-padding TLV"
        );
        assert_eq!(l.s_txc_at, Some(8 + 8 + 60 + 4));
        // Every TLV frames and has a registry-valid Length.
        assert_eq!(TlvIter::new(a).filter(|t| t.is_ok()).count(), 11);
    }

    #[test]
    fn reply_reading_follows_the_sender_rules() {
        // U skipped, values of recognised ones decoded.
        let mut area = Vec::new();
        area.extend([0, 7, 0, 16, 0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 2, 0, 0, 0]);
        area.extend([0, 3, 0, 4, 1, 2, 1, 1]);
        area.extend([0, 4, 0, 4, 0xb8, 0x0a << 4 | 2 << 2 | 1, 0, 0]);
        area.extend([0x80, 200, 0, 1, 9]);
        let r = read_reply(&area);
        assert_eq!(r.follow_up, Some((9, [1, 2, 3, 4, 5, 6, 7, 8], 2)));
        assert_eq!(r.timestamp_info, Some([1, 2, 1, 1]));
        assert_eq!(r.cos, Some((46, 0x0a, 2, 1)));
        assert_eq!(r.unrecognized, vec![200]);
        assert_eq!(r.recognized, vec![7, 3, 4]);
        // I anywhere: all discarded.
        let mut i = area.clone();
        i[20] |= FLAG_I;
        let r = read_reply(&i);
        assert!(r.integrity_failed && r.follow_up.is_none() && r.recognized.is_empty());
        // M: processing stops there.
        let mut m = area.clone();
        m[20] |= FLAG_M;
        let r = read_reply(&m);
        assert_eq!(r.malformed, Some(3));
        assert!(r.follow_up.is_some() && r.timestamp_info.is_none() && r.cos.is_none());
        // A Length past the end, unflagged: our framing error.
        let r = read_reply(&[0, 1, 0, 9, 0]);
        assert_eq!(r.framing_error, Some(0));
    }

    proptest! {
        #[test]
        fn any_reply_area_reads_without_panic(a in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = read_reply(&a);
        }

        #[test]
        fn tlv_parser_never_panics(s in ".{0,40}") {
            let _ = parse_tlv(&s);
        }
    }
}
