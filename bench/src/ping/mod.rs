//! `ricochet-ping`: a TWAMP control-client and session-sender (RFC 5357) in
//! every mode — unauthenticated, authenticated, encrypted and mixed
//! (RFC 4656, RFC 5618) — with the RFC 5938, 6038, 7750 and 8186 extensions.
//!
//! * [`cli`] — the command line and its value parsers;
//! * [`keys`] — perfSONAR `.pfs` key files;
//! * [`control`] — the TWAMP-Control connection (sans-IO `Client` over TCP);
//! * [`session`] — the paced session-sender and reply checking;
//! * [`report`] — text, JSON and raw output.
//!
//! [`run`] performs one complete test: set-up, session requests, start,
//! concurrent sessions, stop, close.

pub mod cli;
pub mod control;
pub mod ike;
pub mod ikev2;
pub mod keys;
pub mod report;
pub mod session;
pub mod stamp;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ricochet_protocol::accept::Accept;
use ricochet_protocol::client::{ClientConfig, ClientError};
use ricochet_protocol::control::request::{ipvn_of, TypeP};
use ricochet_protocol::control::{RequestTwSessionRepr, Sid};
use ricochet_protocol::modes::{Modes, Selection};
use ricochet_protocol::time::{NtpTimestamp, TimeFormat};
use ricochet_protocol::twamp_test::{ReflectOctets, SessionFormat};
use ricochet_reflector::clock::{
    now_utc_ns, ClockSource, ClockState, LeapState, UNSYNCHRONIZED_ERROR_NS,
};
use ricochet_reflector::socket::{
    tos_from_dscp, BatchSocket, RxTimestamping, SocketOptions, TimestampingMode,
};
use serde::Serialize;
use thiserror::Error;

use crate::pace::Schedule;
use control::{ControlConnection, SessionAnswer, MAX_PBKDF2_COUNT};
use keys::Credentials;
use session::{
    default_padding, run_session, PaddingFill, SenderClock, SenderPackets, SessionOutcome,
    SessionSpec,
};

/// One test run, fully resolved.
#[derive(Debug, Clone)]
pub struct PingConfig {
    /// The TWAMP server's control address.
    pub server: SocketAddr,
    /// Security modes allowed (bits 0–3).
    pub allowed: Modes,
    /// Identity and secret for the protected modes.
    pub credentials: Option<Credentials>,
    /// An IKEv2-derived key (RFC 7717) instead of `credentials`.
    pub ikev2: Option<ikev2::Ikev2Key>,
    /// Bring up an IKE SA with the server first and key from it (RFC 7717).
    pub ike: Option<ike::IkeOptions>,
    /// Packets per session.
    pub count: u32,
    /// Send schedule.
    pub schedule: Schedule,
    /// Padding Length; `None`: equal-size replies ([`session::default_padding`]).
    pub padding: Option<u32>,
    /// Zero padding instead of pseudo-random.
    pub zero_padding: bool,
    /// DSCP of the test packets and (Type-P) of the reflections.
    pub dscp: u8,
    /// Concurrent sessions.
    pub sessions: u32,
    /// T1 in PTPv2 format.
    pub ptp: bool,
    /// RFC 5938 Individual Session Control.
    pub isc: bool,
    /// RFC 6038 Reflect Octets: length of padding to reflect.
    pub reflect_octets: Option<u16>,
    /// RFC 6038 Symmetrical Size.
    pub symmetrical: bool,
    /// RFC 7750 DSCP and ECN Monitoring.
    pub dscp_ecn: bool,
    /// Wait after the last packet; the Request's Timeout.
    pub timeout: Duration,
    /// First local UDP port (0: any).
    pub sender_port: u16,
    /// Connect and per-answer timeout of the control connection.
    pub io_timeout: Duration,
    /// Keep per-packet records.
    pub record_packets: bool,
}

/// Why a test could not run.
#[derive(Debug, Error)]
pub enum PingError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot resolve {host}: {why}")]
    Resolve { host: String, why: String },
    #[error("cannot connect to {server}: {source} (is a TWAMP server listening there?)")]
    Connect {
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("key file {}: {why}", path.display())]
    KeyFile { path: PathBuf, why: String },
    #[error("key file {} has no identity '{identity}'", path.display())]
    UnknownIdentity { identity: String, path: PathBuf },
    #[error("modes {allowed} need a key: give -u IDENTITY -k KEYFILE, or allow -A open")]
    KeyMissing { allowed: Modes },
    #[error("no common mode: the server offers {offered}, we allow {allowed}{}",
        if *have_key { "" } else { " without a key (protected modes need -u and -k)" })]
    NoCommonMode {
        offered: Modes,
        allowed: Modes,
        have_key: bool,
    },
    #[error("the server refused the set-up: Accept {} ({}){}", u8::from(*accept), accept.description(),
        if *accept == Accept::Ikev2SaNotFound {
            " — the server knows no IKEv2 SA with our SPIs (RFC 7717 §5.3); bring the IKE SA up \
             again or refresh the key record"
        } else if *protected && *accept == Accept::Failure {
            " — wrong secret or unknown identity?"
        } else { "" })]
    SetupRefused { accept: Accept, protected: bool },
    #[error(
        "the server does not offer the IKEv2-derived mode (RFC 7717) an IKEv2 key needs \
             (it offers {offered})"
    )]
    Ikev2NotOffered { offered: Modes },
    #[error("the server does not offer {feature} (it offers {offered})")]
    FeatureNotOffered {
        feature: &'static str,
        offered: Modes,
    },
    #[error("TWAMP-Control: {0}")]
    Control(ClientError),
    #[error("TWAMP-Control: cannot {what}: {source}")]
    ControlIo {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("TWAMP-Control: timed out waiting for {waiting_for}")]
    ControlTimeout { waiting_for: &'static str },
    #[error("TWAMP-Control: the server closed the connection while we waited for {waiting_for}")]
    ControlClosed { waiting_for: &'static str },
    #[error("TWAMP-Control: unexpected answer {0}")]
    UnexpectedAnswer(String),
    #[error("the server refused every session; first refusal: Accept {} ({})", u8::from(*accept), accept.description())]
    AllSessionsRefused { accept: Accept },
    #[error("the server refused to start the sessions: Accept {} ({})", u8::from(*accept), accept.description())]
    StartRefused { accept: Accept },
    #[error("cannot {what}: {source}")]
    Socket {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("IKEv2: {0}")]
    Ike(String),
    #[error("operating system random source: {0}")]
    Random(String),
}

/// The host clock as reported.
#[derive(Debug, Clone, Serialize)]
pub struct ClockReport {
    /// The kernel says the clock is synchronized (our S bit).
    pub synchronized: bool,
    /// Our error bound, nanoseconds.
    pub error_ns: u64,
    /// What disciplines the clock.
    pub source: &'static str,
    /// TAI − UTC known to the kernel, seconds (0: unknown).
    pub tai_offset_s: i32,
    /// A leap second is announced or in progress.
    pub leap_pending: bool,
    /// Format of our T1.
    pub t1_format: &'static str,
    /// How T1 is taken.
    pub t1_source: &'static str,
}

/// The negotiated test format, for output.
#[derive(Debug, Clone, Serialize)]
pub struct FormatReport {
    pub security: String,
    /// Format of the reflector's T2/T3 (RFC 8186).
    pub reflector_timestamps: &'static str,
    pub symmetrical_size: bool,
    pub dscp_ecn_monitoring: bool,
    pub reflect_octets: Option<u16>,
    pub individual_session_control: bool,
}

/// One session of the run.
#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    /// 1-based session number.
    pub session: usize,
    pub sid: String,
    pub sender: SocketAddr,
    pub reflector: SocketAddr,
    /// Padding Length requested.
    pub padding_length: u32,
    /// Octets of every sender packet (UDP payload).
    pub packet_len: usize,
    /// Octets a conforming reflection has.
    pub reply_len: usize,
    /// Kernel receive timestamping of the socket.
    pub rx_timestamping: &'static str,
    #[serde(flatten)]
    pub outcome: SessionOutcome,
}

/// A session the server did not accept or start.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedSession {
    pub session: usize,
    /// The command that was refused.
    pub stage: &'static str,
    pub accept: u8,
    pub meaning: &'static str,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub server: SocketAddr,
    pub control_local: SocketAddr,
    /// The server greeting's Modes.
    pub offered_modes: String,
    /// The Modes we selected.
    pub selected_modes: String,
    /// The security mode in words.
    pub mode: String,
    pub dscp: u8,
    pub format: FormatReport,
    pub clock: ClockReport,
    pub sessions: Vec<SessionReport>,
    pub refused: Vec<RefusedSession>,
    /// Things the operator should know (also printed to stderr).
    pub warnings: Vec<String>,
    /// The run was cut short (Ctrl-C): fewer packets than asked were sent.
    pub interrupted: bool,
}

impl RunReport {
    /// 0 when every session got at least one reply, 1 otherwise.
    pub fn exit_status(&self) -> i32 {
        let silent = self
            .sessions
            .iter()
            .any(|s| s.outcome.summary.received == 0);
        i32::from(silent || !self.refused.is_empty())
    }
}

pub(crate) fn clock_state() -> ClockState {
    ClockState::read().unwrap_or(ClockState {
        tai_offset_s: 0,
        synchronized: false,
        est_error_ns: UNSYNCHRONIZED_ERROR_NS,
        max_error_ns: UNSYNCHRONIZED_ERROR_NS,
        source: ClockSource::Unsynchronized,
        leap: LeapState::None,
        phc_present: false,
    })
}

pub(crate) fn source_name(s: ClockSource) -> &'static str {
    match s {
        ClockSource::Unsynchronized => "unsynchronized (free-running)",
        ClockSource::KernelDiscipline => "kernel PLL/FLL discipline (ntpd)",
        ClockSource::Pps => "PPS",
        ClockSource::External => "external steering (chronyd, timesyncd, phc2sys)",
    }
}

pub(crate) fn timestamping_name(m: TimestampingMode) -> &'static str {
    match m {
        TimestampingMode::Timestamping => "SO_TIMESTAMPING",
        TimestampingMode::TimestampNs => "SO_TIMESTAMPNS",
        TimestampingMode::None => "none (user-space stamps)",
    }
}

/// The feature bits to ask for. PTPv2 (bit 9) is always echoed when
/// offered: RFC 8186 §2.2 requires it of the client.
pub fn wanted_features(c: &PingConfig) -> Modes {
    let mut w = Modes::PTP_TIMESTAMPS;
    for (on, bit) in [
        (c.isc, Modes::INDIVIDUAL_SESSION_CONTROL),
        (c.reflect_octets.is_some(), Modes::REFLECT_OCTETS),
        (c.symmetrical, Modes::SYMMETRICAL_SIZE),
        (c.dscp_ecn, Modes::DSCP_ECN),
    ] {
        if on {
            w |= bit;
        }
    }
    w
}

/// The test format the selection implies (RFC 6038 §4.1: feature bits apply
/// to every session of the connection).
pub fn session_format(
    sel: &Selection,
    reflect: Option<u16>,
    server_octets: [u8; 2],
) -> SessionFormat {
    SessionFormat {
        reflect_octets: reflect
            .filter(|_| sel.has(Modes::REFLECT_OCTETS))
            .map(|length| ReflectOctets {
                length,
                server_octets: u16::from_be_bytes(server_octets),
            }),
        symmetrical_size: sel.has(Modes::SYMMETRICAL_SIZE),
        dscp_ecn_monitoring: sel.has(Modes::DSCP_ECN),
        timestamp_format: if sel.has(Modes::PTP_TIMESTAMPS) {
            TimeFormat::Ptp
        } else {
            TimeFormat::Ntp
        },
        ..SessionFormat::new(sel.security.test_security())
    }
}

/// Time from spawning the session threads to the first packet.
const START_LEAD: Duration = Duration::from_millis(5);

struct Planned {
    index: usize,
    socket: BatchSocket,
    sid: Sid,
    reflector: SocketAddr,
    server_octets: [u8; 2],
}

/// Runs one test: set-up, Request-TW-Session per session, Start-Sessions
/// (or Start-N), the sessions concurrently, Stop-Sessions (or Stop-N), close.
pub fn run(config: &PingConfig) -> Result<RunReport, PingError> {
    run_until(config, &AtomicBool::new(false))
}

/// [`run`], ending the sessions early (with a report of what was sent) once
/// `interrupt` is set, e.g. by Ctrl-C.
pub fn run_until(config: &PingConfig, interrupt: &AtomicBool) -> Result<RunReport, PingError> {
    let Some(opts) = &config.ike else {
        return run_keyed(config, config.ikev2.as_ref(), interrupt);
    };
    let (sa, key) = ike::IkeRun::establish(opts)?;
    let result = run_keyed(config, Some(&key), interrupt);
    sa.close(Duration::from_secs(1));
    result
}

/// [`run_until`] with the RFC 7717 key (if any) resolved.
fn run_keyed(
    config: &PingConfig,
    ikev2: Option<&ikev2::Ikev2Key>,
    interrupt: &AtomicBool,
) -> Result<RunReport, PingError> {
    let mut warnings: Vec<String> = Vec::new();
    let clock = clock_state();
    let client_config = ClientConfig {
        allowed: config.allowed,
        wanted: wanted_features(config),
        key_id: match ikev2 {
            Some(k) => Some(k.sa.key_id()),
            None => config.credentials.as_ref().map(Credentials::key_id),
        },
        secret: match ikev2 {
            Some(k) => Some(k.secret.clone()),
            None => config.credentials.as_ref().map(|c| c.secret.clone()),
        },
        max_count: MAX_PBKDF2_COUNT,
        max_sessions: config.sessions.max(1),
    };
    let mut ctl = ControlConnection::connect(config.server, client_config, config.io_timeout)?;
    if let Some(k) = ikev2 {
        ctl.use_ikev2_key(k.token_key);
    }
    let est = ctl.handshake()?;
    let sel = est.selection;
    for (on, bit, name) in [
        (
            config.isc,
            Modes::INDIVIDUAL_SESSION_CONTROL,
            "Individual Session Control (RFC 5938)",
        ),
        (
            config.reflect_octets.is_some(),
            Modes::REFLECT_OCTETS,
            "Reflect Octets (RFC 6038)",
        ),
        (
            config.symmetrical,
            Modes::SYMMETRICAL_SIZE,
            "Symmetrical Size (RFC 6038)",
        ),
        (
            config.dscp_ecn,
            Modes::DSCP_ECN,
            "DSCP and ECN Monitoring (RFC 7750)",
        ),
    ] {
        if on && !sel.has(bit) {
            ctl.close();
            return Err(PingError::FeatureNotOffered {
                feature: name,
                offered: est.offered,
            });
        }
    }
    let t1_format = if config.ptp {
        TimeFormat::Ptp
    } else {
        TimeFormat::Ntp
    };
    let ptp_in_use = config.ptp || sel.has(Modes::PTP_TIMESTAMPS);
    if ptp_in_use && clock.tai_offset_s == 0 {
        warnings.push(
            "the kernel's TAI offset is 0 (no time daemon set it): PTPv2 timestamps are read \
             as if TAI were UTC"
                .into(),
        );
    }
    let base_format = session_format(&sel, config.reflect_octets, [0; 2]);
    let padding = match config.padding {
        Some(p) => p,
        None => u32::try_from(default_padding(&base_format)).unwrap_or(u32::MAX),
    };
    session::check_padding(&base_format, padding as usize).map_err(PingError::Usage)?;

    // Request every session, each with its own UDP socket.
    let local_ip = ctl.local_addr().ip().to_canonical();
    let server_ip = config.server.ip().to_canonical();
    let mut planned = Vec::new();
    let mut refused = Vec::new();
    let mut first_refusal = None;
    // Sessions the server holds (Accept 0), used by us or not: Start-Sessions
    // starts them all and Stop-Sessions must count them (RFC 5357 §3.8).
    let mut server_accepted = 0u32;
    for i in 0..config.sessions as usize {
        let port = if config.sender_port == 0 {
            0
        } else {
            config
                .sender_port
                .checked_add(i as u16)
                .ok_or_else(|| PingError::Usage("--sender-port + sessions exceeds 65535".into()))?
        };
        let socket = bind_socket(local_ip, port, config.dscp)?;
        let sender_port = socket.local_addr().port();
        let octets = *control::os_random::<2>()?;
        let reflect_octets = base_format.reflect_octets.is_some();
        let req = RequestTwSessionRepr {
            ipvn: ipvn_of(local_ip),
            conf_sender: 0,
            conf_receiver: 0,
            schedule_slots: 0,
            packets: 0,
            sender_port,
            // As perfSONAR twping: our own port; the server answers with the
            // port it really uses (twamp-control.md §2 rule 4).
            receiver_port: sender_port,
            sender_address: local_ip,
            receiver_address: server_ip,
            sid: Sid([0; 16]),
            padding_length: padding,
            start_time: NtpTimestamp::from_utc_ns(now_utc_ns()),
            timeout: NtpTimestamp::from_interval_ns(config.timeout.as_nanos() as u64),
            type_p: TypeP::from_dscp(config.dscp)
                .ok_or_else(|| PingError::Usage(format!("DSCP {} > 63", config.dscp)))?,
            octets_to_reflect: if reflect_octets { octets } else { [0; 2] },
            padding_to_reflect: config
                .reflect_octets
                .filter(|_| reflect_octets)
                .unwrap_or(0),
            hmac: [0; 16],
        };
        match ctl.request(&req)? {
            // Accept 0 with Port 0 names no reflector (RFC 5357 §3.5): unusable.
            SessionAnswer::Accepted { port: 0, .. } => {
                server_accepted += 1;
                first_refusal.get_or_insert(Accept::Failure);
                warnings.push(format!(
                    "session {}: accepted with reflector port 0; not used",
                    i + 1
                ));
                refused.push(RefusedSession {
                    session: i + 1,
                    stage: "Request-TW-Session",
                    accept: 0,
                    meaning: "accepted with reflector port 0",
                });
            }
            SessionAnswer::Accepted {
                port,
                sid,
                reflected_octets,
                server_octets,
            } => {
                server_accepted += 1;
                if reflect_octets && reflected_octets != octets {
                    warnings.push(format!(
                        "session {}: the server echoed octets {:02x?} instead of {:02x?} \
                             (RFC 6038 §4.2)",
                        i + 1,
                        reflected_octets,
                        octets
                    ));
                }
                planned.push(Planned {
                    index: i,
                    socket,
                    sid,
                    reflector: SocketAddr::new(server_ip, port),
                    server_octets,
                });
            }
            SessionAnswer::Refused(accept) => {
                first_refusal.get_or_insert(accept);
                warnings.push(format!(
                    "session {}: Request-TW-Session refused: Accept {} ({})",
                    i + 1,
                    u8::from(accept),
                    accept.description()
                ));
                refused.push(RefusedSession {
                    session: i + 1,
                    stage: "Request-TW-Session",
                    accept: accept.into(),
                    meaning: accept.description(),
                });
            }
        }
    }
    if planned.is_empty() {
        ctl.close();
        return Err(PingError::AllSessionsRefused {
            accept: first_refusal.unwrap_or(Accept::Failure),
        });
    }

    // Start them.
    if sel.has(Modes::INDIVIDUAL_SESSION_CONTROL) {
        let sids: Vec<Sid> = planned.iter().map(|p| p.sid).collect();
        let acks = ctl.start_n(&sids)?;
        let mut first_bad = None;
        planned.retain(|p| {
            let a = acks
                .iter()
                .find(|(s, _)| *s == p.sid)
                .map_or(Accept::Failure, |(_, a)| *a);
            if !a.is_ok() {
                first_bad.get_or_insert(a);
                refused.push(RefusedSession {
                    session: p.index + 1,
                    stage: "Start-N-Sessions",
                    accept: a.into(),
                    meaning: a.description(),
                });
            }
            a.is_ok()
        });
        if planned.is_empty() {
            ctl.close();
            return Err(PingError::StartRefused {
                accept: first_bad.unwrap_or(Accept::Failure),
            });
        }
    } else {
        ctl.start(server_accepted)?;
    }
    let sender_clock = SenderClock::new(&clock, t1_format);
    let fill_seed: u64 = rand::random();
    let mut jobs = Vec::new();
    for p in planned {
        let format = session_format(&sel, config.reflect_octets, p.server_octets);
        let fill = if config.zero_padding {
            PaddingFill::Zero
        } else {
            PaddingFill::Random(fill_seed ^ p.index as u64)
        };
        let packets = SenderPackets::new(
            format,
            padding as usize,
            fill,
            p.server_octets,
            ctl.test_keys(&p.sid),
        )
        .map_err(PingError::Usage)?;
        let spec = SessionSpec {
            index: p.index,
            sid: p.sid,
            reflector: p.reflector,
            format,
            count: config.count,
            schedule: match config.schedule {
                Schedule::Exponential { mean, seed } => Schedule::Exponential {
                    mean,
                    seed: seed.wrapping_add(p.index as u64),
                },
                fixed => fixed,
            },
            timeout: config.timeout,
            record_packets: config.record_packets,
        };
        jobs.push((p, spec, packets));
    }
    // One common start, a little ahead so that every thread has set up its
    // buffers by then and the first packets leave on schedule.
    let start = Instant::now() + START_LEAD;
    let results: Vec<io::Result<SessionOutcome>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(p, spec, packets)| {
                scope.spawn(move || {
                    run_session(&p.socket, spec, packets, sender_clock, start, interrupt)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("session thread panicked")))
            })
            .collect()
    });

    // Stop and close; a failure here does not void the measurements.
    let stopped = if sel.has(Modes::INDIVIDUAL_SESSION_CONTROL) {
        let sids: Vec<Sid> = jobs.iter().map(|(p, _, _)| p.sid).collect();
        ctl.stop_n(&sids).map(|acks| {
            for (sid, a) in acks.into_iter().filter(|(_, a)| !a.is_ok()) {
                warnings.push(format!(
                    "Stop-N-Ack for SID {sid}: Accept {} ({})",
                    u8::from(a),
                    a.description()
                ));
            }
        })
    } else {
        ctl.stop()
    };
    if let Err(e) = stopped {
        warnings.push(format!("stopping the sessions: {e}"));
    }
    let control_local = ctl.local_addr();
    ctl.close();

    let mut sessions = Vec::new();
    for ((p, spec, packets), result) in jobs.into_iter().zip(results) {
        let outcome = result.map_err(|source| PingError::Socket {
            what: format!("run session {}", p.index + 1),
            source,
        })?;
        sessions.push(SessionReport {
            session: p.index + 1,
            sid: p.sid.to_string(),
            sender: p.socket.local_addr(),
            reflector: p.reflector,
            padding_length: padding,
            packet_len: packets.len(),
            reply_len: spec.format.reply_len(packets.len()),
            rx_timestamping: timestamping_name(p.socket.timestamping()),
            outcome,
        });
    }
    Ok(RunReport {
        server: config.server,
        control_local,
        offered_modes: est.offered.to_string(),
        selected_modes: sel.modes().to_string(),
        mode: sel.security.to_string(),
        dscp: config.dscp,
        format: FormatReport {
            security: sel.security.to_string(),
            reflector_timestamps: if base_format.timestamp_format == TimeFormat::Ptp {
                "PTPv2"
            } else {
                "NTP"
            },
            symmetrical_size: base_format.symmetrical_size,
            dscp_ecn_monitoring: base_format.dscp_ecn_monitoring,
            reflect_octets: base_format.reflect_octets.map(|r| r.length),
            individual_session_control: sel.has(Modes::INDIVIDUAL_SESSION_CONTROL),
        },
        clock: ClockReport {
            synchronized: clock.synchronized,
            error_ns: clock.error_ns(),
            source: source_name(clock.source),
            tai_offset_s: clock.tai_offset_s,
            leap_pending: clock.leap != LeapState::None,
            t1_format: if t1_format == TimeFormat::Ptp {
                "PTPv2"
            } else {
                "NTP"
            },
            t1_source: if t1_format == TimeFormat::Ptp {
                "user space, CLOCK_TAI, read just before sendmmsg"
            } else {
                "user space, CLOCK_REALTIME, read just before sendmmsg"
            },
        },
        sessions,
        refused,
        warnings,
        interrupted: interrupt.load(Ordering::Relaxed),
    })
}

/// A session socket: bound to the control connection's local address (so
/// the Request's Sender Address is right), with the test DSCP, TTL 255
/// (RFC 5357 §4.1.2) and kernel receive timestamps.
fn bind_socket(ip: IpAddr, port: u16, dscp: u8) -> Result<BatchSocket, PingError> {
    let opts = SocketOptions {
        tos: tos_from_dscp(dscp, 0),
        ttl: 255,
        timestamping: RxTimestamping::Auto,
        dual_stack: false,
        reuse_port: false,
        recv_buffer: Some(4 << 20),
    };
    let addr = SocketAddr::new(ip, port);
    BatchSocket::bind(addr, &opts).map_err(|source| PingError::Socket {
        what: format!("bind a test socket to {addr}"),
        source,
    })
}
