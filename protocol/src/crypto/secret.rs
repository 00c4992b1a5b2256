//! Secrets and the PBKDF2 token key (RFC 4656 §3.1, RFC 5357 §3.1).
//!
//! None of these types prints its content: `Debug` shows only the type name,
//! and every byte is zeroized on drop.

use super::CryptoError;
use core::fmt;
use sha1::Sha1;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The shared secret of a KeyID: the PBKDF2 password (RFC 4656 §3.1), or the
/// RFC 7717 `prf(SK_d, "IPPM")` output.
///
/// Holds raw octets: a perfSONAR `.pfs` file stores the secret hex-encoded,
/// and [`crate::keyfile`] decodes it before it lands here.
#[derive(Clone)]
pub struct SharedSecret(Zeroizing<Vec<u8>>);

impl SharedSecret {
    /// Takes ownership of the secret octets.
    pub fn new(octets: Vec<u8>) -> Self {
        SharedSecret(Zeroizing::new(octets))
    }

    /// Copies the secret octets.
    pub fn from_slice(octets: &[u8]) -> Self {
        Self::new(octets.to_vec())
    }

    /// The raw secret octets. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of octets.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

/// The token key K: PBKDF2-HMAC-SHA1(secret, Salt, Count), 16 octets
/// (RFC 4656 §3.1). It encrypts the Set-Up-Response Token.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TokenKey([u8; 16]);

impl TokenKey {
    /// The raw key. Never log it.
    pub fn expose(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// An AES-128 key and a 32-octet HMAC key.
///
/// The control connection's AES and HMAC Session-Keys carried in the Token
/// (RFC 4656 §3.1), and also the per-SID test-session keys derived from them
/// ([`crate::crypto::test_keys::derive_test_keys`]), which have the same shape.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    /// AES-128 key.
    pub aes: [u8; 16],
    /// HMAC key (HMAC-SHA1 uses all 32 octets as its key).
    pub hmac: [u8; 32],
}

impl SessionKeys {
    /// Length of the two keys together, as carried in the Token (octets 16–63).
    pub const LEN: usize = 48;

    /// Splits 48 octets: AES key first, then the HMAC key (Token order).
    pub fn from_bytes(octets: &[u8; Self::LEN]) -> Self {
        let mut keys = SessionKeys {
            aes: [0; 16],
            hmac: [0; 32],
        };
        keys.aes.copy_from_slice(&octets[..16]);
        keys.hmac.copy_from_slice(&octets[16..]);
        keys
    }
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

/// Derives the token key K = PBKDF2(PRF = HMAC-SHA1, P = secret, S = salt,
/// c = count, dkLen = 16) (RFC 4656 §3.1; the Salt and Count come from the
/// Server Greeting).
///
/// The cost is `count` HMAC-SHA1 computations: a client must bound the Count
/// it accepts (RFC 5357 §6 suggests 32768) before calling this. A count of 0
/// is undefined in PBKDF2 and is refused.
pub fn token_key(
    secret: &SharedSecret,
    salt: &[u8; 16],
    count: u32,
) -> Result<TokenKey, CryptoError> {
    if count == 0 {
        return Err(CryptoError::ZeroIterationCount);
    }
    let mut key = TokenKey([0; 16]);
    pbkdf2::pbkdf2_hmac::<Sha1>(secret.expose(), salt, count, &mut key.0);
    Ok(key)
}

/// How the token key K is obtained from a shared secret.
///
/// RFC 4656 §3.1 runs PBKDF2 on the passphrase. RFC 7717 §5.1 calls its
/// `prf(SK_d, "IPPM")` output the "shared secret key" and never says whether
/// PBKDF2 still runs on it (spec `rfc7717-ikev2-key.md` §2 A), so both
/// readings are offered:
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenKeyDerivation {
    /// Reading A (the default): the secret takes the place of the passphrase,
    /// K = PBKDF2-HMAC-SHA1(secret, Salt, Count, 16). The Salt and Count of
    /// the Server Greeting keep their meaning.
    #[default]
    Pbkdf2,
    /// Reading B: K = the first 16 octets of the secret (an RFC 7717 secret
    /// is at least 20 octets); Salt and Count are ignored.
    Direct,
}

/// The token key of `secret` the way `how` says (see
/// [`TokenKeyDerivation`]). [`TokenKeyDerivation::Direct`] needs at least 16
/// octets of secret.
pub fn derive_token_key(
    secret: &SharedSecret,
    salt: &[u8; 16],
    count: u32,
    how: TokenKeyDerivation,
) -> Result<TokenKey, CryptoError> {
    match how {
        TokenKeyDerivation::Pbkdf2 => token_key(secret, salt, count),
        TokenKeyDerivation::Direct => {
            let octets = secret.expose();
            if octets.len() < 16 {
                return Err(CryptoError::SecretTooShort { len: octets.len() });
            }
            let mut key = TokenKey([0; 16]);
            key.0.copy_from_slice(&octets[..16]);
            Ok(key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_material() {
        let secret = SharedSecret::from_slice(b"twamp-secret");
        let keys = SessionKeys {
            aes: [0xab; 16],
            hmac: [0xcd; 32],
        };
        let key = token_key(&secret, &[0; 16], 1).unwrap();
        let printed = format!("{secret:?} {keys:?} {key:?}");
        assert!(!printed.contains("twamp"), "{printed}");
        assert!(!printed.to_lowercase().contains("ab"), "{printed}");
        assert!(!printed.contains("171"), "{printed}"); // 0xab in decimal
        assert!(printed.contains("redacted"));
    }

    #[test]
    fn direct_token_key_is_the_secret_prefix() {
        let secret = SharedSecret::from_slice(&core::array::from_fn::<u8, 20, _>(|i| i as u8));
        let k = derive_token_key(&secret, &[9; 16], 1024, TokenKeyDerivation::Direct).unwrap();
        assert_eq!(&k.expose()[..], &secret.expose()[..16]);
        let pbkdf2 = derive_token_key(&secret, &[9; 16], 1024, TokenKeyDerivation::Pbkdf2).unwrap();
        assert_eq!(
            pbkdf2.expose(),
            token_key(&secret, &[9; 16], 1024).unwrap().expose()
        );
        assert_ne!(pbkdf2.expose(), k.expose());
        assert_eq!(
            derive_token_key(
                &SharedSecret::from_slice(&[1; 15]),
                &[0; 16],
                1,
                TokenKeyDerivation::Direct
            )
            .unwrap_err(),
            CryptoError::SecretTooShort { len: 15 }
        );
    }

    #[test]
    fn zero_count_is_refused() {
        let secret = SharedSecret::from_slice(b"x");
        assert_eq!(
            token_key(&secret, &[0; 16], 0).unwrap_err(),
            CryptoError::ZeroIterationCount
        );
    }

    #[test]
    fn session_keys_split_in_token_order() {
        let octets: [u8; 48] = core::array::from_fn(|i| i as u8);
        let keys = SessionKeys::from_bytes(&octets);
        assert_eq!(keys.aes[0], 0);
        assert_eq!(keys.aes[15], 15);
        assert_eq!(keys.hmac[0], 16);
        assert_eq!(keys.hmac[31], 47);
    }
}
