//! The initiator's side of IKE_SA_INIT and IKE_AUTH: COOKIE and
//! INVALID_KE_PAYLOAD retries, NAT-T float, AUTH, the first CHILD_SA.

use super::support::*;
use super::*;

impl Endpoint {
    pub(super) fn send_init(&mut self, sa: &mut IkeSa, now: Instant) {
        let mut p = Vec::new();
        if let Some(c) = &sa.cookie {
            p.push(Payload::Notify(Notify::status(notify::COOKIE, c)));
        }
        let props = self
            .config
            .ike_suites
            .iter()
            .enumerate()
            .map(|(i, s)| s.proposal(i as u8 + 1, &[]))
            .collect();
        p.push(Payload::Sa(props));
        let ke = sa.ke.as_ref().expect("initiator holds its KE");
        p.push(Payload::Ke {
            group: ke.group.id(),
            data: ke.public().to_vec(),
        });
        p.push(Payload::Nonce(sa.ni.clone()));
        p.push(Payload::Notify(Notify::status(
            notify::NAT_DETECTION_SOURCE_IP,
            &crypto::nat_hash(&sa.spi_i, &[0; 8], sa.local),
        )));
        p.push(Payload::Notify(Notify::status(
            notify::NAT_DETECTION_DESTINATION_IP,
            &crypto::nat_hash(&sa.spi_i, &[0; 8], sa.peer),
        )));
        let h = HeaderRepr {
            spi_i: sa.spi_i,
            spi_r: [0; 8],
            next_payload: 0,
            exchange_type: exchange::IKE_SA_INIT,
            flags: FLAG_I,
            message_id: 0,
            length: 0,
        };
        let bytes = clear_message(h, &p);
        sa.init_req = bytes.clone();
        sa.next_msg_id = 1;
        sa.outstanding = Some(Outstanding {
            msg_id: 0,
            bytes: bytes.clone(),
            tries: 1,
            next_at: now + self.config.retransmit_timeout,
            kind: Pending::Init,
        });
        self.send(sa, bytes);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn initiator_init_response(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        hdr: &HeaderRepr,
    ) -> bool {
        if sa.state != State::InitSent {
            return true;
        }
        let Ok(payloads) = wire::parse_chain(hdr.next_payload, &msg[HEADER_LEN..]) else {
            self.stats.malformed += 1;
            return true;
        };
        // Error and control notifies first.
        for p in &payloads {
            if let Payload::Notify(n) = p {
                match n.ntype {
                    notify::COOKIE if n.data.len() <= 64 && !n.data.is_empty() => {
                        if sa.cookie.as_deref() == Some(&n.data[..]) {
                            return true; // same cookie again: ignore, wait for retransmit
                        }
                        sa.cookie = Some(n.data.clone());
                        self.send_init(sa, now);
                        return true;
                    }
                    notify::INVALID_KE_PAYLOAD if n.data.len() == 2 => {
                        let g = u16::from_be_bytes([n.data[0], n.data[1]]);
                        let ok = self.config.ike_suites.iter().any(|s| s.dh.id() == g);
                        if !ok
                            || sa.invalid_ke_retries >= 2
                            || sa.ke.as_ref().map(|k| k.group.id()) == Some(g)
                        {
                            self.sa_gone(sa, DeleteReason::PeerError(notify::INVALID_KE_PAYLOAD));
                            return false;
                        }
                        sa.invalid_ke_retries += 1;
                        let group = DhGroup::from_id(g).expect("configured group");
                        sa.ke = Some(group.generate(rng));
                        self.send_init(sa, now);
                        return true;
                    }
                    t if notify::is_error(t) => {
                        let reason = if t == notify::NO_PROPOSAL_CHOSEN {
                            DeleteReason::NoProposalChosen
                        } else {
                            DeleteReason::PeerError(t)
                        };
                        self.sa_gone(sa, reason);
                        return false;
                    }
                    _ => {}
                }
            }
        }
        let mut chosen = None;
        let mut ker = None;
        let mut nr = None;
        let mut natd_src = Vec::new();
        let mut natd_dst = Vec::new();
        for p in &payloads {
            match p {
                Payload::Sa(props) if props.len() == 1 => {
                    chosen = self
                        .config
                        .ike_suites
                        .iter()
                        .find(|s| s.offered_in(&props[0]))
                        .copied();
                }
                Payload::Ke { group, data } => ker = Some((*group, data.clone())),
                Payload::Nonce(n) => nr = Some(n.clone()),
                Payload::Notify(n) => match n.ntype {
                    notify::NAT_DETECTION_SOURCE_IP => natd_src.push(n.data.clone()),
                    notify::NAT_DETECTION_DESTINATION_IP => natd_dst.push(n.data.clone()),
                    notify::CHILDLESS_IKEV2_SUPPORTED => sa.peer_childless = true,
                    _ => {}
                },
                _ => {}
            }
        }
        let (Some(suite), Some((group, ker)), Some(nr)) = (chosen, ker, nr) else {
            self.stats.malformed += 1;
            return true;
        };
        let Some(ke) = sa.ke.take() else { return true };
        if group != ke.group.id() || suite.dh != ke.group {
            sa.ke = Some(ke);
            self.stats.malformed += 1;
            return true;
        }
        let Ok(g_ir) = ke.shared_secret(&ker) else {
            sa.ke = Some(ke);
            self.stats.malformed += 1;
            return true;
        };
        sa.spi_r = hdr.spi_r;
        sa.suite = suite;
        sa.nr = nr;
        sa.init_resp = msg.to_vec();
        (sa.nat, sa.nat_local) =
            nat_detected(&sa.spi_i, &sa.spi_r, remote, local, &natd_src, &natd_dst);
        let Some(keys) = derive_ike_keys(suite, &sa.ni, &sa.nr, &g_ir, &sa.spi_i, &sa.spi_r, true)
        else {
            return false;
        };
        sa.keys = Some(keys);
        sa.outstanding = None;
        if sa.child_params.is_none() && !sa.peer_childless {
            // RFC 6023 §3: no childless IKE_AUTH to a peer that did not offer it.
            self.sa_gone(
                sa,
                DeleteReason::PeerError(notify::CHILDLESS_IKEV2_SUPPORTED),
            );
            return false;
        }
        if sa.nat {
            // NAT-T: float to port 4500 (RFC 7296 §2.23).
            sa.local.set_port(self.config.natt_port);
            sa.peer.set_port(self.config.natt_port);
        }
        // IKE_AUTH.
        let keys = sa.keys.as_ref().expect("just set");
        let prf = suite.prf;
        let local_id = self.config.local_id.clone();
        let mut signed = sa.init_req.clone();
        signed.extend_from_slice(&sa.nr);
        signed.extend_from_slice(&prf.prf(&keys.sk_pi, &local_id.body()));
        // Without a configured peer identity the peer is known by its
        // address (as strongSwan does): a PSK file entry for the address, or
        // the `*` entry, applies.
        let other = sa
            .want_peer_id
            .clone()
            .unwrap_or_else(|| Identification::address(sa.peer.ip()));
        let ctx = AuthContext {
            prf,
            signed_octets: &signed,
            signer: &local_id,
            other: &other,
        };
        let Ok((m, auth)) = self.auth.sign(&ctx) else {
            self.sa_gone(sa, DeleteReason::AuthenticationFailed);
            return false;
        };
        let mut p = vec![Payload::IdI(local_id)];
        // INITIAL_CONTACT when this is our only SA with the peer (RFC 7296 §2.4).
        if !self.sas.values().any(|s| s.peer.ip() == sa.peer.ip()) {
            p.push(Payload::Notify(Notify::status(
                notify::INITIAL_CONTACT,
                &[],
            )));
        }
        if let Some(r) = &sa.want_peer_id {
            p.push(Payload::IdR(r.clone()));
        }
        p.push(Payload::Auth {
            method: m,
            data: auth,
        });
        if let Some(cp) = sa.child_params.clone() {
            let spi = fresh_esp_spi(rng);
            sa.child_spi = spi;
            if cp.mode == ChildMode::Transport {
                p.push(Payload::Notify(Notify::status(
                    notify::USE_TRANSPORT_MODE,
                    &[],
                )));
            }
            p.push(Payload::Sa(self.esp_proposals(spi)));
            p.push(Payload::TsI(cp.ts_i.clone()));
            p.push(Payload::TsR(cp.ts_r.clone()));
        }
        sa.state = State::AuthSent;
        self.start_request(sa, now, rng, exchange::IKE_AUTH, p, Pending::Auth);
        true
    }

    pub(super) fn initiator_auth_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        payloads: &[Payload],
    ) -> bool {
        let mut idr = None;
        let mut auth = None;
        let mut props = None;
        let mut tsi = None;
        let mut tsr = None;
        for p in payloads {
            match p {
                Payload::IdR(i) => idr = Some(i.clone()),
                Payload::Auth { method, data } => auth = Some((*method, data.clone())),
                Payload::Sa(s) => props = Some(s.clone()),
                Payload::TsI(t) => tsi = Some(t.clone()),
                Payload::TsR(t) => tsr = Some(t.clone()),
                Payload::Notify(n) if n.ntype == notify::AUTHENTICATION_FAILED => {
                    self.sa_gone(sa, DeleteReason::AuthenticationFailed);
                    return false;
                }
                _ => {}
            }
        }
        let (Some(idr), Some((method, data))) = (idr, auth) else {
            let err = payloads.iter().find_map(|p| match p {
                Payload::Notify(n) if notify::is_error(n.ntype) => Some(n.ntype),
                _ => None,
            });
            self.sa_gone(
                sa,
                DeleteReason::PeerError(err.unwrap_or(notify::INVALID_SYNTAX)),
            );
            return false;
        };
        if let Some(want) = &sa.want_peer_id {
            if want != &idr {
                self.sa_gone(sa, DeleteReason::AuthenticationFailed);
                return false;
            }
        }
        let keys = sa.keys.as_ref().expect("keys after IKE_SA_INIT");
        let prf = sa.suite.prf;
        let mut signed = sa.init_resp.clone();
        signed.extend_from_slice(&sa.ni);
        signed.extend_from_slice(&prf.prf(&keys.sk_pr, &idr.body()));
        let local_id = self.config.local_id.clone();
        let ctx = AuthContext {
            prf,
            signed_octets: &signed,
            signer: &idr,
            other: &local_id,
        };
        if self.auth.verify(&ctx, method, &data).is_err() {
            self.sa_gone(sa, DeleteReason::AuthenticationFailed);
            return false;
        }
        sa.peer_id = Some(idr);
        sa.state = State::Established;
        sa.established_at = now;
        if let (Some(props), Some(cp)) = (props, sa.child_params.clone()) {
            let (ni, nr) = (sa.ni.clone(), sa.nr.clone());
            if let Some(c) =
                self.initiator_child(sa, &props, sa.child_spi, &cp, tsi, tsr, None, &ni, &nr)
            {
                sa.child_since.insert(c.spi_i, now);
                sa.children.push(c);
            }
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn initiator_child(
        &self,
        sa: &IkeSa,
        props: &[wire::Proposal],
        our_spi: u32,
        params: &ChildParams,
        tsi: Option<Vec<TrafficSelector>>,
        tsr: Option<Vec<TrafficSelector>>,
        g_ir: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
    ) -> Option<ChildSaKeys> {
        let p = props.first()?;
        let suite = self.config.esp_suites.iter().find(|s| s.offered_in(p))?;
        let spi_r = spi32(&p.spi)?;
        let keys = sa.keys.as_ref()?;
        child_keys(
            sa.suite.prf,
            &keys.sk_d,
            *suite,
            g_ir,
            ni,
            nr,
            our_spi,
            spi_r,
            true,
            tsi.unwrap_or_else(|| params.ts_i.clone()),
            tsr.unwrap_or_else(|| params.ts_r.clone()),
            params.mode,
            sa,
        )
    }
}
