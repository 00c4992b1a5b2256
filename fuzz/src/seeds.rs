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

use ricochet_protocol::crypto::{
    EspCipher, EspGcm128, EspKeys, PacketRole, SessionKeys, TestKeys, TestProtection,
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

/// Seeds of the [`crate::client`] harness from one TWAMP-Control
/// connection: the server's whole stream, offered to a client that allows
/// only the security mode the capture's client chose and wants the features
/// it asked for (both from the Set-Up-Response, the first 4 octets the
/// client sent, RFC 4656 §3.1), fed at once and one octet at a time.
///
/// In open mode the harness's client then follows the capture to the end
/// (Request-TW-Session at Ready, Start-Sessions after Accept-Session, Stop
/// after Start-Ack). In authenticated, encrypted and mixed mode
/// perfSONAR's PBKDF2 count (2048) is above the harness's limit, so the
/// stream as captured covers that refusal, and a copy with the count
/// lowered to [`crate::client::MAX_COUNT`] reaches Server-Start (Ready, or
/// the wrong-secret capture's refusal); the answers after it then fail to
/// verify, since the harness's client draws its own session keys.
pub fn client_seeds(client_to_server: &[u8], server_to_client: &[u8]) -> Vec<Seed> {
    let Some(mode) = client_to_server.first_chunk::<4>() else {
        return Vec::new();
    };
    let mode = Modes(u32::from_be_bytes(*mode));
    let allowed = (mode.security().bits() & 0x0f) as u8;
    let wanted = (mode.features().bits() & 0xffff) as u16;
    let mut streams = vec![server_to_client.to_vec()];
    // The greeting's Count (octets 48..52, RFC 4656 §3.1) lowered to the
    // harness's limit, so that a protected mode gets past the greeting to
    // the token, Server-Start and the decryption of the server's answers.
    if mode.security().bits() & 0x0e != 0 && server_to_client.len() >= 64 {
        let mut lowered = server_to_client.to_vec();
        lowered[48..52].copy_from_slice(&crate::client::MAX_COUNT.to_be_bytes());
        streams.push(lowered);
    }
    let mut out = Vec::new();
    for stream in &streams {
        for chunk in [0u8, 16] {
            let mut v = vec![allowed];
            v.extend_from_slice(&wanted.to_be_bytes());
            v.push(chunk);
            v.extend_from_slice(stream);
            out.push(("control_client", v));
        }
    }
    out
}

/// The key seed octet of the [`crate::crypto::test_packet`] seeds re-protected
/// from the captures: the harness's keys are this octet 48 times.
pub const TEST_PACKET_KEY_SEED: u8 = 0x5a;

/// The selector octet of [`crate::crypto::test_packet`] for a role and mode.
pub fn test_packet_selector(role: PacketRole, mode: TestProtection) -> u8 {
    let r = match role {
        PacketRole::Sender => 0,
        PacketRole::Reflector => 1,
    };
    let m = match mode {
        TestProtection::Authenticated => 0,
        TestProtection::Encrypted => 2,
    };
    r | m
}

/// The keys the [`crate::crypto::test_packet`] harness derives from its key
/// seed octet.
pub fn test_packet_harness_keys(seed: u8) -> TestKeys {
    TestKeys::new(&SessionKeys::from_bytes(&[seed; 48]))
}

/// Seeds of the [`crate::crypto::test_packet`] harness from one protected
/// perfSONAR test packet (`mode` from the capture name): the packet as on
/// the wire for both roles (the harness's key does not verify it: the
/// refusal path), and, when the session's test keys (`keys`, from the
/// capture's JSON) verify it in one role, its plaintext protected again
/// under the harness's key for [`TEST_PACKET_KEY_SEED`], so that the
/// harness's `unprotect` succeeds on it.
pub fn test_packet_seeds(keys: Option<&TestKeys>, mode: TestProtection, wire: &[u8]) -> Vec<Seed> {
    let mut out = Vec::new();
    for role in [PacketRole::Sender, PacketRole::Reflector] {
        let mut v = vec![0, test_packet_selector(role, mode)];
        v.extend_from_slice(wire);
        out.push(("crypto_test_packet", v));
    }
    let Some(keys) = keys else {
        return out;
    };
    for role in [PacketRole::Sender, PacketRole::Reflector] {
        let mut plain = wire.to_vec();
        if keys.unprotect(role, mode, &mut plain).is_err() {
            continue;
        }
        let harness = test_packet_harness_keys(TEST_PACKET_KEY_SEED);
        if harness.protect(role, mode, &mut plain).is_ok() {
            let mut v = vec![TEST_PACKET_KEY_SEED, test_packet_selector(role, mode)];
            v.extend_from_slice(&plain);
            out.push(("crypto_test_packet", v));
        }
        break;
    }
    out
}

/// The transform octet of the [`crate::crypto::esp_sa`] seeds re-sealed
/// from the captures: AES-GCM-128 (low bits 0), no ESN (bit 7 clear); the
/// harness's KEYMAT is this octet 20 times.
pub const ESP_SA_SEED_SEL: u8 = 0x04;

/// The replay-window part of an [`crate::crypto::esp_sa`] input for a
/// packet with sequence number `seq`: window 64, then the numbers `seq`,
/// `seq` again (a replay), `seq + 64` (slides the window past it) and `seq`
/// (now too old).
fn esp_sa_window(seq: u32) -> Vec<u8> {
    let mut v = 64u16.to_be_bytes().to_vec();
    for n in [seq, seq, seq.wrapping_add(64), seq] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    v
}

/// Seeds of the ESP harnesses ([`crate::crypto::esp_open`],
/// [`crate::crypto::esp_sa`]) from one ESP packet (the payload of a
/// UDP-encapsulated ESP datagram, RFC 3948) and the CHILD_SA of its
/// direction: the packet as on the wire (the harnesses' SAs do not open
/// it), and, when the real SA opens it, its payload sealed again under each
/// harness's SA with the same SPI, sequence number and Next Header (and for
/// `esp_open` the same IV), so that the harnesses' `open` succeeds on it.
pub fn esp_seeds(sa: Option<&EspGcm128>, wire: &[u8]) -> Vec<Seed> {
    let wire_seq = wire
        .get(4..8)
        .map_or(1, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
    let mut raw_sa = vec![0u8];
    raw_sa.extend(esp_sa_window(wire_seq));
    raw_sa.extend_from_slice(wire);
    let mut out = vec![("esp_open", wire.to_vec()), ("esp_sa", raw_sa)];
    let Some(sa) = sa else {
        return out;
    };
    let mut plain = wire.to_vec();
    let Ok(opened) = sa.open(&mut plain) else {
        return out;
    };
    let payload = &plain[opened.payload.clone()];
    let Some(iv) = wire.get(8..16).and_then(|iv| <[u8; 8]>::try_from(iv).ok()) else {
        return out;
    };
    let harness = EspGcm128::new(&crate::crypto::ESP_OPEN_KEY, &crate::crypto::ESP_OPEN_SALT);
    let mut sealed = vec![0u8; EspGcm128::sealed_len(payload.len())];
    sealed[16..16 + payload.len()].copy_from_slice(payload);
    if let Ok(n) = harness.seal(
        opened.spi,
        opened.seq,
        &iv,
        opened.next_header,
        payload.len(),
        &mut sealed,
    ) {
        sealed.truncate(n);
        out.push(("esp_open", sealed));
    }
    let keys = EspKeys::gcm_from_keymat(&[ESP_SA_SEED_SEL; 20]);
    if let Ok(c) = keys.and_then(|k| EspCipher::new(&k)) {
        let po = c.payload_offset();
        let mut sealed = vec![0u8; c.sealed_len(payload.len())];
        sealed[po..po + payload.len()].copy_from_slice(payload);
        if let Ok(n) = c.seal(
            opened.spi,
            u64::from(opened.seq),
            false,
            opened.next_header,
            payload.len(),
            &mut sealed,
        ) {
            sealed.truncate(n);
            let mut v = vec![ESP_SA_SEED_SEL];
            v.extend(esp_sa_window(opened.seq));
            v.extend_from_slice(&sealed);
            out.push(("esp_sa", v));
        }
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
    for path in &files {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let Some(kind) = CaptureKind::from_file_name(&stem) else {
            continue;
        };
        let capture = ricochet_testkit::read_pcap(path);
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
            for seed in client_seeds(&c.client_to_server, &c.server_to_client) {
                out.push((stem.clone(), seed));
            }
        }
        let mode = match kind {
            CaptureKind::Twamp(TestSecurity::Authenticated) => TestProtection::Authenticated,
            CaptureKind::Twamp(TestSecurity::Encrypted) => TestProtection::Encrypted,
            _ => continue,
        };
        let keys = capture_test_keys(path);
        for d in &capture.udp {
            for seed in test_packet_seeds(keys.as_ref(), mode, &d.payload) {
                out.push((stem.clone(), seed));
            }
        }
    }
    for path in files.iter().filter(|p| is_ikev2_capture(p)) {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        for seed in esp_capture_seeds(path) {
            out.push((stem.clone(), seed));
        }
    }
    out.extend(synthetic().into_iter().map(|s| ("synthetic".to_owned(), s)));
    out
}

/// A strongSwan `ikev2-…` capture (its keys are in the `.json` beside it).
#[cfg(feature = "captures")]
fn is_ikev2_capture(path: &std::path::Path) -> bool {
    path.file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(|s| s.starts_with("ikev2-"))
}

/// The JSON beside a capture: `<stem>.decoded.json` (perfSONAR, twampy,
/// stamp-suite) or `<stem>.json` (strongSwan); `None` if neither exists.
#[cfg(feature = "captures")]
pub fn capture_json(pcap: &std::path::Path) -> Option<serde_json::Value> {
    ["decoded.json", "json"].iter().find_map(|ext| {
        let text = std::fs::read_to_string(pcap.with_extension(ext)).ok()?;
        Some(
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", pcap.with_extension(ext).display())),
        )
    })
}

/// The per-session test keys of a perfSONAR capture, as its JSON gives
/// them (`test_keys[0]`: `test_aes_key`, `test_hmac_key`; the protocol
/// crate's interop test checks that they are the RFC 4656 §6.10 / RFC 5357
/// derivation from the shared secret). `None` without a test session.
#[cfg(feature = "captures")]
pub fn capture_test_keys(pcap: &std::path::Path) -> Option<TestKeys> {
    let json = capture_json(pcap)?;
    let k = json.get("test_keys")?.get(0)?;
    let mut octets = ricochet_testkit::unhex(k.get("test_aes_key")?.as_str()?);
    octets.extend(ricochet_testkit::unhex(k.get("test_hmac_key")?.as_str()?));
    let octets: [u8; 48] = octets.try_into().ok()?;
    Some(TestKeys::new(&SessionKeys::from_bytes(&octets)))
}

/// The CHILD_SA directions of a strongSwan capture's JSON
/// (`child_sa.initiator_to_responder` / `responder_to_initiator`: SPI, key,
/// salt), by SPI.
#[cfg(feature = "captures")]
pub fn capture_child_sas(pcap: &std::path::Path) -> Vec<(u32, EspGcm128)> {
    let Some(json) = capture_json(pcap) else {
        return Vec::new();
    };
    let Some(child) = json.get("child_sa") else {
        return Vec::new();
    };
    ["initiator_to_responder", "responder_to_initiator"]
        .iter()
        .filter_map(|dir| {
            let d = child.get(dir)?;
            let spi: [u8; 4] = ricochet_testkit::unhex(d.get("spi")?.as_str()?)
                .try_into()
                .ok()?;
            let keymat = ricochet_testkit::unhex(d.get("key_and_salt")?.as_str()?);
            Some((
                u32::from_be_bytes(spi),
                EspGcm128::from_keymat(&keymat).ok()?,
            ))
        })
        .collect()
}

/// The [`esp_seeds`] of a strongSwan capture: every UDP/4500 datagram
/// that is ESP (it starts with a non-zero SPI, not the non-ESP marker, RFC
/// 3948 §2.2, and is not a one-octet NAT-keepalive).
#[cfg(feature = "captures")]
pub fn esp_capture_seeds(pcap: &std::path::Path) -> Vec<Seed> {
    let sas = capture_child_sas(pcap);
    let capture = ricochet_testkit::read_pcap(pcap);
    let mut out = Vec::new();
    for d in &capture.udp {
        if d.dst.port() != 4500 && d.src.port() != 4500 {
            continue;
        }
        let Some(spi) = d.payload.first_chunk::<4>().map(|s| u32::from_be_bytes(*s)) else {
            continue;
        };
        if spi == 0 {
            continue;
        }
        let sa = sas.iter().find(|(s, _)| *s == spi).map(|(_, sa)| sa);
        out.extend(esp_seeds(sa, &d.payload));
    }
    out
}
