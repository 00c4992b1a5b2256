//! Endpoint configuration: identities, proposals, timers, DoS limits.

use std::time::Duration;

use crate::crypto::{DhGroup, EncrAlg, IntegAlg, Prf};
use crate::wire::{proto, ttype, Identification, Proposal, Transform};

/// One IKE SA suite (one proposal on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeSuite {
    pub encr: EncrAlg,
    /// `None` with an AEAD cipher.
    pub integ: Option<IntegAlg>,
    pub prf: Prf,
    pub dh: DhGroup,
}

impl IkeSuite {
    /// aes128gcm16-prfsha256-ecp256 (strongSwan keyword).
    pub const GCM128_SHA256_ECP256: IkeSuite = IkeSuite {
        encr: EncrAlg::AesGcm16 { key_bits: 128 },
        integ: None,
        prf: Prf::HmacSha256,
        dh: DhGroup::Ecp256,
    };
    /// aes128gcm16-prfsha256-x25519.
    pub const GCM128_SHA256_X25519: IkeSuite = IkeSuite {
        encr: EncrAlg::AesGcm16 { key_bits: 128 },
        integ: None,
        prf: Prf::HmacSha256,
        dh: DhGroup::Curve25519,
    };
    /// aes256gcm16-prfsha384-ecp256.
    pub const GCM256_SHA384_ECP256: IkeSuite = IkeSuite {
        encr: EncrAlg::AesGcm16 { key_bits: 256 },
        integ: None,
        prf: Prf::HmacSha384,
        dh: DhGroup::Ecp256,
    };
    /// aes128gcm16-prfsha1-x25519 (for peers that still want HMAC-SHA1).
    pub const GCM128_SHA1_X25519: IkeSuite = IkeSuite {
        encr: EncrAlg::AesGcm16 { key_bits: 128 },
        integ: None,
        prf: Prf::HmacSha1,
        dh: DhGroup::Curve25519,
    };
    /// aes256-sha256-modp2048 (CBC + HMAC-SHA-256-128).
    pub const CBC256_SHA256_MODP2048: IkeSuite = IkeSuite {
        encr: EncrAlg::AesCbc { key_bits: 256 },
        integ: Some(IntegAlg::HmacSha256_128),
        prf: Prf::HmacSha256,
        dh: DhGroup::Modp2048,
    };

    /// The proposal carrying this suite.
    pub fn proposal(&self, number: u8, spi: &[u8]) -> Proposal {
        let mut t = vec![Transform::with_key_len(
            ttype::ENCR,
            self.encr.transform_id(),
            self.encr.key_bits(),
        )];
        t.push(Transform::new(ttype::PRF, self.prf.transform_id()));
        if let Some(i) = self.integ {
            t.push(Transform::new(ttype::INTEG, i.transform_id()));
        }
        t.push(Transform::new(ttype::DH, self.dh.id()));
        Proposal {
            number,
            protocol: proto::IKE,
            spi: spi.to_vec(),
            transforms: t,
        }
    }

    /// Whether a received proposal offers this suite; the DH group may be
    /// any the peer offers when `any_dh` (used to find INVALID_KE cases).
    pub fn offered_in(&self, p: &Proposal) -> bool {
        p.protocol == proto::IKE
            && offers_encr(p, self.encr)
            && p.transforms
                .iter()
                .any(|t| t.ttype == ttype::PRF && t.id == self.prf.transform_id())
            && offers_integ(p, self.integ)
            && p.transforms
                .iter()
                .any(|t| t.ttype == ttype::DH && t.id == self.dh.id())
    }
}

fn offers_encr(p: &Proposal, e: EncrAlg) -> bool {
    p.transforms.iter().any(|t| {
        t.ttype == ttype::ENCR && t.id == e.transform_id() && t.key_len() == Some(e.key_bits())
    })
}

fn offers_integ(p: &Proposal, i: Option<IntegAlg>) -> bool {
    match i {
        Some(i) => p
            .transforms
            .iter()
            .any(|t| t.ttype == ttype::INTEG && t.id == i.transform_id()),
        // AEAD: no integrity transform, or only NONE (0).
        None => p
            .transforms
            .iter()
            .all(|t| t.ttype != ttype::INTEG || t.id == 0),
    }
}

/// One ESP suite for a CHILD_SA (no ESN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspSuite {
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
}

impl EspSuite {
    /// aes128gcm16.
    pub const GCM128: EspSuite = EspSuite {
        encr: EncrAlg::AesGcm16 { key_bits: 128 },
        integ: None,
    };
    /// aes256gcm16.
    pub const GCM256: EspSuite = EspSuite {
        encr: EncrAlg::AesGcm16 { key_bits: 256 },
        integ: None,
    };
    /// aes128-sha256.
    pub const CBC128_SHA256: EspSuite = EspSuite {
        encr: EncrAlg::AesCbc { key_bits: 128 },
        integ: Some(IntegAlg::HmacSha256_128),
    };

    pub fn proposal(&self, number: u8, spi: u32) -> Proposal {
        let mut t = vec![Transform::with_key_len(
            ttype::ENCR,
            self.encr.transform_id(),
            self.encr.key_bits(),
        )];
        if let Some(i) = self.integ {
            t.push(Transform::new(ttype::INTEG, i.transform_id()));
        }
        t.push(Transform::new(ttype::ESN, 0));
        Proposal {
            number,
            protocol: proto::ESP,
            spi: spi.to_be_bytes().to_vec(),
            transforms: t,
        }
    }

    pub fn offered_in(&self, p: &Proposal) -> bool {
        p.protocol == proto::ESP
            && p.spi.len() == 4
            && offers_encr(p, self.encr)
            && offers_integ(p, self.integ)
            // ESN: we only do 32-bit sequence numbers; a proposal without an
            // ESN transform means "no ESN" too.
            && (p.transforms.iter().all(|t| t.ttype != ttype::ESN)
                || p.transforms.iter().any(|t| t.ttype == ttype::ESN && t.id == 0))
    }

    /// KEYMAT octets for both directions.
    pub fn keymat_len(&self) -> usize {
        2 * (self.encr.keymat_len() + self.integ.map_or(0, IntegAlg::key_len))
    }
}

/// Endpoint settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our identity (IDi or IDr).
    pub local_id: Identification,
    /// IKE suites in preference order (initiator: all are proposed, the first
    /// one's group is used for the first KE; responder: accepted ones).
    pub ike_suites: Vec<IkeSuite>,
    /// ESP suites in preference order.
    pub esp_suites: Vec<EspSuite>,
    /// First retransmission timeout; doubles each try (RFC 7296 §2.1).
    pub retransmit_timeout: Duration,
    /// Transmissions of one request before the peer is declared dead.
    pub retransmit_tries: u32,
    /// Most half-open responder SAs (IKE_SA_INIT answered, IKE_AUTH not yet
    /// done); beyond it new IKE_SA_INIT requests are dropped.
    pub half_open_limit: usize,
    /// Most IKE SAs of every state together; beyond it new IKE_SA_INIT
    /// requests are dropped (authenticated peers cannot grow the table
    /// without bound either).
    pub max_sas: usize,
    /// From this many half-open SAs on, IKE_SA_INIT requests must carry a
    /// valid COOKIE (RFC 7296 §2.6).
    pub cookie_threshold: usize,
    /// The cookie secret is replaced when it is this old (checked when a
    /// cookie is demanded); cookies made with the previous one still pass.
    pub cookie_secret_lifetime: Duration,
    /// A half-open SA is forgotten after this long.
    pub half_open_timeout: Duration,
    /// UDP port for NAT-T (RFC 3948), normally 4500.
    pub natt_port: u16,
    /// Behind a NAT, send a NAT-keepalive this often (RFC 3948 §4: 20 s);
    /// `None`: never.
    pub natt_keepalive: Option<Duration>,
    /// Send an empty INFORMATIONAL after this long without a message from the
    /// peer (`None`: only when asked with `Endpoint::check_liveness`).
    pub liveness_interval: Option<std::time::Duration>,
    /// Perfect forward secrecy for CHILD_SAs we create or rekey with
    /// CREATE_CHILD_SA: a KE in the IKE SA's group (RFC 7296 §1.3.1). The
    /// first CHILD_SA (in IKE_AUTH) never has one. A peer's KE is always
    /// answered.
    pub child_pfs: bool,
    /// Rekey each IKE SA this long after it was established (shortened by
    /// up to 9 % per SA so both peers do not start together); `None`: only
    /// when asked (`Endpoint::rekey_ike_sa`) or by the peer.
    pub ike_rekey_after: Option<Duration>,
    /// Rekey each CHILD_SA this long after it was installed (same jitter);
    /// a CHILD_SA the peer rekeys first is left to the peer.
    pub child_rekey_after: Option<Duration>,
    /// What a peer may ask for as CHILD_SA traffic selectors when we
    /// respond: its proposals are narrowed to these (RFC 7296 §2.9), and
    /// refused with TS_UNACCEPTABLE when nothing is left. `None` accepts what
    /// the initiator proposes.
    pub child_policy: Option<ChildPolicy>,
}

/// Traffic selectors a responder allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildPolicy {
    /// The peer's side (TSi of a CHILD_SA the peer initiates).
    pub remote: Vec<crate::wire::TrafficSelector>,
    /// Our side (TSr).
    pub local: Vec<crate::wire::TrafficSelector>,
}

impl Config {
    /// Sensible defaults for `local_id`: GCM-128/SHA-256 with ECP-256 and
    /// X25519, GCM-256/SHA-384/ECP-256, CBC/SHA-256/MODP-2048 and
    /// GCM-128/SHA-1/X25519; ESP GCM-128, GCM-256, then CBC-SHA256.
    pub fn new(local_id: Identification) -> Self {
        Config {
            local_id,
            ike_suites: vec![
                IkeSuite::GCM128_SHA256_ECP256,
                IkeSuite::GCM128_SHA256_X25519,
                IkeSuite::GCM256_SHA384_ECP256,
                IkeSuite::CBC256_SHA256_MODP2048,
                IkeSuite::GCM128_SHA1_X25519,
            ],
            esp_suites: vec![EspSuite::GCM128, EspSuite::GCM256, EspSuite::CBC128_SHA256],
            retransmit_timeout: Duration::from_millis(500),
            retransmit_tries: 6,
            half_open_limit: 1024,
            max_sas: 16384,
            cookie_threshold: 64,
            cookie_secret_lifetime: Duration::from_secs(300),
            half_open_timeout: Duration::from_secs(30),
            natt_port: 4500,
            natt_keepalive: Some(Duration::from_secs(20)),
            liveness_interval: None,
            child_pfs: false,
            ike_rekey_after: None,
            child_rekey_after: None,
            child_policy: None,
        }
    }
}
