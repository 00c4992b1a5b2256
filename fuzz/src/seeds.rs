//! Seed inputs built from the golden captures' UDP payloads.
//!
//! A capture's file name tells what its test packets are (peer conventions
//! of shared/interop: `twamp-open|mixed|auth|enc-…` for perfSONAR, `twamp-
//! light-…` for twampy, `stamp-open|auth-…[-ptp][-stateful]…` for
//! stamp-suite). Each payload becomes, for every target that can use it, an
//! input whose configuration octets select the layout the capture used, so
//! that fuzzing starts from real traffic and not from random octets. The
//! encrypted perfSONAR payloads are seeded as they are on the wire: the
//! targets see plaintext in production, but the lengths and the header
//! positions are what matters to coverage.

use ricochet_protocol::stamp::{ReflectorMode, StampFormat, StampLayout, TlvIter};
use ricochet_protocol::time::TimeFormat;
use ricochet_protocol::twamp_test::{
    ReflectOctets, ReflectorLayout, RxMeta, SessionFormat, TestSecurity,
};

use ricochet_protocol::modes::Modes;

use crate::{control, error_estimate, stamp, twamp};

/// One seed: the target it is for and its octets.
pub type Seed = (&'static str, Vec<u8>);

/// What a capture carries, from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureKind {
    /// TWAMP-Test after TWAMP-Control (perfSONAR), with its test security.
    Twamp(TestSecurity),
    /// TWAMP Light (twampy).
    TwampLight,
    /// STAMP (stamp-suite), with its reflector configuration.
    Stamp(StampFormat),
    /// IKEv2 (strongSwan `ikev2-…`): datagrams of ports 500 and 4500.
    Ike,
}

impl CaptureKind {
    /// Classifies a capture by its file stem; `None` for non-test captures.
    pub fn from_file_name(name: &str) -> Option<Self> {
        if name.starts_with("ikev2-") {
            return Some(CaptureKind::Ike);
        }
        if name.starts_with("twamp-light") {
            return Some(CaptureKind::TwampLight);
        }
        if let Some(rest) = name.strip_prefix("twamp-") {
            let security = match rest.split('-').next()? {
                "open" | "mixed" => TestSecurity::Unauthenticated,
                "auth" => TestSecurity::Authenticated,
                "enc" => TestSecurity::Encrypted,
                _ => return None,
            };
            return Some(CaptureKind::Twamp(security));
        }
        if let Some(rest) = name.strip_prefix("stamp-") {
            let layout = match rest.split('-').next()? {
                "auth" => StampLayout::Authenticated,
                _ => StampLayout::Unauthenticated,
            };
            return Some(CaptureKind::Stamp(StampFormat {
                layout,
                mode: if name.contains("stateful") {
                    ReflectorMode::Stateful
                } else {
                    ReflectorMode::Stateless
                },
                timestamp_format: if name.ends_with("ptp") {
                    TimeFormat::Ptp
                } else {
                    TimeFormat::Ntp
                },
            }));
        }
        None
    }
}

/// Types the [`stamp::tlv_process`] seeds recognise: every registered
/// STAMP TLV type (1–11).
fn registered_types_bitmap() -> [u8; stamp::TLV_PROCESS_CONFIG_LEN] {
    let mut b = [0u8; stamp::TLV_PROCESS_CONFIG_LEN];
    for t in 1u8..=11 {
        b[usize::from(t / 8)] |= 1 << (t % 8);
    }
    b
}

/// The seeds one UDP payload of a `kind` capture gives.
pub fn seeds_for(kind: CaptureKind, payload: &[u8]) -> Vec<Seed> {
    match kind {
        CaptureKind::Twamp(security) => twamp_seeds(security, payload),
        CaptureKind::TwampLight => twamp_seeds(TestSecurity::Unauthenticated, payload),
        CaptureKind::Stamp(fmt) => stamp_seeds(fmt, payload),
        CaptureKind::Ike => ike_seeds(payload),
    }
}

/// An IKE datagram as the responder harness's input: on the NAT-T port when
/// it starts with the non-ESP marker (an IKE SPI is never zero), in both
/// cookie configurations.
fn ike_seeds(payload: &[u8]) -> Vec<Seed> {
    let ctl = if payload.starts_with(&[0; 4]) {
        crate::ike::CTL_NATT
    } else {
        0
    };
    [0u8, 1]
        .into_iter()
        .map(|cfg| {
            let mut v = vec![cfg];
            v.extend(crate::ike::record(ctl, payload));
            ("ike", v)
        })
        .collect()
}

/// T2 of the seeds (TV-7's).
const T2: [u8; 8] = [0xe8, 0xa1, 0xb2, 0xc6, 0x48, 0, 0, 0];

fn twamp_seeds(security: TestSecurity, payload: &[u8]) -> Vec<Seed> {
    let layout = security.layout();
    let mut out = vec![("twamp_sender", twamp::sender_input(layout, payload))];
    for dscp_ecn in [false, true] {
        let l = ReflectorLayout {
            test: layout,
            dscp_ecn,
        };
        out.push(("twamp_reflector", twamp::reflector_input(l, payload)));
    }
    let light = twamp::ReflectCase {
        fmt: SessionFormat::new(security),
        meta: RxMeta { ttl: 255, tos: 0 },
        seq: 1,
        t2: T2,
        error_estimate: error_estimate(0x8001),
        max_len: 0,
        out_len: 0,
        rx: payload,
    };
    out.push(("twamp_reflect_light", light.encode()));
    // Sessions admitted by TWAMP-Control grow replies (14 → 41, 48 → 112):
    // a datagram-sized cap. Also the RFC 6038 / RFC 7750 / RFC 8186
    // features no peer in the captures negotiates.
    let admitted = twamp::ReflectCase {
        max_len: 1500,
        ..light
    };
    out.push(("twamp_reflect", admitted.encode()));
    let featured = twamp::ReflectCase {
        fmt: SessionFormat {
            reflect_octets: Some(ReflectOctets {
                length: 8,
                server_octets: 0,
            }),
            symmetrical_size: true,
            dscp_ecn_monitoring: true,
            timestamp_format: TimeFormat::Ptp,
            ..SessionFormat::new(security)
        },
        ..admitted
    };
    out.push(("twamp_reflect", featured.encode()));
    out
}

fn stamp_seeds(fmt: StampFormat, payload: &[u8]) -> Vec<Seed> {
    let mut out = vec![
        ("stamp_sender", stamp::packet_input(fmt.layout, payload)),
        ("stamp_reflector", stamp::packet_input(fmt.layout, payload)),
    ];
    let case = stamp::ReflectCase {
        fmt,
        ttl: 255,
        seq: 1,
        t2: T2,
        error_estimate: error_estimate(0x8001),
        max_len: 0,
        out_len: 0,
        rx: payload,
    };
    out.push(("stamp_reflect", case.encode()));
    if let Some(tlvs) = payload.get(fmt.base_len()..).filter(|t| !t.is_empty()) {
        out.extend(tlv_seeds(tlvs));
    }
    out
}

/// Seeds of the three TLV targets from one TLV area.
fn tlv_seeds(tlvs: &[u8]) -> Vec<Seed> {
    let mut iter = vec![0u8];
    iter.extend_from_slice(tlvs);
    let mut process = registered_types_bitmap().to_vec();
    process.extend_from_slice(tlvs);
    // The same TLVs rebuilt through the writer: size, then (op, flags,
    // type, length ≤ 255, value) per TLV.
    let mut writer = 2048u16.to_be_bytes().to_vec();
    for t in TlvIter::framing_only(tlvs)
        .map_while(Result::ok)
        .filter(|t| t.length() <= 255)
    {
        writer.extend_from_slice(&[0, t.flags(), t.tlv_type(), t.length() as u8]);
        writer.extend_from_slice(t.value());
    }
    let mut typed = vec![0b110u8, 0xb8];
    typed.extend_from_slice(tlvs);
    vec![
        ("stamp_tlv_typed", typed),
        ("stamp_tlv_iter", iter),
        ("stamp_tlv_process", process),
        ("stamp_tlv_writer", writer),
    ]
}

/// Seeds of the control targets from one TWAMP-Control connection: each TCP
/// segment (either direction) for the message parsers, and the client's
/// whole stream for the server, offered every mode so that its
/// Set-Up-Response is accepted.
pub fn control_seeds<'a>(
    client_to_server: &[u8],
    segments: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<Seed> {
    let mut out = Vec::new();
    for seg in segments {
        for cfg in [0u8, 1] {
            let mut v = vec![cfg];
            v.extend_from_slice(seg);
            out.push(("control_messages", v));
        }
    }
    for chunk in [16, 0] {
        out.push((
            "control_server",
            control::server_input(Modes::KNOWN, 0, chunk, client_to_server),
        ));
    }
    out
}

/// Seeds that no capture gives: empty and minimal inputs for every target.
pub fn synthetic() -> Vec<Seed> {
    let mut out: Vec<Seed> = Vec::new();
    for (name, _) in crate::HARNESSES {
        out.push((name, Vec::new()));
    }
    // A 14-octet TWAMP-Light-size packet to a STAMP reflector (stamp.md §3
    // rule 2), and TLVs of every registered type with valid lengths.
    let case = stamp::ReflectCase {
        fmt: StampFormat::default(),
        ttl: 64,
        seq: 0,
        t2: [0; 8],
        error_estimate: error_estimate(1),
        max_len: 1500,
        out_len: 0,
        rx: &[
            0, 0, 0, 1, 0xe8, 0xa1, 0xb2, 0xc6, 0x40, 0, 0, 0, 0x80, 0x01,
        ],
    };
    out.push(("stamp_reflect", case.encode()));
    let mut tlvs = Vec::new();
    for (ty, len) in [
        (1u8, 3u16),
        (2, 4),
        (3, 4),
        (4, 4),
        (5, 12),
        (6, 4),
        (7, 16),
        (8, 16),
        (9, 16),
        (10, 8),
        (11, 4),
        (253, 4),
    ] {
        tlvs.extend_from_slice(&[0, ty]);
        tlvs.extend_from_slice(&len.to_be_bytes());
        tlvs.extend(std::iter::repeat_n(0, usize::from(len)));
    }
    out.extend(tlv_seeds(&tlvs));
    // The pfs line of the perfSONAR interop README, with a comment and a
    // blank line.
    out.push((
        "keyfile",
        b"# test keys\n\ninterop\t7477616d702d676f6c64656e2d736563726574\nbob 00FF\n".to_vec(),
    ));
    // strongSwan 5.9.8 golden scenario a as an SA record, and a delete.
    out.push((
        "sa_records",
        b"# SPIi SPIr PRF KEY\n30c8551b66ef2dcf 0a873f74e95d606b prfsha256 \
          7ade39607d19e8cac7a1e1a356d7549c9364fae430c1c1de669aa0ffeef01b13\n\
          1111111111111111 2222222222222222 2 0101010101010101010101010101010101010101\n"
            .to_vec(),
    ));
    out
}

/// Every seed the golden captures give (shared/interop, through the test
/// kit), then the [`synthetic`] ones; each tagged with its capture's name.
#[cfg(feature = "captures")]
pub fn capture_seeds() -> Vec<(String, Seed)> {
    let mut out = Vec::new();
    let interop = ricochet_testkit::shared_dir().join("interop");
    let mut files: Vec<_> = std::fs::read_dir(&interop)
        .unwrap_or_else(|e| panic!("{}: {e}", interop.display()))
        .filter_map(Result::ok)
        .flat_map(|peer| std::fs::read_dir(peer.path()).into_iter().flatten())
        .filter_map(Result::ok)
        .map(|f| f.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect();
    files.sort();
    for path in files {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let Some(kind) = CaptureKind::from_file_name(&stem) else {
            continue;
        };
        let capture = ricochet_testkit::read_pcap(&path);
        for d in &capture.udp {
            for seed in seeds_for(kind, &d.payload) {
                out.push((stem.clone(), seed));
            }
        }
        for c in &capture.tcp {
            let segments = c.chunks.iter().map(|s| &s.payload[..]);
            for seed in control_seeds(&c.client_to_server, segments) {
                out.push((stem.clone(), seed));
            }
        }
    }
    out.extend(synthetic().into_iter().map(|s| ("synthetic".to_owned(), s)));
    out
}
