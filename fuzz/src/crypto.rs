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

/// Input: transform (1: GCM-128/256, CBC-128/256 + HMAC-SHA-256, ESN bit),
/// window size (2), a list of sequence numbers for the replay window (16
/// octets), then a packet.
///
/// Invariants: `EspCipher::open` of arbitrary octets never panics; what
/// `seal` produced opens to the same payload and Next Header with the same
/// sequence number; the replay window never accepts a number twice and its
/// pre-check agrees with `accept`.
pub fn esp_sa(data: &[u8]) {
    use ricochet_protocol::crypto::{EspCipher, EspKeys, ReplayWindow};
    let mut input = Input::new(data);
    let sel = input.u8();
    let win = u32::from(input.u8()) << 8 | u32::from(input.u8());
    let seqs: Vec<u32> = (0..4).map(|_| input.u32()).collect();
    let pkt = input.rest();
    let esn = sel & 0x80 != 0;
    let keys = match sel & 3 {
        0 => EspKeys::gcm_from_keymat(&[sel; 20]).expect("20 octets"),
        1 => EspKeys::gcm_from_keymat(&[sel; 36]).expect("36 octets"),
        2 => EspKeys::AesCbcHmacSha256 {
            enc_key: vec![sel; 16],
            auth_key: vec![!sel; 32],
        },
        _ => EspKeys::AesCbcHmacSha256 {
            enc_key: vec![sel; 32],
            auth_key: vec![!sel; 32],
        },
    };
    let c = EspCipher::new(&keys).expect("valid keys");
    let mut buf = pkt.to_vec();
    let _ = c.open(&mut buf, esn.then_some(u32::from(sel)));
    // seal -> open round trip of the same octets as payload
    let po = c.payload_offset();
    let mut sealed = vec![0u8; c.sealed_len(pkt.len())];
    sealed[po..po + pkt.len()].copy_from_slice(pkt);
    let seq = u64::from(seqs[0]) | if esn { u64::from(sel) << 32 } else { 0 };
    let n = c
        .seal(0x1234_5678, seq, esn, 17, pkt.len(), &mut sealed)
        .expect("room for the sealed packet");
    assert_eq!(n, sealed.len());
    let o = c
        .open(&mut sealed, esn.then_some((seq >> 32) as u32))
        .expect("what we sealed opens");
    assert_eq!((o.seq, o.next_header), (seq, 17));
    assert_eq!(&sealed[o.payload], pkt);
    // replay window: pre-check agrees with accept; no number twice
    let mut w = ReplayWindow::new(win, esn);
    let mut seen = std::collections::BTreeSet::new();
    for &s in seqs.iter().chain(seqs.iter()) {
        if let Ok(full) = w.check(s) {
            assert!(seen.insert(full), "{full} accepted twice");
            w.accept(full).expect("pre-checked number accepted");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn esp_sa_harness_holds_on_every_transform() {
        for sel in [0u8, 1, 2, 3, 0x80, 0x81, 0x82, 0x83] {
            for len in [0usize, 1, 17, 64, 200] {
                let mut input = vec![sel, 0x01, 0x00];
                for s in [5u32, 1, 0, 0xffff_fff0] {
                    input.extend_from_slice(&s.to_be_bytes());
                }
                input.extend((0..len).map(|i| i as u8));
                super::esp_sa(&input);
            }
        }
        super::esp_sa(&[]);
    }
}
