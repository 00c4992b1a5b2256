//! Test-packet protection and ESP harness: unprotecting arbitrary octets
//! never panics and never verifies by accident for a real key; whatever is
//! protected unprotects to the same plaintext.

use ricochet_protocol::crypto::{EspGcm128, PacketRole, SessionKeys, TestKeys, TestProtection};

use crate::Input;

/// Input: key seed (1), role/mode (1), then a packet.
pub fn test_packet(data: &[u8]) {
    let mut input = Input::new(data);
    let seed = input.u8();
    let sel = input.u8();
    let keys = TestKeys::new(&SessionKeys::from_bytes(&[seed; 48]));
    let role = if sel & 1 == 0 {
        PacketRole::Sender
    } else {
        PacketRole::Reflector
    };
    let mode = if sel & 2 == 0 {
        TestProtection::Authenticated
    } else {
        TestProtection::Encrypted
    };
    let pkt = input.rest();
    // Arbitrary octets: an error or (astronomically unlikely) a pass, never a panic.
    let mut buf = pkt.to_vec();
    let _ = keys.unprotect(role, mode, &mut buf);
    // Round trip: protect then unprotect restores the covered plaintext.
    let mut buf = pkt.to_vec();
    if keys.protect(role, mode, &mut buf).is_ok() {
        keys.unprotect(role, mode, &mut buf)
            .expect("what we protected verifies");
        let covered = mode.covered_len(role);
        assert_eq!(&buf[..covered], &pkt[..covered], "plaintext restored");
        let tail = role.hmac_offset() + 16;
        assert_eq!(&buf[tail..], &pkt[tail..], "padding untouched");
    } else {
        assert!(pkt.len() < role.min_len(), "only short packets are refused");
    }
}

/// The key of the fixed SA of [`esp_open`] (seeds are sealed under it).
pub const ESP_OPEN_KEY: [u8; 16] = [0x11; 16];
/// The salt of the fixed SA of [`esp_open`].
pub const ESP_OPEN_SALT: [u8; 4] = [0x22; 4];

/// Input: an ESP packet for a fixed SA ([`ESP_OPEN_KEY`], [`ESP_OPEN_SALT`]).
pub fn esp_open(data: &[u8]) {
    let sa = EspGcm128::new(&ESP_OPEN_KEY, &ESP_OPEN_SALT);
    let mut buf = data.to_vec();
    let _ = sa.open(&mut buf);
}
