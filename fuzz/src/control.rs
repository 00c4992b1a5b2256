//! TWAMP-Control message harness (RFC 4656 §3, RFC 5357 §3, RFC 5938 §3):
//! every message parser on the same octets, and the command framing a
//! server reads before it knows which message follows.

use std::net::SocketAddr;

use ricochet_protocol::accept::Accept;
use ricochet_protocol::control::Sid;
use ricochet_protocol::control::{
    client_command, server_reply_len, AcceptSessionRepr, Command, RequestTwSessionRepr,
    ServerGreetingRepr, ServerReply, ServerStartRepr, SetUpResponseRepr, StartAckRepr,
    StartNAckRepr, StartNSessionsRepr, StartSessionsRepr, StopNAckRepr, StopNSessionsRepr,
    StopSessionsRepr, BLOCK_LEN,
};
use ricochet_protocol::crypto::SharedSecret;
use ricochet_protocol::modes::{Modes, Selection};
use ricochet_protocol::server::{
    AcceptedSession, KeyId, Server, ServerConfig, ServerContext, ServerEvent, ServerRandom,
    SessionGrant, SessionRequest,
};
use ricochet_protocol::time::NtpTimestamp;
use ricochet_protocol::twamp_test::SessionFormat;

use crate::Input;

/// Sessions per connection the framing checks allow in this harness.
const MAX_SESSIONS: u32 = 64;

/// Parses `msg` as `$repr`; when it parses, emitting the `Repr` gives a
/// message of the same length that parses back to the same `Repr`. Gives
/// the parsed `Repr`, if any.
macro_rules! round_trip {
    ($repr:ty, $msg:expr) => {{
        let msg: &[u8] = $msg;
        let parsed = <$repr>::from_bytes(msg);
        if let Ok(r) = &parsed {
            let bytes = r.to_bytes();
            assert_eq!(bytes.len(), msg.len(), "{} length", stringify!($repr));
            assert_eq!(r.buffer_len(), msg.len());
            assert_eq!(
                <$repr>::from_bytes(&bytes[..]).as_ref(),
                Ok(r),
                "{} round trip",
                stringify!($repr)
            );
        }
        parsed.ok()
    }};
}

/// Every control message parser on the input after its first octet
/// (`N`-session messages are only fed whole `32 + 16·N` messages when the
/// octet's bit 0 is set, to reach their SID lists more often):
/// `parse(emit(parse(x))) == parse(x)`, lengths preserved, `check()` never
/// panics; [`client_command`] / [`server_reply_len`] give lengths that are
/// whole blocks, at least 32 octets, bounded by the session limit, and
/// agree with the parsers.
pub fn messages(data: &[u8]) {
    let mut input = Input::new(data);
    let cfg = input.u8();
    let msg = input.rest();

    round_trip!(ServerGreetingRepr, msg);
    round_trip!(SetUpResponseRepr, msg);
    round_trip!(ServerStartRepr, msg);
    round_trip!(AcceptSessionRepr, msg);
    round_trip!(StartSessionsRepr, msg);
    round_trip!(StartAckRepr, msg);
    round_trip!(StopSessionsRepr, msg);
    if let Some(r) = round_trip!(RequestTwSessionRepr, msg) {
        let _ = r.check();
    }
    let list = if cfg & 1 != 0 {
        let n = msg.get(12..16).map_or(0, |b| {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]).min(MAX_SESSIONS)
        });
        &msg[..msg.len().min(32 + 16 * n as usize)]
    } else {
        msg
    };
    if let Some(r) = round_trip!(StartNSessionsRepr, list) {
        let _ = r.check();
    }
    if let Some(r) = round_trip!(StopNSessionsRepr, list) {
        let _ = r.check();
    }
    round_trip!(StartNAckRepr, list);
    round_trip!(StopNAckRepr, list);

    let Some(first) = msg.get(..BLOCK_LEN) else {
        return;
    };
    let first: [u8; BLOCK_LEN] = first.try_into().expect("one block");
    if let Ok(h) = client_command(&first, MAX_SESSIONS) {
        assert_eq!(h.command, Command::from(first[0]));
        if let Some(len) = h.len {
            assert_whole_message(len);
            // A message of that length parses (or fails on a field, not on
            // its length) as the command announced.
            if let Some(whole) = msg.get(..len) {
                let parses = match h.command {
                    Command::StartSessions => StartSessionsRepr::from_bytes(whole).is_ok(),
                    Command::StopSessions => StopSessionsRepr::from_bytes(whole).is_ok(),
                    Command::RequestTwSession => RequestTwSessionRepr::from_bytes(whole).is_ok(),
                    Command::StartNSessions => StartNSessionsRepr::from_bytes(whole).is_ok(),
                    Command::StopNSessions => StopNSessionsRepr::from_bytes(whole).is_ok(),
                    Command::StartNAck => StartNAckRepr::from_bytes(whole).is_ok(),
                    Command::StopNAck => StopNAckRepr::from_bytes(whole).is_ok(),
                    _ => true,
                };
                assert!(
                    parses,
                    "{:?} of its announced length {len} refused",
                    h.command
                );
            }
        }
    }
    for reply in [
        ServerReply::AcceptSession,
        ServerReply::StartAck,
        ServerReply::StartNAck,
        ServerReply::StopNAck,
    ] {
        if let Ok(len) = server_reply_len(reply, &first, MAX_SESSIONS) {
            assert_whole_message(len);
        }
    }
}

fn assert_whole_message(len: usize) {
    assert!(
        len >= 32 && len.is_multiple_of(BLOCK_LEN),
        "message length {len}"
    );
    assert!(
        len <= 32 + 16 * MAX_SESSIONS as usize,
        "message length {len} above the session bound"
    );
}

// ---------------------------------------------------------------------------
// Server state machine.

/// A context that admits everything unless the configuration octet says
/// otherwise, and records what it was asked.
#[derive(Debug, Default, PartialEq, Eq)]
struct Context {
    refuse_sessions: bool,
    refuse_install: bool,
    log: Vec<String>,
    next_sid: u8,
}

impl ServerContext for Context {
    fn shared_secret(&mut self, key_id: &KeyId, _: &Selection) -> Result<SharedSecret, Accept> {
        self.log.push(format!("secret {:?}", &key_id[..8]));
        Ok(SharedSecret::from_slice(b"twamp-fuzz-secret"))
    }
    fn admit_mode(&mut self, identity: Option<&[u8]>, s: &Selection) -> Result<(), Accept> {
        self.log.push(format!("admit {identity:?} {s:?}"));
        Ok(())
    }
    fn allocate_session(&mut self, r: &SessionRequest) -> Result<SessionGrant, Accept> {
        self.log.push(format!("allocate {r:?}"));
        if self.refuse_sessions {
            return Err(Accept::Failure);
        }
        self.next_sid = self.next_sid.wrapping_add(1);
        Ok(SessionGrant {
            port: 18760,
            sid: Sid([self.next_sid; 16]),
            server_octets: [0; 2],
        })
    }
    fn install_session(&mut self, s: AcceptedSession) -> Result<(), Accept> {
        self.log.push(format!(
            "install {:?} {} {} {:?}",
            s.sid, s.sender, s.reflector, s.format
        ));
        if self.refuse_install {
            Err(Accept::TemporaryResourceLimitation)
        } else {
            Ok(())
        }
    }
    fn start_session(&mut self, sid: Sid) -> Accept {
        self.log.push(format!("start {sid:?}"));
        Accept::Ok
    }
    fn stop_session(&mut self, sid: Sid, timeout: NtpTimestamp) {
        self.log.push(format!("stop {sid:?} {timeout:?}"));
    }
}

/// What a connection did with a client's octets.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    output: Vec<u8>,
    events: Vec<ServerEvent>,
    closed: bool,
    context: Context,
}

/// Configuration octets of [`server`] in front of the client's stream.
pub const SERVER_CONFIG_LEN: usize = 4;

/// Encodes the [`server`] configuration: modes offered, context flags, and
/// the chunk size of the second feeding (0: one octet at a time).
pub fn server_input(offered: Modes, flags: u8, chunk: u8, stream: &[u8]) -> Vec<u8> {
    let mut v = (offered.bits() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(&[flags, chunk]);
    v.extend_from_slice(stream);
    v
}

fn run_server(offered: Modes, flags: u8, stream: &[u8], chunk: usize) -> Outcome {
    let config = ServerConfig {
        modes: offered,
        count: 1024,
        start_time: NtpTimestamp::from_bits(0xe8a1_b2c6_0000_0000),
        max_sessions: 8,
        greeting_unused: [0; 12],
        test_format: SessionFormat::default(),
    };
    let random = ServerRandom {
        challenge: [1; 16],
        salt: [2; 16],
        server_iv: [3; 16],
    };
    let client: SocketAddr = ([127, 0, 0, 1], 40000).into();
    let local: SocketAddr = ([127, 0, 0, 1], 862).into();
    let mut server = Server::new(config, random, client, local);
    let mut ctx = Context {
        refuse_sessions: flags & 1 != 0,
        refuse_install: flags & 2 != 0,
        ..Context::default()
    };
    let mut output = Vec::new();
    let mut events = Vec::new();
    let mut failed = false;
    for piece in stream.chunks(chunk.max(1)) {
        let r = server.receive(piece, &mut ctx);
        if failed {
            assert!(
                matches!(r, Err(ricochet_protocol::server::ServerError::Closed)),
                "receive after an error: {r:?}"
            );
        }
        if r.is_err() {
            failed = true;
            assert!(server.wants_close(), "an error must close: {r:?}");
        }
        let out = server.pending_output();
        output.extend_from_slice(out);
        let n = out.len();
        server.consume_output(n);
        assert!(server.pending_output().is_empty());
        while let Some(e) = server.poll_event() {
            events.push(e);
        }
    }
    output.extend_from_slice(server.pending_output());
    assert_eq!(
        output.len() % BLOCK_LEN,
        0,
        "control output is whole blocks"
    );
    Outcome {
        output,
        events,
        closed: server.wants_close(),
        context: ctx,
    }
}

/// The sans-IO TWAMP-Control server fed a client's octets (RFC 5357 §3):
/// never panics, an error closes the connection for good, output is whole
/// 16-octet blocks, and feeding the stream at once or in chunks gives the
/// same octets, events and context calls (TCP segmentation must not matter).
pub fn server(data: &[u8]) {
    let mut input = Input::new(data);
    let offered = Modes(u32::from(input.u16()) & Modes::KNOWN.bits());
    let flags = input.u8();
    let chunk = usize::from(input.u8());
    let stream = input.rest();
    let whole = run_server(offered, flags, stream, stream.len());
    let chunked = run_server(offered, flags, stream, chunk);
    assert_eq!(whole, chunked, "segmentation changed the outcome");
}
