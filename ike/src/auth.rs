//! The AUTH step (RFC 7296 §2.15), behind [`Authenticator`] so certificate
//! (signature) authentication can be added without touching the exchanges.

use crate::crypto::Prf;
use crate::psk::PskStore;
use crate::wire::Identification;
use subtle::ConstantTimeEq;
use thiserror::Error;

/// AUTH method numbers (RFC 7296 §3.8).
pub mod method {
    pub const RSA_SIGNATURE: u8 = 1;
    pub const SHARED_KEY_MIC: u8 = 2;
    pub const DSS_SIGNATURE: u8 = 3;
    pub const DIGITAL_SIGNATURE: u8 = 14;
}

/// What an authenticator needs to produce or check one AUTH payload.
pub struct AuthContext<'a> {
    /// The SA's negotiated PRF.
    pub prf: Prf,
    /// The signed octets: the sender's IKE_SA_INIT message ‖ the peer's
    /// nonce ‖ prf(SK_p, ID body) of the sender.
    pub signed_octets: &'a [u8],
    /// Who signs (the AUTH payload's sender).
    pub signer: &'a Identification,
    /// The other side.
    pub other: &'a Identification,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("no credential for identity {0}")]
    NoCredential(String),
    #[error("AUTH method {0} is not supported")]
    UnsupportedMethod(u8),
    #[error("AUTH payload does not verify")]
    Mismatch,
}

/// Produces and verifies AUTH payloads.
pub trait Authenticator {
    /// Our AUTH payload (method, data); `ctx.signer` is our identity.
    fn sign(&self, ctx: &AuthContext<'_>) -> Result<(u8, Vec<u8>), AuthError>;
    /// Checks the peer's AUTH payload; `ctx.signer` is the peer's identity.
    fn verify(&self, ctx: &AuthContext<'_>, method: u8, data: &[u8]) -> Result<(), AuthError>;
}

/// "Key Pad for IKEv2" (RFC 7296 §2.15), 17 octets, no terminator.
pub const KEY_PAD: &[u8] = b"Key Pad for IKEv2";

/// Shared Key Message Integrity Code:
/// AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>).
pub fn psk_auth(prf: Prf, psk: &[u8], signed_octets: &[u8]) -> Vec<u8> {
    let k = prf.prf(psk, KEY_PAD);
    prf.prf(&k, signed_octets).to_vec()
}

/// PSK authentication with secrets from a [`PskStore`], looked up by the
/// *peer's* identity (the secret is the pair's).
#[derive(Debug, Clone)]
pub struct PskAuthenticator {
    pub store: PskStore,
}

impl Authenticator for PskAuthenticator {
    fn sign(&self, ctx: &AuthContext<'_>) -> Result<(u8, Vec<u8>), AuthError> {
        let peer = ctx.other.display();
        let psk = self.store.get(&peer).ok_or(AuthError::NoCredential(peer))?;
        Ok((
            method::SHARED_KEY_MIC,
            psk_auth(ctx.prf, psk, ctx.signed_octets),
        ))
    }

    fn verify(&self, ctx: &AuthContext<'_>, m: u8, data: &[u8]) -> Result<(), AuthError> {
        if m != method::SHARED_KEY_MIC {
            return Err(AuthError::UnsupportedMethod(m));
        }
        let peer = ctx.signer.display();
        let psk = self.store.get(&peer).ok_or(AuthError::NoCredential(peer))?;
        let expect = psk_auth(ctx.prf, psk, ctx.signed_octets);
        if expect.len() == data.len() && bool::from(expect.ct_eq(data)) {
            Ok(())
        } else {
            Err(AuthError::Mismatch)
        }
    }
}
