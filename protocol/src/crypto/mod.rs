//! Key derivation and packet protection for TWAMP/OWAMP, STAMP and RFC 7717.
//!
//! Every primitive comes from a RustCrypto crate (`aes`, `cbc`, `hmac`, `sha1`,
//! `sha2`, `pbkdf2`, `aes-gcm`); this module only arranges them the way the RFCs
//! prescribe:
//!
//! | Module | What | RFC |
//! |---|---|---|
//! | [`secret`] | shared secret, token key (PBKDF2-HMAC-SHA1), session keys | RFC 4656 §3.1 |
//! | [`token`] | Set-Up-Response Token seal/open | RFC 4656 §3.1 |
//! | [`stream`] | TWAMP-Control AES-CBC stream + running HMAC-SHA1 per direction | RFC 4656 §3.4, RFC 5357 §3.2 |
//! | [`test_keys`] | per-SID test-session keys | RFC 4656 §4.1.2, RFC 5357 §4.2.1 |
//! | [`test_packet`] | TWAMP-Test authenticated/encrypted packet protection | RFC 4656 §4.1.2, RFC 5357 §4.1.2/§4.2.1 |
//! | [`stamp_hmac`] | STAMP HMAC-SHA-256-128 | RFC 8762 §4.1.1/§4.2.1, RFC 8972 §4.8 |
//! | [`ikev2`] | IKEv2 prf, prf+, SKEYSEED, SK_*, Child SA KEYMAT, RFC 7717 secret | RFC 7296 §2.13–2.18, RFC 7717 §5.1 |
//! | [`esp`] | ESP AES-GCM-128 seal/open of one packet | RFC 4303 §2, RFC 4106 |
//! | [`esp_sa`] | ESP with AES-GCM-128/256 or AES-CBC + HMAC-SHA-256-128, ESN, counter IVs | RFC 4303, RFC 4106, RFC 3602, RFC 4868 |
//! | [`esp_replay`] | ESP anti-replay window with ESN inference | RFC 4303 §3.4.3, App. A |
//!
//! Key material lives in types that zeroize on drop and never print their
//! content through `Debug`. The AES key schedules are zeroized on drop too
//! (`aes`/`cbc`/`aes-gcm` `zeroize` features); the precomputed HMAC inner/outer
//! hash states are RustCrypto `Hmac` values, which do not zeroize themselves.
//!
//! Hot-path rule: the per-packet functions ([`TestKeys::protect`],
//! [`TestKeys::unprotect`], [`StampHmac`], [`EspGcm128`]) never allocate; the
//! key schedules and keyed HMAC states are built once per session.

pub mod esp;
pub mod esp_replay;
pub mod esp_sa;
pub mod ikev2;
pub mod secret;
pub mod stamp_hmac;
pub mod stream;
pub mod test_keys;
pub mod test_packet;
pub mod token;

pub use esp::{EspGcm128, EspOpened};
pub use esp_replay::{ReplayError, ReplayWindow};
pub use esp_sa::{EspCipher, EspKeys, EspOpenedSa};
pub use ikev2::{IkeSaKeys, Prf, PrfOutput, SkLengths};
pub use secret::{
    derive_token_key, token_key, SessionKeys, SharedSecret, TokenKey, TokenKeyDerivation,
};
pub use stamp_hmac::StampHmac;
pub use stream::{ControlRx, ControlTx};
pub use test_keys::TestKeys;
pub use test_packet::{PacketRole, TestProtection};
pub use token::{open_token, seal_token, TOKEN_LEN};

use crate::error::WireError;
use thiserror::Error;

/// The AES block size, which is also the TWAMP-Control message granule.
pub const BLOCK_LEN: usize = 16;

/// Length of the KeyID field of Set-Up-Response (RFC 4656 §3.1): a UTF-8
/// identity NUL-padded to 80 octets, or SPIi ‖ SPIr ‖ zeros under RFC 7717.
pub const KEY_ID_LEN: usize = 80;

/// Length of every truncated HMAC field in TWAMP/OWAMP and STAMP
/// (HMAC-SHA1-128, RFC 4656 §3.4; HMAC-SHA-256-128, RFC 8762 §4.1.1).
pub const HMAC_LEN: usize = 16;

/// A failure of a cryptographic check or of the buffer handed to a crypto
/// function.
///
/// After a failed check the buffer being checked holds unspecified content (it
/// may be partly or fully decrypted); the caller must drop it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// The buffer does not have the length the operation needs.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A truncated HMAC did not match the recomputed one (checked in constant
    /// time).
    #[error("{what}: HMAC verification failed")]
    BadHmac {
        /// The message or packet whose HMAC failed.
        what: &'static str,
    },
    /// The challenge recovered from a Set-Up-Response Token differs from the
    /// one the server sent (wrong shared secret, or a forged token).
    #[error("Set-Up-Response token: challenge mismatch (wrong shared secret?)")]
    ChallengeMismatch,
    /// The ESP Integrity Check Value (GCM tag) did not verify.
    #[error("ESP: ICV verification failed")]
    BadIcv,
    /// A decrypted ESP trailer is inconsistent (pad length beyond the payload,
    /// or padding not 1, 2, 3, … as RFC 4303 §2.4 prescribes).
    #[error("ESP: bad trailer ({why})")]
    BadEspTrailer {
        /// What is wrong with the trailer.
        why: &'static str,
    },
    /// The SA's sender counter reached its end (2^32 − 1 without ESN,
    /// RFC 4303 §3.3.3): the SA must be rekeyed, never wrapped.
    #[error("ESP: sequence number space exhausted, rekey the SA")]
    EspSequenceExhausted,
    /// A secret shorter than the 16-octet token key it should be used as
    /// directly ([`TokenKeyDerivation::Direct`]).
    #[error("the shared secret has {len} octets; using it directly as the token key needs 16")]
    SecretTooShort {
        /// Octets of the secret.
        len: usize,
    },
    /// A PBKDF2 iteration count of 0 (RFC 8018 §5.2 requires c ≥ 1).
    #[error("PBKDF2: iteration count 0")]
    ZeroIterationCount,
    /// prf+ was asked for more than 255 output blocks (RFC 7296 §2.13).
    #[error("prf+: {requested} octets requested, at most {max} possible")]
    PrfPlusTooLong {
        /// Octets asked for.
        requested: usize,
        /// 255 × the PRF output length.
        max: usize,
    },
}

/// Checks that `len` is a whole number of AES blocks.
fn check_blocks(what: &'static str, len: usize) -> Result<(), WireError> {
    if len % BLOCK_LEN == 0 {
        Ok(())
    } else {
        Err(WireError::BadLength {
            what,
            len,
            why: "not a whole number of 16-octet blocks",
        })
    }
}

/// A keyed HMAC state. `Hmac::new_from_slice` accepts keys of every length
/// (RFC 2104 §2: longer keys are hashed, shorter ones zero-padded), so its
/// `InvalidLength` error cannot occur.
fn keyed_hmac<M: hmac::digest::KeyInit>(key: &[u8]) -> M {
    M::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
}

/// Views `buf` (a whole number of blocks) as AES blocks, in place.
fn as_blocks(buf: &mut [u8]) -> impl Iterator<Item = &mut aes::Block> {
    buf.chunks_exact_mut(BLOCK_LEN)
        .map(aes::Block::from_mut_slice)
}
