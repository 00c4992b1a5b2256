//! TWAMP-Control wire formats, Modes and Accept against independent truth:
//! the RFC layouts, the spec's test vectors (TV-3, TV-15) and the perfSONAR
//! 5.2.3 captures in /work/shared/interop (open-mode control is in clear, so
//! whole sessions are parsed; in the other modes the greeting, Set-Up-Response
//! and the clear part of Server-Start are).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use ricochet_protocol::accept::Accept;
use ricochet_protocol::control::{
    client_command, n_sessions, request, server_reply_len, AcceptSessionPacket, AcceptSessionRepr,
    Command, RequestTwSessionPacket, RequestTwSessionRepr, ServerGreetingRepr, ServerReply,
    ServerStartPacket, ServerStartRepr, SessionListPacket, SetUpResponseRepr, Sid, StartAckRepr,
    StartNAckRepr, StartNSessionsRepr, StartSessionsRepr, StopNAckRepr, StopNSessionsRepr,
    StopSessionsRepr, TypeP,
};
use ricochet_protocol::modes::{self, ModeError, Modes, SecurityMode, Selection};
use ricochet_protocol::time::NtpTimestamp;
use ricochet_protocol::WireError;
use serde_json::Value;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).expect("test hex")
}

fn ha<const N: usize>(s: &str) -> [u8; N] {
    h(s).try_into().expect("test hex length")
}

// ---------------------------------------------------------------------------
// TV-3: plaintext control messages of the computed control stream.
// ---------------------------------------------------------------------------

#[test]
fn tv3_request_tw_session_plaintext() {
    // "IPv4, sender 192.0.2.1:40000, receiver 192.0.2.2:862, padding 64,
    // start e8a1b2c5.00000000, timeout 2 s, DSCP 0" and its HMAC.
    let plain = h(
        "0504000000000000000000009c40035e c0000201000000000000000000000000
                   c0000202000000000000000000000000 00000000000000000000000000000000
                   00000040e8a1b2c50000000000000002 00000000000000000000000000000000",
    );
    let hmac = ha::<16>("022ce84898fdfa4d2664bbb7d21a088b");
    let repr = RequestTwSessionRepr {
        ipvn: 4,
        conf_sender: 0,
        conf_receiver: 0,
        schedule_slots: 0,
        packets: 0,
        sender_port: 40000,
        receiver_port: 862,
        sender_address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        receiver_address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        sid: Sid::ZERO,
        padding_length: 64,
        start_time: NtpTimestamp::from_bits(0xe8a1b2c5_00000000),
        timeout: NtpTimestamp::from_bits(2 << 32),
        type_p: TypeP::from_dscp(0).unwrap(),
        octets_to_reflect: [0; 2],
        padding_to_reflect: 0,
        hmac,
    };
    let bytes = repr.to_bytes();
    assert_eq!(&bytes[..96], &plain[..]);
    assert_eq!(&bytes[96..], &hmac);
    assert_eq!(RequestTwSessionRepr::from_bytes(&bytes), Ok(repr));
    let packet = RequestTwSessionPacket::new_checked(&bytes[..]).unwrap();
    assert_eq!(packet.hmac_input(), &plain[..]);
    assert_eq!(repr.check(), Ok(()));
    assert_eq!(
        client_command(&ha(&hex::encode(&plain[..16])), 64),
        Ok(ricochet_protocol::control::CommandHeader {
            command: Command::RequestTwSession,
            len: Some(112)
        })
    );
}

#[test]
fn tv3_server_start_accept_session_and_start_messages() {
    // Server-Start with Server-IV a0..af and Start-Time e8a1b2c3 80000000:
    // octets 32..47 are the Start-Time block of TV-3.
    let ss = ServerStartRepr {
        accept: Accept::Ok,
        server_iv: ha("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"),
        start_time: NtpTimestamp::from_bits(0xe8a1b2c3_80000000),
    };
    let b = ss.to_bytes();
    assert_eq!(&b[..16], &[0; 16]);
    assert_eq!(&b[16..32], &ss.server_iv);
    assert_eq!(&b[32..], &h("e8a1b2c3800000000000000000000000")[..]);
    assert_eq!(
        ServerStartPacket::new_checked(&b[..])
            .unwrap()
            .start_time_block(),
        &b[32..]
    );

    // Accept-Session: Port 18770, SID c0000202 e8a1b2c4 00000000 01020304.
    let plain = h("00004952c0000202e8a1b2c400000000 01020304000000000000000000000000");
    let hmac = ha::<16>("f7a77851584c0aba34b8e902c92ae239");
    let sid = Sid::compose(
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        NtpTimestamp::from_bits(0xe8a1b2c4_00000000),
        [1, 2, 3, 4],
    );
    let acc = AcceptSessionRepr {
        accept: Accept::Ok,
        port: 18770,
        sid,
        reflected_octets: [0; 2],
        server_octets: [0; 2],
        hmac,
    };
    let b = acc.to_bytes();
    assert_eq!(&b[..32], &plain[..]);
    assert_eq!(&b[32..], &hmac);
    assert_eq!(AcceptSessionRepr::from_bytes(&b), Ok(acc));
    assert_eq!(
        AcceptSessionPacket::new_checked(&b[..])
            .unwrap()
            .hmac_input(),
        &plain[..]
    );

    // Start-Sessions: 02 ‖ 15×00 ‖ HMAC; Start-Ack: 16×00 ‖ HMAC.
    let start = StartSessionsRepr {
        hmac: ha("281fc9a23939a4f730fbf9f8541361a8"),
    };
    let b = start.to_bytes();
    assert_eq!(b[0], 2);
    assert_eq!(&b[1..16], &[0; 15]);
    assert_eq!(&b[16..], &start.hmac);
    assert_eq!(StartSessionsRepr::from_bytes(&b), Ok(start));
    let ack = StartAckRepr {
        accept: Accept::Ok,
        hmac: ha("b4989964058c1e70848246c27e95aca2"),
    };
    let b = ack.to_bytes();
    assert_eq!(&b[..16], &[0; 16]);
    assert_eq!(StartAckRepr::from_bytes(&b), Ok(ack));
}

// ---------------------------------------------------------------------------
// TV-15: a real perfSONAR session (authenticated mode).
// ---------------------------------------------------------------------------

#[test]
fn tv15_server_greeting() {
    let bytes = h(
        "0000000000000000000000000000000f f02aea39e7fc68daf79510ce1184cc8f
                   158c61acb941eae02b3e654ec391293a 00000800000000000000000000000000",
    );
    let g = ServerGreetingRepr::from_bytes(&bytes).unwrap();
    assert_eq!(g.unused, [0; 12]);
    assert_eq!(g.modes, Modes(0xf));
    assert_eq!(g.challenge, ha("f02aea39e7fc68daf79510ce1184cc8f"));
    assert_eq!(g.salt, ha("158c61acb941eae02b3e654ec391293a"));
    assert_eq!(g.count, 2048);
    assert_eq!(g.check_count(32768), Ok(()));
    assert_eq!(&g.to_bytes()[..], &bytes[..]);
}

#[test]
fn tv15_set_up_response() {
    // mode 00000002, KeyID "alice" + zeros, Token, Client-IV (RFC 4656 §3.1
    // layout assembled by hand).
    let token = h(
        "88935b25e9046951e3b97d3feb3b95c2 bfbf50ed9871f498d5362ca13af66bd4
                   62dfd46306b75acf133e03e5dab8665b af77b33b2d9f2011a63744b80dea9aea",
    );
    let iv = h("80e14184e7926e6d598ba63583c1d99a");
    let mut bytes = vec![0, 0, 0, 2];
    bytes.extend_from_slice(b"alice");
    bytes.resize(84, 0);
    bytes.extend_from_slice(&token);
    bytes.extend_from_slice(&iv);
    assert_eq!(bytes.len(), 164);
    let s = SetUpResponseRepr::from_bytes(&bytes).unwrap();
    assert_eq!(s.mode, Modes::AUTHENTICATED);
    assert_eq!(s.key_id_name(), b"alice");
    assert_eq!(&s.token[..], &token[..]);
    assert_eq!(&s.client_iv[..], &iv[..]);
    assert_eq!(&s.to_bytes()[..], &bytes[..]);
    assert_eq!(
        s.key_id,
        SetUpResponseRepr::key_id_from_name(b"alice").unwrap()
    );
    assert_eq!(
        modes::select(Modes(0xf), s.mode),
        Ok(Selection {
            security: SecurityMode::Authenticated,
            features: Modes::NONE
        })
    );
}

#[test]
fn tv15_server_start_and_decrypted_accept_session() {
    let mut bytes = h("00000000000000000000000000000000 27d2545a7958cb5bf8503752961b09eb");
    bytes.extend(h("eeb381be0acc814d0000000000000000")); // decrypted Start-Time block
    let ss = ServerStartRepr::from_bytes(&bytes).unwrap();
    assert_eq!(ss.accept, Accept::Ok);
    assert_eq!(ss.server_iv, ha("27d2545a7958cb5bf8503752961b09eb"));
    assert_eq!(ss.start_time.to_bits(), 0xeeb381be_0acc814d);

    let acc = h(
        "000049527f000001eeb381c8397cd466 d566e888000000000000000000000000
                 b02776307c0c75fd35d15e600ac0ec6a",
    );
    let a = AcceptSessionRepr::from_bytes(&acc).unwrap();
    assert_eq!(a.accept, Accept::Ok);
    assert_eq!(a.port, 18770);
    assert_eq!(a.sid.to_string(), "7f000001eeb381c8397cd466d566e888");
    assert_eq!(
        a.sid,
        Sid::compose(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            NtpTimestamp::from_bits(0xeeb381c8_397cd466),
            ha("d566e888"),
        )
    );
    assert_eq!(a.hmac, ha("b02776307c0c75fd35d15e600ac0ec6a"));
    assert_eq!(&a.to_bytes()[..], &acc[..]);
}

// ---------------------------------------------------------------------------
// perfSONAR 5.2.3 captures.
// ---------------------------------------------------------------------------

const PERFSONAR: &str = "perfsonar-5.2.3";
const MAX_N: u32 = 64;

/// The two TCP byte streams of the control connection: (to server, to client).
fn control_streams(name: &str, server_port: u16) -> (Vec<u8>, Vec<u8>) {
    let cap = ricochet_testkit::read_pcap(&ricochet_testkit::interop_file(
        PERFSONAR,
        &format!("{name}.pcap"),
    ));
    let conv = cap
        .tcp
        .into_iter()
        .find(|c| c.server.port() == server_port)
        .expect("the control connection");
    (conv.client_to_server, conv.server_to_client)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn first_block(&self) -> [u8; 16] {
        self.0[..16].try_into().unwrap()
    }
}

fn ntp_f64(t: NtpTimestamp) -> f64 {
    f64::from(t.seconds) + f64::from(t.fraction) / 4_294_967_296.0
}

fn js_str<'a>(m: &'a Value, k: &str) -> &'a str {
    m[k].as_str().unwrap_or_else(|| panic!("{k} in {m}"))
}

fn js_u64(m: &Value, k: &str) -> u64 {
    m[k].as_u64().unwrap_or_else(|| panic!("{k} in {m}"))
}

fn endpoint(s: &str) -> (IpAddr, u16) {
    // "[127.0.0.1]:9000" / "[::1]:9000"
    let (ip, port) = s.trim_start_matches('[').split_once("]:").unwrap();
    (ip.parse().unwrap(), port.parse().unwrap())
}

/// Parses every control message of one capture and compares it with the
/// independent decoder's JSON. Returns how many messages were checked.
fn check_capture(name: &str) -> usize {
    let json: Value = ricochet_testkit::decoded_json(PERFSONAR, &format!("{name}.decoded.json"));
    let (_, server_port) = endpoint(js_str(&json, "server"));
    let (to_server, to_client) = control_streams(name, server_port);
    let mut c = Cursor(&to_server);
    let mut s = Cursor(&to_client);
    let mut clear = true; // the control stream is readable in clear
    let mut checked = 0;
    for m in json["control"].as_array().unwrap() {
        let msg = js_str(m, "msg");
        let len = js_u64(m, "len") as usize;
        if !clear && msg != "Server-Start" {
            break; // the rest is encrypted
        }
        match msg {
            "Server-Greeting" => {
                let g = ServerGreetingRepr::from_bytes(s.take(len)).unwrap();
                assert_eq!(format!("{:#x}", g.modes.bits()), js_str(m, "modes"));
                assert_eq!(g.modes, Modes(0xf));
                assert_eq!(hex::encode(g.challenge), js_str(m, "challenge"));
                assert_eq!(hex::encode(g.salt), js_str(m, "salt"));
                assert_eq!(u64::from(g.count), js_u64(m, "count"));
                assert_eq!(g.unused, [0; 12]);
                assert_eq!(g.check_count(32768), Ok(()));
            }
            "Set-Up-Response" => {
                let r = SetUpResponseRepr::from_bytes(c.take(len)).unwrap();
                assert_eq!(u64::from(r.mode.bits()), js_u64(m, "mode"));
                let sel = modes::select(Modes(0xf), r.mode).unwrap();
                if sel.security == SecurityMode::Unauthenticated {
                    assert_eq!(r.key_id, [0; 80]);
                    assert_eq!(r.token, [0; 64]);
                    assert_eq!(r.client_iv, [0; 16]);
                } else {
                    assert_eq!(r.key_id_name(), js_str(m, "keyid").as_bytes());
                    assert_eq!(hex::encode(r.token), js_str(m, "token"));
                    assert_eq!(hex::encode(r.client_iv), js_str(m, "client_iv"));
                    clear = false;
                }
            }
            "Server-Start" => {
                let b = s.take(len);
                let p = ServerStartPacket::new_checked(b).unwrap();
                assert_eq!(u64::from(u8::from(p.accept())), js_u64(m, "accept"));
                assert_eq!(hex::encode(p.server_iv()), js_str(m, "server_iv"));
                if clear {
                    let ss = ServerStartRepr::parse(&p).unwrap();
                    let t = m["start_time"].as_f64().unwrap();
                    assert!((ntp_f64(ss.start_time) - t).abs() < 1e-5, "{t}");
                } else if let Some(blk) = m.get("start_time_block") {
                    // Rejected: the block is sent in clear.
                    assert_eq!(hex::encode(p.start_time_block()), blk.as_str().unwrap());
                    assert_eq!(p.accept(), Accept::Failure);
                    assert!(p.accept().is_failure());
                }
            }
            "Request-TW-Session" | "Start-Sessions" | "Stop-Sessions" => {
                let hdr = client_command(&c.first_block(), MAX_N).unwrap();
                assert_eq!(hdr.len, Some(len));
                assert_eq!(hdr.command.to_string().split(' ').next(), Some(msg));
                let b = c.take(len);
                match hdr.command {
                    Command::RequestTwSession => {
                        let r = RequestTwSessionRepr::from_bytes(b).unwrap();
                        assert_eq!(r.check(), Ok(()));
                        assert_eq!(u64::from(r.ipvn), js_u64(m, "ipvn"));
                        assert_eq!(u64::from(r.conf_sender), js_u64(m, "conf_sender"));
                        assert_eq!(u64::from(r.conf_receiver), js_u64(m, "conf_receiver"));
                        assert_eq!(u64::from(r.schedule_slots), js_u64(m, "num_slots"));
                        assert_eq!(u64::from(r.packets), js_u64(m, "num_packets"));
                        assert_eq!(
                            (r.sender_address, r.sender_port),
                            endpoint(js_str(m, "sender"))
                        );
                        assert_eq!(
                            (r.receiver_address, r.receiver_port),
                            endpoint(js_str(m, "receiver"))
                        );
                        assert_eq!(r.sid.to_string(), js_str(m, "sid_field"));
                        assert_eq!(u64::from(r.padding_length), js_u64(m, "padding_length"));
                        let t = m["start_time"].as_f64().unwrap();
                        assert!((ntp_f64(r.start_time) - t).abs() < 1e-5);
                        let to = m["timeout_s"].as_f64().unwrap();
                        assert!((ntp_f64(r.timeout) - to).abs() < 1e-6);
                        assert_eq!(format!("{:#010x}", r.type_p.0), js_str(m, "type_p"));
                        assert_eq!(hex::encode(&b[88..96]), js_str(m, "mbz"));
                        assert_eq!(r.hmac, [0; 16]);
                        if r.type_p.0 != 0 {
                            assert_eq!(r.type_p.dscp(), Some(46)); // EF
                        }
                        assert_eq!(&r.to_bytes()[..], b);
                    }
                    Command::StartSessions => {
                        let r = StartSessionsRepr::from_bytes(b).unwrap();
                        assert_eq!(r.hmac, [0; 16]);
                        assert_eq!(&r.to_bytes()[..], b);
                    }
                    Command::StopSessions => {
                        let r = StopSessionsRepr::from_bytes(b).unwrap();
                        assert_eq!(u64::from(u8::from(r.accept)), js_u64(m, "accept"));
                        assert_eq!(u64::from(r.number_of_sessions), js_u64(m, "num_sessions"));
                        assert_eq!(&r.to_bytes()[..], b);
                    }
                    other => panic!("unexpected {other}"),
                }
            }
            "Accept-Session" => {
                let n = server_reply_len(ServerReply::AcceptSession, &s.first_block(), MAX_N);
                assert_eq!(n, Ok(len));
                let b = s.take(len);
                let a = AcceptSessionRepr::from_bytes(b).unwrap();
                assert_eq!(u64::from(u8::from(a.accept)), js_u64(m, "accept"));
                assert_eq!(u64::from(a.port), js_u64(m, "port"));
                assert_eq!(a.sid.to_string(), js_str(m, "sid"));
                assert_eq!(hex::encode(&b[20..32]), js_str(m, "mbz"));
                assert_eq!(a.hmac, [0; 16]);
                assert_eq!(&a.to_bytes()[..], b);
            }
            "Start-Ack" => {
                let n = server_reply_len(ServerReply::StartAck, &s.first_block(), MAX_N);
                assert_eq!(n, Ok(len));
                let a = StartAckRepr::from_bytes(s.take(len)).unwrap();
                assert_eq!(u64::from(u8::from(a.accept)), js_u64(m, "accept"));
            }
            other => panic!("unknown message {other}"),
        }
        checked += 1;
    }
    if clear {
        assert!(c.0.is_empty() && s.0.is_empty(), "unparsed octets left");
        // perfSONAR README: 192 octets server to client, 340 client to server.
        assert_eq!((to_client.len(), to_server.len()), (192, 340));
    }
    checked
}

#[test]
fn perfsonar_open_sessions_parse_end_to_end() {
    for name in [
        "twamp-open-v4",
        "twamp-open-v6-port8620",
        "twamp-open-v4-pad200-dscpEF",
        "twamp-open-v4-reqport18790",
    ] {
        assert_eq!(check_capture(name), 8, "{name}");
    }
}

#[test]
fn perfsonar_protected_sessions_clear_part() {
    for name in [
        "twamp-auth-v4",
        "twamp-enc-v4",
        "twamp-mixed-v4",
        "twamp-enc-v6-port8620",
    ] {
        assert_eq!(check_capture(name), 3, "{name}");
    }
    // Wrong secret: Server-Start with Accept 1, block in clear, then close.
    assert_eq!(check_capture("twamp-auth-v4-wrongsecret-rejected"), 3);
}

// ---------------------------------------------------------------------------
// Framing: client_command and server_reply_len.
// ---------------------------------------------------------------------------

fn block(command: u8, n: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = command;
    b[12..].copy_from_slice(&n.to_be_bytes());
    b
}

#[test]
fn client_command_lengths() {
    let len = |cmd, n| client_command(&block(cmd, n), 16).map(|h| h.len);
    assert_eq!(len(2, 0), Ok(Some(32)));
    assert_eq!(len(3, 0), Ok(Some(32)));
    // Stop-Sessions' Number of Sessions (octets 4–7) does not size it.
    let mut stop = block(3, 0);
    stop[4..8].copy_from_slice(&1000u32.to_be_bytes());
    assert_eq!(client_command(&stop, 16).unwrap().len, Some(32));
    assert_eq!(len(5, 0xffff_ffff), Ok(Some(112)));
    assert_eq!(len(7, 1), Ok(Some(48)));
    assert_eq!(len(7, 3), Ok(Some(80)));
    assert_eq!(len(9, 16), Ok(Some(288)));
    assert_eq!(len(9, 0), Ok(Some(32)));
    for unknown in [0u8, 1, 4, 6, 11, 12, 255] {
        assert_eq!(len(unknown, 5), Ok(None), "{unknown}");
    }
    assert_eq!(
        client_command(&block(7, 17), 16),
        Err(WireError::BadField {
            what: "Start-N-Sessions",
            field: "Number of Sessions",
            value: 17
        })
    );
    assert!(client_command(&block(9, u32::MAX), 1_000).is_err());
    assert_eq!(
        client_command(&block(7, 0), 16).unwrap().command,
        Command::StartNSessions
    );
}

#[test]
fn server_reply_lengths() {
    let z = [0u8; 16];
    assert_eq!(server_reply_len(ServerReply::AcceptSession, &z, 4), Ok(48));
    assert_eq!(server_reply_len(ServerReply::StartAck, &z, 4), Ok(32));
    assert_eq!(
        server_reply_len(ServerReply::StartNAck, &block(8, 2), 4),
        Ok(64)
    );
    assert_eq!(
        server_reply_len(ServerReply::StopNAck, &block(10, 4), 4),
        Ok(96)
    );
    assert!(matches!(
        server_reply_len(ServerReply::StartNAck, &block(10, 2), 4),
        Err(WireError::BadField {
            field: "Command",
            value: 10,
            ..
        })
    ));
    assert!(server_reply_len(ServerReply::StopNAck, &block(10, 5), 4).is_err());
}

// ---------------------------------------------------------------------------
// Mode negotiation.
// ---------------------------------------------------------------------------

#[test]
fn select_named_cases() {
    let all = Modes::KNOWN;
    assert_eq!(
        modes::select(all, Modes(0x82)),
        Ok(Selection {
            security: SecurityMode::Authenticated,
            features: Modes::IKEV2_DERIVED
        })
    );
    assert_eq!(
        modes::select(all, Modes(0x03)),
        Err(ModeError::SeveralSecurityModes {
            chosen: Modes(0x03)
        })
    );
    assert_eq!(
        modes::select(all, Modes(0x80)),
        Err(ModeError::NoSecurityMode {
            chosen: Modes(0x80)
        })
    );
    assert_eq!(
        modes::select(all, Modes(0x81)),
        Err(ModeError::Ikev2WithoutProtection {
            chosen: Modes(0x81)
        })
    );
    assert_eq!(modes::select(all, Modes(0)), Err(ModeError::ClientQuit));
    assert_eq!(
        modes::select(Modes(0), Modes(0)),
        Err(ModeError::ClientQuit)
    );
    // perfSONAR offers 0xf: feature bits were not offered.
    assert_eq!(
        modes::select(Modes(0xf), Modes(0x12)),
        Err(ModeError::NotOffered {
            chosen: Modes(0x12),
            unoffered: Modes(0x10)
        })
    );
    assert_eq!(
        modes::select(Modes(0x3), Modes(0x4)),
        Err(ModeError::NotOffered {
            chosen: Modes(0x4),
            unoffered: Modes(0x4)
        })
    );
    // Unassigned bits are refused even if a (broken) offer had them.
    assert_eq!(
        modes::select(Modes(0xffff_ffff), Modes(0x401)),
        Err(ModeError::NotOffered {
            chosen: Modes(0x401),
            unoffered: Modes(0x400)
        })
    );
    for (bit, sec) in [
        (1, SecurityMode::Unauthenticated),
        (2, SecurityMode::Authenticated),
        (4, SecurityMode::Encrypted),
        (8, SecurityMode::Mixed),
    ] {
        assert_eq!(
            modes::select(Modes(0xf), Modes(bit)),
            Ok(Selection {
                security: sec,
                features: Modes::NONE
            })
        );
    }
    assert_eq!(
        modes::select(all, Modes(0x3f8)).map(|s| (s.security, s.features)),
        Ok((SecurityMode::Mixed, Modes(0x3f0)))
    );
}

/// The rule written independently as a predicate over bits.
fn rule(offered: u32, chosen: u32) -> bool {
    let sec = chosen & 0xf;
    chosen != 0
        && sec.count_ones() == 1
        && chosen & !(offered & 0x3ff) == 0
        && !(chosen & 0x80 != 0 && sec == 1)
}

#[test]
fn select_exhaustive_over_assigned_bits() {
    let offers = [
        0x000,
        0x001,
        0x00f,
        0x00e,
        0x08f,
        0x01f,
        0x3ff,
        0x2f1,
        0x0f6,
        0xffff_ffff,
    ];
    for offered in offers {
        for chosen in 0..0x800u32 {
            let r = modes::select(Modes(offered), Modes(chosen));
            assert_eq!(r.is_ok(), rule(offered, chosen), "{offered:#x} {chosen:#x}");
            if let Ok(sel) = r {
                assert_eq!(sel.modes(), Modes(chosen));
                assert_eq!(sel.features, Modes(chosen & 0x3f0));
            } else if chosen == 0 {
                assert_eq!(r, Err(ModeError::ClientQuit));
            }
        }
    }
}

#[test]
fn choose_follows_perfsonar_preference() {
    let none = Modes::NONE;
    let c = |offered, allowed| modes::choose(Modes(offered), Modes(allowed), none);
    assert_eq!(c(0xf, 0xf).unwrap().security, SecurityMode::Encrypted);
    assert_eq!(c(0xb, 0xf).unwrap().security, SecurityMode::Authenticated);
    assert_eq!(c(0x9, 0xf).unwrap().security, SecurityMode::Mixed);
    assert_eq!(c(0xf, 0x1).unwrap().security, SecurityMode::Unauthenticated);
    assert_eq!(c(0xf, 0xb).unwrap().security, SecurityMode::Authenticated);
    assert_eq!(c(0x0, 0xf), None);
    assert_eq!(c(0xe, 0x1), None);
    // Unknown offered bits are ignored.
    assert_eq!(
        c(0xffff_fc01, 0xf),
        Some(Selection {
            security: SecurityMode::Unauthenticated,
            features: none
        })
    );
    // Features: wanted ∩ offered; IKEv2 dropped without control protection.
    let s = modes::choose(
        Modes(0x3ff),
        Modes(0x2),
        Modes::INDIVIDUAL_SESSION_CONTROL | Modes::PTP_TIMESTAMPS | Modes::ENCRYPTED,
    )
    .unwrap();
    assert_eq!(s.modes(), Modes(0x212));
    assert!(s.has(Modes::PTP_TIMESTAMPS));
    let s = modes::choose(Modes(0x3ff), Modes(0x1), Modes::IKEV2_DERIVED).unwrap();
    assert_eq!(s.modes(), Modes(0x1));
    let s = modes::choose(Modes(0x8f), Modes(0x8), Modes::IKEV2_DERIVED).unwrap();
    assert_eq!(s.modes(), Modes(0x88));
    let s = modes::choose(Modes(0xf), Modes(0xf), Modes::FEATURES).unwrap();
    assert_eq!(s.modes(), Modes(0x4));
}

// ---------------------------------------------------------------------------
// Property tests.
// ---------------------------------------------------------------------------

fn arr<const N: usize>() -> impl Strategy<Value = [u8; N]> {
    prop::collection::vec(any::<u8>(), N).prop_map(|v| v.try_into().unwrap())
}

fn ntp() -> impl Strategy<Value = NtpTimestamp> {
    any::<u64>().prop_map(NtpTimestamp::from_bits)
}

fn accept() -> impl Strategy<Value = Accept> {
    any::<u8>().prop_map(Accept::from)
}

fn sid() -> impl Strategy<Value = Sid> {
    arr::<16>().prop_map(Sid)
}

fn sids() -> impl Strategy<Value = Vec<Sid>> {
    prop::collection::vec(sid(), 0..8)
}

fn request_repr() -> impl Strategy<Value = RequestTwSessionRepr> {
    (
        (
            0u8..16,
            any::<u8>(),
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
        ),
        (any::<u16>(), any::<u16>(), arr::<16>(), arr::<16>(), sid()),
        (
            any::<u32>(),
            ntp(),
            ntp(),
            any::<u32>(),
            arr::<2>(),
            any::<u16>(),
        ),
        arr::<16>(),
    )
        .prop_map(
            |((ipvn, cs, cr, slots, packets), (sp, rp, sa, ra, sid), rest, hmac)| {
                let addr = |o: [u8; 16]| request::decode_address(ipvn, o);
                let (padding_length, start_time, timeout, type_p, otr, ptr) = rest;
                RequestTwSessionRepr {
                    ipvn,
                    conf_sender: cs,
                    conf_receiver: cr,
                    schedule_slots: slots,
                    packets,
                    sender_port: sp,
                    receiver_port: rp,
                    sender_address: addr(sa),
                    receiver_address: addr(ra),
                    sid,
                    padding_length,
                    start_time,
                    timeout,
                    type_p: TypeP(type_p),
                    octets_to_reflect: otr,
                    padding_to_reflect: ptr,
                    hmac,
                }
            },
        )
}

proptest! {
    #[test]
    fn round_trip_greeting(unused in arr::<12>(), modes in any::<u32>(), ch in arr::<16>(),
                           salt in arr::<16>(), count in any::<u32>()) {
        let r = ServerGreetingRepr { unused, modes: Modes(modes), challenge: ch, salt, count };
        prop_assert_eq!(ServerGreetingRepr::from_bytes(&r.to_bytes()), Ok(r));
    }

    #[test]
    fn round_trip_setup(mode in any::<u32>(), key_id in arr::<80>(), token in arr::<64>(),
                        iv in arr::<16>()) {
        let r = SetUpResponseRepr { mode: Modes(mode), key_id, token, client_iv: iv };
        prop_assert_eq!(SetUpResponseRepr::from_bytes(&r.to_bytes()), Ok(r));
    }

    #[test]
    fn round_trip_server_start(a in accept(), iv in arr::<16>(), t in ntp()) {
        let r = ServerStartRepr { accept: a, server_iv: iv, start_time: t };
        prop_assert_eq!(ServerStartRepr::from_bytes(&r.to_bytes()), Ok(r));
    }

    #[test]
    fn round_trip_request(r in request_repr()) {
        prop_assert_eq!(RequestTwSessionRepr::from_bytes(&r.to_bytes()), Ok(r));
        // check() accepts exactly the TWAMP-valid field combinations.
        let valid = r.conf_sender == 0 && r.conf_receiver == 0 && r.schedule_slots == 0
            && r.packets == 0 && (r.ipvn == 4 || r.ipvn == 6)
            && r.type_p.0 & !0x3f00_0000 == 0;
        prop_assert_eq!(r.check().is_ok(), valid);
        if let Err(refusal) = r.check() {
            prop_assert_eq!(refusal.accept, Accept::NotSupported);
        }
    }

    #[test]
    fn request_from_any_body_normalises_only_mbz(mut b in arr::<112>()) {
        b[0] = 5;
        let r = RequestTwSessionRepr::from_bytes(&b).unwrap();
        let mut expected = b;
        expected[1] &= 0x0f;
        expected[92..96].fill(0);
        if expected[1] == 4 {
            expected[20..32].fill(0);
            expected[36..48].fill(0);
        }
        prop_assert_eq!(&r.to_bytes()[..], &expected[..]);
    }

    #[test]
    fn round_trip_accept_session(a in accept(), port in any::<u16>(), s in sid(),
                                 ro in arr::<2>(), so in arr::<2>(), hmac in arr::<16>()) {
        let r = AcceptSessionRepr { accept: a, port, sid: s, reflected_octets: ro,
                                    server_octets: so, hmac };
        prop_assert_eq!(AcceptSessionRepr::from_bytes(&r.to_bytes()), Ok(r));
    }

    #[test]
    fn round_trip_start_stop(a in accept(), n in any::<u32>(), hmac in arr::<16>()) {
        let start = StartSessionsRepr { hmac };
        prop_assert_eq!(StartSessionsRepr::from_bytes(&start.to_bytes()), Ok(start));
        let ack = StartAckRepr { accept: a, hmac };
        prop_assert_eq!(StartAckRepr::from_bytes(&ack.to_bytes()), Ok(ack));
        let stop = StopSessionsRepr { accept: a, number_of_sessions: n, hmac };
        prop_assert_eq!(StopSessionsRepr::from_bytes(&stop.to_bytes()), Ok(stop));
    }

    #[test]
    fn round_trip_n_sessions(a in accept(), s in sids(), hmac in arr::<16>()) {
        let r = StartNSessionsRepr { sids: s.clone(), hmac };
        let b = r.to_bytes();
        prop_assert_eq!(b.len(), 32 + 16 * s.len());
        prop_assert_eq!(client_command(&b[..16].try_into().unwrap(), 8).unwrap().len, Some(b.len()));
        prop_assert_eq!(StartNSessionsRepr::from_bytes(&b), Ok(r));
        let r = StopNSessionsRepr { sids: s.clone(), hmac };
        prop_assert_eq!(StopNSessionsRepr::from_bytes(&r.to_bytes()), Ok(r));
        let r = StartNAckRepr { accept: a, sids: s.clone(), hmac };
        let b = r.to_bytes();
        prop_assert_eq!(server_reply_len(ServerReply::StartNAck, &b[..16].try_into().unwrap(), 8),
                        Ok(b.len()));
        prop_assert_eq!(StartNAckRepr::from_bytes(&b), Ok(r));
        let r = StopNAckRepr { accept: a, sids: s, hmac };
        prop_assert_eq!(StopNAckRepr::from_bytes(&r.to_bytes()), Ok(r));
    }

    #[test]
    fn random_buffers_never_panic(b in prop::collection::vec(any::<u8>(), 0..400)) {
        let len = b.len();
        let fixed: [(usize, bool); 8] = [
            (64, ServerGreetingRepr::from_bytes(&b).is_ok()),
            (164, SetUpResponseRepr::from_bytes(&b).is_ok()),
            (48, ServerStartRepr::from_bytes(&b).is_ok()),
            (112, RequestTwSessionRepr::from_bytes(&b).is_ok()),
            (48, AcceptSessionRepr::from_bytes(&b).is_ok()),
            (32, StartSessionsRepr::from_bytes(&b).is_ok()),
            (32, StartAckRepr::from_bytes(&b).is_ok()),
            (32, StopSessionsRepr::from_bytes(&b).is_ok()),
        ];
        for (need, ok) in fixed {
            if ok { prop_assert_eq!(len, need); }
        }
        let lists = [
            StartNSessionsRepr::from_bytes(&b).map(|r| r.buffer_len()),
            StopNSessionsRepr::from_bytes(&b).map(|r| r.buffer_len()),
            StartNAckRepr::from_bytes(&b).map(|r| r.buffer_len()),
            StopNAckRepr::from_bytes(&b).map(|r| r.buffer_len()),
        ];
        for l in lists.into_iter().flatten() {
            prop_assert_eq!(l, len);
        }
        if let Ok(p) = SessionListPacket::new_checked(&b[..]) {
            prop_assert_eq!(n_sessions::message_len(p.number_of_sessions()), Some(len));
        }
        if len >= 16 {
            let first: [u8; 16] = b[..16].try_into().unwrap();
            for max in [0, 1, 64, u32::MAX] {
                if let Ok(hdr) = client_command(&first, max) {
                    if let Some(l) = hdr.len {
                        prop_assert!(l >= 32 && l % 16 == 0);
                    }
                }
                for kind in [ServerReply::AcceptSession, ServerReply::StartAck,
                             ServerReply::StartNAck, ServerReply::StopNAck] {
                    if let Ok(l) = server_reply_len(kind, &first, max) {
                        prop_assert!(l >= 32 && l % 16 == 0);
                    }
                }
            }
        }
    }

    #[test]
    fn choose_always_yields_a_selectable_mode(offered in any::<u32>(), allowed in any::<u32>(),
                                              wanted in any::<u32>()) {
        if let Some(sel) = modes::choose(Modes(offered), Modes(allowed), Modes(wanted)) {
            prop_assert_eq!(modes::select(Modes(offered), sel.modes()), Ok(sel));
            prop_assert!(Modes(allowed).contains(sel.security.bit()));
        } else {
            prop_assert!(!Modes(offered & allowed).intersects(Modes::SECURITY));
        }
    }
}

/// Every message: each shorter prefix is Truncated, a longer buffer BadLength.
#[test]
fn truncated_and_oversized_buffers() {
    type Parse = fn(&[u8]) -> Result<(), WireError>;
    let n_list = StopNAckRepr {
        accept: Accept::Ok,
        sids: vec![Sid([1; 16]), Sid([2; 16])],
        hmac: [0; 16],
    }
    .to_bytes();
    let mut cmd5 = [0u8; 112];
    cmd5[0] = 5;
    let mut cmd2 = [0u8; 32];
    cmd2[0] = 2;
    let mut cmd3 = [0u8; 32];
    cmd3[0] = 3;
    let cases: Vec<(Vec<u8>, Parse)> = vec![
        (vec![0; 64], |b| ServerGreetingRepr::from_bytes(b).map(drop)),
        (vec![0; 164], |b| SetUpResponseRepr::from_bytes(b).map(drop)),
        (vec![0; 48], |b| ServerStartRepr::from_bytes(b).map(drop)),
        (cmd5.to_vec(), |b| {
            RequestTwSessionRepr::from_bytes(b).map(drop)
        }),
        (vec![0; 48], |b| AcceptSessionRepr::from_bytes(b).map(drop)),
        (cmd2.to_vec(), |b| {
            StartSessionsRepr::from_bytes(b).map(drop)
        }),
        (vec![0; 32], |b| StartAckRepr::from_bytes(b).map(drop)),
        (cmd3.to_vec(), |b| StopSessionsRepr::from_bytes(b).map(drop)),
        (n_list, |b| StopNAckRepr::from_bytes(b).map(drop)),
    ];
    for (valid, parse) in cases {
        let len = valid.len();
        assert_eq!(parse(&valid), Ok(()));
        for l in 0..len {
            match parse(&valid[..l]) {
                Err(WireError::Truncated { need, have, .. }) => {
                    assert_eq!(have, l);
                    assert!(need > l && need <= len);
                }
                other => panic!("len {len} prefix {l}: {other:?}"),
            }
        }
        for extra in [1usize, 15, 16, 1000] {
            let mut long = valid.clone();
            long.resize(len + extra, 0);
            assert!(
                matches!(parse(&long), Err(WireError::BadLength { len: l, .. }) if l == len + extra),
                "{len}+{extra}"
            );
        }
    }
}

#[test]
fn wrong_command_octets_are_typed_errors() {
    let mut b = [0u8; 32];
    b[0] = 3;
    assert!(matches!(
        StartSessionsRepr::from_bytes(&b),
        Err(WireError::BadField {
            what: "Start-Sessions",
            field: "Command",
            value: 3
        })
    ));
    b[0] = 2;
    assert!(matches!(
        StopSessionsRepr::from_bytes(&b),
        Err(WireError::BadField {
            what: "Stop-Sessions",
            field: "Command",
            value: 2
        })
    ));
    let list = StartNSessionsRepr {
        sids: vec![Sid([5; 16])],
        hmac: [0; 16],
    }
    .to_bytes();
    assert!(matches!(
        StopNSessionsRepr::from_bytes(&list),
        Err(WireError::BadField {
            what: "Stop-N-Sessions",
            field: "Command",
            value: 7
        })
    ));
    assert!(StartNAckRepr::from_bytes(&list).is_err());
}

#[test]
fn zero_addresses_resolve_to_the_control_connection() {
    // twping -Z sends zero addresses; RFC 5357 §3.5 says use the control
    // connection's addresses.
    let mut b = [0u8; 112];
    b[0] = 5;
    b[1] = 6;
    let r = RequestTwSessionRepr::from_bytes(&b).unwrap();
    assert_eq!(r.sender_address, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    let client: IpAddr = "2001:db8::1".parse().unwrap();
    let server: IpAddr = "2001:db8::2".parse().unwrap();
    assert_eq!(r.resolved_sender(client), client);
    assert_eq!(r.resolved_receiver(server), server);
    assert_eq!(r.check(), Ok(()));
}
