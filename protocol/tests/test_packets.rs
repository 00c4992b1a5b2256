//! TWAMP-Test and STAMP packets and reflection builders against independent
//! truth: the spec's test vectors (test-vectors.md TV-5…TV-8, TV-13, TV-15),
//! real perfSONAR 5.2.3 sessions (pcaps, decrypted with the test keys of
//! their `*.decoded.json`), twampy 1.3.2 and stamp-suite 0.8.0 sessions
//! (decoded JSON), and the RFC layouts for the features no peer implements
//! (RFC 6038, RFC 7750). Property tests cover round trips and hostile input.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use ricochet_testkit::{decoded_json, interop_file, read_pcap, unhex};
use serde_json::Value;

use ricochet_protocol::stamp::{
    self, process_tlvs_in_place, reflect_stamp, tlv, FramingOnly, ReflectorMode, StampFormat,
    StampLayout, Tlv, TlvEntry, TlvError, TlvHandler, TlvIter, TlvRepr, TlvVerdict, TlvWriter,
};
use ricochet_protocol::time::{ErrorEstimate, TimeFormat, Timestamp};
use ricochet_protocol::twamp_test::{
    reflect_twamp, reflect_twamp_light, set_t3, AuthSymmetricalMbz, ReflectError, ReflectOctets,
    ReflectParams, ReflectorLayout, ReflectorPacket, ReflectorRepr, RxMeta, SenderPacket,
    SenderRepr, SessionFormat, TestLayout, TestSecurity, UnauthSymmetricalMbz,
};

// ---------------------------------------------------------------------------
// Golden data access (the workspace test kit, independent of the code under
// test).

fn hex8(s: &str) -> [u8; 8] {
    unhex(s).try_into().expect("8 octets")
}

/// "0x3fff" → 0x3fff.
fn json_hex_u16(v: &Value) -> u16 {
    let s = v.as_str().expect("hex string");
    u16::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex u16")
}

fn json_u64(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// TTL / Hop Limit and TOS / Traffic Class of a decoded packet.
fn json_meta(p: &Value) -> RxMeta {
    let ttl = p
        .get("ip_ttl")
        .or_else(|| p.get("ipv6_hop_limit"))
        .expect("ttl");
    let tos = p
        .get("ip_tos")
        .or_else(|| p.get("ipv6_traffic_class"))
        .expect("tos");
    RxMeta {
        ttl: json_u64(ttl) as u8,
        tos: json_hex_u16(tos) as u8,
    }
}

/// (request, reply) pairs of a twampy / stamp-suite decoded file.
fn json_pairs(doc: &Value) -> Vec<(&Value, &Value)> {
    let packets = doc["packets"].as_array().expect("packets");
    packets
        .iter()
        .filter_map(|p| {
            let req = p.get("answers_packet_index")?.as_u64()? as usize;
            Some((&packets[req], p))
        })
        .collect()
}

fn payload(p: &Value) -> Vec<u8> {
    unhex(p["payload_hex"].as_str().expect("payload_hex"))
}

// Test-packet crypto, through the RustCrypto crates (the data plane's crypto
// module is tested elsewhere; here it only recovers plaintext truth).

fn cbc_decrypt_iv0(key: &[u8], data: &mut [u8]) {
    cbc::Decryptor::<aes::Aes128>::new_from_slices(key, &[0u8; 16])
        .expect("key")
        .decrypt_padded_mut::<NoPadding>(data)
        .expect("whole blocks");
}

fn hmac_sha1_128(key: &[u8], data: &[u8]) -> [u8; 16] {
    let mut m = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).expect("key");
    m.update(data);
    m.finalize().into_bytes()[..16].try_into().expect("16")
}

fn hmac_sha256_128(key: &[u8], data: &[u8]) -> [u8; 16] {
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("key");
    m.update(data);
    m.finalize().into_bytes()[..16].try_into().expect("16")
}

fn ee(bits: u16) -> ErrorEstimate {
    ErrorEstimate::from_bits(bits).expect("valid error estimate")
}

const BIG: usize = 65_535;

// ---------------------------------------------------------------------------
// Test vectors (test-vectors.md).

const TV5_SENDER_PLAIN: &str = "00000007000000000000000000000000 e8a1b2c6400000008001000000000000";
const TV7_REFLECTOR_PLAIN: &str =
    "00000003000000000000000000000000 e8a1b2c6500000008001000000000000
     e8a1b2c6480000000000000000000000 00000007000000000000000000000000
     e8a1b2c6400000008001000000000000 3e000000000000000000000000000000";

#[test]
fn tv5_tv6_authenticated_sender_plaintext_layout() {
    let repr = SenderRepr {
        sequence_number: 7,
        timestamp: hex8("e8a1b2c640000000"),
        error_estimate: 0x8001,
        padding_len: 0,
    };
    assert_eq!(repr.buffer_len(TestLayout::Authenticated), 48);
    let mut buf = [0xaau8; 48];
    repr.emit(&mut SenderPacket::new_unchecked(
        &mut buf[..],
        TestLayout::Authenticated,
    ))
    .unwrap();
    assert_eq!(buf[..32], unhex(TV5_SENDER_PLAIN)[..]);
    assert_eq!(
        buf[32..48],
        [0u8; 16],
        "HMAC field left zero for the caller"
    );

    let view = SenderPacket::new_checked(&buf[..], TestLayout::Authenticated).unwrap();
    assert!(view.mbz_is_zero());
    assert_eq!(SenderRepr::parse(&view).unwrap(), repr);
    assert_eq!(view.error_estimate().unwrap(), ee(0x8001));
    // TV-5 on the wire: octets 16–31 stay clear in authenticated mode.
    let tv5 = unhex(
        "1c9177f6e27ac793aaaa79159e60e734 e8a1b2c6400000008001000000000000
         e1a3ae92c6e53c64742e0ec2e3b20b69",
    );
    assert_eq!(tv5[16..32], buf[16..32]);
    let wire = SenderPacket::new_checked(&tv5[..], TestLayout::Authenticated).unwrap();
    assert_eq!(wire.timestamp(), repr.timestamp);
    assert_eq!(
        wire.hmac().unwrap(),
        &unhex("e1a3ae92c6e53c64742e0ec2e3b20b69")[..]
    );
}

#[test]
fn tv7_tv8_reflector_plaintext_built_from_tv5() {
    let mut rx = unhex(TV5_SENDER_PLAIN);
    rx.extend_from_slice(&[0u8; 16]); // HMAC field, already checked by the caller
    for security in [TestSecurity::Authenticated, TestSecurity::Encrypted] {
        let fmt = SessionFormat::new(security);
        let mut out = [0xffu8; 200];
        let params = ReflectParams {
            seq: 3,
            t2: hex8("e8a1b2c648000000"),
            error_estimate: ee(0x8001),
            max_len: BIG,
        };
        let meta = RxMeta { ttl: 62, tos: 0 };
        let n = reflect_twamp(&fmt, &rx, &meta, &params, &mut out).unwrap();
        assert_eq!(n, 112, "48 → 112 growth");
        assert_eq!(out[4..12], [0u8; 8], "T3 left zero until set_t3");
        set_t3(&mut out[..n], &fmt, hex8("e8a1b2c650000000")).unwrap();
        assert_eq!(out[..96], unhex(TV7_REFLECTOR_PLAIN)[..], "{security:?}");
        assert_eq!(out[96..112], [0u8; 16]);
    }
    // And the TV-7 plaintext parses to the same fields.
    let mut plain = unhex(TV7_REFLECTOR_PLAIN);
    plain.extend_from_slice(&unhex("eda5bafa2527187809603c339106854b"));
    let view = ReflectorPacket::new_checked(&plain[..], ReflectorLayout::AUTHENTICATED).unwrap();
    let repr = ReflectorRepr::parse(&view).unwrap();
    assert_eq!(
        repr,
        ReflectorRepr {
            sequence_number: 3,
            timestamp: hex8("e8a1b2c650000000"),
            error_estimate: 0x8001,
            receive_timestamp: hex8("e8a1b2c648000000"),
            sender_sequence_number: 7,
            sender_timestamp: hex8("e8a1b2c640000000"),
            sender_error_estimate: 0x8001,
            sender_ttl: 62,
            s_dscp_ecn: None,
            padding_len: 0,
        }
    );
    assert_eq!(
        view.hmac().unwrap(),
        &unhex("eda5bafa2527187809603c339106854b")[..]
    );
    assert!(view.mbz_is_zero());
}

/// TV-15: the first packets of a real authenticated perfSONAR session. The
/// reply rebuilt from the decrypted request, with the captured T2/T3, has the
/// captured clear octets and the captured HMAC.
#[test]
fn tv15_perfsonar_authenticated_first_packets() {
    let aes_key = unhex("2c8c50e455ffbb00ce9820f06887066d");
    let hmac_key = unhex("10e4ab92adceb4ce84123411152df16f442bb1604bb2b429a61b8a911fb099fd");
    let mut rx = unhex(
        "47ec1dd24ee1f77db98505ea57827f0a eeb381c954332f010001000000000000
         7ad3e6bc8a55cf4f5d5feb038176d994",
    );
    rx.extend_from_slice(&[0u8; 64]);
    let reply_wire = unhex(
        "47ec1dd24ee1f77db98505ea57827f0a eeb381c9543bc4d20001000000000000
         eeb381c9543a21630000000000000000 00000000000000000000000000000000
         eeb381c954332f010001000000000000 ff000000000000000000000000000000
         7ad3e6bc8a55cf4f5d5feb038176d994",
    );
    cbc_decrypt_iv0(&aes_key, &mut rx[..16]);
    let sender = SenderPacket::new_checked(&rx[..], TestLayout::Authenticated).unwrap();
    assert_eq!(sender.sequence_number(), 0);
    assert!(sender.mbz_is_zero());
    assert_eq!(
        sender.hmac().unwrap(),
        &hmac_sha1_128(&hmac_key, &rx[..16])[..]
    );

    let fmt = SessionFormat::new(TestSecurity::Authenticated);
    let mut out = [0u8; 256];
    let params = ReflectParams {
        seq: 0,
        t2: hex8("eeb381c9543a2163"),
        error_estimate: ee(0x0001),
        max_len: BIG,
    };
    let n = reflect_twamp(&fmt, &rx, &RxMeta { ttl: 255, tos: 0 }, &params, &mut out).unwrap();
    assert_eq!(n, 112, "112 → 112: the 64 padding octets are truncated");
    // Authenticated: HMAC over block 0, then ECB, then T3 in the clear.
    let mac = hmac_sha1_128(&hmac_key, &out[..16]);
    out[96..112].copy_from_slice(&mac);
    set_t3(&mut out[..n], &fmt, hex8("eeb381c9543bc4d2")).unwrap();
    assert_eq!(out[16..n], reply_wire[16..]);
    let mut block0 = reply_wire[..16].to_vec();
    cbc_decrypt_iv0(&aes_key, &mut block0);
    assert_eq!(out[..16], block0[..]);
}

// ---------------------------------------------------------------------------
// perfSONAR 5.2.3 captures: every reply rebuilt byte for byte.

struct PsSession {
    fmt: SessionFormat,
    aes_key: Vec<u8>,
    hmac_key: Vec<u8>,
    pairs: Vec<PsPair>,
}

/// One request and its reply, decrypted where the session is protected.
struct PsPair {
    rx: Vec<u8>,
    meta: RxMeta,
    tx: Vec<u8>,
    /// The reply as captured (for its HMAC).
    wire: Vec<u8>,
}

fn perfsonar_session(name: &str) -> PsSession {
    let doc = decoded_json("perfsonar-5.2.3", &format!("{name}.decoded.json"));
    let security = match doc["mode"].as_str().unwrap() {
        "open" | "mixed" => TestSecurity::Unauthenticated,
        "authenticated" => TestSecurity::Authenticated,
        "encrypted" => TestSecurity::Encrypted,
        m => panic!("mode {m}"),
    };
    let (aes_key, hmac_key) = match doc.get("test_keys").and_then(|k| k.get(0)) {
        Some(k) => (
            unhex(k["test_aes_key"].as_str().unwrap()),
            unhex(k["test_hmac_key"].as_str().unwrap()),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let dgrams = read_pcap(&interop_file("perfsonar-5.2.3", &format!("{name}.pcap"))).udp;
    // The decoded JSON lists the test packets in capture order with their
    // direction (ports alone do not tell: twping may use the same port on
    // both sides).
    let dirs = doc["test"].as_array().expect("test packets");
    assert_eq!(dgrams.len(), dirs.len(), "{name}");
    let mut sent = Vec::new();
    let mut replies = Vec::new();
    for (d, j) in dgrams.iter().zip(dirs) {
        assert_eq!(d.payload.len() as u64, json_u64(&j["len"]), "{name}");
        match j["dir"].as_str().unwrap() {
            "S->R" => sent.push(d),
            "R->S" => replies.push(d),
            other => panic!("{other}"),
        }
    }
    assert_eq!(sent.len(), 10, "{name}");
    assert_eq!(replies.len(), 10, "{name}");
    assert!(sent
        .iter()
        .zip(&replies)
        .all(|(s, r)| s.dst.port() == r.src.port() && s.src.port() == r.dst.port()));
    let (rx_plain, tx_plain) = match security {
        TestSecurity::Unauthenticated => (0, 0),
        TestSecurity::Authenticated => (16, 16),
        TestSecurity::Encrypted => (32, 96),
    };
    let pairs = sent
        .iter()
        .zip(&replies)
        .map(|(s, r)| {
            let mut rx = s.payload.clone();
            let mut tx = r.payload.clone();
            if rx_plain > 0 {
                cbc_decrypt_iv0(&aes_key, &mut rx[..rx_plain]);
                cbc_decrypt_iv0(&aes_key, &mut tx[..tx_plain]);
            }
            let meta = RxMeta {
                ttl: s.ttl,
                tos: s.tos,
            };
            PsPair {
                rx,
                meta,
                tx,
                wire: r.payload.clone(),
            }
        })
        .collect();
    PsSession {
        fmt: SessionFormat::new(security),
        aes_key,
        hmac_key,
        pairs,
    }
}

fn check_perfsonar(name: &str, expect_len: (usize, usize)) {
    let s = perfsonar_session(name);
    let layout = s.fmt.layout();
    let refl = s.fmt.reflector_layout();
    for (i, PsPair { rx, meta, tx, wire }) in s.pairs.iter().enumerate() {
        assert_eq!((rx.len(), tx.len()), expect_len, "{name} #{i}");
        let sender = SenderPacket::new_checked(&rx[..], layout).unwrap();
        let captured = ReflectorPacket::new_checked(&tx[..], refl).unwrap();
        // The reflector's own counter from 0 (twamp-test.md §5 rule 3).
        assert_eq!(sender.sequence_number(), i as u32);
        assert_eq!(captured.sequence_number(), i as u32);
        if layout == TestLayout::Authenticated {
            let cover = if s.fmt.security == TestSecurity::Encrypted {
                32
            } else {
                16
            };
            assert!(sender.mbz_is_zero());
            assert_eq!(
                sender.hmac().unwrap(),
                &hmac_sha1_128(&s.hmac_key, &rx[..cover])[..],
                "{name} #{i}: sender HMAC"
            );
        }

        let params = ReflectParams {
            seq: i as u32,
            t2: captured.receive_timestamp(),
            error_estimate: captured.error_estimate().unwrap(),
            max_len: BIG,
        };
        let mut out = [0u8; 512];
        let n = reflect_twamp(&s.fmt, rx, meta, &params, &mut out).unwrap();
        assert_eq!(n, tx.len(), "{name} #{i}: reply length");
        set_t3(&mut out[..n], &s.fmt, captured.timestamp()).unwrap();
        match s.fmt.security {
            TestSecurity::Unauthenticated => assert_eq!(out[..n], tx[..], "{name} #{i}"),
            TestSecurity::Authenticated | TestSecurity::Encrypted => {
                let cover = if s.fmt.security == TestSecurity::Encrypted {
                    96
                } else {
                    16
                };
                assert_eq!(out[..96], tx[..96], "{name} #{i}: plaintext 0–95");
                assert_eq!(out[112..n], tx[112..], "{name} #{i}: padding");
                assert_eq!(
                    hmac_sha1_128(&s.hmac_key, &out[..cover]),
                    wire[96..112],
                    "{name} #{i}: HMAC at 96 over 0–{}",
                    cover - 1
                );
            }
        }
        assert!(!s.aes_key.is_empty() || layout == TestLayout::Unauthenticated);
    }
}

#[test]
fn perfsonar_open_v4_41_to_41() {
    check_perfsonar("twamp-open-v4", (41, 41));
}

#[test]
fn perfsonar_open_v4_requested_port() {
    check_perfsonar("twamp-open-v4-reqport18790", (41, 41));
}

#[test]
fn perfsonar_mixed_v4_uses_the_unauthenticated_test_format() {
    check_perfsonar("twamp-mixed-v4", (41, 41));
}

#[test]
fn perfsonar_open_v6() {
    check_perfsonar("twamp-open-v6-port8620", (41, 41));
}

#[test]
fn perfsonar_open_pad200_214_to_214_keeps_the_padding_prefix() {
    check_perfsonar("twamp-open-v4-pad200-dscpEF", (214, 214));
}

#[test]
fn perfsonar_authenticated_v4() {
    check_perfsonar("twamp-auth-v4", (112, 112));
}

#[test]
fn perfsonar_encrypted_v4() {
    check_perfsonar("twamp-enc-v4", (112, 112));
}

#[test]
fn perfsonar_encrypted_v6() {
    check_perfsonar("twamp-enc-v6-port8620", (112, 112));
}

/// `twping -s 0` sends 14-octet packets; perfSONAR answers with 41 octets.
/// The 41-octet reply to a 41-octet probe carries no padding, so it is also
/// exactly the reply to the same probe cut to 14 octets.
#[test]
fn perfsonar_14_to_41_growth_and_the_cap() {
    let s = perfsonar_session("twamp-open-v4");
    let PsPair { rx, meta, tx, .. } = &s.pairs[3];
    let captured = ReflectorPacket::new_checked(&tx[..], ReflectorLayout::UNAUTHENTICATED).unwrap();
    let mut params = ReflectParams {
        seq: 3,
        t2: captured.receive_timestamp(),
        error_estimate: captured.error_estimate().unwrap(),
        max_len: BIG,
    };
    let mut out = [0u8; 64];
    let n = reflect_twamp(&s.fmt, &rx[..14], meta, &params, &mut out).unwrap();
    set_t3(&mut out[..n], &s.fmt, captured.timestamp()).unwrap();
    assert_eq!(out[..n], tx[..]);

    // A stateless listener caps the reply at the request size: no growth.
    params.max_len = 14;
    assert_eq!(
        reflect_twamp(&s.fmt, &rx[..14], meta, &params, &mut out),
        Err(ReflectError::TooLong {
            len: 41,
            max_len: 14
        })
    );
    assert_eq!(
        reflect_twamp(&s.fmt, &rx[..13], meta, &params, &mut out),
        Err(ReflectError::TooShort { need: 14, have: 13 })
    );
    params.max_len = BIG;
    assert_eq!(
        reflect_twamp(&s.fmt, &rx[..14], meta, &params, &mut out[..40]),
        Err(ReflectError::BufferTooSmall { need: 41, have: 40 })
    );
}

// ---------------------------------------------------------------------------
// twampy 1.3.2 (TWAMP Light): senders parsed, replies rebuilt, and its
// documented deviations (README T1–T3) detected.

fn check_twampy(file: &str, rx_len: usize, their_len: usize) {
    let doc = decoded_json("twampy-1.3.2", file);
    let pairs = json_pairs(&doc);
    assert_eq!(pairs.len(), 10, "{file}");
    let fmt = SessionFormat::default();
    for (req, rep) in pairs {
        let rx = payload(req);
        let theirs = payload(rep);
        assert_eq!((rx.len(), theirs.len()), (rx_len, their_len), "{file}");

        let sender = SenderPacket::new_checked(&rx[..], TestLayout::Unauthenticated).unwrap();
        assert_eq!(
            u64::from(sender.sequence_number()),
            json_u64(&req["sequence_number"])
        );
        assert_eq!(
            sender.timestamp(),
            hex8(req["timestamp"]["raw"].as_str().unwrap())
        );
        assert_eq!(
            sender.error_estimate_raw(),
            json_hex_u16(&req["error_estimate"]["raw"])
        );
        if let Some(p) = req.get("padding_length") {
            assert_eq!(sender.padding().len() as u64, json_u64(p));
        }
        assert_eq!(
            sender.timestamp_decoded(),
            Timestamp::Ntp(ricochet_protocol::time::NtpTimestamp {
                seconds: json_u64(&req["timestamp"]["seconds"]) as u32,
                fraction: json_u64(&req["timestamp"]["fraction"]) as u32,
            })
        );

        let t3 = hex8(rep["timestamp_T3"]["raw"].as_str().unwrap());
        let t2 = hex8(rep["receive_timestamp_T2"]["raw"].as_str().unwrap());
        let params = ReflectParams {
            seq: 0xdead_beef, // not used: TWAMP Light copies the sender's
            t2,
            error_estimate: ee(json_hex_u16(&rep["error_estimate"]["raw"])),
            max_len: BIG,
        };
        let meta = json_meta(req);
        let mut out = [0u8; 256];
        let n = reflect_twamp_light(&fmt, &rx, &meta, &params, &mut out).unwrap();
        set_t3(&mut out[..n], &fmt, t3).unwrap();
        let ours = &out[..n];

        // Everything twampy writes (its 24-octet part + the request's first
        // 14 octets at 24–37) agrees byte for byte.
        assert_eq!(ours[..38], theirs[..38], "{file}");
        assert_eq!(&ours[..4], &rx[..4], "stateless: sequence number copied");
        // T1: twampy stops at 38 octets, never writing Sender TTL.
        assert_eq!(ours[40], meta.ttl);
        if theirs.len() > 40 {
            assert_eq!(theirs[40], 0, "{file}: twampy leaves Sender TTL 0 (T1)");
            assert_ne!(meta.ttl, 0);
        }
        // T2: its reply size ignores the request; ours is max(rx, 41).
        assert_eq!(n, rx_len.max(41));
        assert_ne!(theirs.len(), n, "{file}: twampy's reply size (T2)");
        // T3: its T3 is bit-identical to T2.
        assert_eq!(t3, t2, "{file}: twampy T3 == T2 (T3)");
    }
}

#[test]
fn twampy_v4_default_14_octets() {
    check_twampy("twamp-light-v4-default.decoded.json", 14, 38);
}

#[test]
fn twampy_v4_pad64_sender_only() {
    check_twampy(
        "twamp-light-v4-pad64-dscpEF-sender-only.decoded.json",
        78,
        38,
    );
}

#[test]
fn twampy_v4_pad64_both() {
    check_twampy("twamp-light-v4-pad64-tos184-both.decoded.json", 78, 102);
}

#[test]
fn twampy_v6_default() {
    check_twampy("twamp-light-v6-default.decoded.json", 14, 38);
}

#[test]
fn twampy_v6_pad64_both() {
    check_twampy("twamp-light-v6-pad64-dscpEF-both.decoded.json", 78, 102);
}

#[test]
fn twampy_reflector_with_a_stamp_sender() {
    check_twampy(
        "twamp-light-xcheck-stamp-suite-sender-to-twampy-reflector.decoded.json",
        44,
        38,
    );
}

// ---------------------------------------------------------------------------
// stamp-suite 0.8.0: senders parsed (base fields, TLVs, HMACs), replies
// rebuilt, deviations D1/D3/D5 (README) detected.

const STAMP_KEY: &[u8] = b"stamp-golden-hmac-key-0123456789";

/// Fills Direct Measurement the way stamp-suite does (README: R_RxC counts
/// this request, R_TxC the replies sent before it), to exercise the hook.
struct DirectMeasurement {
    received: u32,
}

impl TlvHandler for DirectMeasurement {
    fn recognises(&self, t: u8) -> bool {
        t == tlv::tlv_type::DIRECT_MEASUREMENT || t == tlv::tlv_type::EXTRA_PADDING
    }

    fn process(&mut self, entry: &TlvEntry, value: &mut [u8]) -> TlvVerdict {
        if entry.tlv_type == tlv::tlv_type::DIRECT_MEASUREMENT {
            self.received += 1;
            value[4..8].copy_from_slice(&self.received.to_be_bytes());
            value[8..12].copy_from_slice(&(self.received - 1).to_be_bytes());
        }
        TlvVerdict::Processed
    }
}

#[derive(Default, Debug)]
struct StampFindings {
    pairs: usize,
    ssid_in_mbz: usize,
    grown_location: usize,
    direct_measurement_equal: usize,
    malformed: usize,
}

fn tlv_framing(area: &[u8]) -> Vec<(usize, u8, u8, u16)> {
    TlvIter::framing_only(area)
        .map(|t| t.expect("well-framed"))
        .scan(0usize, |off, t| {
            let here = *off;
            *off += t.total_len();
            Some((here, t.flags(), t.tlv_type(), t.length()))
        })
        .collect()
}

fn check_stamp_sender(req: &Value, rx: &[u8], layout: StampLayout) {
    let base = layout.base_len();
    let view = stamp::SenderPacket::new_checked(rx, layout).unwrap();
    let repr = stamp::SenderRepr::parse(&view).unwrap();
    assert_eq!(
        u64::from(repr.sequence_number),
        json_u64(&req["sequence_number"])
    );
    assert_eq!(
        repr.timestamp,
        hex8(req["timestamp"]["raw"].as_str().unwrap())
    );
    assert_eq!(
        repr.error_estimate,
        json_hex_u16(&req["error_estimate"]["raw"])
    );
    assert_eq!(u64::from(repr.ssid), json_u64(&req["ssid"]));
    assert_eq!(repr.tlv_len, rx.len() - base);
    assert!(view.mbz_is_zero());
    let expected_format = if json_u64(&req["error_estimate"]["Z"]) == 1 {
        TimeFormat::Ptp
    } else {
        TimeFormat::Ntp
    };
    assert_eq!(view.timestamp_decoded().format(), expected_format);
    if layout == StampLayout::Authenticated {
        assert_eq!(
            view.hmac().unwrap(),
            &hmac_sha256_128(STAMP_KEY, &rx[..96])[..]
        );
    }
    // The TLVs, as the independent decoder lists them.
    let ours = tlv_framing(view.tlvs());
    let theirs: Vec<_> = req
        .get("tlvs")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|t| {
            (
                json_u64(&t["offset"]) as usize - base,
                json_hex_u16(&t["flags"]) as u8,
                json_u64(&t["type"]) as u8,
                json_u64(&t["length"]) as u16,
            )
        })
        .collect();
    assert_eq!(ours, theirs);
}

fn check_stamp(file: &str) -> StampFindings {
    let doc = decoded_json("stamp-suite-0.8.0", file);
    let layout = match doc["mode"].as_str().unwrap() {
        "authenticated" => StampLayout::Authenticated,
        "unauthenticated" => StampLayout::Unauthenticated,
        m => panic!("{m}"),
    };
    let mode = match doc["reflector_mode_configured"].as_str().unwrap() {
        "stateful" => ReflectorMode::Stateful,
        _ => ReflectorMode::Stateless,
    };
    let base = layout.base_len();
    let (d1, hmac) = match layout {
        StampLayout::Unauthenticated => (38..40, None),
        StampLayout::Authenticated => (74..76, Some(96..112)),
    };
    let mut dm = DirectMeasurement { received: 0 };
    let mut found = StampFindings::default();
    for (req, rep) in json_pairs(&doc) {
        found.pairs += 1;
        let rx = payload(req);
        let theirs = payload(rep);
        if rx.len() >= base {
            check_stamp_sender(req, &rx, layout);
        }
        let their_view = stamp::ReflectorPacket::new_checked(&theirs[..], layout).unwrap();
        let their_ee = their_view.error_estimate_raw();
        let fmt = StampFormat {
            layout,
            mode,
            timestamp_format: ricochet_protocol::twamp_test::format_of_error_estimate(their_ee),
        };
        let params = ReflectParams {
            seq: their_view.sequence_number(),
            t2: their_view.receive_timestamp(),
            // Z cleared on purpose: the builder sets it from the format.
            error_estimate: ee(their_ee & !0x4000),
            max_len: BIG,
        };
        let mut out = [0u8; 512];
        let n = reflect_stamp(&fmt, &rx, &json_meta(req), &params, &mut out).unwrap();
        let summary = process_tlvs_in_place(&mut out[base..n], &mut dm);
        let stop = summary.malformed_at.unwrap_or(usize::MAX);
        found.malformed += usize::from(summary.malformed_at.is_some());
        stamp::set_t3(&mut out[..n], &fmt, their_view.timestamp()).unwrap();
        if let Some(h) = &hmac {
            let mac = hmac_sha256_128(STAMP_KEY, &out[..96]);
            out[h.clone()].copy_from_slice(&mac);
            assert_eq!(
                their_view.hmac().unwrap(),
                &hmac_sha256_128(STAMP_KEY, &theirs[..96])[..],
                "{file}: their reply HMAC verifies"
            );
        }
        let ours = &out[..n];

        // Base packet: byte for byte, except what stamp-suite gets wrong.
        let ssid = their_view.ssid();
        let ssid_in_mbz = ssid != 0 && theirs[d1.clone()] == ssid.to_be_bytes();
        if ssid_in_mbz {
            found.ssid_in_mbz += 1;
            assert_eq!(ours[d1.clone()], [0, 0], "MBZ stays zero");
        }
        for i in 0..base {
            let skip_d1 = ssid_in_mbz && d1.contains(&i);
            let skip_hmac = ssid_in_mbz && hmac.as_ref().is_some_and(|h| h.contains(&i));
            if !skip_d1 && !skip_hmac {
                assert_eq!(ours[i], theirs[i], "{file}: octet {i}");
            }
        }
        if mode == ReflectorMode::Stateless {
            assert_eq!(ours[..4], rx[..4]);
        }

        // TLV area: the same framing; we set U on what we do not implement.
        let request_tlvs = tlv_framing(rx.get(base..).unwrap_or(&[]));
        let our_tlvs = tlv_framing(&ours[base..]);
        assert_eq!(our_tlvs.len(), request_tlvs.len());
        for (o, r) in our_tlvs.iter().zip(&request_tlvs) {
            assert_eq!((o.0, o.2, o.3), (r.0, r.2, r.3), "{file}: TLV framing kept");
            let (mask, expected) = match o.0.cmp(&stop) {
                // Processed: U tells whether we implement the type.
                std::cmp::Ordering::Less => (
                    tlv::FLAG_U,
                    if dm.recognises(o.2) { 0 } else { tlv::FLAG_U },
                ),
                std::cmp::Ordering::Equal => (tlv::FLAG_M, tlv::FLAG_M),
                // After M: copied unchanged.
                std::cmp::Ordering::Greater => (0xff, r.1),
            };
            assert_eq!(
                o.1 & mask,
                expected,
                "{file}: flags of type {} at {}",
                o.2,
                o.0
            );
            assert_eq!(
                o.1 & !(tlv::FLAG_U | tlv::FLAG_M),
                r.1 & !(tlv::FLAG_U | tlv::FLAG_M)
            );
        }
        if n != theirs.len() {
            // D5: stamp-suite grows the Location TLV; the RFC keeps its length.
            assert!(
                request_tlvs.iter().any(|t| t.2 == tlv::tlv_type::LOCATION),
                "{file}"
            );
            assert_eq!(n, rx.len());
            found.grown_location += 1;
        } else {
            assert_eq!(tlv_framing(&theirs[base..]).len(), our_tlvs.len());
        }
        // The hook filled Direct Measurement exactly like the peer.
        let find_dm = |area: &[u8]| {
            TlvIter::framing_only(area)
                .map(Result::unwrap)
                .find(|t| t.tlv_type() == tlv::tlv_type::DIRECT_MEASUREMENT)
                .map(|t| (t.flags() & tlv::FLAG_U, t.value().to_vec()))
        };
        let dm_processed = our_tlvs
            .iter()
            .any(|t| t.2 == tlv::tlv_type::DIRECT_MEASUREMENT && t.0 < stop);
        if let (true, Some(a), Some(b)) = (
            dm_processed,
            find_dm(&ours[base..]),
            find_dm(&theirs[base..]),
        ) {
            assert_eq!(a, b, "{file}: Direct Measurement");
            found.direct_measurement_equal += 1;
        }
    }
    found
}

#[test]
fn stamp_suite_stateless_ntp() {
    let f = check_stamp("stamp-open-ntp-stateless.decoded.json");
    assert_eq!(f.pairs, 10);
}

#[test]
fn stamp_suite_stateful_counts_on_its_own() {
    let doc = decoded_json("stamp-suite-0.8.0", "stamp-open-stateful.decoded.json");
    // Second run from the same port: the sender restarts at 0, the reflector
    // counts on, so the two numbers differ and the builder must use its own.
    assert!(json_pairs(&doc)
        .iter()
        .any(|(q, r)| q["sequence_number"] != r["sequence_number"]));
    assert_eq!(check_stamp("stamp-open-stateful.decoded.json").pairs, 10);
}

#[test]
fn stamp_suite_authenticated_base_hmac() {
    let f = check_stamp("stamp-auth-ntp.decoded.json");
    assert_eq!((f.pairs, f.ssid_in_mbz), (10, 0));
}

#[test]
fn stamp_suite_authenticated_with_tlvs() {
    let f = check_stamp("stamp-auth-tlvs.decoded.json");
    assert_eq!(f.ssid_in_mbz, 10, "D1 at octets 74–75");
    assert_eq!(f.direct_measurement_equal, 10);
}

#[test]
fn stamp_suite_wrong_key_senders_still_parse() {
    let doc = decoded_json(
        "stamp-suite-0.8.0",
        "stamp-auth-wrongkey-dropped.decoded.json",
    );
    let senders = doc["packets"].as_array().unwrap();
    assert_eq!(senders.len(), 5);
    for req in senders {
        check_stamp_sender(req, &payload(req), StampLayout::Authenticated);
        // With the reflector's wrong key the HMAC does not verify.
        let rx = payload(req);
        assert_ne!(
            rx[96..112],
            hmac_sha256_128(b"wrong-golden-hmac-key-0123456789", &rx[..96])
        );
    }
}

#[test]
fn stamp_suite_ptp_both_sides() {
    check_stamp("stamp-open-ptp.decoded.json");
}

#[test]
fn stamp_suite_reflector_ptp_sender_ntp_sets_z_from_the_format() {
    let doc = decoded_json(
        "stamp-suite-0.8.0",
        "stamp-open-sender-ntp-reflector-ptp.decoded.json",
    );
    for (req, rep) in json_pairs(&doc) {
        assert_eq!(json_hex_u16(&req["error_estimate"]["raw"]), 0x0001);
        assert_eq!(json_hex_u16(&rep["error_estimate"]["raw"]), 0x4001);
    }
    check_stamp("stamp-open-sender-ntp-reflector-ptp.decoded.json");
}

#[test]
fn stamp_suite_rfc8972_tlvs() {
    let f = check_stamp("stamp-open-tlvs-rfc8972.decoded.json");
    assert_eq!(f.ssid_in_mbz, 10, "D1 at octets 38–39");
    assert_eq!(f.grown_location, 10, "D5");
    // D3 stops TLV processing before Direct Measurement is reached.
    assert_eq!((f.malformed, f.direct_measurement_equal), (10, 0));
    // D3: Access Report with Length 2; a strict reflector flags it M.
    let doc = decoded_json("stamp-suite-0.8.0", "stamp-open-tlvs-rfc8972.decoded.json");
    let rx = payload(&doc["packets"][0]);
    let area = &rx[44..];
    let items: Vec<_> = TlvIter::new(area).collect();
    assert_eq!(
        items.last().unwrap().as_ref().unwrap_err(),
        &TlvError::BadLength {
            offset: 8,
            tlv_type: tlv::tlv_type::ACCESS_REPORT,
            length: 2
        }
    );
    let mut area = area.to_vec();
    let before = area.clone();
    let s = process_tlvs_in_place(&mut area, &mut FramingOnly);
    assert_eq!((s.unrecognized, s.malformed_at), (1, Some(8)));
    assert_eq!(area[0], before[0] | tlv::FLAG_U, "CoS: unknown here → U");
    assert_eq!(area[8], before[8] | tlv::FLAG_M, "Access Report: M");
    assert_eq!(area[9..], before[9..], "rest copied unchanged");
}

#[test]
fn stamp_suite_extra_padding_and_experimental_types() {
    check_stamp("stamp-open-tlvs-extra-padding.decoded.json");
}

#[test]
fn stamp_suite_hmac_tlv_unauthenticated() {
    check_stamp("stamp-open-tlvs-hmac-tlv.decoded.json");
    // The HMAC TLV of each sender packet covers Sequence Number ‖ preceding
    // TLVs as sent (RFC 8972 §4.8): our framing finds exactly that span.
    let doc = decoded_json("stamp-suite-0.8.0", "stamp-open-tlvs-hmac-tlv.decoded.json");
    for p in doc["packets"].as_array().unwrap() {
        let pkt = payload(p);
        let area = &pkt[44..];
        let mut covered = pkt[..4].to_vec();
        for t in TlvIter::new(area) {
            let t = t.unwrap();
            if t.tlv_type() == tlv::tlv_type::HMAC {
                assert_eq!(t.value(), &hmac_sha256_128(STAMP_KEY, &covered)[..]);
            } else {
                covered.extend_from_slice(t.into_inner());
            }
        }
    }
}

#[test]
fn stamp_suite_follow_up_telemetry() {
    check_stamp("stamp-open-stateless-fut.decoded.json");
    check_stamp("stamp-open-stateful-fut.decoded.json");
}

#[test]
fn stamp_suite_v6_location() {
    let f = check_stamp("stamp-open-v6-location.decoded.json");
    assert_eq!(f.grown_location, 10, "D5: 52 → 88");
}

#[test]
fn stamp_suite_rfc9503_rfc9534_sub_tlvs() {
    check_stamp("stamp-open-tlvs-rfc9503-rfc9534.decoded.json");
    let doc = decoded_json(
        "stamp-suite-0.8.0",
        "stamp-open-tlvs-rfc9503-rfc9534.decoded.json",
    );
    let rx = payload(&doc["packets"][0]);
    let rp = TlvIter::new(&rx[44..])
        .map(Result::unwrap)
        .find(|t| t.tlv_type() == tlv::tlv_type::RETURN_PATH)
        .unwrap();
    let subs: Vec<_> = TlvIter::framing_only(rp.value())
        .map(Result::unwrap)
        .collect();
    assert_eq!(subs.len(), 1);
    assert_eq!(
        (subs[0].tlv_type(), subs[0].value()),
        (1, &[0u8, 0, 0, 1][..])
    );
}

/// A 41-octet TWAMP Light packet gets the 44-octet base reply, if the cap
/// allows (stamp.md §3 rule 2).
#[test]
fn stamp_suite_reflector_with_a_twamp_light_sender() {
    let f = check_stamp("stamp-xcheck-twampy-sender-to-stamp-suite-reflector.decoded.json");
    assert_eq!(f.pairs, 10);
    let doc = decoded_json(
        "stamp-suite-0.8.0",
        "stamp-xcheck-twampy-sender-to-stamp-suite-reflector.decoded.json",
    );
    let rx = payload(&doc["packets"][0]);
    assert_eq!(rx.len(), 41);
    let fmt = StampFormat::default();
    let params = ReflectParams {
        seq: 0,
        t2: [0; 8],
        error_estimate: ee(1),
        max_len: rx.len(),
    };
    let mut out = [0u8; 64];
    assert_eq!(
        reflect_stamp(&fmt, &rx, &RxMeta::default(), &params, &mut out),
        Err(ReflectError::TooLong {
            len: 44,
            max_len: 41
        })
    );
    // 14 octets is the least a reflector can answer.
    let params = ReflectParams {
        max_len: 44,
        ..params
    };
    assert_eq!(
        reflect_stamp(&fmt, &rx[..14], &RxMeta::default(), &params, &mut out),
        Ok(44)
    );
    assert_eq!(out[14..16], [0, 0], "no SSID in a 14-octet packet");
    assert_eq!(
        reflect_stamp(&fmt, &rx[..13], &RxMeta::default(), &params, &mut out),
        Err(ReflectError::TooShort { need: 14, have: 13 })
    );
}

// ---------------------------------------------------------------------------
// TV-13: authenticated STAMP layout and TLV bytes.

#[test]
fn tv13_stamp_authenticated_sender_and_hmac_tlv() {
    let key: Vec<u8> = (0x80u8..=0x9f).collect();
    let repr = stamp::SenderRepr {
        sequence_number: 1,
        timestamp: hex8("e8a1b2c600000000"),
        error_estimate: 0x8001,
        ssid: 0,
        tlv_len: 0,
    };
    let mut pkt = [0x55u8; 112];
    repr.emit(&mut stamp::SenderPacket::new_unchecked(
        &mut pkt[..],
        StampLayout::Authenticated,
    ))
    .unwrap();
    assert_eq!(
        hmac_sha256_128(&key, &pkt[..96]),
        unhex("ac6e679b77f64be3ed9ee6c1d65ef595")[..]
    );

    for (flags, expected) in [
        (0x00, "c1697b18c00b2d3b36990b44e24eb415"),
        (tlv::FLAG_U, "cad0f85011668586beff7bdd068fe59d"),
    ] {
        let mut area = [0u8; 8];
        let mut w = TlvWriter::new(&mut area);
        w.push(flags, tlv::tlv_type::CLASS_OF_SERVICE, &unhex("b8000000"))
            .unwrap();
        assert_eq!(w.finish(), 8);
        assert_eq!(area[1..], unhex("040004b8000000")[..]);
        let mut covered = pkt[..4].to_vec();
        covered.extend_from_slice(&area);
        assert_eq!(hmac_sha256_128(&key, &covered), unhex(expected)[..]);
        let t = Tlv::new_checked(&area[..]).unwrap();
        assert_eq!(
            TlvRepr::parse(&t).unwrap(),
            TlvRepr {
                flags,
                tlv_type: 4,
                length: 4
            }
        );
        assert_eq!(t.unrecognized(), flags != 0);
    }
}

// ---------------------------------------------------------------------------
// RFC 6038 / RFC 7750 / RFC 8186 layouts (no peer implements the reflector
// side; the RFC figures are the truth).

fn sender_with_padding(fmt: &SessionFormat, len: usize) -> Vec<u8> {
    let mut rx: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(1))
        .collect();
    let repr = SenderRepr {
        sequence_number: 0x0102_0304,
        timestamp: hex8("e8a1b2c640000000"),
        error_estimate: 0x8001,
        padding_len: len - fmt.sender_header_len(),
    };
    repr.emit(&mut SenderPacket::new_unchecked(&mut rx[..], fmt.layout()))
        .unwrap();
    rx
}

fn reflect(fmt: &SessionFormat, rx: &[u8], meta: RxMeta) -> Vec<u8> {
    let params = ReflectParams {
        seq: 9,
        t2: hex8("e8a1b2c648000000"),
        error_estimate: ee(0x8001),
        max_len: BIG,
    };
    let mut out = vec![0xeeu8; 1024];
    let n = reflect_twamp(fmt, rx, &meta, &params, &mut out).unwrap();
    out.truncate(n);
    out
}

#[test]
fn rfc7750_unauthenticated_reflector_octets() {
    let fmt = SessionFormat {
        dscp_ecn_monitoring: true,
        ..SessionFormat::new(TestSecurity::Unauthenticated)
    };
    let meta = RxMeta { ttl: 61, tos: 0xb9 }; // EF, ECT(1)
    let out = reflect(&fmt, &sender_with_padding(&fmt, 14), meta);
    assert_eq!(out.len(), 44, "14 → 44");
    assert_eq!(out[40], 61, "Sender TTL at 40");
    assert_eq!(out[41], 0xb9, "S-DSCP-ECN at 41");
    assert_eq!(out[42..44], [0, 0], "MBZ 42–43");
    let view =
        ReflectorPacket::new_checked(&out[..], ReflectorLayout::UNAUTHENTICATED_DSCP_ECN).unwrap();
    assert_eq!(view.s_dscp_ecn(), Some(0xb9));
    assert!(view.mbz_is_zero());
    // Truncation by 30 octets: the padding prefix lands at 44.
    let rx = sender_with_padding(&fmt, 74);
    let out = reflect(&fmt, &rx, meta);
    assert_eq!(out.len(), 74);
    assert_eq!(out[44..], rx[14..44]);
    // Without monitoring the same TOS is not reported and octet 41 is padding.
    let plain = SessionFormat::new(TestSecurity::Unauthenticated);
    let out = reflect(&plain, &rx, meta);
    assert_eq!(out[41..], rx[14..47]);
}

#[test]
fn rfc7750_authenticated_reflector_octets() {
    for security in [TestSecurity::Authenticated, TestSecurity::Encrypted] {
        let fmt = SessionFormat {
            dscp_ecn_monitoring: true,
            ..SessionFormat::new(security)
        };
        let out = reflect(
            &fmt,
            &sender_with_padding(&fmt, 48),
            RxMeta { ttl: 1, tos: 0x2a },
        );
        assert_eq!(out.len(), 112);
        assert_eq!((out[80], out[81]), (1, 0x2a));
        assert_eq!(out[82..112], [0u8; 30], "MBZ 82–95 and the HMAC field");
    }
}

#[test]
fn rfc6038_reflect_octets_unauthenticated() {
    let fmt = SessionFormat {
        reflect_octets: Some(ReflectOctets {
            length: 10,
            server_octets: 0xabcd,
        }),
        ..SessionFormat::new(TestSecurity::Unauthenticated)
    };
    // P = 12 > L but < 27 + L: the L octets are returned, the reply grows.
    let rx = sender_with_padding(&fmt, 26);
    let out = reflect(&fmt, &rx, RxMeta::default());
    assert_eq!(out.len(), 51);
    assert_eq!(out[41..51], rx[14..24]);
    // P ≥ 27 + L: truncation by exactly 27, equal sizes.
    let rx = sender_with_padding(&fmt, 14 + 40);
    let out = reflect(&fmt, &rx, RxMeta::default());
    assert_eq!(out.len(), rx.len());
    assert_eq!(out[41..], rx[14..27]);
    // Fewer octets than L present: what there is, no invented growth.
    let rx = sender_with_padding(&fmt, 18);
    assert_eq!(reflect(&fmt, &rx, RxMeta::default()).len(), 45);
}

#[test]
fn rfc6038_symmetrical_size_keeps_the_length() {
    // Unauthenticated: 27 MBZ, padding at 41 returned at 41.
    let fmt = SessionFormat {
        symmetrical_size: true,
        reflect_octets: Some(ReflectOctets {
            length: 8,
            server_octets: 0,
        }),
        ..SessionFormat::new(TestSecurity::Unauthenticated)
    };
    assert_eq!(fmt.sender_padding_offset(), 41);
    let rx = sender_with_padding(&fmt, 41 + 20);
    let out = reflect(&fmt, &rx, RxMeta::default());
    assert_eq!(out.len(), rx.len());
    assert_eq!(out[41..], rx[41..]);

    // With RFC 7750 too: 28 MBZ (Fig. 4), to-be-reflected at 42 → 44.
    let fmt = SessionFormat {
        dscp_ecn_monitoring: true,
        ..fmt
    };
    assert_eq!(fmt.sender_padding_offset(), 42);
    let rx = sender_with_padding(&fmt, 42 + 20);
    let out = reflect(&fmt, &rx, RxMeta::default());
    assert_eq!(out.len(), rx.len());
    assert_eq!(out[44..], rx[42..60]);
    // A bare Fig. 4 probe (42 octets) cannot get an equal-size reply.
    assert_eq!(
        reflect(&fmt, &sender_with_padding(&fmt, 42), RxMeta::default()).len(),
        44
    );
    for (choice, offset) in [
        (UnauthSymmetricalMbz::Octets27, 41),
        (UnauthSymmetricalMbz::Octets28, 42),
        (UnauthSymmetricalMbz::Octets30, 44),
    ] {
        let f = SessionFormat {
            unauth_symmetrical_mbz: choice,
            ..fmt
        };
        assert_eq!(f.sender_padding_offset(), offset);
        let rx = sender_with_padding(&f, 100);
        assert_eq!(
            reflect(&f, &rx, RxMeta::default())[44..52],
            rx[offset..offset + 8]
        );
    }

    // Authenticated/encrypted: 64 MBZ by default, 56 by the RFC text.
    let auth = SessionFormat {
        symmetrical_size: true,
        ..SessionFormat::new(TestSecurity::Encrypted)
    };
    assert_eq!(auth.sender_padding_offset(), 112);
    let rx = sender_with_padding(&auth, 128);
    let out = reflect(&auth, &rx, RxMeta::default());
    assert_eq!((out.len(), &out[112..]), (128, &rx[112..]));
    let auth56 = SessionFormat {
        auth_symmetrical_mbz: AuthSymmetricalMbz::Octets56,
        ..auth
    };
    assert_eq!(auth56.sender_padding_offset(), 104);
    let out = reflect(&auth56, &rx, RxMeta::default());
    assert_eq!((out.len(), &out[112..]), (128, &rx[104..120]));
}

#[test]
fn rfc8186_ptp_session_sets_z_and_keeps_the_sender_estimate() {
    let fmt = SessionFormat {
        timestamp_format: TimeFormat::Ptp,
        ..SessionFormat::default()
    };
    let mut rx = sender_with_padding(&fmt, 14);
    rx[12..14].copy_from_slice(&0x0000u16.to_be_bytes()); // invalid, copied verbatim
    let out = reflect(&fmt, &rx, RxMeta::default());
    let view = ReflectorPacket::new_checked(&out[..], ReflectorLayout::UNAUTHENTICATED).unwrap();
    assert_eq!(view.error_estimate_raw(), 0xc001, "S kept, Z set");
    assert_eq!(view.sender_error_estimate_raw(), 0x0000);
    assert!(view.sender_error_estimate().is_err());
    assert!(matches!(
        view.receive_timestamp_decoded(),
        Timestamp::Ptp(_)
    ));
    assert!(matches!(view.sender_timestamp_decoded(), Timestamp::Ntp(_)));
    let t = fmt.encode_timestamp(
        1_700_000_037_000_000_250,
        ricochet_protocol::time::TaiOffset(37),
    );
    assert_eq!(t[..4], 1_700_000_037u32.to_be_bytes());
    assert_eq!(t[4..], 250u32.to_be_bytes());
}

#[test]
fn set_t3_offsets_and_errors() {
    let mut buf = [0u8; 112];
    set_t3(&mut buf, &SessionFormat::default(), [1; 8]).unwrap();
    assert_eq!(buf[4..12], [1; 8]);
    let auth = SessionFormat::new(TestSecurity::Authenticated);
    set_t3(&mut buf, &auth, [2; 8]).unwrap();
    assert_eq!(buf[16..24], [2; 8]);
    assert_eq!(
        set_t3(&mut buf[..111], &auth, [2; 8]),
        Err(ReflectError::BufferTooSmall {
            need: 112,
            have: 111
        })
    );
    assert_eq!(
        set_t3(&mut buf[..40], &SessionFormat::default(), [2; 8]),
        Err(ReflectError::BufferTooSmall { need: 41, have: 40 })
    );
    let sfmt = StampFormat {
        layout: StampLayout::Authenticated,
        ..StampFormat::default()
    };
    stamp::set_t3(&mut buf, &sfmt, [3; 8]).unwrap();
    assert_eq!(buf[16..24], [3; 8]);
    assert!(stamp::set_t3(&mut buf[..43], &StampFormat::default(), [3; 8]).is_err());
}

#[test]
fn authenticated_sender_too_short() {
    let fmt = SessionFormat::new(TestSecurity::Authenticated);
    let params = ReflectParams {
        seq: 0,
        t2: [0; 8],
        error_estimate: ee(1),
        max_len: BIG,
    };
    let mut out = [0u8; 200];
    assert_eq!(
        reflect_twamp(&fmt, &[0u8; 47], &RxMeta::default(), &params, &mut out),
        Err(ReflectError::TooShort { need: 48, have: 47 })
    );
    let sfmt = StampFormat {
        layout: StampLayout::Authenticated,
        ..StampFormat::default()
    };
    assert_eq!(
        reflect_stamp(&sfmt, &[0u8; 111], &RxMeta::default(), &params, &mut out),
        Err(ReflectError::TooShort {
            need: 112,
            have: 111
        })
    );
}

// ---------------------------------------------------------------------------
// TLV framing pass.

#[test]
fn tlv_framing_pass_flags_unknown_malformed_and_stops() {
    let mut area = vec![0u8; 64];
    let mut w = TlvWriter::new(&mut area);
    w.push(0x80, tlv::tlv_type::EXTRA_PADDING, &[0xff; 6])
        .unwrap(); // 0..10
    w.push(0x00, 200, &[1, 2, 3]).unwrap(); // 10..17, unknown
    w.push(0x80, tlv::tlv_type::CLASS_OF_SERVICE, &[0; 3])
        .unwrap(); // 17..24, bad Length
    w.push(0x80, tlv::tlv_type::EXTRA_PADDING, &[0; 4]).unwrap(); // 24..32, after M
    let used = w.finish();
    area.truncate(used + 2); // two stray octets at the end
    let before = area.clone();
    let s = process_tlvs_in_place(&mut area, &mut FramingOnly);
    assert_eq!(
        s,
        stamp::TlvSummary {
            processed: 1,
            unrecognized: 1,
            malformed_at: Some(17)
        }
    );
    assert_eq!(area[0], 0x00, "Extra Padding recognised: U cleared");
    assert_eq!(area[10], tlv::FLAG_U, "unknown type: U set");
    assert_eq!(
        area[11..17],
        before[11..17],
        "unknown value copied unchanged"
    );
    assert_eq!(area[17], 0x80 | tlv::FLAG_M, "bad Length: M set");
    assert_eq!(area[18..], before[18..], "rest of the area unchanged");

    // Length past the end; then a header cut short.
    let mut a = unhex("00010010 0000");
    process_tlvs_in_place(&mut a, &mut FramingOnly);
    assert_eq!(a[0], tlv::FLAG_M);
    let mut b = unhex("00010000 0001");
    let s = process_tlvs_in_place(&mut b, &mut FramingOnly);
    assert_eq!((b[0], b[4], s.malformed_at), (0, tlv::FLAG_M, Some(4)));
    let mut empty: [u8; 0] = [];
    assert_eq!(
        process_tlvs_in_place(&mut empty, &mut FramingOnly),
        Default::default()
    );
}

#[test]
fn tlv_handler_verdicts() {
    struct H;
    impl TlvHandler for H {
        fn recognises(&self, _t: u8) -> bool {
            true
        }
        fn process(&mut self, e: &TlvEntry, v: &mut [u8]) -> TlvVerdict {
            match e.tlv_type {
                1 => {
                    v.fill(0x11);
                    TlvVerdict::Processed
                }
                9 => TlvVerdict::Unrecognized,
                _ => TlvVerdict::Malformed,
            }
        }
    }
    let mut area = [0u8; 40];
    let mut w = TlvWriter::new(&mut area);
    w.push(0x80, 1, &[0; 4]).unwrap();
    w.push(0x00, 9, &[10, 0, 0, 1]).unwrap();
    w.push(0x80, 3, &[0; 4]).unwrap();
    w.push(0x80, 1, &[0; 4]).unwrap();
    assert_eq!(w.remaining(), 8);
    let s = process_tlvs_in_place(&mut area, &mut H);
    assert_eq!(
        (s.processed, s.unrecognized, s.malformed_at),
        (1, 1, Some(16))
    );
    assert_eq!(area[..8], unhex("0001000411111111")[..]);
    assert_eq!(area[8], tlv::FLAG_U);
    assert_eq!(area[16], 0x80 | tlv::FLAG_M);
    assert_eq!(
        area[24..32],
        unhex("8001000400000000")[..],
        "after M: untouched"
    );
}

#[test]
fn tlv_writer_limits() {
    let mut small = [0u8; 6];
    let mut w = TlvWriter::new(&mut small);
    assert_eq!(
        w.push(0, 1, &[0; 3]),
        Err(TlvError::NoSpace {
            offset: 0,
            need: 7,
            have: 6
        })
    );
    w.push(0, 1, &[9, 9]).unwrap();
    assert_eq!(w.remaining(), 0);
    let big = vec![0u8; 70_000];
    let mut buf = vec![0u8; 70_010];
    assert_eq!(
        TlvWriter::new(&mut buf).push(0, 1, &big),
        Err(TlvError::ValueTooLong { len: 70_000 })
    );
    assert!(Tlv::new_checked(&[0u8, 1, 0, 5, 0][..]).is_err());
}

// ---------------------------------------------------------------------------
// Property tests.

fn any_security() -> impl Strategy<Value = TestSecurity> {
    prop_oneof![
        Just(TestSecurity::Unauthenticated),
        Just(TestSecurity::Authenticated),
        Just(TestSecurity::Encrypted),
    ]
}

prop_compose! {
    fn any_session_format()(
        security in any_security(),
        reflect in proptest::option::of((0u16..200, any::<u16>())),
        symmetrical_size in any::<bool>(),
        dscp_ecn_monitoring in any::<bool>(),
        ptp in any::<bool>(),
        unauth in 0u8..4,
        auth56 in any::<bool>(),
    ) -> SessionFormat {
        SessionFormat {
            security,
            reflect_octets: reflect.map(|(length, server_octets)| ReflectOctets { length, server_octets }),
            symmetrical_size,
            dscp_ecn_monitoring,
            timestamp_format: if ptp { TimeFormat::Ptp } else { TimeFormat::Ntp },
            unauth_symmetrical_mbz: match unauth {
                0 => UnauthSymmetricalMbz::Recommended,
                1 => UnauthSymmetricalMbz::Octets27,
                2 => UnauthSymmetricalMbz::Octets28,
                _ => UnauthSymmetricalMbz::Octets30,
            },
            auth_symmetrical_mbz: if auth56 { AuthSymmetricalMbz::Octets56 } else { AuthSymmetricalMbz::Octets64 },
        }
    }
}

prop_compose! {
    fn any_error_estimate()(bits in any::<u16>(), mult in 1u8..=255) -> ErrorEstimate {
        ee((bits & 0xff00) | u16::from(mult))
    }
}

prop_compose! {
    fn any_params()(seq in any::<u32>(), t2 in any::<[u8; 8]>(), e in any_error_estimate(), max_len in 0usize..400) -> ReflectParams {
        ReflectParams { seq, t2, error_estimate: e, max_len }
    }
}

fn any_stamp_format() -> impl Strategy<Value = StampFormat> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(auth, stateful, ptp)| StampFormat {
        layout: if auth {
            StampLayout::Authenticated
        } else {
            StampLayout::Unauthenticated
        },
        mode: if stateful {
            ReflectorMode::Stateful
        } else {
            ReflectorMode::Stateless
        },
        timestamp_format: if ptp {
            TimeFormat::Ptp
        } else {
            TimeFormat::Ntp
        },
    })
}

fn test_layout() -> impl Strategy<Value = TestLayout> {
    prop_oneof![
        Just(TestLayout::Unauthenticated),
        Just(TestLayout::Authenticated)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn twamp_sender_round_trip(
        layout in test_layout(),
        seq in any::<u32>(), ts in any::<[u8; 8]>(), e in any::<u16>(), padding_len in 0usize..100,
    ) {
        let repr = SenderRepr { sequence_number: seq, timestamp: ts, error_estimate: e, padding_len };
        let mut buf = vec![0xa5; repr.buffer_len(layout)];
        repr.emit(&mut SenderPacket::new_unchecked(&mut buf[..], layout)).unwrap();
        let view = SenderPacket::new_checked(&buf[..], layout).unwrap();
        prop_assert!(view.mbz_is_zero());
        prop_assert_eq!(SenderRepr::parse(&view).unwrap(), repr);
        prop_assert!(repr.emit(&mut SenderPacket::new_unchecked(&mut buf[..repr.buffer_len(layout) - 1], layout)).is_err());
    }

    #[test]
    fn twamp_reflector_round_trip(
        test in test_layout(), dscp in proptest::option::of(any::<u8>()),
        seq in any::<u32>(), ts in any::<[u8; 8]>(), e in any::<u16>(), t2 in any::<[u8; 8]>(),
        sseq in any::<u32>(), sts in any::<[u8; 8]>(), se in any::<u16>(), ttl in any::<u8>(),
        padding_len in 0usize..100,
    ) {
        let repr = ReflectorRepr {
            sequence_number: seq, timestamp: ts, error_estimate: e, receive_timestamp: t2,
            sender_sequence_number: sseq, sender_timestamp: sts, sender_error_estimate: se,
            sender_ttl: ttl, s_dscp_ecn: dscp, padding_len,
        };
        let layout = repr.layout(test);
        let mut buf = vec![0x5a; repr.buffer_len(test)];
        repr.emit(&mut ReflectorPacket::new_unchecked(&mut buf[..], layout)).unwrap();
        let view = ReflectorPacket::new_checked(&buf[..], layout).unwrap();
        prop_assert!(view.mbz_is_zero());
        prop_assert_eq!(view.hmac().map(|h| h.iter().all(|&b| b == 0)), (test == TestLayout::Authenticated).then_some(true));
        prop_assert_eq!(ReflectorRepr::parse(&view).unwrap(), repr);
        // The layout must agree with s_dscp_ecn.
        let other = ReflectorLayout { test, dscp_ecn: dscp.is_none() };
        prop_assert!(repr.emit(&mut ReflectorPacket::new_unchecked(&mut buf[..], other)).is_err());
    }

    #[test]
    fn stamp_round_trips(
        auth in any::<bool>(), seq in any::<u32>(), ts in any::<[u8; 8]>(), e in any::<u16>(),
        ssid in any::<u16>(), t2 in any::<[u8; 8]>(), sseq in any::<u32>(), sts in any::<[u8; 8]>(),
        se in any::<u16>(), ttl in any::<u8>(), tlv_len in 0usize..64,
    ) {
        let layout = if auth { StampLayout::Authenticated } else { StampLayout::Unauthenticated };
        let s = stamp::SenderRepr { sequence_number: seq, timestamp: ts, error_estimate: e, ssid, tlv_len };
        let mut buf = vec![0xc3; s.buffer_len(layout)];
        s.emit(&mut stamp::SenderPacket::new_unchecked(&mut buf[..], layout)).unwrap();
        let v = stamp::SenderPacket::new_checked(&buf[..], layout).unwrap();
        prop_assert!(v.mbz_is_zero());
        prop_assert_eq!(stamp::SenderRepr::parse(&v).unwrap(), s);

        let r = stamp::ReflectorRepr {
            sequence_number: seq, timestamp: ts, error_estimate: e, ssid, receive_timestamp: t2,
            sender_sequence_number: sseq, sender_timestamp: sts, sender_error_estimate: se,
            sender_ttl: ttl, tlv_len,
        };
        let mut buf = vec![0x3c; r.buffer_len(layout)];
        r.emit(&mut stamp::ReflectorPacket::new_unchecked(&mut buf[..], layout)).unwrap();
        let v = stamp::ReflectorPacket::new_checked(&buf[..], layout).unwrap();
        prop_assert!(v.mbz_is_zero());
        prop_assert_eq!(stamp::ReflectorRepr::parse(&v).unwrap(), r);
    }

    #[test]
    fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        for layout in [TestLayout::Unauthenticated, TestLayout::Authenticated] {
            match SenderPacket::new_checked(&data[..], layout) {
                Ok(p) => {
                    let r = SenderRepr::parse(&p).unwrap();
                    prop_assert_eq!(r.buffer_len(layout), data.len());
                    let _ = (p.error_estimate(), p.timestamp_decoded(), p.hmac(), p.mbz_is_zero());
                }
                Err(_) => prop_assert!(data.len() < layout.sender_header_len()),
            }
        }
        for layout in [
            ReflectorLayout::UNAUTHENTICATED, ReflectorLayout::UNAUTHENTICATED_DSCP_ECN,
            ReflectorLayout::AUTHENTICATED, ReflectorLayout::AUTHENTICATED_DSCP_ECN,
        ] {
            match ReflectorPacket::new_checked(&data[..], layout) {
                Ok(p) => {
                    let r = ReflectorRepr::parse(&p).unwrap();
                    prop_assert_eq!(r.buffer_len(layout.test), data.len());
                    let _ = (p.timestamp_decoded(), p.receive_timestamp_decoded(), p.sender_timestamp_decoded(), p.error_estimate());
                }
                Err(_) => prop_assert!(data.len() < layout.header_len()),
            }
        }
        for layout in [StampLayout::Unauthenticated, StampLayout::Authenticated] {
            match stamp::SenderPacket::new_checked(&data[..], layout) {
                Ok(p) => { stamp::SenderRepr::parse(&p).unwrap(); }
                Err(_) => prop_assert!(data.len() < layout.base_len()),
            }
            match stamp::ReflectorPacket::new_checked(&data[..], layout) {
                Ok(p) => { stamp::ReflectorRepr::parse(&p).unwrap(); }
                Err(_) => prop_assert!(data.len() < layout.base_len()),
            }
        }
        let _ = Tlv::new_checked(&data[..]).map(|t| TlvRepr::parse(&t));
    }

    /// The TWAMP builders on arbitrary input: typed errors exactly when the
    /// rules say so, otherwise a reply within every bound with the required
    /// fields.
    #[test]
    fn twamp_builder_on_any_input(
        fmt in any_session_format(),
        rx in proptest::collection::vec(any::<u8>(), 0..300),
        params in any_params(),
        out_len in 0usize..400,
        ttl in any::<u8>(), tos in any::<u8>(), light in any::<bool>(),
    ) {
        let meta = RxMeta { ttl, tos };
        let mut out = vec![0xeeu8; out_len];
        let res = if light {
            reflect_twamp_light(&fmt, &rx, &meta, &params, &mut out)
        } else {
            reflect_twamp(&fmt, &rx, &meta, &params, &mut out)
        };
        let want = fmt.reply_len(rx.len());
        if rx.len() < fmt.sender_header_len() {
            prop_assert_eq!(res, Err(ReflectError::TooShort { need: fmt.sender_header_len(), have: rx.len() }));
        } else if want > params.max_len {
            prop_assert_eq!(res, Err(ReflectError::TooLong { len: want, max_len: params.max_len }));
        } else if want > out_len {
            prop_assert_eq!(res, Err(ReflectError::BufferTooSmall { need: want, have: out_len }));
        } else {
            let n = res.unwrap();
            prop_assert_eq!(n, want);
            prop_assert!(n <= params.max_len && n >= rx.len() && n >= fmt.reflector_header_len());
            if fmt.reflect_octets.is_none() {
                prop_assert_eq!(n, rx.len().max(fmt.reflector_header_len()));
            }
            let sender = SenderPacket::new_checked(&rx[..], fmt.layout()).unwrap();
            let reply = ReflectorPacket::new_checked(&out[..n], fmt.reflector_layout()).unwrap();
            prop_assert_eq!(reply.sequence_number(), if light { sender.sequence_number() } else { params.seq });
            prop_assert_eq!(reply.timestamp(), [0u8; 8]);
            prop_assert_eq!(reply.error_estimate().unwrap().format(), fmt.timestamp_format);
            prop_assert_eq!(reply.receive_timestamp(), params.t2);
            prop_assert_eq!(reply.sender_sequence_number(), sender.sequence_number());
            prop_assert_eq!(reply.sender_timestamp(), sender.timestamp());
            prop_assert_eq!(reply.sender_error_estimate_raw(), sender.error_estimate_raw());
            prop_assert_eq!(reply.sender_ttl(), ttl);
            prop_assert_eq!(reply.s_dscp_ecn(), fmt.dscp_ecn_monitoring.then_some(tos));
            prop_assert!(reply.mbz_is_zero());
            // Reflected octets: the sender's from its padding offset, then zeros.
            let src = rx.get(fmt.sender_padding_offset()..).unwrap_or(&[]);
            for (i, &b) in reply.padding().iter().enumerate() {
                prop_assert_eq!(b, src.get(i).copied().unwrap_or(0));
            }
            prop_assert!(out[n..].iter().all(|&b| b == 0xee), "nothing written past the reply");
        }
    }

    /// No amplification: a stateless listener passing the received length as
    /// the cap never gets a larger reply.
    #[test]
    fn capped_replies_never_exceed_the_request(
        fmt in any_session_format(), sfmt in any_stamp_format(),
        rx in proptest::collection::vec(any::<u8>(), 0..300), params in any_params(),
    ) {
        let params = ReflectParams { max_len: rx.len(), ..params };
        let mut out = [0u8; 600];
        if let Ok(n) = reflect_twamp_light(&fmt, &rx, &RxMeta::default(), &params, &mut out) {
            prop_assert!(n <= rx.len());
        }
        if let Ok(n) = reflect_stamp(&sfmt, &rx, &RxMeta::default(), &params, &mut out) {
            prop_assert_eq!(n, rx.len());
        }
    }

    #[test]
    fn stamp_builder_on_any_input(
        fmt in any_stamp_format(),
        rx in proptest::collection::vec(any::<u8>(), 0..300),
        params in any_params(),
        out_len in 0usize..400,
        ttl in any::<u8>(),
    ) {
        let meta = RxMeta { ttl, tos: 0 };
        let mut out = vec![0xeeu8; out_len];
        let res = reflect_stamp(&fmt, &rx, &meta, &params, &mut out);
        let want = rx.len().max(fmt.base_len());
        if rx.len() < fmt.min_rx_len() {
            prop_assert_eq!(res, Err(ReflectError::TooShort { need: fmt.min_rx_len(), have: rx.len() }));
        } else if want > params.max_len {
            prop_assert_eq!(res, Err(ReflectError::TooLong { len: want, max_len: params.max_len }));
        } else if want > out_len {
            prop_assert_eq!(res, Err(ReflectError::BufferTooSmall { need: want, have: out_len }));
        } else {
            let n = res.unwrap();
            prop_assert_eq!(n, want);
            let reply = stamp::ReflectorPacket::new_checked(&out[..n], fmt.layout).unwrap();
            let seq = u32::from_be_bytes([rx[0], rx[1], rx[2], rx[3]]);
            prop_assert_eq!(reply.sequence_number(), match fmt.mode {
                ReflectorMode::Stateless => seq,
                ReflectorMode::Stateful => params.seq,
            });
            prop_assert_eq!(reply.sender_sequence_number(), seq);
            prop_assert_eq!(reply.sender_ttl(), ttl);
            prop_assert_eq!(reply.error_estimate().unwrap().format(), fmt.timestamp_format);
            let ssid_at = fmt.layout.ssid_offset();
            let ssid = rx.get(ssid_at..ssid_at + 2).map_or(0, |s| u16::from_be_bytes([s[0], s[1]]));
            prop_assert_eq!(reply.ssid(), ssid);
            prop_assert!(reply.mbz_is_zero());
            prop_assert_eq!(reply.tlvs(), rx.get(fmt.base_len()..).unwrap_or(&[]));
        }
    }

    #[test]
    fn tlv_iterator_on_random_bytes(area in proptest::collection::vec(any::<u8>(), 0..200), framing_only in any::<bool>()) {
        let iter = if framing_only { TlvIter::framing_only(&area) } else { TlvIter::new(&area) };
        let mut covered = 0usize;
        let mut errors = 0;
        for item in iter {
            match item {
                Ok(t) => {
                    prop_assert_eq!(errors, 0, "nothing after an error");
                    let len = t.total_len();
                    prop_assert_eq!(len, 4 + usize::from(t.length()));
                    prop_assert_eq!(t.into_inner(), &area[covered..covered + len]);
                    covered += len;
                }
                Err(e) => {
                    errors += 1;
                    prop_assert_eq!(e.offset(), Some(covered));
                }
            }
        }
        prop_assert!(covered <= area.len());
        prop_assert!(errors <= 1);
        prop_assert_eq!(errors == 0, covered == area.len());
    }

    #[test]
    fn tlv_writer_iterator_round_trip(
        tlvs in proptest::collection::vec((any::<u8>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..8),
    ) {
        let tlvs: Vec<_> = tlvs.into_iter().filter(|(_, t, v)| tlv::length_valid(*t, v.len() as u16)).collect();
        let mut buf = vec![0u8; 400];
        let mut w = TlvWriter::new(&mut buf);
        for (f, t, v) in &tlvs {
            w.push(*f, *t, v).unwrap();
        }
        let n = w.finish();
        let back: Vec<_> = TlvIter::new(&buf[..n])
            .map(|t| t.map(|t| (t.flags(), t.tlv_type(), t.value().to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(back, tlvs);
    }

    /// The framing pass changes at most the U/M bits of TLV flag octets, and
    /// nothing after the one it flags M; the area keeps its length.
    #[test]
    fn tlv_framing_pass_on_random_bytes(area in proptest::collection::vec(any::<u8>(), 0..200)) {
        let before = area.clone();
        let mut after = area;
        let s = process_tlvs_in_place(&mut after, &mut FramingOnly);
        prop_assert_eq!(after.len(), before.len());
        let headers: Vec<usize> = {
            let mut v = Vec::new();
            let mut off = 0;
            for t in TlvIter::new(&before) {
                v.push(off);
                match t { Ok(t) => off += t.total_len(), Err(_) => break }
            }
            if off < before.len() && v.last() != Some(&off) { v.push(off); }
            v
        };
        for i in 0..before.len() {
            if headers.contains(&i) {
                prop_assert_eq!(after[i] & !(tlv::FLAG_U | tlv::FLAG_M), before[i] & !(tlv::FLAG_U | tlv::FLAG_M));
            } else {
                prop_assert_eq!(after[i], before[i], "octet {} changed", i);
            }
        }
        if let Some(m) = s.malformed_at {
            prop_assert!(after[m] & tlv::FLAG_M != 0);
            prop_assert_eq!(&after[m + 1..], &before[m + 1..]);
        }
        prop_assert_eq!(s.processed + s.unrecognized + usize::from(s.malformed_at.is_some()), headers.len());
    }
}
