//! ESP with every transform the data plane uses, against independent truth:
//! the spec's TV-12 (RFC 4106 AES-GCM-128), the six ESP packets charon
//! (strongSwan 5.9.8) sent in the scenario-b capture, and a CBC + HMAC
//! packet rebuilt step by step with the raw RustCrypto primitives.

use aes::cipher::{BlockDecryptMut, BlockEncrypt, KeyInit, KeyIvInit};
use hmac::Mac;
use ricochet_protocol::crypto::esp_sa::ESP_HEADER_LEN;
use ricochet_protocol::crypto::{CryptoError, EspCipher, EspKeys, ReplayWindow};
use ricochet_testkit::{interop_file, read_pcap, unhex};

const PEER: &str = "strongswan-5.9.8";
const SCENARIO_B: &str = "ikev2-b-child-esp-aesgcm128-x25519";

fn h(s: &str) -> Vec<u8> {
    unhex(s)
}

/// TV-12: the counter IV of `EspCipher` for sequence number 1 is
/// 0000000000000001, so sealing reproduces the vector octet for octet.
#[test]
fn tv12_through_the_sa_cipher() {
    let keys = EspKeys::gcm_from_keymat(&h("2b9b2f8d7f6469c5053114fe8b9f093e 4c8d1156")).unwrap();
    let c = EspCipher::new(&keys).unwrap();
    let plain = h("9c40035e0016000000000000e8a1b2c60000000080010011");
    let payload = &plain[..22];
    let mut buf = vec![0u8; c.sealed_len(22)];
    buf[16..38].copy_from_slice(payload);
    let n = c.seal(0x1234, 1, false, 17, 22, &mut buf).unwrap();
    let want = h("00001234 00000001 0000000000000001
                  eac348fb1f24d67584cad846ad545264b50c53297cbcceb6
                  7ce6a3d09a3140b33ad08a43c54c64e7");
    assert_eq!(hex::encode(&buf[..n]), hex::encode(&want));
    let mut pkt = want.clone();
    let o = c.open(&mut pkt, None).unwrap();
    assert_eq!((o.spi, o.seq, o.next_header), (0x1234, 1, 17));
    assert_eq!(&pkt[o.payload], payload);
    // ESN on: the high half enters the AAD, so the same octets fail with
    // any high half but 0 ... and 0 is a different AAD (12 octets) too.
    let mut pkt = want.clone();
    assert_eq!(c.open(&mut pkt, Some(0)), Err(CryptoError::BadIcv));
}

/// charon's six ESP-in-UDP packets (frames 5-10) open with the CHILD_SA
/// keys from its log, and the plaintext is what the JSON says.
#[test]
fn strongswan_child_sa_packets_decrypt() {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(interop_file(PEER, &format!("{SCENARIO_B}.json"))).unwrap(),
    )
    .unwrap();
    let child = &json["child_sa"];
    let i2r = EspCipher::new(
        &EspKeys::gcm_from_keymat(&h(child["initiator_to_responder"]["key_and_salt"]
            .as_str()
            .unwrap()))
        .unwrap(),
    )
    .unwrap();
    let r2i = EspCipher::new(
        &EspKeys::gcm_from_keymat(&h(child["responder_to_initiator"]["key_and_salt"]
            .as_str()
            .unwrap()))
        .unwrap(),
    )
    .unwrap();
    let cap = read_pcap(&interop_file(PEER, &format!("{SCENARIO_B}.pcap")));
    let esp: Vec<_> = cap
        .udp
        .iter()
        .filter(|d| d.dst.port() == 4500 && d.payload.len() > 4 && d.payload[..4] != [0; 4])
        .collect();
    assert_eq!(esp.len(), 6, "three requests and three replies");
    let frames: Vec<&serde_json::Value> = json["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "ESP")
        .collect();
    assert_eq!(frames.len(), 6);
    let mut windows = [ReplayWindow::new(64, false), ReplayWindow::new(64, false)];
    for (d, f) in esp.iter().zip(frames) {
        let spi = u32::from_be_bytes(d.payload[..4].try_into().unwrap());
        let (c, w) = match spi {
            0x4907_5e1d => (&i2r, &mut windows[0]),
            0x4d87_7f21 => (&r2i, &mut windows[1]),
            other => panic!("unexpected SPI {other:08x}"),
        };
        assert_eq!(format!("{spi:08x}"), f["esp_spi"].as_str().unwrap());
        let mut pkt = d.payload.clone();
        let seq = w
            .check(u32::from_be_bytes(pkt[4..8].try_into().unwrap()))
            .unwrap();
        let o = c.open(&mut pkt, None).unwrap();
        w.accept(o.seq).unwrap();
        assert_eq!(o.seq, seq);
        assert_eq!(o.seq, f["esp_seq"].as_u64().unwrap());
        assert_eq!(o.next_header, 4, "tunnel mode: inner IPv4");
        assert_eq!(
            hex::encode(&pkt[o.payload.clone()]),
            f["inner_packet"].as_str().unwrap()
        );
        // the wrong direction's key, and any flipped octet, fail the ICV
        let other = if spi == 0x4907_5e1d { &r2i } else { &i2r };
        let mut again = d.payload.clone();
        assert_eq!(other.open(&mut again, None), Err(CryptoError::BadIcv));
        for at in [0, 5, 9, d.payload.len() / 2, d.payload.len() - 1] {
            let mut bad = d.payload.clone();
            bad[at] ^= 0x40;
            assert!(c.open(&mut bad, None).is_err(), "flip at {at}");
        }
    }
    // every packet again: the windows call them replays
    for d in &esp {
        let spi = u32::from_be_bytes(d.payload[..4].try_into().unwrap());
        let w = if spi == 0x4907_5e1d {
            &windows[0]
        } else {
            &windows[1]
        };
        assert!(w
            .check(u32::from_be_bytes(d.payload[4..8].try_into().unwrap()))
            .is_err());
    }
}

/// A charon packet re-sealed by our cipher with charon's own sequence
/// number: only the IV differs (charon's is random, ours the counter), the
/// opened plaintext and the trailer rule are the same.
#[test]
fn our_seal_has_charons_trailer_layout() {
    let keys = EspKeys::gcm_from_keymat(&h("689a9a70720f73f3bfcb6c50cd016c50b9b05390")).unwrap();
    let c = EspCipher::new(&keys).unwrap();
    let inner = h(
        "4500002c70bf40004001a3e7c6134d01c6134d020800591e06fd0001660b096b00000000256d030000000000",
    );
    let mut buf = vec![0u8; c.sealed_len(inner.len())];
    buf[16..16 + inner.len()].copy_from_slice(&inner);
    let n = c
        .seal(0x4907_5e1d, 1, false, 4, inner.len(), &mut buf)
        .unwrap();
    // 44 + 2 octets pad (01 02) + 2 = 48: what charon sent (frame 5 JSON)
    assert_eq!(n, 8 + 8 + 48 + 16);
    let mut pkt = buf[..n].to_vec();
    let o = c.open(&mut pkt, None).unwrap();
    assert_eq!(&pkt[o.payload.clone()], &inner[..]);
    assert_eq!(&pkt[o.payload.end..o.payload.end + 4], &[1, 2, 2, 4]);
}

/// AES-CBC + HMAC-SHA-256-128 (with and without ESN), checked by redoing
/// each RFC 4303 step with the raw primitives.
#[test]
fn cbc_hmac_sha256_layout_by_hand() {
    for (key_len, esn) in [(16usize, false), (32, true)] {
        let enc_key: Vec<u8> = (0..key_len as u8).collect();
        let auth_key = vec![0xa5u8; 32];
        let c = EspCipher::new(&EspKeys::AesCbcHmacSha256 {
            enc_key: enc_key.clone(),
            auth_key: auth_key.clone(),
        })
        .unwrap();
        assert_eq!((c.iv_len(), c.payload_offset()), (16, 24));
        let payload: Vec<u8> = (0..37u8).collect();
        let seq: u64 = if esn { 0x7_0000_0003 } else { 3 };
        let mut buf = vec![0u8; c.sealed_len(payload.len())];
        buf[24..24 + 37].copy_from_slice(&payload);
        let n = c.seal(0xabcd, seq, esn, 17, 37, &mut buf).unwrap();
        // 37 + 9 padding + 2 = 48 = 3 blocks
        assert_eq!(n, 24 + 48 + 16);
        assert_eq!(&buf[..8], &[0, 0, 0xab, 0xcd, 0, 0, 0, 3]);
        // IV = E_K(0^64 || seq)
        let mut iv = aes::Block::default();
        iv[8..].copy_from_slice(&seq.to_be_bytes());
        match key_len {
            16 => aes::Aes128::new_from_slice(&enc_key)
                .unwrap()
                .encrypt_block(&mut iv),
            _ => aes::Aes256::new_from_slice(&enc_key)
                .unwrap()
                .encrypt_block(&mut iv),
        }
        assert_eq!(&buf[8..24], &iv[..]);
        // ICV = HMAC-SHA-256(SPI..ciphertext [|| ESN high])[..16]
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&auth_key).unwrap();
        mac.update(&buf[..n - 16]);
        if esn {
            mac.update(&7u32.to_be_bytes());
        }
        assert_eq!(&buf[n - 16..n], &mac.finalize().into_bytes()[..16]);
        // decrypt by hand: payload, padding 1..9, pad length 9, NH 17
        let mut ct = buf[24..n - 16].to_vec();
        match key_len {
            16 => {
                let mut d = cbc::Decryptor::<aes::Aes128>::new_from_slices(&enc_key, &iv).unwrap();
                for b in ct.chunks_exact_mut(16) {
                    d.decrypt_block_mut(aes::Block::from_mut_slice(b));
                }
            }
            _ => {
                let mut d = cbc::Decryptor::<aes::Aes256>::new_from_slices(&enc_key, &iv).unwrap();
                for b in ct.chunks_exact_mut(16) {
                    d.decrypt_block_mut(aes::Block::from_mut_slice(b));
                }
            }
        }
        assert_eq!(&ct[..37], &payload[..]);
        assert_eq!(&ct[37..48], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 17]);
        // our open agrees, and refuses a wrong ESN high half or a flip
        let hi = esn.then_some(7);
        let mut pkt = buf[..n].to_vec();
        let o = c.open(&mut pkt, hi).unwrap();
        assert_eq!((o.seq, o.next_header), (seq, 17));
        assert_eq!(&pkt[o.payload], &payload[..]);
        let mut pkt = buf[..n].to_vec();
        assert_eq!(
            c.open(&mut pkt, esn.then_some(8).or(Some(0))),
            Err(CryptoError::BadIcv)
        );
        let mut pkt = buf[..n].to_vec();
        pkt[30] ^= 1;
        assert_eq!(c.open(&mut pkt, hi), Err(CryptoError::BadIcv));
    }
}

#[test]
fn gcm256_esn_and_sequence_exhaustion() {
    let mut keymat = vec![0x42u8; 36];
    keymat[32..].copy_from_slice(&[9, 8, 7, 6]);
    let c = EspCipher::new(&EspKeys::gcm_from_keymat(&keymat).unwrap()).unwrap();
    let mut buf = vec![0u8; c.sealed_len(10)];
    let seq = 0x1_0000_0002u64;
    let n = c.seal(7, seq, true, 17, 10, &mut buf).unwrap();
    assert_eq!(&buf[4..8], &2u32.to_be_bytes(), "only the low half is sent");
    assert_eq!(&buf[8..16], &seq.to_be_bytes(), "IV = 64-bit counter");
    let mut pkt = buf[..n].to_vec();
    assert_eq!(c.open(&mut pkt, Some(1)).unwrap().seq, seq);
    let mut pkt = buf[..n].to_vec();
    assert_eq!(c.open(&mut pkt, Some(0)), Err(CryptoError::BadIcv));
    assert_eq!(
        c.seal(7, 1 << 32, false, 17, 10, &mut buf),
        Err(CryptoError::EspSequenceExhausted)
    );
    assert!(EspKeys::gcm_from_keymat(&[0; 24]).is_err());
    assert!(EspCipher::new(&EspKeys::AesCbcHmacSha256 {
        enc_key: vec![0; 16],
        auth_key: vec![0; 20]
    })
    .is_err());
    assert!(format!("{:?}", EspKeys::gcm_from_keymat(&keymat).unwrap()).contains("redacted"));
    let _ = ESP_HEADER_LEN;
}

proptest::proptest! {
    #[test]
    fn every_transform_round_trips_and_random_input_never_panics(
        which in 0usize..4,
        payload in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        seq in 1u64..u32::MAX as u64,
        junk in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
    ) {
        let keys = match which {
            0 => EspKeys::gcm_from_keymat(&[3; 20]).unwrap(),
            1 => EspKeys::gcm_from_keymat(&[3; 36]).unwrap(),
            2 => EspKeys::AesCbcHmacSha256 { enc_key: vec![1; 16], auth_key: vec![2; 32] },
            _ => EspKeys::AesCbcHmacSha256 { enc_key: vec![1; 32], auth_key: vec![2; 32] },
        };
        let c = EspCipher::new(&keys).unwrap();
        let po = c.payload_offset();
        let mut buf = vec![0u8; c.sealed_len(payload.len())];
        buf[po..po + payload.len()].copy_from_slice(&payload);
        let n = c.seal(0x100, seq, false, 17, payload.len(), &mut buf).unwrap();
        proptest::prop_assert_eq!((n - po - 16) % if which < 2 { 4 } else { 16 }, 0, "plaintext alignment");
        let o = c.open(&mut buf[..n], None).unwrap();
        proptest::prop_assert_eq!(&buf[o.payload], &payload[..]);
        let mut j = junk.clone();
        let _ = c.open(&mut j, None);
        let _ = c.open(&mut j, Some(1));
    }
}
