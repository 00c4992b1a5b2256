//! Helpers of the endpoint without state of their own: message framing,
//! NAT-D, key derivation of IKE SAs and CHILD_SAs, selector narrowing, timer
//! jitter.

use super::*;

/// The parts of `proposed` inside `allowed` (each pairwise intersection).
pub(super) fn narrow(
    proposed: &[TrafficSelector],
    allowed: &[TrafficSelector],
) -> Vec<TrafficSelector> {
    let mut out = Vec::new();
    for p in proposed {
        for a in allowed {
            if let Some(x) = p.intersect(a) {
                if !out.contains(&x) {
                    out.push(x);
                }
            }
        }
    }
    out
}

/// A lifetime shortened by 0–9 % according to our own SPI, so two peers
/// with the same lifetime rarely start the same rekey at once.
pub(super) fn jittered(life: std::time::Duration, our_spi: &[u8; 8]) -> std::time::Duration {
    life - life * u32::from(our_spi[7] % 10) / 100
}

/// The start time that makes an automatic rekey fall due again a tenth of
/// the lifetime from `now`.
pub(super) fn retry_base(now: Instant, life: std::time::Duration, our_spi: &[u8; 8]) -> Instant {
    let j = jittered(life, our_spi);
    now.checked_sub(j - j / 10).unwrap_or(now)
}

pub(super) fn flags(initiator: bool, response: bool) -> u8 {
    (if initiator { FLAG_I } else { 0 }) | (if response { FLAG_R } else { 0 })
}

pub(super) fn clear_message(mut h: HeaderRepr, payloads: &[Payload]) -> Vec<u8> {
    let mut body = Vec::new();
    h.next_payload = wire::emit_chain(payloads, &mut body);
    h.length = (HEADER_LEN + body.len()) as u32;
    let mut m = vec![0u8; HEADER_LEN];
    h.emit(&mut m);
    m.extend_from_slice(&body);
    m
}

pub(super) fn wrap(
    local: SocketAddr,
    remote: SocketAddr,
    ike: Vec<u8>,
    natt_port: u16,
) -> Transmit {
    let data = if local.port() == natt_port {
        let mut d = Vec::with_capacity(ike.len() + 4);
        d.extend_from_slice(&NON_ESP_MARKER);
        d.extend_from_slice(&ike);
        d
    } else {
        ike
    };
    Transmit {
        local,
        remote,
        data,
    }
}

pub(super) fn fresh_esp_spi(rng: &mut dyn Rng) -> u32 {
    loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b);
        let s = u32::from_be_bytes(b);
        // 0..=255 are reserved (RFC 4303 §2.1).
        if s > 255 {
            return s;
        }
    }
}

/// NAT detection (RFC 7296 §2.23): (any NAT, we are behind one). Any NAT
/// when a received hash does not match the address it should (the peer may
/// fake its source hash to force UDP encapsulation, as strongSwan's libipsec
/// does; that counts too); we are behind one when the hash of our own
/// address as the peer saw it differs from our local address.
pub(super) fn nat_detected(
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    remote: SocketAddr,
    local: SocketAddr,
    src: &[Vec<u8>],
    dst: &[Vec<u8>],
) -> (bool, bool) {
    if src.is_empty() || dst.is_empty() {
        return (false, false);
    }
    let s = crypto::nat_hash(spi_i, spi_r, remote);
    let d = crypto::nat_hash(spi_i, spi_r, local);
    let remote_ok = src.iter().any(|h| h[..] == s[..]);
    let local_ok = dst.iter().any(|h| h[..] == d[..]);
    (!(remote_ok && local_ok), !local_ok)
}

/// SKEYSEED and the seven keys of a new IKE SA (RFC 7296 §2.14).
pub(super) fn derive_ike_keys(
    suite: IkeSuite,
    ni: &[u8],
    nr: &[u8],
    g_ir: &[u8],
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    we_initiate: bool,
) -> Option<SaKeys> {
    let skeyseed = kdf::skeyseed(suite.prf, ni, nr, g_ir);
    split_keys(suite, &skeyseed, ni, nr, spi_i, spi_r, we_initiate)
}

pub(super) fn split_keys(
    suite: IkeSuite,
    skeyseed: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    we_initiate: bool,
) -> Option<SaKeys> {
    let lens = SkLengths {
        prf_key: suite.prf.key_len(),
        integ_key: suite.integ.map_or(0, |i| i.key_len()),
        encr_key: suite.encr.keymat_len(),
    };
    let k = kdf::ike_sa_keys(suite.prf, skeyseed, ni, nr, spi_i, spi_r, lens).ok()?;
    let i2r = SkKeys::new(suite.encr, suite.integ, &k.sk_ei, &k.sk_ai);
    let r2i = SkKeys::new(suite.encr, suite.integ, &k.sk_er, &k.sk_ar);
    let (out, inb) = if we_initiate { (i2r, r2i) } else { (r2i, i2r) };
    Some(SaKeys {
        sk_d: k.sk_d.clone(),
        sk_pi: k.sk_pi.clone(),
        sk_pr: k.sk_pr.clone(),
        out,
        inb,
    })
}

/// The SA that replaces `old` after an IKE SA rekey (RFC 7296 §2.18).
#[allow(clippy::too_many_arguments)]
pub(super) fn rekeyed_sa(
    old: &IkeSa,
    suite: IkeSuite,
    old_sk_d: &[u8],
    g_ir: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: [u8; 8],
    spi_r: [u8; 8],
    we_initiate: bool,
    now: Instant,
) -> Option<IkeSa> {
    let skeyseed = kdf::rekey_skeyseed(old.suite.prf, old_sk_d, g_ir, ni, nr);
    let keys = split_keys(suite, &skeyseed, ni, nr, &spi_i, &spi_r, we_initiate)?;
    Some(IkeSa {
        spi_i,
        spi_r,
        initiator: we_initiate,
        state: State::Established,
        local: old.local,
        peer: old.peer,
        suite,
        keys: Some(keys),
        ni: ni.to_vec(),
        nr: nr.to_vec(),
        ke: None,
        init_from: None,
        init_req: Vec::new(),
        init_resp: Vec::new(),
        cookie: None,
        invalid_ke_retries: 0,
        peer_id: old.peer_id.clone(),
        want_peer_id: old.want_peer_id.clone(),
        child_params: None,
        child_spi: 0,
        children: Vec::new(),
        peer_childless: old.peer_childless,
        next_msg_id: 0,
        outstanding: None,
        expected_in: 0,
        last_response: None,
        current_request: Vec::new(),
        nat: old.nat,
        nat_local: old.nat_local,
        keepalive_at: now,
        created: now,
        last_heard: now,
        rekeyed_at: None,
        collision: None,
        silent: false,
        established_at: now,
        child_since: HashMap::new(),
        child_collisions: HashMap::new(),
    })
}

/// KEYMAT for a CHILD_SA (RFC 7296 §2.17) split into the four keys.
#[allow(clippy::too_many_arguments)]
pub(super) fn child_keys(
    prf: Prf,
    sk_d: &[u8],
    suite: EspSuite,
    g_ir: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    spi_i: u32,
    spi_r: u32,
    we_initiated: bool,
    ts_i: Vec<TrafficSelector>,
    ts_r: Vec<TrafficSelector>,
    mode: ChildMode,
    sa: &IkeSa,
) -> Option<ChildSaKeys> {
    let km = kdf::child_sa_keymat(prf, sk_d, g_ir, ni, nr, suite.keymat_len()).ok()?;
    let e = suite.encr.keymat_len();
    let a = suite.integ.map_or(0, |i| i.key_len());
    let part = |from: usize, len: usize| Zeroizing::new(km[from..from + len].to_vec());
    Some(ChildSaKeys {
        spi_i,
        spi_r,
        encr: suite.encr,
        integ: suite.integ,
        esn: false,
        mode,
        sk_ei: part(0, e),
        sk_ai: part(e, a),
        sk_er: part(e + a, e),
        sk_ar: part(2 * e + a, a),
        we_initiated,
        ts_i,
        ts_r,
        udp_encap: sa.nat,
        local: sa.local,
        peer: sa.peer,
    })
}
