//! Binding IKEv2 CHILD_SAs to TWAMP sessions for the ESP data plane
//! (sans-IO: no sockets, no clock, no table; it returns [`EspOp`]s that
//! [`crate::twamp`] and [`crate::ike_responder`] apply to the
//! `SessionTable`).
//!
//! The in-process responder hands over every CHILD_SA it negotiates
//! (`ChildSaInstalled`); they are kept per IKE peer (bounded). A CHILD_SA
//! is bound to a started TWAMP session when
//!
//! * its traffic selectors cover the session's test packets: a peer-side
//!   selector holds the sender's address and UDP port, a local one the
//!   reflector's address and port (protocol UDP or any);
//! * the session belongs to that peer: its TWAMP-Control client is the IKE
//!   peer's address or lies inside the peer-side selectors (a control
//!   connection through the tunnel). Binding makes the session ESP-only, so
//!   a session of some other client is never taken over;
//! * the session has no CHILD_SA yet, or the new CHILD_SA has the same
//!   selectors as the one bound (a rekey: the new one is added while the
//!   old one is still installed, the data plane switches replies to the
//!   newest once a packet authenticates on it, and the peer's Delete of
//!   the old one removes it).
//!
//! One CHILD_SA carries one session (the data plane keys an SA's inbound
//! SPI to one inner session): a CHILD_SA covering several sessions is bound
//! to the first one started. Whichever comes first, session start or
//! CHILD_SA, the binding happens when both are there. Every binding of a
//! CHILD_SA is undone on its Delete, on the Delete of its IKE SA, and
//! before its session leaves the data plane.

use std::net::{IpAddr, SocketAddr};

use ricochet_ike::{ChildMode, ChildSaKeys, EncrAlg, IntegAlg, TrafficSelector};
use ricochet_protocol::control::Sid;
use ricochet_protocol::crypto::EspKeys;
use ricochet_reflector::session_table::{EspInner, EspLifetime, EspMode, EspSaSpec};

/// CHILD_SAs kept per IKE peer address; more are refused (not installed).
pub const MAX_CHILDREN_PER_PEER: usize = 16;
/// CHILD_SAs kept in all.
pub const MAX_CHILDREN: usize = 1024;
/// Anti-replay window of the installed SAs (packets).
pub const REPLAY_WINDOW: u32 = 128;
/// IP protocol number of UDP.
const UDP: u8 = 17;

/// The IKE SA a CHILD_SA belongs to (SPIi, SPIr).
pub type IkeSaId = ([u8; 8], [u8; 8]);

/// What to do to the data plane, in order.
#[derive(Debug, Clone)]
pub enum EspOp {
    /// `add_esp_sa(spec)`; the session was started before.
    Add { sid: Sid, spec: EspSaSpec },
    /// `remove_esp_sa(inbound_spi)`.
    Remove { sid: Sid, inbound_spi: u32 },
}

/// Why a CHILD_SA is not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChildRefused {
    #[error("peer {0} already has {MAX_CHILDREN_PER_PEER} CHILD_SAs")]
    PeerLimit(IpAddr),
    #[error("{MAX_CHILDREN} CHILD_SAs are kept already")]
    Limit,
    #[error("inbound SPI {0:08x} is known already")]
    DuplicateSpi(u32),
    #[error("transform not supported by the data plane: {0}")]
    Transform(String),
}

/// A started session as the binder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionEnds {
    /// The test packets' source (the TWAMP Session-Sender).
    pub sender: SocketAddr,
    /// Our test address and port.
    pub reflector: SocketAddr,
    /// The TWAMP-Control client's address.
    pub client: IpAddr,
}

struct Child {
    ike: IkeSaId,
    keys: ChildSaKeys,
    /// The session it is installed for.
    bound: Option<Sid>,
}

impl Child {
    fn inbound_spi(&self) -> u32 {
        self.keys.inbound().spi
    }

    /// The peer's selectors and ours.
    fn selectors(&self) -> (&[TrafficSelector], &[TrafficSelector]) {
        if self.keys.we_initiated {
            (&self.keys.ts_r, &self.keys.ts_i)
        } else {
            (&self.keys.ts_i, &self.keys.ts_r)
        }
    }

    fn covers(&self, s: &SessionEnds) -> bool {
        let (peer, ours) = self.selectors();
        let point = |a: SocketAddr| TrafficSelector {
            ip_proto: UDP,
            start_port: a.port(),
            end_port: a.port(),
            start_addr: a.ip(),
            end_addr: a.ip(),
        };
        let (snd, refl) = (point(s.sender), point(s.reflector));
        let owner = s.client == self.keys.peer.ip()
            || peer.iter().any(|t| {
                t.contains(&TrafficSelector {
                    ip_proto: t.ip_proto,
                    start_port: t.start_port,
                    end_port: t.end_port,
                    start_addr: s.client,
                    end_addr: s.client,
                })
            });
        owner && peer.iter().any(|t| t.contains(&snd)) && ours.iter().any(|t| t.contains(&refl))
    }

    fn same_selectors(&self, other: &Child) -> bool {
        self.keys.ts_i == other.keys.ts_i && self.keys.ts_r == other.keys.ts_r
    }
}

/// The data-plane view of one direction's keys.
fn esp_keys(
    encr: EncrAlg,
    integ: Option<IntegAlg>,
    encr_key: &[u8],
    integ_key: &[u8],
) -> Result<EspKeys, ChildRefused> {
    match (encr, integ) {
        (EncrAlg::AesGcm16 { .. }, None) => EspKeys::gcm_from_keymat(encr_key)
            .map_err(|e| ChildRefused::Transform(format!("AES-GCM keys: {e}"))),
        (EncrAlg::AesCbc { key_bits }, Some(IntegAlg::HmacSha256_128))
            if encr_key.len() == usize::from(key_bits / 8)
                && matches!(key_bits, 128 | 256)
                && integ_key.len() == 32 =>
        {
            Ok(EspKeys::AesCbcHmacSha256 {
                enc_key: encr_key.to_vec(),
                auth_key: integ_key.to_vec(),
            })
        }
        (e, i) => Err(ChildRefused::Transform(format!("{e:?} with {i:?}"))),
    }
}

/// The SA pair of a CHILD_SA carrying session `sid`.
fn spec_for(keys: &ChildSaKeys, sid: Sid) -> Result<EspSaSpec, ChildRefused> {
    let (inb, out) = (keys.inbound(), keys.outbound());
    Ok(EspSaSpec {
        inbound_spi: inb.spi,
        outbound_spi: out.spi,
        inbound_keys: esp_keys(keys.encr, keys.integ, inb.encr_key, inb.integ_key)?,
        outbound_keys: esp_keys(keys.encr, keys.integ, out.encr_key, out.integ_key)?,
        esn: keys.esn,
        replay_window: REPLAY_WINDOW,
        // The IKE endpoint rekeys and deletes CHILD_SAs; the data plane
        // still raises "rekey needed" on sequence-number exhaustion.
        lifetime: EspLifetime::default(),
        mode: match keys.mode {
            ChildMode::Tunnel => EspMode::Tunnel,
            ChildMode::Transport => EspMode::Transport,
        },
        udp_encap: keys.udp_encap,
        local: keys.local.ip(),
        inner: EspInner::Session(sid),
    })
}

/// CHILD_SAs of the responder and the started sessions they may carry.
#[derive(Default)]
pub struct EspLink {
    /// By our inbound SPI (unique: we chose it), in arrival order.
    children: Vec<Child>,
    /// Started sessions, in start order.
    sessions: Vec<(Sid, SessionEnds)>,
}

impl std::fmt::Debug for EspLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspLink")
            .field("children", &self.children.len())
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

impl EspLink {
    /// CHILD_SAs kept.
    pub fn child_count(&self) -> usize {
        self.children.len()
    }

    /// The session CHILD_SA `inbound_spi` is bound to.
    pub fn bound(&self, inbound_spi: u32) -> Option<Sid> {
        self.children
            .iter()
            .find(|c| c.inbound_spi() == inbound_spi)
            .and_then(|c| c.bound)
    }

    /// A CHILD_SA of IKE SA `ike` is up: keep it and bind it if a started
    /// session fits.
    pub fn child_installed(
        &mut self,
        ike: IkeSaId,
        keys: ChildSaKeys,
    ) -> Result<Vec<EspOp>, ChildRefused> {
        let peer = keys.peer.ip();
        let spi = keys.inbound().spi;
        if self.children.iter().any(|c| c.inbound_spi() == spi) {
            return Err(ChildRefused::DuplicateSpi(spi));
        }
        if self.children.len() >= MAX_CHILDREN {
            return Err(ChildRefused::Limit);
        }
        if self
            .children
            .iter()
            .filter(|c| c.keys.peer.ip() == peer)
            .count()
            >= MAX_CHILDREN_PER_PEER
        {
            return Err(ChildRefused::PeerLimit(peer));
        }
        // Refuse what the data plane cannot carry now, not at binding.
        spec_for(&keys, Sid([0; 16]))?;
        self.children.push(Child {
            ike,
            keys,
            bound: None,
        });
        let i = self.children.len() - 1;
        Ok(self.bind_child(i).into_iter().collect())
    }

    /// Binds child `i` to the session it fits best, if any.
    fn bind_child(&mut self, i: usize) -> Option<EspOp> {
        let child = &self.children[i];
        // A rekey: the session an older CHILD_SA of the same IKE SA and
        // selectors carries.
        let rekey_of = self.children.iter().enumerate().find_map(|(j, c)| {
            (j != i && c.ike == child.ike && child.same_selectors(c))
                .then_some(c.bound)
                .flatten()
        });
        let sid = match rekey_of {
            Some(sid) => sid,
            None => self
                .sessions
                .iter()
                .find(|(sid, ends)| {
                    child.covers(ends) && !self.children.iter().any(|c| c.bound == Some(*sid))
                })
                .map(|(sid, _)| *sid)?,
        };
        let spec = spec_for(&child.keys, sid).ok()?;
        self.children[i].bound = Some(sid);
        Some(EspOp::Add { sid, spec })
    }

    /// CHILD_SA (`spi_i`, `spi_r`) of `ike` is gone.
    pub fn child_deleted(&mut self, ike: IkeSaId, spi_i: u32, spi_r: u32) -> Vec<EspOp> {
        self.drop_children(|c| c.ike == ike && c.keys.spi_i == spi_i && c.keys.spi_r == spi_r)
    }

    /// IKE SA `ike` is gone (not rekeyed): so are its CHILD_SAs.
    pub fn ike_deleted(&mut self, ike: IkeSaId) -> Vec<EspOp> {
        self.drop_children(|c| c.ike == ike)
    }

    /// IKE SA `old` was rekeyed into `new`: its CHILD_SAs move over
    /// (RFC 7296 §2.8).
    pub fn ike_rekeyed(&mut self, old: IkeSaId, new: IkeSaId) {
        for c in self.children.iter_mut().filter(|c| c.ike == old) {
            c.ike = new;
        }
    }

    /// Every CHILD_SA is gone (the responder stops).
    pub fn clear(&mut self) -> Vec<EspOp> {
        self.drop_children(|_| true)
    }

    fn drop_children(&mut self, gone: impl Fn(&Child) -> bool) -> Vec<EspOp> {
        let mut ops = Vec::new();
        self.children.retain(|c| {
            if !gone(c) {
                return true;
            }
            if let Some(sid) = c.bound {
                ops.push(EspOp::Remove {
                    sid,
                    inbound_spi: c.inbound_spi(),
                });
            }
            false
        });
        ops
    }

    /// Session `sid` started (it is in the data plane and reflecting):
    /// bind the CHILD_SAs that fit it.
    pub fn session_started(&mut self, sid: Sid, ends: SessionEnds) -> Vec<EspOp> {
        if self.sessions.iter().any(|(s, _)| *s == sid) {
            return Vec::new();
        }
        self.sessions.push((sid, ends));
        let mut ops = Vec::new();
        // The first fitting unbound CHILD_SA, then its rekeyed successors
        // (same IKE SA and selectors) that are already up.
        let Some(first) = self
            .children
            .iter()
            .position(|c| c.bound.is_none() && c.covers(&ends))
        else {
            return ops;
        };
        for i in first..self.children.len() {
            let c = &self.children[i];
            let fits = i == first
                || (c.bound.is_none()
                    && c.ike == self.children[first].ike
                    && c.same_selectors(&self.children[first]));
            if fits {
                if let Ok(spec) = spec_for(&c.keys, sid) {
                    self.children[i].bound = Some(sid);
                    ops.push(EspOp::Add { sid, spec });
                }
            }
        }
        ops
    }

    /// Session `sid` leaves the data plane: remove its SAs first (the
    /// CHILD_SAs stay, unbound, for a later session).
    pub fn session_removed(&mut self, sid: &Sid) -> Vec<EspOp> {
        self.sessions.retain(|(s, _)| s != sid);
        let mut ops = Vec::new();
        for c in self.children.iter_mut().filter(|c| c.bound == Some(*sid)) {
            c.bound = None;
            ops.push(EspOp::Remove {
                sid: *sid,
                inbound_spi: c.keys.inbound().spi,
            });
        }
        ops
    }

    /// An `Add` the data plane refused: the CHILD_SA is not bound after all.
    pub fn add_failed(&mut self, inbound_spi: u32) {
        if let Some(c) = self
            .children
            .iter_mut()
            .find(|c| c.inbound_spi() == inbound_spi)
        {
            c.bound = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use zeroize::Zeroizing;

    const IKE: IkeSaId = ([1; 8], [2; 8]);
    const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const US: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn ts(addr: Ipv4Addr, proto: u8, ports: (u16, u16)) -> TrafficSelector {
        TrafficSelector {
            ip_proto: proto,
            start_port: ports.0,
            end_port: ports.1,
            start_addr: IpAddr::V4(addr),
            end_addr: IpAddr::V4(addr),
        }
    }

    /// A CHILD_SA the peer initiated (we respond): the peer's SPI is
    /// `spi_i`, ours `spi_r`; the peer's keys are `sk_ei`, ours `sk_er`.
    fn child(spi_i: u32, spi_r: u32, ours: (u16, u16)) -> ChildSaKeys {
        ChildSaKeys {
            spi_i,
            spi_r,
            encr: EncrAlg::AesGcm16 { key_bits: 128 },
            integ: None,
            esn: false,
            mode: ChildMode::Transport,
            sk_ei: Zeroizing::new((0..20).collect()),
            sk_ai: Zeroizing::new(Vec::new()),
            sk_er: Zeroizing::new((100..120).collect()),
            sk_ar: Zeroizing::new(Vec::new()),
            we_initiated: false,
            ts_i: vec![ts(PEER, UDP, (0, 0xffff))],
            ts_r: vec![ts(US, UDP, ours)],
            udp_encap: true,
            local: SocketAddr::from((US, 4500)),
            peer: SocketAddr::from((PEER, 4500)),
        }
    }

    fn ends(reflector_port: u16) -> SessionEnds {
        SessionEnds {
            sender: SocketAddr::from((PEER, 40000)),
            reflector: SocketAddr::from((US, reflector_port)),
            client: IpAddr::V4(PEER),
        }
    }

    fn adds(ops: &[EspOp]) -> Vec<(Sid, u32, u32)> {
        ops.iter()
            .filter_map(|o| match o {
                EspOp::Add { sid, spec } => Some((*sid, spec.inbound_spi, spec.outbound_spi)),
                _ => None,
            })
            .collect()
    }

    fn removes(ops: &[EspOp]) -> Vec<(Sid, u32)> {
        ops.iter()
            .filter_map(|o| match o {
                EspOp::Remove { sid, inbound_spi } => Some((*sid, *inbound_spi)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_covering_child_sa_binds_the_session_with_the_responder_keys() {
        let mut link = EspLink::default();
        let ops = link
            .child_installed(IKE, child(0xc1, 0xd1, (18760, 19960)))
            .unwrap();
        assert!(ops.is_empty(), "no session yet");
        let sid = Sid([7; 16]);
        let ops = link.session_started(sid, ends(18800));
        // We responded: inbound is our SPI (spi_r) with the initiator's
        // keys (sk_ei, RFC 7296 §2.17), outbound the peer's SPI with sk_er.
        assert_eq!(adds(&ops), vec![(sid, 0xd1, 0xc1)]);
        let EspOp::Add { spec, .. } = &ops[0] else {
            unreachable!()
        };
        let gcm = |k: &[u8]| EspKeys::gcm_from_keymat(k).unwrap();
        assert!(spec.inbound_keys == gcm(&(0..20).collect::<Vec<u8>>()));
        assert!(spec.outbound_keys == gcm(&(100..120).collect::<Vec<u8>>()));
        assert_eq!(spec.mode, EspMode::Transport);
        assert!(spec.udp_encap);
        assert_eq!(spec.local, IpAddr::V4(US));
        assert_eq!(spec.inner, EspInner::Session(sid));
        assert_eq!(link.bound(0xd1), Some(sid));
    }

    #[test]
    fn a_child_sa_installed_after_the_session_started_is_bound_then() {
        let mut link = EspLink::default();
        let sid = Sid([7; 16]);
        assert!(link.session_started(sid, ends(18800)).is_empty());
        let ops = link
            .child_installed(IKE, child(0xc1, 0xd1, (18800, 18800)))
            .unwrap();
        assert_eq!(adds(&ops), vec![(sid, 0xd1, 0xc1)]);
    }

    #[test]
    fn non_covering_selectors_bind_nothing() {
        let mut link = EspLink::default();
        // Our side covers other ports.
        link.child_installed(IKE, child(0xc1, 0xd1, (19000, 19100)))
            .unwrap();
        // TCP only.
        let mut tcp = child(0xc2, 0xd2, (0, 0xffff));
        tcp.ts_r = vec![ts(US, 6, (0, 0xffff))];
        link.child_installed(IKE, tcp).unwrap();
        // The peer side does not hold the sender.
        let mut other = child(0xc3, 0xd3, (0, 0xffff));
        other.ts_i = vec![ts(Ipv4Addr::new(198, 18, 0, 9), 0, (0, 0xffff))];
        link.child_installed(IKE, other).unwrap();
        assert!(link.session_started(Sid([7; 16]), ends(18800)).is_empty());
        // A session of another TWAMP-Control client is not taken over.
        let mut stranger = ends(19050);
        stranger.client = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 77));
        assert!(link.session_started(Sid([8; 16]), stranger).is_empty());
        assert_eq!(link.bound(0xd1), None);
        // The session of the peer on those ports is.
        let ops = link.session_started(Sid([9; 16]), ends(19050));
        assert_eq!(adds(&ops), vec![(Sid([9; 16]), 0xd1, 0xc1)]);
    }

    #[test]
    fn a_child_sa_carries_one_session() {
        let mut link = EspLink::default();
        link.child_installed(IKE, child(0xc1, 0xd1, (18760, 19960)))
            .unwrap();
        assert_eq!(link.session_started(Sid([1; 16]), ends(18800)).len(), 1);
        assert!(link.session_started(Sid([2; 16]), ends(18802)).is_empty());
        // A second CHILD_SA with other selectors takes the second session.
        let mut second = child(0xc2, 0xd2, (18802, 18802));
        second.ts_i = vec![ts(PEER, UDP, (40000, 40000))];
        let ops = link.child_installed(IKE, second).unwrap();
        assert_eq!(adds(&ops), vec![(Sid([2; 16]), 0xd2, 0xc2)]);
    }

    #[test]
    fn rekey_adds_the_new_sa_before_the_old_one_is_removed() {
        let mut link = EspLink::default();
        let sid = Sid([7; 16]);
        link.session_started(sid, ends(18800));
        link.child_installed(IKE, child(0xc1, 0xd1, (18760, 19960)))
            .unwrap();
        // The rekeyed CHILD_SA (same selectors) joins the same session
        // while the old one is still installed.
        let ops = link
            .child_installed(IKE, child(0xc2, 0xd2, (18760, 19960)))
            .unwrap();
        assert_eq!(adds(&ops), vec![(sid, 0xd2, 0xc2)]);
        assert!(removes(&ops).is_empty());
        // Then the peer deletes the old one.
        let ops = link.child_deleted(IKE, 0xc1, 0xd1);
        assert_eq!(removes(&ops), vec![(sid, 0xd1)]);
        assert!(adds(&ops).is_empty());
        assert_eq!(link.bound(0xd2), Some(sid));
        assert_eq!(link.child_count(), 1);
    }

    #[test]
    fn delete_of_the_child_or_the_ike_sa_or_the_session_removes_the_sa() {
        let mut link = EspLink::default();
        let sid = Sid([7; 16]);
        link.session_started(sid, ends(18800));
        link.child_installed(IKE, child(0xc1, 0xd1, (18760, 19960)))
            .unwrap();
        // A Delete naming other SPIs or another IKE SA changes nothing.
        assert!(link.child_deleted(IKE, 0xc1, 0xd9).is_empty());
        assert!(link.child_deleted(([9; 8], [9; 8]), 0xc1, 0xd1).is_empty());
        assert_eq!(
            removes(&link.child_deleted(IKE, 0xc1, 0xd1)),
            vec![(sid, 0xd1)]
        );
        assert_eq!(link.child_count(), 0);

        // IKE SA deleted (after a rekey of the IKE SA: children moved).
        link.child_installed(IKE, child(0xc2, 0xd2, (18760, 19960)))
            .unwrap();
        let new_ike = ([3; 8], [4; 8]);
        link.ike_rekeyed(IKE, new_ike);
        assert!(link.ike_deleted(IKE).is_empty(), "the old IKE SA has none");
        assert_eq!(removes(&link.ike_deleted(new_ike)), vec![(sid, 0xd2)]);

        // Session removed: its SA goes, the CHILD_SA stays for the next.
        link.child_installed(new_ike, child(0xc3, 0xd3, (18760, 19960)))
            .unwrap();
        assert_eq!(removes(&link.session_removed(&sid)), vec![(sid, 0xd3)]);
        assert_eq!(link.bound(0xd3), None);
        assert!(link.session_removed(&sid).is_empty(), "only once");
        let next = Sid([8; 16]);
        assert_eq!(
            adds(&link.session_started(next, ends(18804))),
            vec![(next, 0xd3, 0xc3)]
        );
        assert_eq!(removes(&link.clear()), vec![(next, 0xd3)]);
    }

    #[test]
    fn children_are_bounded_per_peer_and_unsupported_transforms_refused() {
        let mut link = EspLink::default();
        for n in 0..MAX_CHILDREN_PER_PEER as u32 {
            link.child_installed(IKE, child(0x100 + n, 0x200 + n, (1, 1)))
                .unwrap();
        }
        assert_eq!(
            link.child_installed(IKE, child(0x300, 0x400, (1, 1)))
                .unwrap_err(),
            ChildRefused::PeerLimit(IpAddr::V4(PEER))
        );
        assert_eq!(
            link.child_installed(IKE, child(0x500, 0x200, (1, 1)))
                .unwrap_err(),
            ChildRefused::DuplicateSpi(0x200)
        );
        let mut other = EspLink::default();
        let mut bad = child(1, 2, (1, 1));
        bad.sk_ei = Zeroizing::new(vec![0; 7]);
        assert!(matches!(
            other.child_installed(IKE, bad),
            Err(ChildRefused::Transform(_))
        ));
        let mut cbc = child(1, 2, (18800, 18800));
        cbc.encr = EncrAlg::AesCbc { key_bits: 128 };
        cbc.integ = Some(IntegAlg::HmacSha256_128);
        cbc.sk_ei = Zeroizing::new(vec![1; 16]);
        cbc.sk_er = Zeroizing::new(vec![2; 16]);
        cbc.sk_ai = Zeroizing::new(vec![3; 32]);
        cbc.sk_ar = Zeroizing::new(vec![4; 32]);
        other.child_installed(IKE, cbc).unwrap();
        let ops = other.session_started(Sid([1; 16]), ends(18800));
        let EspOp::Add { spec, .. } = &ops[0] else {
            panic!("{ops:?}")
        };
        assert!(
            spec.inbound_keys
                == EspKeys::AesCbcHmacSha256 {
                    enc_key: vec![1; 16],
                    auth_key: vec![3; 32]
                }
        );
        assert_eq!(other.child_count(), 1);
    }
}
