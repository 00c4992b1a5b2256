//! The Set-Up-Response Token (RFC 4656 §3.1, RFC 5357 §3.1).
//!
//! Token = AES-128-CBC(key = token key K, IV = 0)(Challenge ‖ AES Session-Key ‖
//! HMAC Session-Key), 64 octets. The client seals it; the server opens it and
//! accepts the session keys only if the recovered challenge equals the one of
//! its Server Greeting.

use super::{as_blocks, CryptoError, SessionKeys, TokenKey, BLOCK_LEN};
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use aes::Aes128;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Length of the Token field of Set-Up-Response.
pub const TOKEN_LEN: usize = 64;
/// Length of the Challenge (Server Greeting octets 16–31).
pub const CHALLENGE_LEN: usize = 16;

/// Builds the Token a client sends in Set-Up-Response (RFC 4656 §3.1).
pub fn seal_token(
    key: &TokenKey,
    challenge: &[u8; CHALLENGE_LEN],
    keys: &SessionKeys,
) -> [u8; TOKEN_LEN] {
    let mut token = [0u8; TOKEN_LEN];
    token[..16].copy_from_slice(challenge);
    token[16..32].copy_from_slice(&keys.aes);
    token[32..].copy_from_slice(&keys.hmac);
    let mut cbc = cbc::Encryptor::<Aes128>::new(key.expose().into(), &[0u8; BLOCK_LEN].into());
    for block in as_blocks(&mut token) {
        cbc.encrypt_block_mut(block);
    }
    token
}

/// Opens a Token received in Set-Up-Response and checks, in constant time,
/// that it carries `challenge` (the one this server sent).
///
/// Returns the session keys, or [`CryptoError::ChallengeMismatch`] (RFC 4656
/// §3.1: the server then answers Server-Start with a non-zero Accept and
/// closes). The decrypted plaintext is zeroized in both cases.
///
/// A server should also derive a key and open the token for an unknown KeyID
/// (with a throw-away secret) so that its timing does not reveal which
/// KeyIDs exist; perfSONAR does the same.
pub fn open_token(
    key: &TokenKey,
    token: &[u8; TOKEN_LEN],
    challenge: &[u8; CHALLENGE_LEN],
) -> Result<SessionKeys, CryptoError> {
    let mut plain = Zeroizing::new(*token);
    let mut cbc = cbc::Decryptor::<Aes128>::new(key.expose().into(), &[0u8; BLOCK_LEN].into());
    for block in as_blocks(&mut plain[..]) {
        cbc.decrypt_block_mut(block);
    }
    if !bool::from(plain[..CHALLENGE_LEN].ct_eq(challenge)) {
        return Err(CryptoError::ChallengeMismatch);
    }
    let mut keys = Zeroizing::new([0u8; SessionKeys::LEN]);
    keys.copy_from_slice(&plain[CHALLENGE_LEN..]);
    Ok(SessionKeys::from_bytes(&keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{token_key, SharedSecret};

    fn fixture() -> (TokenKey, [u8; 16], SessionKeys) {
        let key = token_key(&SharedSecret::from_slice(b"k"), &[7; 16], 1).unwrap();
        let keys = SessionKeys {
            aes: [1; 16],
            hmac: [2; 32],
        };
        (key, [9; 16], keys)
    }

    #[test]
    fn round_trip() {
        let (key, challenge, keys) = fixture();
        let token = seal_token(&key, &challenge, &keys);
        let opened = open_token(&key, &token, &challenge).unwrap();
        assert_eq!(opened.aes, keys.aes);
        assert_eq!(opened.hmac, keys.hmac);
    }

    #[test]
    fn wrong_challenge_or_key_is_refused() {
        let (key, challenge, keys) = fixture();
        let token = seal_token(&key, &challenge, &keys);
        let mut other = challenge;
        other[15] ^= 1;
        assert_eq!(
            open_token(&key, &token, &other).unwrap_err(),
            CryptoError::ChallengeMismatch
        );
        let wrong = token_key(&SharedSecret::from_slice(b"j"), &[7; 16], 1).unwrap();
        assert_eq!(
            open_token(&wrong, &token, &challenge).unwrap_err(),
            CryptoError::ChallengeMismatch
        );
    }
}
