//! Real perfSONAR 5.2.3 sessions (../shared/interop/perfsonar-5.2.3), checked
//! end to end through the library:
//!
//! 1. the secret comes from a perfSONAR `.pfs` line through `keyfile`;
//! 2. every control message of both directions is decrypted with keys
//!    derived from it, every HMAC verified, every field compared with the
//!    independent `*.decoded.json`;
//! 3. every test packet is unprotected with the per-SID keys and compared;
//! 4. the client side of the capture, fed into our server state machine with
//!    the capture's random values and clock, yields the server's octets
//!    exactly; the server side fed into our client state machine yields the
//!    client's octets exactly;
//! 5. the wrong-secret capture fails the token check and nothing else.

use std::net::SocketAddr;

use ricochet_protocol::accept::Accept;
use ricochet_protocol::client::{Client, ClientConfig, ClientEvent, ClientRandom};
use ricochet_protocol::control::{
    self, AcceptSessionRepr, RequestTwSessionRepr, ServerGreetingRepr, ServerStartRepr,
    SetUpResponseRepr, Sid, StartAckRepr, StartSessionsRepr, StopSessionsRepr,
};
use ricochet_protocol::crypto::{
    self, ControlRx, PacketRole, SessionKeys, SharedSecret, TestKeys, TestProtection,
};
use ricochet_protocol::keyfile::KeyFile;
use ricochet_protocol::modes::{Modes, SecurityMode, Selection};
use ricochet_protocol::server::{
    AcceptedSession, KeyId, Server, ServerConfig, ServerContext, ServerEvent, ServerRandom,
    SessionGrant, SessionRequest, SetupRefusal,
};
use ricochet_protocol::time::NtpTimestamp;
use ricochet_protocol::twamp_test::{
    ReflectorLayout, ReflectorPacket, ReflectorRepr, SenderPacket, SenderRepr, SessionFormat,
    TestLayout,
};
use ricochet_testkit::{decoded_json, interop_file, read_pcap, unhex, TcpConversation};
use serde_json::Value;

const PEER: &str = "perfsonar-5.2.3";
/// The pfs line of the interop README (identity TAB hex secret).
const PFS: &str = "# perfSONAR pfs file\ninterop\t7477616d702d676f6c64656e2d736563726574\n";

const GOOD: [&str; 8] = [
    "twamp-open-v4",
    "twamp-auth-v4",
    "twamp-enc-v4",
    "twamp-mixed-v4",
    "twamp-open-v6-port8620",
    "twamp-enc-v6-port8620",
    "twamp-open-v4-pad200-dscpEF",
    "twamp-open-v4-reqport18790",
];

fn secret() -> SharedSecret {
    let kf = KeyFile::parse(PFS).expect("the README's pfs line parses");
    kf.get("interop").expect("identity interop").clone()
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    b.try_into().expect("length")
}

fn hexfield<const N: usize>(v: &Value, key: &str) -> [u8; N] {
    arr(&unhex(
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing in {v}")),
    ))
}

/// One capture, decoded through the library.
struct Session {
    json: Value,
    conv: TcpConversation,
    udp: Vec<ricochet_testkit::UdpDatagram>,
    greeting: ServerGreetingRepr,
    setup: SetUpResponseRepr,
    selection: Selection,
    keys: Option<SessionKeys>,
    server_start: ServerStartRepr,
    /// Decrypted client→server stream after the Set-Up-Response.
    client_plain: Vec<u8>,
    /// Decrypted server→client stream after the greeting.
    server_plain: Vec<u8>,
}

impl Session {
    fn load(name: &'static str) -> Session {
        let cap = read_pcap(&interop_file(PEER, &format!("{name}.pcap")));
        let json = decoded_json(PEER, &format!("{name}.decoded.json"));
        assert_eq!(cap.tcp.len(), 1, "{name}: one control connection");
        let conv = cap.tcp[0].clone();
        let s2c = &conv.server_to_client;
        let c2s = &conv.client_to_server;
        let greeting = ServerGreetingRepr::from_bytes(&s2c[..64]).expect("greeting");
        let setup = SetUpResponseRepr::from_bytes(&c2s[..164]).expect("set-up response");
        let selection = ricochet_protocol::modes::select(greeting.modes, setup.mode).expect("mode");
        let mut server_plain = s2c[64..].to_vec();
        let mut client_plain = c2s[164..].to_vec();
        let keys = if selection.security.protects_control() {
            let tk = crypto::token_key(&secret(), &greeting.salt, greeting.count).unwrap();
            let keys = crypto::open_token(&tk, &setup.token, &greeting.challenge)
                .unwrap_or_else(|e| panic!("{name}: token: {e}"));
            // Server stream: CBC from Server-Start octet 32 with the Server-IV.
            let mut rx = ControlRx::new(&keys, &arr(&server_plain[16..32]));
            rx.open_without_hmac(&mut server_plain[32..48]).unwrap();
            let rest = &mut server_plain[48..];
            // Accept-Session (48) then Start-Ack (32), each with its HMAC.
            rx.open(&mut rest[..48], 32)
                .unwrap_or_else(|e| panic!("{name}: Accept-Session: {e}"));
            rx.open(&mut rest[48..80], 16)
                .unwrap_or_else(|e| panic!("{name}: Start-Ack: {e}"));
            let mut crx = ControlRx::new(&keys, &setup.client_iv);
            crx.open(&mut client_plain[..112], 96)
                .unwrap_or_else(|e| panic!("{name}: Request-TW-Session: {e}"));
            crx.open(&mut client_plain[112..144], 16)
                .unwrap_or_else(|e| panic!("{name}: Start-Sessions: {e}"));
            crx.open(&mut client_plain[144..176], 16)
                .unwrap_or_else(|e| panic!("{name}: Stop-Sessions: {e}"));
            Some(keys)
        } else {
            None
        };
        let server_start = ServerStartRepr::from_bytes(&server_plain[..48]).expect("server start");
        Session {
            json,
            udp: cap.udp,
            conv,
            greeting,
            setup,
            selection,
            keys,
            server_start,
            client_plain,
            server_plain,
        }
    }

    fn control(&self, i: usize) -> &Value {
        &self.json["control"][i]
    }

    fn request(&self) -> RequestTwSessionRepr {
        RequestTwSessionRepr::from_bytes(&self.client_plain[..112]).unwrap()
    }

    fn accept(&self) -> AcceptSessionRepr {
        AcceptSessionRepr::from_bytes(&self.server_plain[48..96]).unwrap()
    }
}

#[test]
fn every_control_message_decrypts_verifies_and_matches_the_decoded_json() {
    for name in GOOD {
        let s = Session::load(name);
        // Greeting.
        let g = s.control(0);
        assert_eq!(
            format!("{:#x}", s.greeting.modes.0),
            g["modes"].as_str().unwrap()
        );
        assert_eq!(s.greeting.challenge, hexfield(g, "challenge"));
        assert_eq!(s.greeting.salt, hexfield(g, "salt"));
        assert_eq!(u64::from(s.greeting.count), g["count"].as_u64().unwrap());
        // Set-Up-Response and the derived keys.
        let u = s.control(1);
        assert_eq!(
            u64::from(s.setup.mode.0),
            u["mode"].as_u64().unwrap(),
            "{name}"
        );
        if let Some(keys) = &s.keys {
            let d = &u["derived"];
            let tk = crypto::token_key(&secret(), &s.greeting.salt, s.greeting.count).unwrap();
            assert_eq!(
                tk.expose(),
                &hexfield::<16>(d, "pbkdf2_dk"),
                "{name}: PBKDF2"
            );
            assert_eq!(keys.aes, hexfield::<16>(d, "aes_session_key"), "{name}");
            assert_eq!(keys.hmac, hexfield::<32>(d, "hmac_session_key"), "{name}");
            assert_eq!(s.setup.key_id_name(), b"interop");
        }
        // Server-Start.
        let st = s.control(2);
        assert_eq!(s.server_start.accept, Accept::Ok);
        assert_eq!(s.server_start.server_iv, hexfield(st, "server_iv"));
        let start = s.server_start.start_time.to_utc_ns() as f64 / 1e9 + 2_208_988_800.0;
        assert!(
            (start - st["start_time"].as_f64().unwrap()).abs() < 1e-5,
            "{name}: start time"
        );
        // Request-TW-Session.
        let req = s.request();
        let r = s.control(3);
        assert!(req.check().is_ok());
        assert_eq!(u64::from(req.ipvn), r["ipvn"].as_u64().unwrap());
        assert_eq!(
            u64::from(req.padding_length),
            r["padding_length"].as_u64().unwrap()
        );
        assert_eq!(
            format!("{:#010x}", req.type_p.0),
            r["type_p"].as_str().unwrap()
        );
        let sender: SocketAddr = SocketAddr::new(req.sender_address, req.sender_port);
        assert_eq!(
            sender.to_string(),
            r["sender"]
                .as_str()
                .unwrap()
                .replace(['[', ']'], "")
                .replace("::1:", "[::1]:")
        );
        let timeout = req.timeout.interval_ns() as f64 / 1e9;
        assert!((timeout - r["timeout_s"].as_f64().unwrap()).abs() < 1e-6);
        // Accept-Session, Start-Ack, Start/Stop-Sessions.
        let acc = s.accept();
        let a = s.control(4);
        assert_eq!(acc.accept, Accept::Ok);
        assert_eq!(u64::from(acc.port), a["port"].as_u64().unwrap(), "{name}");
        assert_eq!(acc.sid.0, hexfield(a, "sid"));
        StartSessionsRepr::from_bytes(&s.client_plain[112..144]).unwrap();
        let ack = StartAckRepr::from_bytes(&s.server_plain[96..128]).unwrap();
        assert_eq!(ack.accept, Accept::Ok);
        let stop = StopSessionsRepr::from_bytes(&s.client_plain[144..176]).unwrap();
        assert_eq!(stop.number_of_sessions, 1);
        assert_eq!(
            s.client_plain.len(),
            176,
            "{name}: nothing after Stop-Sessions"
        );
        assert_eq!(s.server_plain.len(), 128, "{name}: nothing after Start-Ack");
    }
}

#[test]
fn test_keys_and_every_test_packet_verify() {
    for name in GOOD {
        let s = Session::load(name);
        let sid = s.accept().sid;
        let format_security = s.selection.security.test_security();
        let layout = format_security.layout();
        let keys = s.keys.as_ref().and_then(|k| {
            (s.selection.security != SecurityMode::Mixed).then(|| TestKeys::derive(k, &sid.0))
        });
        if let (Some(k), Some(tk)) = (&s.keys, s.json.get("test_keys")) {
            if s.selection.security != SecurityMode::Mixed {
                let derived = crypto::test_keys::derive_test_keys(k, &sid.0);
                assert_eq!(
                    derived.aes,
                    hexfield::<16>(&tk[0], "test_aes_key"),
                    "{name}"
                );
                assert_eq!(
                    derived.hmac,
                    hexfield::<32>(&tk[0], "test_hmac_key"),
                    "{name}"
                );
            }
        }
        let protection = match s.selection.security {
            SecurityMode::Authenticated => Some(TestProtection::Authenticated),
            SecurityMode::Encrypted => Some(TestProtection::Encrypted),
            _ => None,
        };
        let tests = s.json["test"].as_array().unwrap();
        assert_eq!(tests.len(), s.udp.len(), "{name}");
        assert_eq!(s.udp.len(), 20, "{name}: 10 packets each way");
        let reflector = SocketAddr::new(s.conv.server.ip(), s.accept().port);
        for (d, j) in s.udp.iter().zip(tests) {
            let mut p = d.payload.clone();
            assert_eq!(p.len() as u64, j["len"].as_u64().unwrap());
            assert_eq!(u64::from(d.ttl), j["ip_ttl"].as_u64().unwrap());
            if d.dst == reflector {
                if let (Some(k), Some(m)) = (&keys, protection) {
                    k.unprotect(PacketRole::Sender, m, &mut p)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                let pkt = SenderPacket::new_checked(&p[..], layout).unwrap();
                let r = SenderRepr::parse(&pkt).unwrap();
                assert_eq!(u64::from(r.sequence_number), j["seq"].as_u64().unwrap());
            } else {
                assert_eq!(
                    d.src, reflector,
                    "{name}: replies come from the reflector port"
                );
                if let (Some(k), Some(m)) = (&keys, protection) {
                    k.unprotect(PacketRole::Reflector, m, &mut p)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                let rl = ReflectorLayout {
                    test: layout,
                    dscp_ecn: false,
                };
                let pkt = ReflectorPacket::new_checked(&p[..], rl).unwrap();
                let r = ReflectorRepr::parse(&pkt).unwrap();
                assert_eq!(u64::from(r.sequence_number), j["seq"].as_u64().unwrap());
                assert_eq!(
                    u64::from(r.sender_sequence_number),
                    j["sender_seq"].as_u64().unwrap()
                );
                assert_eq!(u64::from(r.sender_ttl), j["sender_ttl"].as_u64().unwrap());
            }
        }
        // A flipped bit in a protected packet fails verification.
        if let (Some(k), Some(m)) = (&keys, protection) {
            let mut p = s.udp[0].payload.clone();
            p[3] ^= 1;
            assert!(
                k.unprotect(PacketRole::Sender, m, &mut p).is_err(),
                "{name}"
            );
        }
        let _ = SessionFormat::new(format_security);
        let _ = TestLayout::Unauthenticated;
    }
}

/// A server context that answers as the captured perfSONAR server did.
struct Replay {
    secret: SharedSecret,
    grant: SessionGrant,
    installed: Vec<(Sid, SocketAddr, SocketAddr, Option<[u8; 16]>)>,
    started: Vec<Sid>,
    stopped: Vec<Sid>,
    requests: Vec<SessionRequest>,
}

impl ServerContext for Replay {
    fn shared_secret(&mut self, key_id: &KeyId, _: &Selection) -> Result<SharedSecret, Accept> {
        let kf = KeyFile::parse(PFS).unwrap();
        match kf.lookup(key_id) {
            Some(s) if s.expose() == self.secret.expose() => Ok(s.clone()),
            Some(_) => Ok(self.secret.clone()),
            None => Err(Accept::Failure),
        }
    }
    fn admit_mode(&mut self, _: Option<&[u8]>, _: &Selection) -> Result<(), Accept> {
        Ok(())
    }
    fn allocate_session(&mut self, request: &SessionRequest) -> Result<SessionGrant, Accept> {
        self.requests.push(request.clone());
        Ok(self.grant)
    }
    fn install_session(&mut self, s: AcceptedSession) -> Result<(), Accept> {
        let key = s.test_keys.as_ref().map(|_| s.sid.0);
        self.installed.push((s.sid, s.sender, s.reflector, key));
        Ok(())
    }
    fn start_session(&mut self, sid: Sid) -> Accept {
        self.started.push(sid);
        Accept::Ok
    }
    fn stop_session(&mut self, sid: Sid, _: NtpTimestamp) {
        self.stopped.push(sid);
    }
}

fn server_for(s: &Session, secret: SharedSecret, grant: SessionGrant) -> (Server, Replay) {
    let config = ServerConfig {
        modes: s.greeting.modes,
        count: s.greeting.count,
        start_time: s.server_start.start_time,
        max_sessions: 16,
        greeting_unused: [0; 12],
        test_format: SessionFormat::default(),
    };
    let random = ServerRandom {
        challenge: s.greeting.challenge,
        salt: s.greeting.salt,
        server_iv: arr(&s.conv.server_to_client[64 + 16..64 + 32]),
    };
    let server = Server::new(config, random, s.conv.client, s.conv.server);
    let ctx = Replay {
        secret,
        grant,
        installed: vec![],
        started: vec![],
        stopped: vec![],
        requests: vec![],
    };
    (server, ctx)
}

#[test]
fn server_state_machine_reproduces_perfsonar_twampd_octet_for_octet() {
    for name in GOOD {
        let s = Session::load(name);
        let acc = s.accept();
        let grant = SessionGrant {
            port: acc.port,
            sid: acc.sid,
            server_octets: [0; 2],
        };
        let (mut server, mut ctx) = server_for(&s, secret(), grant);
        let mut out = server.pending_output().to_vec();
        server.consume_output(out.len());
        // Feed the client's octets segment by segment, as they arrived.
        for chunk in s.conv.chunks.iter().filter(|c| c.src == s.conv.client) {
            server
                .receive(&chunk.payload, &mut ctx)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            out.extend_from_slice(server.pending_output());
            let n = server.pending_output().len();
            server.consume_output(n);
        }
        assert_eq!(
            hex::encode(&out),
            hex::encode(&s.conv.server_to_client),
            "{name}: server octets"
        );
        // The session reached the data-plane interface with the right addresses.
        assert_eq!(ctx.installed.len(), 1);
        let (sid, sender, reflector, keyed) = ctx.installed[0];
        assert_eq!(sid, acc.sid);
        let probe = s.udp.iter().find(|d| d.dst.port() == acc.port).unwrap();
        assert_eq!(sender, probe.src, "{name}: sender address from the request");
        assert_eq!(reflector, probe.dst, "{name}: reflector address and port");
        let protected = matches!(
            s.selection.security,
            SecurityMode::Authenticated | SecurityMode::Encrypted
        );
        assert_eq!(
            keyed.is_some(),
            protected,
            "{name}: test keys only when the test is protected"
        );
        assert_eq!(ctx.started, vec![acc.sid]);
        assert_eq!(ctx.stopped, vec![acc.sid]);
        let r = &ctx.requests[0];
        if name.contains("dscpEF") {
            assert_eq!(r.dscp, 46);
        }
        let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
        assert!(
            matches!(events[0], ServerEvent::Established { .. }),
            "{events:?}"
        );
        assert!(events.contains(&ServerEvent::Stopped { sessions: 1 }));
    }
}

#[test]
fn client_state_machine_reproduces_perfsonar_twping_octet_for_octet() {
    for name in GOOD {
        let s = Session::load(name);
        let keys = s
            .keys
            .clone()
            .unwrap_or_else(|| SessionKeys::from_bytes(&[0; 48]));
        let config = ClientConfig {
            allowed: s.selection.security.bit(),
            wanted: Modes::NONE,
            key_id: Some(s.setup.key_id),
            secret: Some(secret()),
            max_count: 32768,
            max_sessions: 16,
        };
        let random = ClientRandom {
            session_keys: keys,
            client_iv: s.setup.client_iv,
        };
        let mut client = Client::new(config, random);
        let mut out = Vec::new();
        let req = s.request();
        let flush = |c: &mut Client, out: &mut Vec<u8>| {
            out.extend_from_slice(c.pending_output());
            let n = c.pending_output().len();
            c.consume_output(n);
        };
        for chunk in s.conv.chunks.iter().filter(|c| c.src == s.conv.server) {
            client
                .receive(&chunk.payload)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            while let Some(ev) = client.poll_event() {
                match ev {
                    ClientEvent::Ready { .. } => {
                        client.request_session(&req).unwrap();
                    }
                    ClientEvent::SessionAccepted { sid, port, .. } => {
                        assert_eq!((sid, port), (s.accept().sid, s.accept().port));
                        client.start_sessions(1).unwrap();
                    }
                    ClientEvent::StartAck { accept } => {
                        assert_eq!(accept, Accept::Ok);
                        client.stop_sessions(Accept::Ok).unwrap();
                    }
                    ClientEvent::SetupSent { selection, .. } => assert_eq!(selection, s.selection),
                    other => panic!("{name}: unexpected {other:?}"),
                }
            }
            flush(&mut client, &mut out);
        }
        assert_eq!(
            hex::encode(&out),
            hex::encode(&s.conv.client_to_server),
            "{name}: client octets"
        );
    }
}

#[test]
fn wrong_secret_capture_fails_the_token_check_and_nothing_else() {
    let name = "twamp-auth-v4-wrongsecret-rejected";
    let cap = read_pcap(&interop_file(PEER, &format!("{name}.pcap")));
    let json = decoded_json(PEER, &format!("{name}.decoded.json"));
    let conv = &cap.tcp[0];
    let s2c = &conv.server_to_client;
    let c2s = &conv.client_to_server;
    assert_eq!((s2c.len(), c2s.len()), (64 + 48, 164));
    let greeting = ServerGreetingRepr::from_bytes(&s2c[..64]).unwrap();
    let setup = SetUpResponseRepr::from_bytes(&c2s[..164]).unwrap();
    assert_eq!(setup.key_id_name(), b"interop");
    assert_eq!(setup.client_iv, hexfield(&json["control"][1], "client_iv"));
    // Our secret does not open the client's token...
    let tk = crypto::token_key(&secret(), &greeting.salt, greeting.count).unwrap();
    assert_eq!(
        crypto::open_token(&tk, &setup.token, &greeting.challenge).unwrap_err(),
        crypto::CryptoError::ChallengeMismatch
    );
    // ...the secret the client really used does.
    let wrong = SharedSecret::from_slice(b"wrong-secret");
    let tk = crypto::token_key(&wrong, &greeting.salt, greeting.count).unwrap();
    let keys = crypto::open_token(&tk, &setup.token, &greeting.challenge).unwrap();
    assert_eq!(
        keys.aes,
        hexfield::<16>(&json["control"][1]["derived"], "aes_session_key")
    );
    // The server state machine answers exactly as twampd did: Accept 1, clear.
    let s_start = ServerStartRepr::from_bytes(&s2c[64..112]).unwrap();
    assert_eq!(s_start.accept, Accept::Failure);
    let config = ServerConfig {
        modes: greeting.modes,
        count: greeting.count,
        start_time: NtpTimestamp::default(),
        max_sessions: 16,
        greeting_unused: [0; 12],
        test_format: SessionFormat::default(),
    };
    let random = ServerRandom {
        challenge: greeting.challenge,
        salt: greeting.salt,
        server_iv: [0x55; 16],
    };
    let mut server = Server::new(config, random, conv.client, conv.server);
    let mut ctx = Replay {
        secret: secret(),
        grant: SessionGrant {
            port: 0,
            sid: Sid([0; 16]),
            server_octets: [0; 2],
        },
        installed: vec![],
        started: vec![],
        stopped: vec![],
        requests: vec![],
    };
    let err = server.receive(c2s, &mut ctx).unwrap_err();
    assert_eq!(
        err,
        ricochet_protocol::server::ServerError::SetupRefused(Accept::Failure)
    );
    assert_eq!(hex::encode(server.pending_output()), hex::encode(s2c));
    assert!(server.wants_close());
    let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
    assert_eq!(
        events,
        vec![ServerEvent::SetupRefused {
            accept: Accept::Failure,
            reason: SetupRefusal::BadToken
        }]
    );
    let _ = control::HMAC_LEN;
}
