//! IKEv2 harness (`ricochet-ike`): the wire parsers on each datagram, and a
//! responder [`Endpoint`] fed the whole input as a sequence of datagrams from
//! unauthenticated peers (ports 500 and 4500, several source ports, time
//! advancing between them so retransmission, half-open expiry and cookie
//! secret rotation run too).
//!
//! Input: one configuration octet, then records `ctl (1) | len (2, BE) |
//! len octets`. `ctl` bit 0: the datagram arrives on the NAT-T port (the
//! non-ESP marker is expected); bits 1–2: which of four source ports it
//! comes from; bit 3: before it, time advances by 10 s and the endpoint's
//! timers run. Configuration bit 0: demand cookies from the first half-open
//! SA on; bit 1: tiny half-open limit (2).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ricochet_ike::endpoint::MAX_MESSAGE;
use ricochet_ike::wire::{self, Header, HeaderRepr, PayloadIter, HEADER_LEN};
use ricochet_ike::{Config, Endpoint, Identification, PskAuthenticator, PskStore, SeqRng};

use crate::Input;

/// NAT-T port of the harness's endpoint.
const NATT: u16 = 4500;

/// `ctl` bit: the datagram arrives on the NAT-T port.
pub const CTL_NATT: u8 = 1;

/// Builds one record of the input format (for the seeds).
pub fn record(ctl: u8, datagram: &[u8]) -> Vec<u8> {
    let len = datagram.len().min(usize::from(u16::MAX));
    let mut v = vec![ctl];
    v.extend_from_slice(&(len as u16).to_be_bytes());
    v.extend_from_slice(&datagram[..len]);
    v
}

/// The parsers on one IKE message: never panic; a chain that parses
/// re-emits to octets that parse to the same payloads.
pub fn parse(ike: &[u8]) {
    let Ok(h) = Header::new_checked(ike) else {
        return;
    };
    let hdr = HeaderRepr::parse(&h);
    assert_eq!(hdr.length as usize, ike.len());
    let chain = &ike[HEADER_LEN..];
    // The zero-copy walk ends (the SK payload, when met, is the last).
    let mut walked = 0usize;
    for raw in PayloadIter::new(hdr.next_payload, chain) {
        match raw {
            Ok(r) => walked += wire::GENERIC_HEADER_LEN + r.body.len(),
            Err(_) => break,
        }
    }
    assert!(walked <= chain.len());
    if let Ok(payloads) = wire::parse_chain(hdr.next_payload, chain) {
        let mut out = Vec::new();
        let first = wire::emit_chain(&payloads, &mut out);
        let again = wire::parse_chain(first, &out)
            .unwrap_or_else(|e| panic!("re-emitted chain does not parse: {e}"));
        assert_eq!(again, payloads, "re-emitted chain differs");
    }
}

/// The responder fed every record of `data` (see the module comment).
pub fn responder(data: &[u8]) {
    let mut input = Input::new(data);
    let cfg_bits = input.u8();
    let mut rng = SeqRng::new(0x1ce);
    let mut config = Config::new(Identification::fqdn("responder.fuzz"));
    config.natt_port = NATT;
    if cfg_bits & 1 != 0 {
        config.cookie_threshold = 0;
    }
    if cfg_bits & 2 != 0 {
        config.half_open_limit = 2;
    }
    let half_open_limit = config.half_open_limit;
    let max_sas = config.max_sas;
    let mut psks = PskStore::new();
    psks.insert("*", b"fuzz-psk");
    let mut ep = Endpoint::new(config, Box::new(PskAuthenticator { store: psks }), &mut rng);
    let mut now = Instant::now();
    let mut rest = input.rest();
    let mut records = 0;
    while rest.len() >= 3 && records < 64 {
        records += 1;
        let ctl = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let datagram = &rest[3..3 + len];
        rest = &rest[3 + len..];
        if ctl & 8 != 0 {
            now += Duration::from_secs(10);
            ep.handle_timeout(now, &mut rng);
            drain(&mut ep, None);
        }
        let port = if ctl & CTL_NATT != 0 { NATT } else { 500 };
        let local = SocketAddr::from(([198, 18, 0, 2], port));
        let remote = SocketAddr::from((
            [198, 18, 0, 1],
            [500, 4500, 1024, 65535][usize::from((ctl >> 1) & 3)],
        ));
        let ike = if port == NATT {
            datagram.strip_prefix(&[0u8; 4][..]).unwrap_or(&[])
        } else {
            datagram
        };
        parse(ike);
        ep.handle_datagram(now, &mut rng, local, remote, datagram);
        drain(&mut ep, Some((local, remote, datagram.len())));
        assert!(
            ep.half_open() <= half_open_limit,
            "half-open table over its limit"
        );
        assert!(
            ep.established().is_empty(),
            "an SA came up without authentication"
        );
        let _ = ep.poll_timeout();
        let _ = max_sas;
    }
}

/// Sends nothing anywhere: checks what the endpoint queued. In answer to a
/// datagram (`cause`), every reply goes back to its source from the address
/// it arrived at, is at most [`MAX_MESSAGE`] (+ marker), and a stateless one
/// (Responder SPI zero: no SA was created) is never larger than the
/// datagram.
fn drain(ep: &mut Endpoint, cause: Option<(SocketAddr, SocketAddr, usize)>) {
    while let Some(t) = ep.poll_transmit() {
        assert!(t.data.len() <= MAX_MESSAGE + 4, "oversized datagram");
        let Some((local, remote, rx_len)) = cause else {
            continue;
        };
        assert_eq!(
            (t.local, t.remote),
            (local, remote),
            "reply to another address"
        );
        let ike = if local.port() == NATT {
            assert_eq!(
                t.data.get(..4),
                Some(&[0u8; 4][..]),
                "NAT-T reply without the non-ESP marker"
            );
            &t.data[4..]
        } else {
            &t.data[..]
        };
        let h = Header::new_checked(ike).expect("our own message parses");
        let hdr = HeaderRepr::parse(&h);
        assert!(
            hdr.is_response(),
            "an unauthenticated peer made us send a request"
        );
        if hdr.spi_r == [0; 8] {
            assert!(
                t.data.len() <= rx_len,
                "stateless reply larger than its request"
            );
        }
    }
}
