//! The responder's side of IKE_SA_INIT and IKE_AUTH: cookies, proposal
//! and KE checks without state, the half-open SA, the AUTH check, the
//! first CHILD_SA.

use super::support::*;
use super::*;

impl Endpoint {
    /// Cookie = version ‖ SHA-256(Ni | IPi | SPIi | secret) (RFC 7296 §2.6).
    pub(super) fn cookie_with(
        version: u8,
        secret: &[u8],
        ni: &[u8],
        remote: SocketAddr,
        spi_i: &[u8; 8],
    ) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(ni);
        match remote.ip() {
            std::net::IpAddr::V4(a) => h.update(a.octets()),
            std::net::IpAddr::V6(a) => h.update(a.octets()),
        }
        h.update(spi_i);
        h.update(secret);
        let mut c = vec![version];
        c.extend_from_slice(&h.finalize());
        c
    }

    /// The cookie to demand now, rotating the secret once it is older than
    /// `cookie_secret_lifetime` (the previous one stays valid).
    pub(super) fn cookie_for(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        ni: &[u8],
        remote: SocketAddr,
        spi_i: &[u8; 8],
    ) -> Vec<u8> {
        let born = *self.cookie_secret.2.get_or_insert(now);
        if now >= born + self.config.cookie_secret_lifetime {
            let mut fresh = Zeroizing::new([0u8; 32]);
            rng.fill(&mut fresh[..]);
            let version = self.cookie_secret.0.wrapping_add(1);
            let old = std::mem::replace(&mut self.cookie_secret, (version, fresh, Some(now)));
            self.cookie_secret_old = Some((old.0, old.1));
        }
        let (v, secret, _) = &self.cookie_secret;
        Self::cookie_with(*v, &secret[..], ni, remote, spi_i)
    }

    /// Whether a received cookie was made with the current or the previous
    /// secret.
    pub(super) fn cookie_valid(
        &self,
        got: &[u8],
        ni: &[u8],
        remote: SocketAddr,
        spi_i: &[u8; 8],
    ) -> bool {
        let Some(&version) = got.first() else {
            return false;
        };
        let (v, secret, _) = &self.cookie_secret;
        let secret: &[u8] = if version == *v {
            &secret[..]
        } else {
            match &self.cookie_secret_old {
                Some((ov, os)) if *ov == version => &os[..],
                _ => return false,
            }
        };
        let expect = Self::cookie_with(version, secret, ni, remote, spi_i);
        expect.len() == got.len() && bool::from(subtle::ConstantTimeEq::ct_eq(&expect[..], got))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn responder_init(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        hdr: &HeaderRepr,
    ) {
        // A retransmitted request: replay our response.
        if let Some(k) = self.init_index.get(&(remote, hdr.spi_i)) {
            if let Some(sa) = self.sas.get(k) {
                if sa.init_req == msg {
                    let bytes = sa.init_resp.clone();
                    self.stats.retransmits_answered += 1;
                    let t = wrap(local, remote, bytes, self.config.natt_port);
                    self.transmits.push_back(t);
                }
                return;
            }
        }
        let payloads = match wire::parse_chain(hdr.next_payload, &msg[HEADER_LEN..]) {
            Ok(p) => p,
            Err(wire::WireError::UnsupportedCritical(t)) => {
                self.stateless_reply(
                    local,
                    remote,
                    hdr,
                    msg.len(),
                    notify::UNSUPPORTED_CRITICAL_PAYLOAD,
                    &[t],
                );
                return;
            }
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        let mut sa_p = None;
        let mut ke_p = None;
        let mut nonce = None;
        let mut natd_src = Vec::new();
        let mut natd_dst = Vec::new();
        for p in &payloads {
            match p {
                Payload::Sa(props) => sa_p = Some(props),
                Payload::Ke { group, data } => ke_p = Some((*group, data)),
                Payload::Nonce(n) => nonce = Some(n),
                Payload::Notify(n) if n.ntype == notify::NAT_DETECTION_SOURCE_IP => {
                    natd_src.push(n.data.clone())
                }
                Payload::Notify(n) if n.ntype == notify::NAT_DETECTION_DESTINATION_IP => {
                    natd_dst.push(n.data.clone())
                }
                _ => {}
            }
        }
        let (Some(props), Some((group, kei)), Some(ni)) = (sa_p, ke_p, nonce) else {
            self.stateless_reply(local, remote, hdr, msg.len(), notify::INVALID_SYNTAX, &[]);
            return;
        };
        // DoS: bounded SA table and half-open table, cookies from the
        // threshold on.
        let half_open = self.half_open();
        if half_open >= self.config.half_open_limit || self.sas.len() >= self.config.max_sas {
            self.stats.half_open_refused += 1;
            return;
        }
        if half_open >= self.config.cookie_threshold {
            let ok = matches!(payloads.first(), Some(Payload::Notify(n))
                if n.ntype == notify::COOKIE && self.cookie_valid(&n.data, ni, remote, &hdr.spi_i));
            if !ok {
                let cookie = self.cookie_for(now, rng, ni, remote, &hdr.spi_i);
                self.stats.cookies_sent += 1;
                self.stateless_reply(local, remote, hdr, msg.len(), notify::COOKIE, &cookie);
                return;
            }
        }
        // Proposal selection: the peer's order, our suites.
        let chosen = props.iter().find_map(|p| {
            self.config
                .ike_suites
                .iter()
                .find(|s| s.offered_in(p))
                .map(|s| (p.number, *s))
        });
        let Some((prop_no, suite)) = chosen else {
            self.stateless_reply(
                local,
                remote,
                hdr,
                msg.len(),
                notify::NO_PROPOSAL_CHOSEN,
                &[],
            );
            return;
        };
        if group != suite.dh.id() {
            // Does the peer also offer a group whose KE it sent? Prefer a
            // suite matching the KE it sent, else ask for ours.
            let alt = props.iter().find_map(|p| {
                self.config
                    .ike_suites
                    .iter()
                    .find(|s| s.dh.id() == group && s.offered_in(p))
                    .map(|s| (p.number, *s))
            });
            match alt {
                Some((n, s)) => {
                    return self.responder_init_accept(
                        now, rng, local, remote, msg, hdr, n, s, kei, ni, &natd_src, &natd_dst,
                    )
                }
                None => {
                    self.stateless_reply(
                        local,
                        remote,
                        hdr,
                        msg.len(),
                        notify::INVALID_KE_PAYLOAD,
                        &suite.dh.id().to_be_bytes(),
                    );
                    return;
                }
            }
        }
        self.responder_init_accept(
            now, rng, local, remote, msg, hdr, prop_no, suite, kei, ni, &natd_src, &natd_dst,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn responder_init_accept(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        hdr: &HeaderRepr,
        prop_no: u8,
        suite: IkeSuite,
        kei: &[u8],
        ni: &[u8],
        natd_src: &[Vec<u8>],
        natd_dst: &[Vec<u8>],
    ) {
        // RFC 7296 §2.10: a nonce MUST be at least half the negotiated PRF's
        // key size (and 16 octets, checked by the parser). This also keeps
        // our nonce, as long as theirs, from growing the response.
        if ni.len() < suite.prf.key_len() / 2 {
            self.stats.malformed += 1;
            self.stateless_reply(local, remote, hdr, msg.len(), notify::INVALID_SYNTAX, &[]);
            return;
        }
        let ke = suite.dh.generate(rng);
        let Ok(g_ir) = ke.shared_secret(kei) else {
            self.stats.malformed += 1;
            self.stateless_reply(local, remote, hdr, msg.len(), notify::INVALID_SYNTAX, &[]);
            return;
        };
        let spi_r = self.fresh_spi(rng);
        // Our nonce as long as the initiator's (no amplification from it),
        // but at least half the PRF key and 16 octets (RFC 7296 §2.10).
        let nr_len = ni.len().clamp((suite.prf.key_len() / 2).max(16), 32);
        let mut nr = vec![0u8; nr_len];
        rng.fill(&mut nr);
        let mut resp_sa = suite.proposal(prop_no, &[]);
        resp_sa.number = prop_no;
        let mut p = vec![
            Payload::Sa(vec![resp_sa]),
            Payload::Ke {
                group: suite.dh.id(),
                data: ke.public().to_vec(),
            },
            Payload::Nonce(nr.clone()),
        ];
        // NAT-D only answers NAT-D (RFC 7296 §2.23).
        if !natd_src.is_empty() && !natd_dst.is_empty() {
            p.push(Payload::Notify(Notify::status(
                notify::NAT_DETECTION_SOURCE_IP,
                &crypto::nat_hash(&hdr.spi_i, &spi_r, local),
            )));
            p.push(Payload::Notify(Notify::status(
                notify::NAT_DETECTION_DESTINATION_IP,
                &crypto::nat_hash(&hdr.spi_i, &spi_r, remote),
            )));
        }
        p.push(Payload::Notify(Notify::status(
            notify::CHILDLESS_IKEV2_SUPPORTED,
            &[],
        )));
        let h = HeaderRepr {
            spi_i: hdr.spi_i,
            spi_r,
            next_payload: 0,
            exchange_type: exchange::IKE_SA_INIT,
            flags: FLAG_R,
            message_id: 0,
            length: 0,
        };
        let resp = clear_message(h, &p);
        let (nat, nat_local) = nat_detected(&hdr.spi_i, &[0; 8], remote, local, natd_src, natd_dst);
        let Some(keys) = derive_ike_keys(suite, ni, &nr, &g_ir, &hdr.spi_i, &spi_r, false) else {
            return;
        };
        let sa = IkeSa {
            spi_i: hdr.spi_i,
            spi_r,
            initiator: false,
            state: State::HalfOpen,
            local,
            peer: remote,
            suite,
            keys: Some(keys),
            ni: ni.to_vec(),
            nr,
            ke: None,
            init_from: Some(remote),
            init_req: msg.to_vec(),
            init_resp: resp.clone(),
            cookie: None,
            invalid_ke_retries: 0,
            peer_id: None,
            want_peer_id: None,
            child_params: None,
            child_spi: 0,
            children: Vec::new(),
            peer_childless: false,
            next_msg_id: 0,
            outstanding: None,
            expected_in: 1,
            last_response: None,
            current_request: Vec::new(),
            nat,
            nat_local,
            keepalive_at: now,
            created: now,
            last_heard: now,
            rekeyed_at: None,
            collision: None,
            silent: false,
            established_at: now,
            child_since: HashMap::new(),
            child_collisions: HashMap::new(),
        };
        self.transmits
            .push_back(wrap(local, remote, resp, self.config.natt_port));
        self.init_index.insert((remote, hdr.spi_i), spi_r);
        self.sas.insert(spi_r, sa);
    }

    /// An unencrypted IKE_SA_INIT response carrying one notify, keeping no
    /// state (errors, COOKIE, INVALID_KE_PAYLOAD). The source of the request
    /// is unauthenticated (it may be a spoofed victim), so a reply larger
    /// than the request (`request_len` IKE octets) is not sent: no real
    /// IKE_SA_INIT (SA, KE and Nonce payloads) is that small, only probes
    /// and floods are.
    pub(super) fn stateless_reply(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        hdr: &HeaderRepr,
        request_len: usize,
        ntype: u16,
        data: &[u8],
    ) {
        let h = HeaderRepr {
            spi_i: hdr.spi_i,
            spi_r: [0; 8],
            next_payload: 0,
            exchange_type: exchange::IKE_SA_INIT,
            flags: FLAG_R,
            message_id: 0,
            length: 0,
        };
        let m = clear_message(h, &[Payload::Notify(Notify::status(ntype, data))]);
        if m.len() > request_len {
            self.stats.replies_suppressed += 1;
            return;
        }
        self.transmits
            .push_back(wrap(local, remote, m, self.config.natt_port));
    }

    pub(super) fn responder_auth(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        sa: &mut IkeSa,
        hdr: &HeaderRepr,
        payloads: &[Payload],
    ) -> bool {
        let mut idi = None;
        let mut auth = None;
        let mut sa_p = None;
        let mut tsi = None;
        let mut tsr = None;
        let mut transport = false;
        let mut initial_contact = false;
        for p in payloads {
            match p {
                Payload::Notify(n) if n.ntype == notify::INITIAL_CONTACT => initial_contact = true,
                Payload::IdI(i) => idi = Some(i.clone()),
                Payload::Auth { method, data } => auth = Some((*method, data.clone())),
                Payload::Sa(s) => sa_p = Some(s.clone()),
                Payload::TsI(t) => tsi = Some(t.clone()),
                Payload::TsR(t) => tsr = Some(t.clone()),
                Payload::Notify(n) if n.ntype == notify::USE_TRANSPORT_MODE => transport = true,
                _ => {}
            }
        }
        let (Some(idi), Some((method, auth_data))) = (idi, auth) else {
            self.respond(
                sa,
                exchange::IKE_AUTH,
                hdr.message_id,
                &[Payload::Notify(Notify::status(notify::INVALID_SYNTAX, &[]))],
                rng,
            );
            self.sa_gone(sa, DeleteReason::PeerError(notify::INVALID_SYNTAX));
            return false;
        };
        let keys = sa.keys.as_ref().expect("half-open SA has keys");
        let prf = sa.suite.prf;
        let mut signed = sa.init_req.clone();
        signed.extend_from_slice(&sa.nr);
        signed.extend_from_slice(&prf.prf(&keys.sk_pi, &idi.body()));
        let local_id = self.config.local_id.clone();
        let ctx = AuthContext {
            prf,
            signed_octets: &signed,
            signer: &idi,
            other: &local_id,
        };
        if self.auth.verify(&ctx, method, &auth_data).is_err() {
            self.respond(
                sa,
                exchange::IKE_AUTH,
                hdr.message_id,
                &[Payload::Notify(Notify::status(
                    notify::AUTHENTICATION_FAILED,
                    &[],
                ))],
                rng,
            );
            self.sa_gone(sa, DeleteReason::AuthenticationFailed);
            return false;
        }
        let mut signed_r = sa.init_resp.clone();
        signed_r.extend_from_slice(&sa.ni);
        signed_r.extend_from_slice(&prf.prf(&keys.sk_pr, &local_id.body()));
        let ctx = AuthContext {
            prf,
            signed_octets: &signed_r,
            signer: &local_id,
            other: &idi,
        };
        let Ok((m, our_auth)) = self.auth.sign(&ctx) else {
            self.respond(
                sa,
                exchange::IKE_AUTH,
                hdr.message_id,
                &[Payload::Notify(Notify::status(
                    notify::AUTHENTICATION_FAILED,
                    &[],
                ))],
                rng,
            );
            self.sa_gone(sa, DeleteReason::AuthenticationFailed);
            return false;
        };
        let mut out = vec![
            Payload::IdR(local_id),
            Payload::Auth {
                method: m,
                data: our_auth,
            },
        ];
        if initial_contact {
            // RFC 7296 §2.4: the peer has no other SA with us (it restarted):
            // forget every other SA with the same authenticated identity.
            self.forget_peer(&idi);
        }
        sa.peer_id = Some(idi);
        let mut child = None;
        if let (Some(props), Some(tsi), Some(tsr)) = (sa_p, tsi, tsr) {
            let mode = if transport {
                ChildMode::Transport
            } else {
                ChildMode::Tunnel
            };
            match self.accept_child(
                rng,
                sa,
                &props,
                &tsi,
                &tsr,
                mode,
                None,
                &sa.ni.clone(),
                &sa.nr.clone(),
            ) {
                Ok((c, resp)) => {
                    if transport {
                        out.push(Payload::Notify(Notify::status(
                            notify::USE_TRANSPORT_MODE,
                            &[],
                        )));
                    }
                    out.extend(resp);
                    child = Some(c);
                }
                Err(n) => out.push(Payload::Notify(Notify::status(n, &[]))),
            }
        }
        self.respond(sa, exchange::IKE_AUTH, hdr.message_id, &out, rng);
        sa.state = State::Established;
        sa.established_at = now;
        if let Some(c) = child {
            sa.child_since.insert(c.spi_i, now);
            sa.children.push(c);
        }
        if let Some(info) = sa.info() {
            self.events.push_back(Event::IkeSaEstablished(info));
        }
        if let Some(c) = sa.children.first() {
            self.events.push_back(Event::ChildSaInstalled {
                ike_spi_i: sa.spi_i,
                ike_spi_r: sa.spi_r,
                child: c.clone(),
            });
        }
        true
    }

    /// Responder side of a CHILD_SA: picks an ESP proposal and answers
    /// with SA, TSi, TSr. Errors are notify types.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn accept_child(
        &mut self,
        rng: &mut dyn Rng,
        sa: &IkeSa,
        props: &[wire::Proposal],
        tsi: &[TrafficSelector],
        tsr: &[TrafficSelector],
        mode: ChildMode,
        pfs: Option<(u16, &[u8])>,
        ni: &[u8],
        nr: &[u8],
    ) -> Result<(ChildSaKeys, Vec<Payload>), u16> {
        let g_ir = pfs.map(|(_, g)| g);
        let chosen = props.iter().find_map(|p| {
            self.config
                .esp_suites
                .iter()
                .find(|s| s.offered_in(p))
                .map(|s| (p, *s))
        });
        let Some((p, suite)) = chosen else {
            return Err(notify::NO_PROPOSAL_CHOSEN);
        };
        // PFS: the KE's group must be one the chosen proposal offers.
        if let Some((group, _)) = pfs {
            let offered = p
                .transforms
                .iter()
                .any(|t| t.ttype == wire::ttype::DH && t.id == group);
            if !offered {
                return Err(notify::NO_PROPOSAL_CHOSEN);
            }
        }
        // Narrow to policy (RFC 7296 §2.9): TSi is the peer's side here.
        let (tsi, tsr) = match &self.config.child_policy {
            Some(pol) => (narrow(tsi, &pol.remote), narrow(tsr, &pol.local)),
            None => (tsi.to_vec(), tsr.to_vec()),
        };
        if tsi.is_empty() || tsr.is_empty() {
            return Err(notify::TS_UNACCEPTABLE);
        }
        let spi_i = spi32(&p.spi).ok_or(notify::INVALID_SYNTAX)?;
        let spi_r = fresh_esp_spi(rng);
        let keys = sa.keys.as_ref().ok_or(notify::TEMPORARY_FAILURE)?;
        let c = child_keys(
            sa.suite.prf,
            &keys.sk_d,
            suite,
            g_ir,
            ni,
            nr,
            spi_i,
            spi_r,
            false,
            tsi.clone(),
            tsr.clone(),
            mode,
            sa,
        )
        .ok_or(notify::TEMPORARY_FAILURE)?;
        let mut resp_p = suite.proposal(p.number, spi_r);
        resp_p.number = p.number;
        if let Some((group, _)) = pfs {
            resp_p
                .transforms
                .push(wire::Transform::new(wire::ttype::DH, group));
        }
        Ok((
            c,
            vec![
                Payload::Sa(vec![resp_p]),
                Payload::TsI(tsi),
                Payload::TsR(tsr),
            ],
        ))
    }
}
