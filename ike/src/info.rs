//! What the endpoint hands to the rest of Ricochet: established IKE SAs (for
//! RFC 7717 keys) and CHILD_SA keys (for the ESP data plane), as [`Event`]s.

use std::net::SocketAddr;

use zeroize::Zeroizing;

use crate::crypto::{EncrAlg, IntegAlg};
use crate::wire::{Identification, TrafficSelector};

/// The negotiated PRF of an IKE SA (re-exported from `ricochet-protocol`).
pub type PrfAlg = crate::crypto::Prf;

/// An established IKE SA as the control plane sees it.
#[derive(Clone)]
pub struct IkeSaInfo {
    /// SPIi as in the IKE header (the RFC 7717 KeyID's first 8 octets).
    pub spi_i: [u8; 8],
    /// SPIr (the KeyID's next 8 octets).
    pub spi_r: [u8; 8],
    /// The SA's negotiated PRF.
    pub prf: PrfAlg,
    /// SK_d (zeroized on drop, never printed).
    pub sk_d: Zeroizing<Vec<u8>>,
    /// The peer's current address (port 500, or 4500 after NAT-T).
    pub peer: SocketAddr,
    /// The CHILD_SA negotiated with the SA, if any.
    pub child: Option<ChildSaKeys>,
    /// Whether we are this SA's original initiator (after a rekey: whether we
    /// sent the rekey request).
    pub we_initiated: bool,
    /// The peer's authenticated identity (`None` for a rekeyed SA it carries over
    /// from the original exchange).
    pub peer_id: Option<Identification>,
}

impl IkeSaInfo {
    /// The RFC 7717 shared secret `prf(SK_d, "IPPM")`, untruncated.
    pub fn ippm_key(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(
            ricochet_protocol::crypto::ikev2::rfc7717_shared_secret(self.prf, &self.sk_d)
                .expose()
                .to_vec(),
        )
    }

    /// The Set-Up-Response KeyID naming this SA (RFC 7717 §5.3).
    pub fn key_id(&self) -> [u8; 80] {
        ricochet_protocol::crypto::ikev2::rfc7717_key_id(&self.spi_i, &self.spi_r)
    }
}

impl core::fmt::Debug for IkeSaInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IkeSaInfo")
            .field("spi_i", &hex_lower(&self.spi_i))
            .field("spi_r", &hex_lower(&self.spi_r))
            .field("prf", &self.prf)
            .field("sk_d", &"<redacted>")
            .field("peer", &self.peer)
            .field("child", &self.child)
            .field("we_initiated", &self.we_initiated)
            .finish()
    }
}

/// Lower-case hex of some octets (SPIs in logs and the lab driver).
pub fn hex_lower(s: &[u8]) -> String {
    s.iter().map(|b| format!("{b:02x}")).collect()
}

/// IPsec mode of a CHILD_SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildMode {
    Tunnel,
    Transport,
}

/// An ESP CHILD_SA's parameters and keys (RFC 7296 §2.17). `sk_ei`/`sk_ai`
/// protect initiator→responder traffic (carried under `spi_r`, the SPI the
/// responder chose), `sk_er`/`sk_ar` responder→initiator (under `spi_i`).
/// For AES-GCM the encryption key is key ‖ 4-octet salt; integrity keys are
/// empty with AEAD.
#[derive(Clone)]
pub struct ChildSaKeys {
    /// The ESP SPI the CHILD_SA initiator chose (its inbound SPI).
    pub spi_i: u32,
    /// The ESP SPI the CHILD_SA responder chose (its inbound SPI).
    pub spi_r: u32,
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    /// Extended sequence numbers negotiated.
    pub esn: bool,
    pub mode: ChildMode,
    pub sk_ei: Zeroizing<Vec<u8>>,
    pub sk_ai: Zeroizing<Vec<u8>>,
    pub sk_er: Zeroizing<Vec<u8>>,
    pub sk_ar: Zeroizing<Vec<u8>>,
    /// Whether we were this CHILD_SA's initiator (decides in/out below).
    pub we_initiated: bool,
    /// TSi and TSr as narrowed by the responder.
    pub ts_i: Vec<TrafficSelector>,
    pub ts_r: Vec<TrafficSelector>,
    /// ESP must be UDP-encapsulated on port 4500 (RFC 3948): NAT detected on
    /// either side (or faked by the peer, as strongSwan's libipsec does).
    pub udp_encap: bool,
    /// Our address and the peer's for the outer header.
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// One direction of a CHILD_SA as the data plane installs it.
pub struct EspDirection<'a> {
    pub spi: u32,
    pub encr_key: &'a [u8],
    pub integ_key: &'a [u8],
}

impl ChildSaKeys {
    /// Our inbound SA: packets to us carry the SPI we chose.
    pub fn inbound(&self) -> EspDirection<'_> {
        if self.we_initiated {
            EspDirection {
                spi: self.spi_i,
                encr_key: &self.sk_er,
                integ_key: &self.sk_ar,
            }
        } else {
            EspDirection {
                spi: self.spi_r,
                encr_key: &self.sk_ei,
                integ_key: &self.sk_ai,
            }
        }
    }

    /// Our outbound SA: packets we send carry the peer's SPI.
    pub fn outbound(&self) -> EspDirection<'_> {
        if self.we_initiated {
            EspDirection {
                spi: self.spi_r,
                encr_key: &self.sk_ei,
                integ_key: &self.sk_ai,
            }
        } else {
            EspDirection {
                spi: self.spi_i,
                encr_key: &self.sk_er,
                integ_key: &self.sk_ar,
            }
        }
    }
}

impl core::fmt::Debug for ChildSaKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ChildSaKeys")
            .field("spi_i", &format_args!("{:08x}", self.spi_i))
            .field("spi_r", &format_args!("{:08x}", self.spi_r))
            .field("encr", &self.encr)
            .field("integ", &self.integ)
            .field("mode", &self.mode)
            .field("keys", &"<redacted>")
            .field("ts_i", &self.ts_i)
            .field("ts_r", &self.ts_r)
            .field("udp_encap", &self.udp_encap)
            .finish()
    }
}

/// Why an IKE SA went away or never came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteReason {
    /// We deleted it (`Endpoint::delete_ike_sa`).
    Local,
    /// The peer sent a Delete.
    Peer,
    /// Replaced by a rekeyed SA (the new one is announced by `IkeSaRekeyed`).
    Rekeyed,
    /// The peer stopped answering (retransmissions exhausted).
    Timeout,
    /// Authentication failed (either side).
    AuthenticationFailed,
    /// The peer answered with an error notify (its type).
    PeerError(u16),
    /// No acceptable proposal.
    NoProposalChosen,
    /// A half-open SA expired before IKE_AUTH completed.
    HalfOpenExpired,
}

/// Something the endpoint tells its owner.
#[derive(Debug, Clone)]
pub enum Event {
    /// IKE_AUTH completed: the SA (and its first CHILD_SA, if any) is up.
    IkeSaEstablished(IkeSaInfo),
    /// The IKE SA `old_spi_i`/`old_spi_r` was rekeyed into `new`; RFC 7717
    /// keys already derived from the old SA stay valid (RFC 7717 §5.1).
    IkeSaRekeyed {
        old_spi_i: [u8; 8],
        old_spi_r: [u8; 8],
        new: IkeSaInfo,
    },
    /// An IKE SA is gone (or an exchange to set one up failed).
    IkeSaDeleted {
        spi_i: [u8; 8],
        spi_r: [u8; 8],
        peer: SocketAddr,
        reason: DeleteReason,
    },
    /// A CHILD_SA is ready for the data plane (from IKE_AUTH or
    /// CREATE_CHILD_SA, including a CHILD_SA rekey).
    ChildSaInstalled {
        ike_spi_i: [u8; 8],
        ike_spi_r: [u8; 8],
        child: ChildSaKeys,
    },
    /// A CHILD_SA was removed: drop both SPIs from the data plane.
    ChildSaDeleted {
        ike_spi_i: [u8; 8],
        ike_spi_r: [u8; 8],
        spi_i: u32,
        spi_r: u32,
    },
    /// A liveness check (empty INFORMATIONAL) was answered.
    PeerAlive { spi_i: [u8; 8], spi_r: [u8; 8] },
}
