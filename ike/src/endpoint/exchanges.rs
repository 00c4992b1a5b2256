//! Exchanges on an IKE SA with keys: opening SK payloads, requests from
//! the peer (INFORMATIONAL, CREATE_CHILD_SA: CHILD_SA creation and rekey, IKE
//! SA rekey with collision handling) and the responses to ours.

use super::support::*;
use super::*;

impl Endpoint {
    /// Decrypts an SK message of an SA with keys. `None`: drop.
    pub(super) fn open(
        &mut self,
        sa: &IkeSa,
        msg: &[u8],
        hdr: &HeaderRepr,
    ) -> Option<Vec<Payload>> {
        self.open_checked(sa, msg, hdr).ok()
    }

    /// [`Self::open`], telling an unsupported critical payload (authentic,
    /// to be answered with UNSUPPORTED_CRITICAL_PAYLOAD) from a drop.
    pub(super) fn open_checked(
        &mut self,
        sa: &IkeSa,
        msg: &[u8],
        hdr: &HeaderRepr,
    ) -> Result<Vec<Payload>, Option<u8>> {
        let keys = sa.keys.as_ref().ok_or(None)?;
        let mut it = PayloadIter::new(hdr.next_payload, &msg[HEADER_LEN..]);
        let mut sk_at = HEADER_LEN;
        let mut first_inner = None;
        while let Some(r) = it.next() {
            let Ok(raw) = r else {
                self.stats.malformed += 1;
                return Err(None);
            };
            if raw.ptype == ptype::SK {
                first_inner = Some(it.next_type());
                break;
            }
            if raw.ptype == ptype::SKF {
                self.stats.malformed += 1;
                return Err(None);
            }
            sk_at += wire::GENERIC_HEADER_LEN + raw.body.len();
        }
        let Some(first) = first_inner else {
            self.stats.malformed += 1;
            return Err(None);
        };
        let Ok(inner) = keys.inb.open(msg, sk_at) else {
            self.stats.decrypt_failed += 1;
            return Err(None);
        };
        match wire::parse_chain(first, &inner) {
            Ok(p) => Ok(p),
            Err(e) => {
                self.stats.malformed += 1;
                Err(match e {
                    wire::WireError::UnsupportedCritical(t) => Some(t),
                    _ => None,
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_request(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        hdr: &HeaderRepr,
    ) -> bool {
        if hdr.message_id != sa.expected_in {
            if let Some((id, req, bytes)) = &sa.last_response {
                // Only an octet-identical retransmission is answered: a forged
                // copy with the right Message ID gets nothing.
                if *id == hdr.message_id && req == msg {
                    // Retransmitted request: replay (RFC 7296 §2.1).
                    let b = bytes.clone();
                    self.stats.retransmits_answered += 1;
                    self.transmits
                        .push_back(wrap(local, remote, b, self.config.natt_port));
                    return true;
                }
            }
            self.stats.bad_message_id += 1;
            return true;
        }
        let payloads = match self.open_checked(sa, msg, hdr) {
            Ok(p) => p,
            Err(Some(t)) => {
                // RFC 7296 §2.5: an authentic request with a critical payload
                // we do not understand is refused as a whole.
                sa.current_request = msg.to_vec();
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &[Payload::Notify(Notify::status(
                        notify::UNSUPPORTED_CRITICAL_PAYLOAD,
                        &[t],
                    ))],
                    rng,
                );
                return true;
            }
            Err(None) => return true,
        };
        sa.current_request = msg.to_vec();
        // Authenticated: follow the peer's address (NAT-T float, RFC 7296 §2.23).
        sa.local = local;
        sa.peer = remote;
        sa.last_heard = now;
        match (hdr.exchange_type, sa.state) {
            (exchange::IKE_AUTH, State::HalfOpen) => {
                self.responder_auth(now, rng, sa, hdr, &payloads)
            }
            (exchange::INFORMATIONAL, State::Established | State::Rekeyed | State::Deleting) => {
                self.on_informational(rng, sa, hdr, &payloads)
            }
            (exchange::CREATE_CHILD_SA, State::Established) => {
                self.on_create_child(now, rng, sa, hdr, &payloads);
                true
            }
            (exchange::CREATE_CHILD_SA, _) => {
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &[Payload::Notify(Notify::status(
                        notify::TEMPORARY_FAILURE,
                        &[],
                    ))],
                    rng,
                );
                true
            }
            _ => {
                self.stats.malformed += 1;
                true
            }
        }
    }

    pub(super) fn on_informational(
        &mut self,
        rng: &mut dyn Rng,
        sa: &mut IkeSa,
        hdr: &HeaderRepr,
        payloads: &[Payload],
    ) -> bool {
        let mut out = Vec::new();
        let mut delete_ike = false;
        for p in payloads {
            match p {
                Payload::Delete(d) if d.protocol == proto::IKE => delete_ike = true,
                Payload::Delete(d) if d.protocol == proto::ESP => {
                    let mut ours = Vec::new();
                    for s in &d.spis {
                        let Some(peer_in) = spi32(s) else { continue };
                        if let Some(pos) =
                            sa.children.iter().position(|c| c.outbound().spi == peer_in)
                        {
                            let c = sa.children.remove(pos);
                            ours.push(c.inbound().spi.to_be_bytes().to_vec());
                            self.events.push_back(Event::ChildSaDeleted {
                                ike_spi_i: sa.spi_i,
                                ike_spi_r: sa.spi_r,
                                spi_i: c.spi_i,
                                spi_r: c.spi_r,
                            });
                        }
                    }
                    if !ours.is_empty() {
                        out.push(Payload::Delete(Delete {
                            protocol: proto::ESP,
                            spis: ours,
                        }));
                    }
                }
                Payload::Notify(n) if n.ntype == notify::AUTHENTICATION_FAILED => {
                    delete_ike = true;
                }
                _ => {}
            }
        }
        if delete_ike {
            self.respond(sa, exchange::INFORMATIONAL, hdr.message_id, &[], rng);
            if let Some((peer_new, _)) = sa.collision.take() {
                // RFC 7296 §2.25.2: forget our own rekey; the peer's stands.
                sa.outstanding = None;
                self.adopt_peer_rekey(sa, peer_new);
            }
            let reason = if sa.state == State::Rekeyed {
                DeleteReason::Rekeyed
            } else {
                DeleteReason::Peer
            };
            if sa.state == State::Rekeyed {
                // Children moved to the new SA: nothing else to announce.
                self.events.push_back(Event::IkeSaDeleted {
                    spi_i: sa.spi_i,
                    spi_r: sa.spi_r,
                    peer: sa.peer,
                    reason,
                });
                self.forget_init(sa);
            } else {
                self.sa_gone(sa, reason);
            }
            return false;
        }
        self.respond(sa, exchange::INFORMATIONAL, hdr.message_id, &out, rng);
        true
    }

    pub(super) fn on_create_child(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        sa: &mut IkeSa,
        hdr: &HeaderRepr,
        payloads: &[Payload],
    ) {
        let mut props = None;
        let mut ni = None;
        let mut kei = None;
        let mut tsi = None;
        let mut tsr = None;
        let mut rekey_spi = None;
        let mut transport = false;
        for p in payloads {
            match p {
                Payload::Sa(s) => props = Some(s.clone()),
                Payload::Nonce(n) => ni = Some(n.clone()),
                Payload::Ke { group, data } => kei = Some((*group, data.clone())),
                Payload::TsI(t) => tsi = Some(t.clone()),
                Payload::TsR(t) => tsr = Some(t.clone()),
                Payload::Notify(n) if n.ntype == notify::REKEY_SA => rekey_spi = spi32(&n.spi),
                Payload::Notify(n) if n.ntype == notify::USE_TRANSPORT_MODE => transport = true,
                _ => {}
            }
        }
        let err = |n: u16| vec![Payload::Notify(Notify::status(n, &[]))];
        let (Some(props), Some(ni)) = (props, ni) else {
            self.respond(
                sa,
                hdr.exchange_type,
                hdr.message_id,
                &err(notify::INVALID_SYNTAX),
                rng,
            );
            return;
        };
        if props.iter().any(|p| p.protocol == proto::IKE) {
            // IKE SA rekey (RFC 7296 §1.3.2). Each one adds an SA until the
            // peer deletes the old one (or it expires): an authenticated peer
            // rekeying in a loop must not grow the table past its bound.
            // (`sa` itself is out of the table while it is being handled.)
            if self.sas.len() + 1 >= self.config.max_sas {
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &err(notify::NO_ADDITIONAL_SAS),
                    rng,
                );
                return;
            }
            let chosen = props.iter().find_map(|p| {
                self.config
                    .ike_suites
                    .iter()
                    .find(|s| s.offered_in(p) && p.spi.len() == 8)
                    .map(|s| (p, *s))
            });
            let Some((p, suite)) = chosen else {
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &err(notify::NO_PROPOSAL_CHOSEN),
                    rng,
                );
                return;
            };
            let Some((group, kei)) = kei else {
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &err(notify::INVALID_SYNTAX),
                    rng,
                );
                return;
            };
            if group != suite.dh.id() {
                let data = suite.dh.id().to_be_bytes();
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &[Payload::Notify(Notify::status(
                        notify::INVALID_KE_PAYLOAD,
                        &data,
                    ))],
                    rng,
                );
                return;
            }
            let ke = suite.dh.generate(rng);
            let Ok(g_ir) = ke.shared_secret(&kei) else {
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &err(notify::INVALID_SYNTAX),
                    rng,
                );
                return;
            };
            let mut new_spi_i = [0u8; 8];
            new_spi_i.copy_from_slice(&p.spi);
            let new_spi_r = self.fresh_spi(rng);
            let mut nr = vec![0u8; 32];
            rng.fill(&mut nr);
            let old_sk_d = sa.keys.as_ref().map(|k| k.sk_d.clone()).unwrap_or_default();
            let Some(new) = rekeyed_sa(
                sa, suite, &old_sk_d, &g_ir, &ni, &nr, new_spi_i, new_spi_r, false, now,
            ) else {
                return;
            };
            let mut rp = suite.proposal(p.number, &new_spi_r);
            rp.number = p.number;
            self.respond(
                sa,
                hdr.exchange_type,
                hdr.message_id,
                &[
                    Payload::Sa(vec![rp]),
                    Payload::Nonce(nr),
                    Payload::Ke {
                        group: suite.dh.id(),
                        data: ke.public().to_vec(),
                    },
                ],
                rng,
            );
            let ours_outstanding = matches!(
                sa.outstanding,
                Some(Outstanding {
                    kind: Pending::RekeyIke { .. },
                    ..
                })
            );
            if ours_outstanding {
                // Simultaneous rekey (RFC 7296 §2.8.2): keep the peer's new SA
                // aside until our own exchange ends, then keep one of the two.
                let lowest = ni.clone().min(new.nr.clone());
                sa.collision = Some((new.local_spi(), lowest));
                self.sas.insert(new.local_spi(), new);
            } else {
                self.finish_ike_rekey(sa, new);
            }
            return;
        }
        // CHILD_SA creation or rekey.
        if sa.children.len() >= MAX_CHILDREN {
            self.respond(
                sa,
                hdr.exchange_type,
                hdr.message_id,
                &err(notify::NO_ADDITIONAL_SAS),
                rng,
            );
            return;
        }
        let (Some(tsi), Some(tsr)) = (tsi, tsr) else {
            self.respond(
                sa,
                hdr.exchange_type,
                hdr.message_id,
                &err(notify::INVALID_SYNTAX),
                rng,
            );
            return;
        };
        if let Some(old) = rekey_spi {
            // Our inbound SPI of the CHILD_SA the peer wants to rekey.
            let old_in = sa
                .children
                .iter()
                .find(|c| c.outbound().spi == old)
                .map(|c| c.inbound().spi);
            let closing = match (&sa.outstanding, old_in) {
                (
                    Some(Outstanding {
                        kind: Pending::DeleteChild { spis_in },
                        ..
                    }),
                    Some(i),
                ) => spis_in.contains(&i),
                _ => false,
            };
            if closing {
                // RFC 7296 §2.25.1: we are closing it.
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &err(notify::TEMPORARY_FAILURE),
                    rng,
                );
                return;
            }
            if old_in.is_none() {
                let n = Notify {
                    protocol: proto::ESP,
                    spi: old.to_be_bytes().to_vec(),
                    ntype: notify::CHILD_SA_NOT_FOUND,
                    data: Vec::new(),
                };
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &[Payload::Notify(n)],
                    rng,
                );
                return;
            }
        }
        let mut nr = vec![0u8; 32];
        rng.fill(&mut nr);
        // PFS: answer a KE in the IKE SA's group.
        let mut ke_out = None;
        let mut g_ir = None;
        if let Some((group, data)) = &kei {
            let Some(g) = DhGroup::from_id(*group) else {
                let d = sa.suite.dh.id().to_be_bytes();
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &[Payload::Notify(Notify::status(
                        notify::INVALID_KE_PAYLOAD,
                        &d,
                    ))],
                    rng,
                );
                return;
            };
            let ke = g.generate(rng);
            match ke.shared_secret(data) {
                Ok(s) => g_ir = Some(s),
                Err(_) => {
                    self.respond(
                        sa,
                        hdr.exchange_type,
                        hdr.message_id,
                        &err(notify::INVALID_SYNTAX),
                        rng,
                    );
                    return;
                }
            }
            ke_out = Some(ke);
        }
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
            ke_out
                .as_ref()
                .zip(g_ir.as_deref())
                .map(|(k, g)| (k.group.id(), &g[..])),
            &ni,
            &nr,
        ) {
            Ok((c, resp)) => {
                let mut out = Vec::new();
                if transport {
                    out.push(Payload::Notify(Notify::status(
                        notify::USE_TRANSPORT_MODE,
                        &[],
                    )));
                }
                let mut resp = resp.into_iter();
                if let Some(sa_payload) = resp.next() {
                    out.push(sa_payload);
                }
                out.push(Payload::Nonce(nr.clone()));
                if let Some(ke) = &ke_out {
                    out.push(Payload::Ke {
                        group: ke.group.id(),
                        data: ke.public().to_vec(),
                    });
                }
                out.extend(resp);
                self.respond(sa, hdr.exchange_type, hdr.message_id, &out, rng);
                self.events.push_back(Event::ChildSaInstalled {
                    ike_spi_i: sa.spi_i,
                    ike_spi_r: sa.spi_r,
                    child: c.clone(),
                });
                if let Some(old) = rekey_spi {
                    // The peer replaces it: no automatic rekey of ours for it.
                    if let Some(o) = sa.children.iter().find(|c| c.outbound().spi == old) {
                        sa.child_since.remove(&o.spi_i);
                        let o_in = o.inbound().spi;
                        // Are we rekeying it too? Remember this exchange's
                        // lowest nonce for when ours completes.
                        let ours = matches!(
                            &sa.outstanding,
                            Some(Outstanding {
                                kind: Pending::CreateChild { rekey_of: Some(x), .. },
                                ..
                            }) if *x == o_in
                        );
                        if ours {
                            sa.child_collisions.insert(o_in, ni.clone().min(nr.clone()));
                        }
                    }
                }
                sa.child_since.insert(c.spi_i, now);
                sa.children.push(c);
            }
            Err(n) => {
                self.respond(sa, hdr.exchange_type, hdr.message_id, &err(n), rng);
            }
        }
    }

    /// Drops every SA (in the table) authenticated as `id`, announcing each.
    pub(super) fn forget_peer(&mut self, id: &Identification) {
        let gone: Vec<[u8; 8]> = self
            .sas
            .iter()
            .filter(|(_, s)| s.peer_id.as_ref() == Some(id))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(old) = self.sas.remove(&k) {
                if old.state == State::Rekeyed {
                    self.events.push_back(Event::IkeSaDeleted {
                        spi_i: old.spi_i,
                        spi_r: old.spi_r,
                        peer: old.peer,
                        reason: DeleteReason::Rekeyed,
                    });
                } else {
                    self.sa_gone(&old, DeleteReason::Peer);
                }
            }
        }
    }

    /// Completes a collided rekey in favour of the SA the peer created.
    pub(super) fn adopt_peer_rekey(&mut self, old: &mut IkeSa, peer_new: [u8; 8]) {
        if let Some(n) = self.sas.remove(&peer_new) {
            self.finish_ike_rekey(old, n);
        }
    }

    pub(super) fn finish_ike_rekey(&mut self, old: &mut IkeSa, mut new: IkeSa) {
        new.children = std::mem::take(&mut old.children);
        new.child_since = std::mem::take(&mut old.child_since);
        old.state = State::Rekeyed;
        old.rekeyed_at = Some(new.created);
        if let Some(info) = new.info() {
            self.events.push_back(Event::IkeSaRekeyed {
                old_spi_i: old.spi_i,
                old_spi_r: old.spi_r,
                new: info,
            });
        }
        self.sas.insert(new.local_spi(), new);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_response(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        hdr: &HeaderRepr,
    ) -> bool {
        let Some(o) = &sa.outstanding else {
            self.stats.bad_message_id += 1;
            return true;
        };
        if o.msg_id != hdr.message_id {
            self.stats.bad_message_id += 1;
            return true;
        }
        if hdr.exchange_type == exchange::IKE_SA_INIT {
            return self.initiator_init_response(now, rng, sa, local, remote, msg, hdr);
        }
        let Some(payloads) = self.open(sa, msg, hdr) else {
            return true;
        };
        let o = sa.outstanding.take().expect("checked above");
        sa.last_heard = now;
        match o.kind {
            Pending::Auth => self.initiator_auth_response(now, sa, &payloads),
            Pending::Informational { delete } => {
                if delete || sa.state == State::Deleting {
                    let reason = if sa.state == State::Rekeyed {
                        DeleteReason::Rekeyed
                    } else {
                        DeleteReason::Local
                    };
                    if sa.state == State::Rekeyed {
                        self.events.push_back(Event::IkeSaDeleted {
                            spi_i: sa.spi_i,
                            spi_r: sa.spi_r,
                            peer: sa.peer,
                            reason,
                        });
                    } else {
                        self.sa_gone(sa, reason);
                    }
                    return false;
                }
                self.events.push_back(Event::PeerAlive {
                    spi_i: sa.spi_i,
                    spi_r: sa.spi_r,
                });
                true
            }
            Pending::RekeyIke { ke, ni, new_spi_i } => {
                let mut nr = None;
                let mut ker = None;
                let mut spi_r = None;
                let mut suite = None;
                for p in &payloads {
                    match p {
                        Payload::Nonce(n) => nr = Some(n.clone()),
                        Payload::Ke { data, .. } => ker = Some(data.clone()),
                        Payload::Sa(props) => {
                            if let Some(p) = props.first() {
                                if p.spi.len() == 8 {
                                    let mut s = [0u8; 8];
                                    s.copy_from_slice(&p.spi);
                                    spi_r = Some(s);
                                }
                                // We offered only the SA's own suite.
                                suite = Some(sa.suite).filter(|s| s.offered_in(p));
                            }
                        }
                        _ => {}
                    }
                }
                let new = match (nr, ker, spi_r, suite) {
                    (Some(nr), Some(ker), Some(spi_r), Some(suite)) => {
                        let old_sk_d = sa.keys.as_ref().map(|k| k.sk_d.clone()).unwrap_or_default();
                        ke.shared_secret(&ker).ok().and_then(|g_ir| {
                            rekeyed_sa(
                                sa, suite, &old_sk_d, &g_ir, &ni, &nr, new_spi_i, spi_r, true, now,
                            )
                        })
                    }
                    // Refused (error notify) or malformed: keep the old SA.
                    _ => None,
                };
                let collision = sa.collision.take();
                let Some(mut new) = new else {
                    if let Some((peer_new, _)) = collision {
                        // Ours failed: the peer's rekey stands; it deletes the old SA.
                        self.adopt_peer_rekey(sa, peer_new);
                    }
                    return true;
                };
                if let Some((peer_new, peer_lowest)) = collision {
                    let our_lowest = ni.clone().min(new.nr.clone());
                    if our_lowest < peer_lowest {
                        // Ours is redundant: we close it; the peer's stands and
                        // the peer deletes the old SA (RFC 7296 §2.8.2).
                        new.silent = true;
                        self.start_delete(&mut new, now, rng);
                        self.sas.insert(new.local_spi(), new);
                        self.adopt_peer_rekey(sa, peer_new);
                        return true;
                    }
                    // Theirs is redundant: the peer closes it, silently for us.
                    if let Some(p) = self.sas.get_mut(&peer_new) {
                        p.silent = true;
                    }
                }
                self.finish_ike_rekey(sa, new);
                // The rekeying side (whose SA survived) deletes the old SA.
                self.start_request(
                    sa,
                    now,
                    rng,
                    exchange::INFORMATIONAL,
                    vec![Payload::Delete(Delete {
                        protocol: proto::IKE,
                        spis: Vec::new(),
                    })],
                    Pending::Informational { delete: true },
                );
                true
            }
            Pending::CreateChild {
                rekey_of,
                ni,
                spi,
                params,
                ke,
            } => {
                let mut nr = None;
                let mut props = None;
                let mut tsi = None;
                let mut tsr = None;
                let mut ker = None;
                for p in &payloads {
                    match p {
                        Payload::Ke { group, data } => ker = Some((*group, data.clone())),
                        Payload::Nonce(n) => nr = Some(n.clone()),
                        Payload::Sa(s) => props = Some(s.clone()),
                        Payload::TsI(t) => tsi = Some(t.clone()),
                        Payload::TsR(t) => tsr = Some(t.clone()),
                        _ => {}
                    }
                }
                let (Some(nr), Some(props)) = (nr, props) else {
                    // Refused: an automatic rekey tries again later.
                    if let (Some(old_in), Some(l)) = (rekey_of, self.config.child_rekey_after) {
                        let j = sa.local_spi();
                        if let Some(c) = sa.children.iter().find(|c| c.inbound().spi == old_in) {
                            sa.child_since.insert(c.spi_i, retry_base(now, l, &j));
                        }
                    }
                    return true;
                };
                // With PFS the answer must carry a KE in our group.
                let g_ir = match (&ke, ker) {
                    (None, _) => None,
                    (Some(k), Some((g, data))) if g == k.group.id() => {
                        match k.shared_secret(&data) {
                            Ok(s) => Some(s),
                            Err(_) => return true,
                        }
                    }
                    (Some(_), _) => return true,
                };
                let Some(c) = self.initiator_child(
                    sa,
                    &props,
                    spi,
                    &params,
                    tsi,
                    tsr,
                    g_ir.as_deref().map(|g| &g[..]),
                    &ni,
                    &nr,
                ) else {
                    return true;
                };
                self.events.push_back(Event::ChildSaInstalled {
                    ike_spi_i: sa.spi_i,
                    ike_spi_r: sa.spi_r,
                    child: c.clone(),
                });
                let our_new_in = c.inbound().spi;
                let our_lowest = ni.clone().min(nr.clone());
                sa.child_since.insert(c.spi_i, now);
                sa.children.push(c);
                if let Some(old_in) = rekey_of {
                    let mut spis_in = vec![old_in];
                    // Did the peer rekey the same CHILD_SA meanwhile (RFC 7296
                    // §2.8.1)? The new SA of the exchange with the lowest nonce
                    // is closed by its creator: ours goes with the old one.
                    if let Some(peer_lowest) = sa.child_collisions.remove(&old_in) {
                        if our_lowest < peer_lowest {
                            spis_in.push(our_new_in);
                        }
                    }
                    let spis = spis_in.iter().map(|s| s.to_be_bytes().to_vec()).collect();
                    self.start_request(
                        sa,
                        now,
                        rng,
                        exchange::INFORMATIONAL,
                        vec![Payload::Delete(Delete {
                            protocol: proto::ESP,
                            spis,
                        })],
                        Pending::DeleteChild { spis_in },
                    );
                }
                true
            }
            Pending::DeleteChild { spis_in } => {
                for spi_in in spis_in {
                    if let Some(pos) = sa.children.iter().position(|c| c.inbound().spi == spi_in) {
                        let c = sa.children.remove(pos);
                        sa.child_since.remove(&c.spi_i);
                        self.events.push_back(Event::ChildSaDeleted {
                            ike_spi_i: sa.spi_i,
                            ike_spi_r: sa.spi_r,
                            spi_i: c.spi_i,
                            spi_r: c.spi_r,
                        });
                    }
                }
                true
            }
            Pending::Init => true,
        }
    }
}
