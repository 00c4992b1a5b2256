//! `ricochet-ike-peer`: runs the sans-IO IKEv2 endpoint on real UDP sockets
//! (ports 500 and 4500 of one address), as responder or initiator, and prints
//! one line per event. A lab and test tool: the interop tests against
//! strongSwan drive it in a network namespace.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use ricochet_ike::info::hex_lower;
use ricochet_ike::EncrAlg;
use ricochet_ike::{
    ChildMode, ChildParams, Config, Endpoint, EspSuite, Event, Identification, IkeSuite,
    InitiateParams, OsRng, PskAuthenticator, PskStore, TrafficSelector,
};
use ricochet_protocol::crypto::EspGcm128;

const EXAMPLES: &str = "\
Examples:
  # responder on 198.18.0.2 (ports 500 and 4500), PSKs from a 0600 file:
  ricochet-ike-peer --listen 198.18.0.2 --id r.ike.test --psk-file psk.txt --run-ms 10000

  # initiate a childless IKE SA with DH group 31, rekey it after 1 s:
  ricochet-ike-peer --listen 198.18.0.2 --id r.ike.test --psk-file psk.txt \\
      --initiate 198.18.0.1 --peer-id s.ike.test --dh 31 --rekey-ike-ms 1000

  # with a CHILD_SA (tunnel, one host selector each way):
  ricochet-ike-peer --listen 198.18.0.2 --id r.ike.test --psk-file psk.txt \\
      --initiate 198.18.0.1 --peer-id s.ike.test --child 198.19.0.2,198.19.0.1

PSK file: one `IDENTITY SECRET` per line (`0x...` for hex), mode 0600.
Output: one line per event (established, child, rekeyed, deleted, alive).";

/// Run Ricochet's IKEv2 endpoint on UDP 500/4500 (lab and interop tool).
#[derive(Parser, Debug)]
#[command(
    version,
    about = "Run Ricochet's IKEv2 endpoint on UDP 500/4500 (lab and interop tool)",
    after_help = EXAMPLES
)]
struct Args {
    /// Local address to bind ports 500 and 4500 on.
    #[arg(long)]
    listen: IpAddr,
    /// Our identity (FQDN).
    #[arg(long)]
    id: String,
    /// PSK file (mode 0600): `IDENTITY SECRET` per line.
    #[arg(long)]
    psk_file: PathBuf,
    /// Initiate an IKE SA to this address (else: responder only).
    #[arg(long)]
    initiate: Option<IpAddr>,
    /// The responder's identity (sent as IDr and checked).
    #[arg(long)]
    peer_id: Option<String>,
    /// Only this DH group (14, 19 or 31); default: all, 19 first.
    #[arg(long)]
    dh: Option<u16>,
    /// Request a CHILD_SA: `LOCAL_TS,REMOTE_TS` (host addresses).
    #[arg(long)]
    child: Option<String>,
    /// Rekey the (first) IKE SA this long after it is established.
    #[arg(long)]
    rekey_ike_ms: Option<u64>,
    /// Rekey the first CHILD_SA this long after it is installed.
    #[arg(long)]
    rekey_child_ms: Option<u64>,
    /// Use PFS (a KE in the IKE SA's group) when we rekey a CHILD_SA.
    #[arg(long)]
    child_pfs: bool,
    /// Send a liveness check this long after the last establishment/rekey.
    #[arg(long)]
    liveness_ms: Option<u64>,
    /// Delete the IKE SA this long after establishment (after any rekey).
    #[arg(long)]
    delete_ms: Option<u64>,
    /// Hold every datagram we send this long (to make exchanges cross in
    /// tests, e.g. a simultaneous rekey).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Exit after this long (bounded run).
    #[arg(long, default_value_t = 20_000)]
    run_ms: u64,
    /// Exit when no IKE SA is left after one was established or failed.
    #[arg(long)]
    exit_when_idle: bool,
    /// LAB ONLY: print SK_d, the RFC 7717 key and CHILD_SA keys (like
    /// charon's level-4 log) so tests can compare them with a peer's.
    #[arg(long)]
    insecure_print_keys: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ricochet-ike-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_child(s: &str) -> Result<ChildParams, String> {
    let (l, r) = s
        .split_once(',')
        .ok_or("--child wants LOCAL_TS,REMOTE_TS, e.g. 198.19.0.2,198.19.0.1")?;
    let l: IpAddr = l.parse().map_err(|e| format!("--child local: {e}"))?;
    let r: IpAddr = r.parse().map_err(|e| format!("--child remote: {e}"))?;
    Ok(ChildParams {
        ts_i: vec![TrafficSelector::host(l)],
        ts_r: vec![TrafficSelector::host(r)],
        mode: ChildMode::Tunnel,
    })
}

fn run(args: &Args) -> Result<(), String> {
    let store = PskStore::load(&args.psk_file).map_err(|e| e.to_string())?;
    let mut config = Config::new(Identification::fqdn(&args.id));
    if let Some(g) = args.dh {
        config.ike_suites = match g {
            19 => vec![IkeSuite::GCM128_SHA256_ECP256],
            31 => vec![IkeSuite::GCM128_SHA256_X25519],
            14 => vec![IkeSuite::CBC256_SHA256_MODP2048],
            _ => return Err(format!("--dh {g}: supported groups are 14, 19 and 31")),
        };
    }
    config.esp_suites = vec![EspSuite::GCM128, EspSuite::CBC128_SHA256];
    config.child_pfs = args.child_pfs;
    // Every argument is checked before any socket is bound.
    let child = args.child.as_deref().map(parse_child).transpose()?;
    let natt = config.natt_port;
    let mut rng = OsRng;
    let mut ep = Endpoint::new(config, Box::new(PskAuthenticator { store }), &mut rng);
    let s500 = UdpSocket::bind(SocketAddr::new(args.listen, 500)).map_err(|e| {
        format!(
            "bind {}:500: {e} (root and a free port needed)",
            args.listen
        )
    })?;
    let s4500 = UdpSocket::bind(SocketAddr::new(args.listen, natt))
        .map_err(|e| format!("bind {}:{natt}: {e}", args.listen))?;
    for s in [&s500, &s4500] {
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let start = Instant::now();
    let deadline = start + Duration::from_millis(args.run_ms);
    if let Some(peer) = args.initiate {
        ep.initiate(
            start,
            &mut rng,
            InitiateParams {
                local: SocketAddr::new(args.listen, 500),
                peer: SocketAddr::new(peer, 500),
                peer_id: args.peer_id.as_deref().map(Identification::fqdn),
                child,
            },
        )
        .map_err(|e| e.to_string())?;
    }
    println!("ready {}", args.listen);
    let mut current: Option<([u8; 8], [u8; 8])> = None;
    let mut child_spi: Option<u32> = None;
    let mut est_at: Option<Instant> = None;
    let mut child_at: Option<Instant> = None;
    let mut did_rekey_ike = false;
    let mut did_rekey_child = false;
    let mut did_liveness = false;
    let mut did_delete = false;
    let mut seen_any = false;
    // Datagrams wait here `--delay-ms` before they leave.
    let mut outbox: std::collections::VecDeque<(Instant, ricochet_ike::Transmit)> =
        std::collections::VecDeque::new();
    // Inbound ESP SAs (AES-GCM-128 only), to show the CHILD_SA keys open the
    // peer's real ESP packets (UDP-encapsulated on the NAT-T port).
    let mut esp_in: Vec<(u32, EspGcm128)> = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= deadline {
            println!("timeout");
            return Ok(());
        }
        // Scheduled actions.
        if let (Some((i, r)), Some(t)) = (current, est_at) {
            let act = |ms: Option<u64>, done: bool| {
                ms.is_some_and(|ms| !done && now >= t + Duration::from_millis(ms))
            };
            // One action per turn, in this order; each waits for the
            // previous one's events (a rekey moves `current` to the new SA).
            let child_due = match (child_spi, child_at) {
                (Some(_), Some(ct)) => args
                    .rekey_child_ms
                    .is_some_and(|ms| !did_rekey_child && now >= ct + Duration::from_millis(ms)),
                _ => false,
            };
            if act(args.rekey_ike_ms, did_rekey_ike) {
                did_rekey_ike = ep.rekey_ike_sa(now, &mut rng, i, r).is_ok();
            } else if child_due {
                let c = child_spi.unwrap_or_default();
                did_rekey_child = ep.rekey_child_sa(now, &mut rng, i, r, c).is_ok();
            } else if act(args.liveness_ms, did_liveness) {
                did_liveness = ep.check_liveness(now, &mut rng, i, r).is_ok();
            } else if (args.rekey_ike_ms.is_none() || did_rekey_ike)
                && (args.rekey_child_ms.is_none() || did_rekey_child)
                && (args.liveness_ms.is_none() || did_liveness)
                && act(args.delete_ms, did_delete)
            {
                did_delete = ep.delete_ike_sa(now, &mut rng, i, r).is_ok();
            }
        }
        while let Some(t) = ep.poll_transmit() {
            outbox.push_back((now + Duration::from_millis(args.delay_ms), t));
        }
        while outbox.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, t)) = outbox.pop_front() else {
                break;
            };
            let s = if t.local.port() == natt {
                &s4500
            } else {
                &s500
            };
            if let Err(e) = s.send_to(&t.data, t.remote) {
                eprintln!("send to {}: {e}", t.remote);
            }
        }
        while let Some(ev) = ep.poll_event() {
            seen_any = true;
            print_event(&ev, args.insecure_print_keys);
            match &ev {
                Event::IkeSaEstablished(i) => {
                    current = Some((i.spi_i, i.spi_r));
                    est_at = Some(now);
                    if let Some(c) = &i.child {
                        child_spi = Some(c.spi_i);
                        child_at = Some(now);
                    }
                }
                Event::IkeSaRekeyed { new, .. } => {
                    current = Some((new.spi_i, new.spi_r));
                    est_at = Some(now);
                }
                Event::ChildSaInstalled { child, .. } => {
                    let inb = child.inbound();
                    if child.encr == (EncrAlg::AesGcm16 { key_bits: 128 }) {
                        if let Ok(k) = EspGcm128::from_keymat(inb.encr_key) {
                            esp_in.push((inb.spi, k));
                        }
                    }
                    child_spi = Some(child.spi_i);
                    if child_at.is_none() {
                        child_at = Some(now);
                    }
                }
                Event::IkeSaDeleted { spi_i, spi_r, .. } if current == Some((*spi_i, *spi_r)) => {
                    current = None;
                }
                _ => {}
            }
        }
        if args.exit_when_idle
            && seen_any
            && ep.established().is_empty()
            && current.is_none()
            && outbox.is_empty()
        {
            // Let the last datagrams leave, then stop.
            while let Some(t) = ep.poll_transmit() {
                let s = if t.local.port() == natt {
                    &s4500
                } else {
                    &s500
                };
                let _ = s.send_to(&t.data, t.remote);
            }
            println!("idle");
            return Ok(());
        }
        // Wait for a datagram or the next timer (at most 50 ms, so the
        // scheduled actions above run on time).
        let mut wait = Duration::from_millis(50).min(deadline - now);
        if let Some(t) = ep.poll_timeout() {
            wait = wait.min(t.saturating_duration_since(now));
        }
        if let Some((due, _)) = outbox.front() {
            wait = wait.min(due.saturating_duration_since(now));
        }
        let mut fds = [
            libc::pollfd {
                fd: s500.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: s4500.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of
        // the call; both descriptors stay open (owned by the sockets above).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait.as_millis() as libc::c_int) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("poll: {e}"));
            }
        }
        let now = Instant::now();
        for s in [&s500, &s4500] {
            loop {
                match s.recv_from(&mut buf) {
                    Ok((len, from)) => {
                        let local = s.local_addr().map_err(|e| e.to_string())?;
                        if local.port() == natt && len > 8 && buf[..4] != [0; 4] {
                            report_esp(&esp_in, &mut buf[..len]);
                            continue;
                        }
                        ep.handle_datagram(now, &mut rng, local, from, &buf[..len]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("recv: {e}")),
                }
            }
        }
        if let Some(t) = ep.poll_timeout() {
            if t <= now {
                ep.handle_timeout(now, &mut rng);
            }
        }
    }
}

/// Opens a UDP-encapsulated ESP packet with the matching inbound SA and
/// prints what it carried (nothing is forwarded: this is a key check).
fn report_esp(sas: &[(u32, EspGcm128)], pkt: &mut [u8]) {
    let spi = u32::from_be_bytes([pkt[0], pkt[1], pkt[2], pkt[3]]);
    let Some((_, sa)) = sas.iter().find(|(s, _)| *s == spi) else {
        println!("esp_unknown spi={spi:08x}");
        return;
    };
    match sa.open(pkt) {
        Ok(o) => println!(
            "esp spi={:08x} seq={} next_header={} payload_len={}",
            o.spi,
            o.seq,
            o.next_header,
            o.payload.len()
        ),
        Err(e) => println!("esp_bad spi={spi:08x} error={e}"),
    }
}

fn print_event(ev: &Event, keys: bool) {
    match ev {
        Event::IkeSaEstablished(i) => {
            println!(
                "established spi_i={} spi_r={} prf={:?} peer={} child={}",
                hex_lower(&i.spi_i),
                hex_lower(&i.spi_r),
                i.prf,
                i.peer,
                i.child.is_some()
            );
            if keys {
                println!(
                    "keys spi_i={} sk_d={} ippm={}",
                    hex_lower(&i.spi_i),
                    hex_lower(&i.sk_d),
                    hex_lower(&i.ippm_key())
                );
            }
        }
        Event::IkeSaRekeyed { old_spi_i, new, .. } => {
            println!(
                "rekeyed old_spi_i={} spi_i={} spi_r={} we_initiated={}",
                hex_lower(old_spi_i),
                hex_lower(&new.spi_i),
                hex_lower(&new.spi_r),
                new.we_initiated
            );
            if keys {
                println!(
                    "keys spi_i={} sk_d={} ippm={}",
                    hex_lower(&new.spi_i),
                    hex_lower(&new.sk_d),
                    hex_lower(&new.ippm_key())
                );
            }
        }
        Event::IkeSaDeleted {
            spi_i,
            spi_r,
            reason,
            ..
        } => println!(
            "deleted spi_i={} spi_r={} reason={reason:?}",
            hex_lower(spi_i),
            hex_lower(spi_r)
        ),
        Event::ChildSaInstalled { child, .. } => {
            println!(
                "child spi_i={:08x} spi_r={:08x} udp_encap={} mode={:?}",
                child.spi_i, child.spi_r, child.udp_encap, child.mode
            );
            if keys {
                println!(
                    "childkeys spi_i={:08x} sk_ei={} sk_er={} sk_ai={} sk_ar={}",
                    child.spi_i,
                    hex_lower(&child.sk_ei),
                    hex_lower(&child.sk_er),
                    hex_lower(&child.sk_ai),
                    hex_lower(&child.sk_ar)
                );
            }
        }
        Event::ChildSaDeleted { spi_i, spi_r, .. } => {
            println!("child_deleted spi_i={spi_i:08x} spi_r={spi_r:08x}")
        }
        Event::PeerAlive { spi_i, .. } => println!("alive spi_i={}", hex_lower(spi_i)),
    }
}
