//! Per-session TWAMP-Test keys (RFC 4656 §4.1.2, RFC 5357 §4.1.2/§4.2.1).
//!
//! Each test session has its own keys, derived from the control connection's
//! session keys with the session's SID as the AES key:
//!
//! * Test AES key  = AES-128-ECB(key = SID, AES Session-Key)
//! * Test HMAC key = AES-128-CBC(key = SID, IV = 0, HMAC Session-Key) (2 blocks)
//!
//! Session-Sender and Session-Reflector use the same keys in both directions.

use super::{as_blocks, keyed_hmac, SessionKeys, BLOCK_LEN};
use aes::cipher::{BlockEncrypt, BlockEncryptMut, InnerIvInit, KeyInit};
use aes::{Aes128, Aes128Enc};
use core::fmt;
use hmac::Hmac;
use sha1::Sha1;

/// Length of a Session Identifier (RFC 4656 §3.5).
pub const SID_LEN: usize = 16;

/// Derives the raw test-session keys of the session `sid` from the control
/// session keys (RFC 4656 §4.1.2). The result has the same shape as the
/// control keys: 16-octet AES key, 32-octet HMAC key.
pub fn derive_test_keys(session: &SessionKeys, sid: &[u8; SID_LEN]) -> SessionKeys {
    let sid_cipher = Aes128Enc::new(sid.into());
    let mut out = session.clone();
    // ECB of one block.
    sid_cipher.encrypt_block((&mut out.aes).into());
    // CBC, IV 0, over the two blocks of the HMAC Session-Key.
    let mut cbc = cbc::Encryptor::inner_iv_init(&sid_cipher, &[0u8; BLOCK_LEN].into());
    for block in as_blocks(&mut out.hmac) {
        cbc.encrypt_block_mut(block);
    }
    out
}

/// Ready-to-use keys of one test session: the expanded AES-128 key schedule
/// and the keyed HMAC-SHA1 state (inner/outer pads already hashed), built
/// once per session. The per-packet functions are in
/// [`crate::crypto::test_packet`].
#[derive(Clone)]
pub struct TestKeys {
    pub(super) aes: Aes128,
    pub(super) hmac: Hmac<Sha1>,
}

impl TestKeys {
    /// Builds the key schedules from raw test keys.
    pub fn new(keys: &SessionKeys) -> Self {
        TestKeys {
            aes: Aes128::new((&keys.aes).into()),
            hmac: keyed_hmac(&keys.hmac),
        }
    }

    /// Derives the keys of session `sid` from the control session keys and
    /// builds their schedules ([`derive_test_keys`] then [`TestKeys::new`]).
    pub fn derive(session: &SessionKeys, sid: &[u8; SID_LEN]) -> Self {
        Self::new(&derive_test_keys(session, sid))
    }
}

impl fmt::Debug for TestKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TestKeys(<redacted>)")
    }
}
