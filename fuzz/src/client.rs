//! TWAMP-Control client state machine harness (RFC 5357 §3): a server's
//! octets (greeting, Server-Start, answers) fed whole and segmented, with
//! commands issued whenever the machine is ready.

use ricochet_protocol::accept::Accept;
use ricochet_protocol::client::{Client, ClientConfig, ClientEvent, ClientRandom};
use ricochet_protocol::control::{self, RequestTwSessionRepr, Sid, TypeP};
use ricochet_protocol::crypto::{SessionKeys, SharedSecret};
use ricochet_protocol::modes::Modes;
use ricochet_protocol::time::NtpTimestamp;

use crate::Input;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    output: Vec<u8>,
    events: Vec<ClientEvent>,
    failed: bool,
}

/// The largest PBKDF2 count the harness's client accepts (the seeds lower
/// a captured greeting's count to it).
pub const MAX_COUNT: u32 = 1024;

fn request() -> RequestTwSessionRepr {
    RequestTwSessionRepr {
        ipvn: 4,
        conf_sender: 0,
        conf_receiver: 0,
        schedule_slots: 0,
        packets: 0,
        sender_port: 40000,
        receiver_port: 862,
        sender_address: [198, 18, 0, 1].into(),
        receiver_address: [198, 18, 0, 2].into(),
        sid: Sid([0; 16]),
        padding_length: 27,
        start_time: NtpTimestamp::default(),
        timeout: NtpTimestamp::from_interval_ns(1_000_000_000),
        type_p: TypeP(0),
        octets_to_reflect: [0; 2],
        padding_to_reflect: 0,
        hmac: [0; 16],
    }
}

fn run(allowed: Modes, wanted: Modes, stream: &[u8], chunk: usize) -> Outcome {
    let config = ClientConfig {
        allowed,
        wanted,
        key_id: Some(control::SetUpResponseRepr::key_id_from_name(b"fuzz").expect("short name")),
        secret: Some(SharedSecret::from_slice(b"fuzz-secret")),
        // Keep PBKDF2 cheap: a greeting asking for more is refused.
        max_count: MAX_COUNT,
        max_sessions: 8,
    };
    let random = ClientRandom {
        session_keys: SessionKeys::from_bytes(&[7; 48]),
        client_iv: [9; 16],
    };
    let mut client = Client::new(config, random);
    let mut out = Outcome {
        output: Vec::new(),
        events: Vec::new(),
        failed: false,
    };
    for piece in stream.chunks(chunk.max(1)) {
        let r = client.receive(piece);
        if out.failed {
            assert!(r.is_err(), "receive after an error must fail");
        }
        if r.is_err() {
            out.failed = true;
            assert!(client.wants_close(), "an error must close: {r:?}");
        }
        while let Some(e) = client.poll_event() {
            // Drive the machine as an application would; commands the
            // state forbids must be refused, never panic.
            match &e {
                ClientEvent::Ready { .. } => {
                    let _ = client.request_session(&request());
                }
                ClientEvent::SessionAccepted { .. } => {
                    let _ = client.start_sessions(1);
                    let _ = client.start_n(&[Sid([1; 16])]);
                }
                ClientEvent::StartAck { .. } => {
                    let _ = client.stop_sessions(Accept::Ok);
                }
                _ => {}
            }
            out.events.push(e);
        }
        let n = client.pending_output().len();
        out.output.extend_from_slice(client.pending_output());
        client.consume_output(n);
    }
    out
}

/// Input: allowed modes (1 octet), wanted features (2), chunk size (1), the
/// server's octets.
pub fn client(data: &[u8]) {
    let mut input = Input::new(data);
    let allowed = Modes(u32::from(input.u8() & 0x0f) | 1);
    let wanted = Modes(u32::from(input.u16()) & Modes::FEATURES.bits());
    let chunk = usize::from(input.u8());
    let stream = input.rest();
    // Unlike the server, a client's outcome may depend on segmentation: an
    // answer that arrives in the same read as Server-Start, before the
    // application asked anything, is unsolicited. Both runs must uphold the
    // invariants checked in `run`.
    let whole = run(allowed, wanted, stream, stream.len());
    let chunked = run(allowed, wanted, stream, chunk);
    // The set-up (greeting → Set-Up-Response) does not depend on segmentation.
    let setup = |o: &Outcome| o.output.get(..164).map(<[u8]>::to_vec);
    if whole.output.len() >= 164 && chunked.output.len() >= 164 {
        assert_eq!(
            setup(&whole),
            setup(&chunked),
            "Set-Up-Response depends on segmentation"
        );
    }
}
