//! Crypto test vectors of the protocol digest (`shared/spec/test-vectors.md`
//! TV-1 … TV-13, TV-15), the perfSONAR 5.2.3 golden captures
//! (`shared/interop/perfsonar-5.2.3/`), and property tests.
//!
//! Every expected value is copied from those files, never computed by this
//! crate.

use ricochet_protocol::crypto::esp::{EspGcm128, PAYLOAD_OFFSET};
use ricochet_protocol::crypto::ikev2::{
    child_sa_keymat, ike_sa_keys, rekey_skeyseed, rfc7717_key_id, rfc7717_shared_secret, skeyseed,
    Prf, SkLengths,
};
use ricochet_protocol::crypto::test_keys::derive_test_keys;
use ricochet_protocol::crypto::{
    open_token, seal_token, token_key, ControlRx, ControlTx, CryptoError, PacketRole, SessionKeys,
    SharedSecret, StampHmac, TestKeys, TestProtection,
};
use ricochet_protocol::keyfile::KeyFile;

/// Decodes hex, ignoring whitespace.
fn h(s: &str) -> Vec<u8> {
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(clean).expect("test vector hex")
}

fn arr<const N: usize>(s: &str) -> [u8; N] {
    h(s).try_into().expect("test vector length")
}

// ---------------------------------------------------------------- TV-1, TV-2

#[test]
fn tv1_pbkdf2_token_key() {
    let k = |pw: &[u8], salt: &[u8; 16], count| {
        token_key(&SharedSecret::from_slice(pw), salt, count)
            .unwrap()
            .expose()
            .to_vec()
    };
    // 1b, 1c
    let salt: [u8; 16] = arr("000102030405060708090a0b0c0d0e0f");
    assert_eq!(
        k(b"twamp-secret", &salt, 1024),
        h("885632c422077a7c7c24329a940867dd")
    );
    assert_eq!(
        k(b"twamp-secret", &salt, 2048),
        h("6cfab0be008adf0eaeb18bab4995a22c")
    );
    // 1a (RFC 3962) has a 21-octet salt; TWAMP salts are 16 octets, so check
    // the primitive through the pbkdf2 crate with the same parameters.
    let mut dk = [0u8; 16];
    pbkdf2::pbkdf2_hmac::<sha1::Sha1>(b"password", b"ATHENA.MIT.EDUraeburn", 1, &mut dk);
    assert_eq!(dk.to_vec(), h("cdedb5281bb2f801565a1122b2563515"));
}

fn tv2_keys() -> SessionKeys {
    SessionKeys {
        aes: arr("202122232425262728292a2b2c2d2e2f"),
        hmac: core::array::from_fn(|i| 0x30 + i as u8),
    }
}

fn tv1b_key() -> ricochet_protocol::crypto::TokenKey {
    token_key(
        &SharedSecret::from_slice(b"twamp-secret"),
        &arr("000102030405060708090a0b0c0d0e0f"),
        1024,
    )
    .unwrap()
}

#[test]
fn tv2_token() {
    let challenge: [u8; 16] = arr("101112131415161718191a1b1c1d1e1f");
    let token = seal_token(&tv1b_key(), &challenge, &tv2_keys());
    let expected = h(
        "ae6022308c4c6a3f73f19ef11bf9d3ea f220a0b4ff027f0fb7fcc0f8a8a946f6
                      c5ed58762b904f66861e581b2781ffcf 026b460a13c947518fe1e41c9ef2447f",
    );
    assert_eq!(token.to_vec(), expected);
    let keys = open_token(&tv1b_key(), &token, &challenge).unwrap();
    assert_eq!(keys.aes, tv2_keys().aes);
    assert_eq!(keys.hmac, tv2_keys().hmac);
}

// ---------------------------------------------------------------------- TV-3

const TV3_SERVER_IV: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";
const TV3_CLIENT_IV: &str = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf";

#[test]
fn tv3_server_stream() {
    let mut tx = ControlTx::new(&tv2_keys(), &arr(TV3_SERVER_IV));
    let mut start_time: [u8; 16] = arr("e8a1b2c3800000000000000000000000");
    tx.seal_without_hmac(&mut start_time).unwrap();
    let mut accept = [0u8; 48];
    accept[..32].copy_from_slice(&h(
        "00004952c0000202e8a1b2c400000000 01020304000000000000000000000000",
    ));
    tx.seal(&mut accept, 32).unwrap();
    let mut wire = start_time.to_vec();
    wire.extend_from_slice(&accept);
    assert_eq!(
        wire,
        h(
            "ac39dacb1d2e02dd91cdb42f7cc6c48b 122b8afaac404095317bbaab202a1201
           d2f49e2db0a9db4ff6fbfdad03039198 9330ecc9abf81a023032dc7869a678a2"
        )
    );
    // Start-Ack chains from the previous block 9330…78a2.
    let mut start_ack = [0u8; 32];
    tx.seal(&mut start_ack, 16).unwrap();
    assert_eq!(
        start_ack.to_vec(),
        h("796afd52ed83dbcafe46672794c8fe06 796ef772f7038033120937f6fcfa0326")
    );

    // The client's view: decrypt block by block, check every HMAC value.
    let mut rx = ControlRx::new(&tv2_keys(), &arr(TV3_SERVER_IV));
    rx.open_without_hmac(&mut start_time).unwrap();
    assert_eq!(start_time.to_vec(), h("e8a1b2c3800000000000000000000000"));
    let (first, rest) = accept.split_at_mut(16);
    rx.decrypt(first).unwrap();
    rx.decrypt(rest).unwrap();
    assert_eq!(accept[32..].to_vec(), h("f7a77851584c0aba34b8e902c92ae239"));
    rx.verify(&accept, 32).unwrap();
    rx.open(&mut start_ack, 16).unwrap();
    assert_eq!(start_ack[..16], [0u8; 16]);
    assert_eq!(
        start_ack[16..].to_vec(),
        h("b4989964058c1e70848246c27e95aca2")
    );
}

#[test]
fn tv3_server_hmac_without_start_time_block_fails() {
    // Pitfall 1: the first server HMAC covers the Start-Time block; a client
    // that forgets to absorb it must see a failure.
    let mut tx = ControlTx::new(&tv2_keys(), &arr(TV3_SERVER_IV));
    let mut start_time: [u8; 16] = arr("e8a1b2c3800000000000000000000000");
    tx.seal_without_hmac(&mut start_time).unwrap();
    let mut accept = [0u8; 48];
    accept[0] = 0;
    tx.seal(&mut accept, 32).unwrap();
    let mut rx = ControlRx::new(&tv2_keys(), &arr(TV3_SERVER_IV));
    rx.decrypt(&mut start_time).unwrap(); // decrypted but not absorbed
    assert!(matches!(
        rx.open(&mut accept, 32),
        Err(CryptoError::BadHmac { .. })
    ));
}

fn tv3_request() -> Vec<u8> {
    h(
        "0504000000000000000000009c40035e c0000201000000000000000000000000
       c0000202000000000000000000000000 00000000000000000000000000000000
       00000040e8a1b2c50000000000000002 00000000000000000000000000000000",
    )
}

const TV3_CLIENT_WIRE: &str = "58c99e0ac1fb52d09b5fb1af4f7d4c9b d0998266dcfd769e56db3d11990ef0f0
  6126c872ed50ed9fb883437f3c9021b0 9463320872262f4eddc65da82d460b70
  576a8793aacce6d10977c2dd71194215 a5c6a07e4b7dea836eb00d3363f6c55e
  6ebc0fb180ab9421fcbfd590d8a69c1f 4b6f59bc31874e560da9148035ede97b
  fabb7f71c77981fa556e2b7a4e0f4a10";

#[test]
fn tv3_client_stream() {
    let mut tx = ControlTx::new(&tv2_keys(), &arr(TV3_CLIENT_IV));
    let mut request = tv3_request();
    request.resize(112, 0);
    tx.seal(&mut request, 96).unwrap();
    let mut start = [0u8; 32];
    start[0] = 2;
    tx.seal(&mut start, 16).unwrap();
    let mut wire = request.clone();
    wire.extend_from_slice(&start);
    assert_eq!(wire, h(TV3_CLIENT_WIRE));

    // Server side, as a real receiver reads it: one block, then the rest.
    let mut rx = ControlRx::new(&tv2_keys(), &arr(TV3_CLIENT_IV));
    let mut wire = h(TV3_CLIENT_WIRE);
    let (req, start) = wire.split_at_mut(112);
    rx.decrypt(&mut req[..16]).unwrap();
    assert_eq!(req[0], 5, "Request-TW-Session command number");
    rx.decrypt(&mut req[16..]).unwrap();
    assert_eq!(req[..96].to_vec(), tv3_request());
    assert_eq!(req[96..].to_vec(), h("022ce84898fdfa4d2664bbb7d21a088b"));
    rx.verify(req, 96).unwrap();
    rx.decrypt(start).unwrap();
    assert_eq!(start[16..].to_vec(), h("281fc9a23939a4f730fbf9f8541361a8"));
    rx.verify(start, 16).unwrap();
}

// ---------------------------------------------------------------- TV-4 … TV-8

const TV3_SID: &str = "c0000202e8a1b2c40000000001020304";

#[test]
fn tv4_test_session_keys() {
    let keys = derive_test_keys(&tv2_keys(), &arr(TV3_SID));
    assert_eq!(keys.aes.to_vec(), h("c4d70fad54262041db75729ce85c59c8"));
    assert_eq!(
        keys.hmac.to_vec(),
        h("8f59f0557f1aa0229c9a67c75c7f55b0 0807ea5aa3a6c2edd2279e48f9578607")
    );
}

fn tv4_test_keys() -> TestKeys {
    TestKeys::derive(&tv2_keys(), &arr(TV3_SID))
}

/// Protects `plain` (HMAC field zero), compares with `wire`, then opens the
/// wire form and compares with `plain` plus the HMAC.
fn check_test_packet(
    role: PacketRole,
    mode: TestProtection,
    plain: &[u8],
    wire: &[u8],
    hmac: &[u8],
) {
    let keys = tv4_test_keys();
    let mut pkt = plain.to_vec();
    keys.protect(role, mode, &mut pkt).unwrap();
    assert_eq!(hex::encode(&pkt), hex::encode(wire), "{role:?} {mode:?}");
    keys.unprotect(role, mode, &mut pkt).unwrap();
    let at = role.hmac_offset();
    assert_eq!(pkt[..at], plain[..at]);
    assert_eq!(pkt[at..at + 16], *hmac);
}

fn tv5_plain() -> Vec<u8> {
    let mut p = h("00000007000000000000000000000000 e8a1b2c6400000008001000000000000");
    p.resize(48, 0);
    p
}

#[test]
fn tv5_sender_authenticated() {
    let wire = h(
        "1c9177f6e27ac793aaaa79159e60e734 e8a1b2c6400000008001000000000000
                  e1a3ae92c6e53c64742e0ec2e3b20b69",
    );
    check_test_packet(
        PacketRole::Sender,
        TestProtection::Authenticated,
        &tv5_plain(),
        &wire,
        &h("e1a3ae92c6e53c64742e0ec2e3b20b69"),
    );
}

#[test]
fn tv6_sender_encrypted() {
    let wire = h(
        "1c9177f6e27ac793aaaa79159e60e734 9dabfef0f969272d1c2cd679488e70c2
                  72c9205e8cbd91883b92b5b3f3044531",
    );
    check_test_packet(
        PacketRole::Sender,
        TestProtection::Encrypted,
        &tv5_plain(),
        &wire,
        &h("72c9205e8cbd91883b92b5b3f3044531"),
    );
}

fn tv7_plain() -> Vec<u8> {
    let mut p = h(
        "00000003000000000000000000000000 e8a1b2c6500000008001000000000000
                   e8a1b2c6480000000000000000000000 00000007000000000000000000000000
                   e8a1b2c6400000008001000000000000 3e000000000000000000000000000000",
    );
    p.resize(112, 0);
    p
}

#[test]
fn tv7_reflector_authenticated() {
    let hmac = h("eda5bafa2527187809603c339106854b");
    let mut wire = h("18460724b60873222d8e7799d4836105");
    wire.extend_from_slice(&tv7_plain()[16..96]);
    wire.extend_from_slice(&hmac);
    check_test_packet(
        PacketRole::Reflector,
        TestProtection::Authenticated,
        &tv7_plain(),
        &wire,
        &hmac,
    );
}

#[test]
fn tv8_reflector_encrypted() {
    let wire = h(
        "18460724b60873222d8e7799d4836105 bcb4bbbc45eddf26cadec73d0f6e18a7
                  d3b01d2abb7796e0ba5b2463e617574e 7026e0a9d7ec4c12dac3599300e9c14f
                  f0f96044eee30039a129dec63c6c06a6 e5032160c9d07a5728a47d04175a76fa
                  b33e09f36ee401404d5dea9aaf803770",
    );
    check_test_packet(
        PacketRole::Reflector,
        TestProtection::Encrypted,
        &tv7_plain(),
        &wire,
        &h("b33e09f36ee401404d5dea9aaf803770"),
    );
}

// --------------------------------------------------------------- TV-9, TV-10

#[test]
fn tv9_hmac_sha1_128_rfc2202_case1() {
    let tag = Prf::HmacSha1.prf(&[0x0b; 20], b"Hi There");
    assert_eq!(tag[..16].to_vec(), h("b617318655057264e28bc0b6fb378c8e"));
}

#[test]
fn tv10_aes128_fips197_c1_through_the_ecb_derivation() {
    // The test AES key is AES-ECB(key = SID, plaintext = AES Session-Key).
    let session = SessionKeys {
        aes: arr("00112233445566778899aabbccddeeff"),
        hmac: [0; 32],
    };
    let derived = derive_test_keys(&session, &arr("000102030405060708090a0b0c0d0e0f"));
    assert_eq!(derived.aes.to_vec(), h("69c4e0d86a7b0430d8cdb78070b4c55a"));
}

// --------------------------------------------------------------------- TV-11

/// Ni, Nr, g^ir, SPIi, SPIr.
type Tv11Inputs = (Vec<u8>, Vec<u8>, Vec<u8>, [u8; 8], [u8; 8]);

fn tv11_inputs() -> Tv11Inputs {
    let ni: Vec<u8> = (0x00..0x20).collect();
    let nr: Vec<u8> = (0x20..0x40).collect();
    let g_ir: Vec<u8> = (0x40..0x60).collect();
    (
        ni,
        nr,
        g_ir,
        arr("0102030405060708"),
        arr("1112131415161718"),
    )
}

#[test]
fn tv11a_prf_plus() {
    let out = Prf::HmacSha256.prf_plus(&[1; 32], b"IPPM", 48).unwrap();
    assert_eq!(
        out.to_vec(),
        h(
            "6ff4eb10c4422a822285c8badd7bd6814334b27807c1e07da93900f1e1442bd8
           abca75ec0676b67801b1519d54955fd4"
        )
    );
}

#[test]
fn tv11b_to_f_ike_sa_rfc7717_and_child_keymat() {
    let prf = Prf::HmacSha256;
    let (ni, nr, g_ir, spi_i, spi_r) = tv11_inputs();
    let seed = skeyseed(prf, &ni, &nr, &g_ir);
    assert_eq!(
        seed.to_vec(),
        h("fb7b0d6107cf71fb87cb4f19020bd81cc0f757a8f6a81a8a62c5b6f3a2660ac5")
    );
    let lens = SkLengths {
        prf_key: prf.key_len(),
        integ_key: 32,
        encr_key: 16,
    };
    assert_eq!(lens.total(), 192);
    let sk = ike_sa_keys(prf, &seed, &ni, &nr, &spi_i, &spi_r, lens).unwrap();
    let expect = [
        (
            &sk.sk_d,
            "0c26341d77313c227236f4aebf29182f0629dbe10e8ac56347f067a8defc22d5",
        ),
        (
            &sk.sk_ai,
            "8748594d3353b3e04121026ebf49d4a4907e2ae4eb2a9831832397da89af6f79",
        ),
        (
            &sk.sk_ar,
            "68b67ce3c70fad273ae0bbb34ee581341bbfd3303ab1d48166dde54604d0286b",
        ),
        (&sk.sk_ei, "d75427665fbbb117f4d9f877d73606ca"),
        (&sk.sk_er, "959fbdb34f746d24f8939191f8d3af60"),
        (
            &sk.sk_pi,
            "fc816d7edfca54ae0e23cdb44dc9e8476619d587774b27a4824b6c47d2e341e5",
        ),
        (
            &sk.sk_pr,
            "7237e03458c7e3e9ef8a55ca566e9ba411bc3eec87b56ee85d17b5e931c8851f",
        ),
    ];
    for (got, want) in expect {
        assert_eq!(hex::encode(&got[..]), want);
    }

    // 11c
    let secret = rfc7717_shared_secret(prf, &sk.sk_d);
    assert_eq!(
        secret.expose().to_vec(),
        h("f8d70a03fa53214e9f0c4b7f84cad3b43e431cc87f97920d4a5c6b6b66a2fb45")
    );
    // 11d, reading A: the secret is the PBKDF2 password.
    let k = token_key(&secret, &arr("000102030405060708090a0b0c0d0e0f"), 1024).unwrap();
    assert_eq!(k.expose().to_vec(), h("faa769ce30c4be64c6f4110b6a3c99d2"));
    // 11e
    let mut key_id = h("0102030405060708 1112131415161718");
    key_id.resize(80, 0);
    assert_eq!(rfc7717_key_id(&spi_i, &spi_r).to_vec(), key_id);
    // 11f
    let keymat = child_sa_keymat(prf, &sk.sk_d, None, &ni, &nr, 40).unwrap();
    assert_eq!(
        keymat.to_vec(),
        h("2b9b2f8d7f6469c5053114fe8b9f093e4c8d1156c64f995b9b6455e3a98772fa1f7a4aace2fe2358")
    );
    // The PFS form only prepends g^ir to the seed.
    let pfs = child_sa_keymat(prf, &sk.sk_d, Some(&g_ir), &ni, &nr, 40).unwrap();
    let mut seed = g_ir.clone();
    seed.extend_from_slice(&ni);
    seed.extend_from_slice(&nr);
    assert_eq!(
        pfs.to_vec(),
        prf.prf_plus(&sk.sk_d, &seed, 40).unwrap().to_vec()
    );
    // IKE SA rekey: prf(SK_d, g^ir | Ni | Nr).
    let rekeyed = rekey_skeyseed(prf, &sk.sk_d, &g_ir, &ni, &nr);
    assert_eq!(rekeyed.to_vec(), prf.prf(&sk.sk_d, &seed).to_vec());
}

// --------------------------------------------------------------------- TV-12

const TV12_ESP: &str = "00001234 00000001 0000000000000001
    eac348fb1f24d67584cad846ad545264b50c53297cbcceb6 7ce6a3d09a3140b33ad08a43c54c64e7";

fn tv12_esp() -> EspGcm128 {
    // TV-11f I→R key ‖ salt.
    EspGcm128::from_keymat(&h("2b9b2f8d7f6469c5053114fe8b9f093e 4c8d1156")).unwrap()
}

#[test]
fn tv12_esp_aes_gcm_seal_and_open() {
    let payload = h("9c40035e00160000 00000000e8a1b2c60000000080 01");
    assert_eq!(payload.len(), 22);
    let mut buf = vec![0u8; EspGcm128::sealed_len(22)];
    buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 22].copy_from_slice(&payload);
    let len = tv12_esp()
        .seal(0x1234, 1, &arr("0000000000000001"), 17, 22, &mut buf)
        .unwrap();
    assert_eq!(hex::encode(&buf[..len]), hex::encode(h(TV12_ESP)));

    let mut pkt = h(TV12_ESP);
    let opened = tv12_esp().open(&mut pkt).unwrap();
    assert_eq!(
        (opened.spi, opened.seq, opened.next_header),
        (0x1234, 1, 17)
    );
    assert_eq!(pkt[opened.payload.clone()].to_vec(), payload);
    // Plaintext incl. trailer (Pad Length 0, Next Header 17).
    assert_eq!(
        pkt[16..40].to_vec(),
        h("9c40035e0016000000000000e8a1b2c60000000080010011")
    );
}

// --------------------------------------------------------------------- TV-13

#[test]
fn tv13_stamp_hmac_sha256_128() {
    let key: Vec<u8> = (0x80..0xa0).collect();
    let stamp = StampHmac::new(&key);
    let mut pkt = vec![0u8; 112];
    pkt[..4].copy_from_slice(&1u32.to_be_bytes());
    pkt[16..24].copy_from_slice(&h("e8a1b2c600000000"));
    pkt[24..26].copy_from_slice(&h("8001"));
    stamp.seal_packet(&mut pkt).unwrap();
    assert_eq!(pkt[96..].to_vec(), h("ac6e679b77f64be3ed9ee6c1d65ef595"));
    stamp.verify_packet(&pkt).unwrap();

    let seq = h("00000001");
    let tlv = stamp.compute(&[&seq, &h("00040004b8000000")]);
    assert_eq!(tlv.to_vec(), h("c1697b18c00b2d3b36990b44e24eb415"));
    let tlv_u = stamp.compute(&[&seq, &h("80040004b8000000")]);
    assert_eq!(tlv_u.to_vec(), h("cad0f85011668586beff7bdd068fe59d"));
    stamp
        .verify(&[&seq, &h("80040004b8000000")], &tlv_u)
        .unwrap();
    assert!(stamp
        .verify(&[&seq, &h("00040004b8000000")], &tlv_u)
        .is_err());
}

// --------------------------------------------------------------------- TV-15

#[test]
fn tv15_real_perfsonar_session() {
    // Server Greeting → challenge (16..32), salt (32..48), count (48..52).
    let greeting = h(
        "0000000000000000000000000000000f f02aea39e7fc68daf79510ce1184cc8f
                      158c61acb941eae02b3e654ec391293a 00000800000000000000000000000000",
    );
    let challenge: [u8; 16] = greeting[16..32].try_into().unwrap();
    let salt: [u8; 16] = greeting[32..48].try_into().unwrap();
    let count = u32::from_be_bytes(greeting[48..52].try_into().unwrap());
    assert_eq!(count, 2048);
    let k = token_key(&SharedSecret::from_slice(b"twamp-secret"), &salt, count).unwrap();
    assert_eq!(k.expose().to_vec(), h("7c61c8d02913b5f9681b86880b3551af"));

    let token: [u8; 64] = arr(
        "88935b25e9046951e3b97d3feb3b95c2 bfbf50ed9871f498d5362ca13af66bd4
                               62dfd46306b75acf133e03e5dab8665b af77b33b2d9f2011a63744b80dea9aea",
    );
    let keys = open_token(&k, &token, &challenge).unwrap();
    assert_eq!(keys.aes.to_vec(), h("75b38a5b44f93a88c2234b6df3fa931d"));
    assert_eq!(
        keys.hmac.to_vec(),
        h("ae68827d981af4fa087f33ab12b9b0194471e94d0cf5787ce025c0ff7a0839a6")
    );

    // Server → client: Server-Start block 3, then Accept-Session.
    let server_start = h(
        "00000000000000000000000000000000 27d2545a7958cb5bf8503752961b09eb
                          08503e05e6f3e81441413f29b8fb423f",
    );
    let mut rx = ControlRx::new(&keys, &server_start[16..32].try_into().unwrap());
    let mut start_time = server_start[32..48].to_vec();
    rx.open_without_hmac(&mut start_time).unwrap();
    assert_eq!(start_time, h("eeb381be0acc814d0000000000000000"));
    let mut accept = h(
        "45601ae7a7d266a93f44e253674b1318 5865e0f2cb13b514f19188f82d04950d
                        aba702bc42f8b42dc3610ce5b7416d87",
    );
    rx.open(&mut accept, 32).unwrap();
    assert_eq!(
        accept,
        h(
            "000049527f000001eeb381c8397cd466 d566e888000000000000000000000000
           b02776307c0c75fd35d15e600ac0ec6a"
        )
    );
    assert_eq!(u16::from_be_bytes([accept[2], accept[3]]), 18770);
    let sid: [u8; 16] = accept[4..20].try_into().unwrap();
    assert_eq!(sid.to_vec(), h("7f000001eeb381c8397cd466d566e888"));

    // Client → server: Request-TW-Session under the Client-IV.
    let mut crx = ControlRx::new(&keys, &arr("80e14184e7926e6d598ba63583c1d99a"));
    let mut request = h(
        "24abc73ee6f29a1e3614d3e0d01dab48 a3a2404bc0d6a9836a0ec4e6e7fb3391
                         8b807f4b193c18bcd54f6ecd641749db b05b433a317903a804b0c2350c013d21
                         ae424f3a87fe8083da0300080079ffce 6f1a8037ff16d4c0ca23ca6a33499f3a
                         64d9f944d020a81944165c7c1d3e2de0",
    );
    crx.open(&mut request, 96).unwrap();
    assert_eq!(request[0], 5, "Request-TW-Session");

    let material = derive_test_keys(&keys, &sid);
    assert_eq!(material.aes.to_vec(), h("2c8c50e455ffbb00ce9820f06887066d"));
    assert_eq!(
        material.hmac.to_vec(),
        h("10e4ab92adceb4ce84123411152df16f442bb1604bb2b429a61b8a911fb099fd")
    );

    let test = TestKeys::new(&material);
    let mut sender = h(
        "47ec1dd24ee1f77db98505ea57827f0a eeb381c954332f010001000000000000
                        7ad3e6bc8a55cf4f5d5feb038176d994",
    );
    sender.resize(112, 0xa5); // 64 octets of padding: content is not covered
    test.unprotect(
        PacketRole::Sender,
        TestProtection::Authenticated,
        &mut sender,
    )
    .unwrap();
    assert_eq!(sender[..16], [0u8; 16], "sender seq 0 and MBZ");
    let mut reflector = h(
        "47ec1dd24ee1f77db98505ea57827f0a eeb381c9543bc4d20001000000000000
                           eeb381c9543a21630000000000000000 00000000000000000000000000000000
                           eeb381c954332f010001000000000000 ff000000000000000000000000000000
                           7ad3e6bc8a55cf4f5d5feb038176d994",
    );
    test.unprotect(
        PacketRole::Reflector,
        TestProtection::Authenticated,
        &mut reflector,
    )
    .unwrap();
    assert_eq!(reflector[..16], [0u8; 16], "reflector seq 0 and MBZ");
    assert_eq!(reflector[80], 255, "Sender TTL");
}

// ------------------------------------------- perfSONAR 5.2.3 golden captures

mod golden {
    use super::*;
    use serde_json::Value;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn interop_dir() -> PathBuf {
        let base = std::env::var_os("RICOCHET_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
        let dir = base.join("interop/perfsonar-5.2.3");
        assert!(
            dir.is_dir(),
            "{} missing: set RICOCHET_SHARED to the shared/ directory",
            dir.display()
        );
        dir
    }

    fn json(name: &str) -> Value {
        let text = std::fs::read_to_string(interop_dir().join(name)).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn hex_field(v: &Value, key: &str) -> Vec<u8> {
        h(v[key].as_str().unwrap_or_else(|| panic!("{key} missing")))
    }

    /// The secret as twampd reads it: through the pfs line of the README.
    fn golden_secret() -> SharedSecret {
        let pfs = "interop\t7477616d702d676f6c64656e2d736563726574\n";
        let file = KeyFile::parse(pfs).unwrap();
        let mut key_id = [0u8; 80];
        key_id[..7].copy_from_slice(b"interop");
        file.lookup(&key_id).unwrap().clone()
    }

    struct Setup {
        keys: SessionKeys,
        client_iv: [u8; 16],
        server_iv: [u8; 16],
    }

    /// Checks the key derivation of one capture against its JSON.
    fn derive(doc: &Value, secret: &SharedSecret) -> Setup {
        let control = doc["control"].as_array().unwrap();
        let greeting = &control[0];
        let setup = &control[1];
        let derived = &setup["derived"];
        let salt: [u8; 16] = hex_field(greeting, "salt").try_into().unwrap();
        let challenge: [u8; 16] = hex_field(greeting, "challenge").try_into().unwrap();
        let count = greeting["count"].as_u64().unwrap() as u32;
        let k = token_key(secret, &salt, count).unwrap();
        assert_eq!(k.expose().to_vec(), hex_field(derived, "pbkdf2_dk"));
        let token: [u8; 64] = hex_field(setup, "token").try_into().unwrap();
        let keys = open_token(&k, &token, &challenge).unwrap();
        assert_eq!(keys.aes.to_vec(), hex_field(derived, "aes_session_key"));
        assert_eq!(keys.hmac.to_vec(), hex_field(derived, "hmac_session_key"));
        let plain = hex_field(derived, "token_plain");
        assert_eq!(plain[..16], challenge);
        Setup {
            keys,
            client_iv: hex_field(setup, "client_iv").try_into().unwrap(),
            server_iv: hex_field(&control[2], "server_iv").try_into().unwrap(),
        }
    }

    #[test]
    fn interop_secret_derivation_encrypted_session() {
        let doc = json("twamp-enc-v4.decoded.json");
        let setup = derive(&doc, &golden_secret());
        for tk in doc["test_keys"].as_array().unwrap() {
            let sid: [u8; 16] = hex_field(tk, "sid").try_into().unwrap();
            let material = derive_test_keys(&setup.keys, &sid);
            assert_eq!(material.aes.to_vec(), hex_field(tk, "test_aes_key"));
            assert_eq!(material.hmac.to_vec(), hex_field(tk, "test_hmac_key"));
        }
    }

    #[test]
    fn wrong_secret_capture_is_refused_with_the_right_secret_and_opens_with_the_wrong_one() {
        let doc = json("twamp-auth-v4-wrongsecret-rejected.decoded.json");
        let control = doc["control"].as_array().unwrap();
        let salt: [u8; 16] = hex_field(&control[0], "salt").try_into().unwrap();
        let challenge: [u8; 16] = hex_field(&control[0], "challenge").try_into().unwrap();
        let token: [u8; 64] = hex_field(&control[1], "token").try_into().unwrap();
        let server_k = token_key(&golden_secret(), &salt, 2048).unwrap();
        assert_eq!(
            open_token(&server_k, &token, &challenge).unwrap_err(),
            CryptoError::ChallengeMismatch
        );
        // The decoder's values were derived from the client's secret.
        let setup = derive(&doc, &SharedSecret::from_slice(b"wrong-secret"));
        assert_eq!(setup.server_iv, [0; 16], "Accept != 0: no Server-IV");
    }

    /// TCP payload per direction (keyed by source port) and UDP payloads in
    /// capture order, from an Ethernet pcap of IPv4/IPv6.
    struct Capture {
        tcp: HashMap<u16, Vec<u8>>,
        udp: Vec<Vec<u8>>,
    }

    fn read_pcap(name: &str) -> Capture {
        let raw = ricochet_testkit::read_pcap(&interop_dir().join(name));
        let mut cap = Capture {
            tcp: HashMap::new(),
            udp: raw.udp.into_iter().map(|d| d.payload).collect(),
        };
        for c in raw.tcp {
            cap.tcp.insert(c.client.port(), c.client_to_server);
            cap.tcp.insert(c.server.port(), c.server_to_client);
        }
        cap
    }

    fn port_of(endpoint: &str) -> u16 {
        endpoint.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Decrypts and verifies every control message and every test packet of
    /// one capture, and compares the decoded fields with its JSON.
    fn replay(stem: &str) {
        let doc = json(&format!("{stem}.decoded.json"));
        let cap = read_pcap(&format!("{stem}.pcap"));
        let setup = derive(&doc, &golden_secret());
        let server_port = port_of(doc["server"].as_str().unwrap());
        let client_port = port_of(doc["client"].as_str().unwrap());
        let s2c = &cap.tcp[&server_port];
        let c2s = &cap.tcp[&client_port];
        let control = doc["control"].as_array().unwrap();

        // Server stream: encryption starts at Server-Start octet 32.
        let mut srx = ControlRx::new(&setup.keys, &setup.server_iv);
        let mut block: Vec<u8> = s2c[64 + 32..64 + 48].to_vec();
        srx.open_without_hmac(&mut block).unwrap();
        let secs = u32::from_be_bytes(block[..4].try_into().unwrap());
        assert_eq!(
            f64::from(secs),
            control[2]["start_time"].as_f64().unwrap().floor()
        );
        assert_eq!(block[8..], [0u8; 8]);
        let mut crx = ControlRx::new(&setup.keys, &setup.client_iv);
        let (mut s_off, mut c_off) = (64 + 48, 164);
        let mut sids = Vec::new();
        let mut checked = 0;
        for msg in &control[3..] {
            let len = msg["len"].as_u64().unwrap() as usize;
            let (rx, stream, off) = match msg["dir"].as_str().unwrap() {
                "S->C" => (&mut srx, s2c, &mut s_off),
                _ => (&mut crx, c2s, &mut c_off),
            };
            let mut m = stream[*off..*off + len].to_vec();
            *off += len;
            rx.open(&mut m, len - 16)
                .unwrap_or_else(|e| panic!("{stem}: {}: {e}", msg["msg"]));
            assert_eq!(msg["hmac_ok"], Value::Bool(true));
            match msg["msg"].as_str().unwrap() {
                "Accept-Session" => {
                    assert_eq!(m[0], 0);
                    let port = u16::from_be_bytes([m[2], m[3]]);
                    assert_eq!(u64::from(port), msg["port"].as_u64().unwrap());
                    assert_eq!(m[4..20].to_vec(), hex_field(msg, "sid"));
                    sids.push(<[u8; 16]>::try_from(&m[4..20]).unwrap());
                }
                "Request-TW-Session" => assert_eq!(m[0], 5),
                "Start-Sessions" => assert_eq!(m[0], 2),
                "Stop-Sessions" => assert_eq!(m[0], 3),
                _ => {}
            }
            checked += 1;
        }
        assert_eq!((s_off, c_off), (s2c.len(), c2s.len()), "whole streams used");
        assert!(checked >= 5);

        let mode = match doc["mode"].as_str().unwrap() {
            "authenticated" => TestProtection::Authenticated,
            "encrypted" => TestProtection::Encrypted,
            _ => return, // mixed: test packets are unauthenticated
        };
        assert_eq!(sids.len(), 1);
        let test = TestKeys::derive(&setup.keys, &sids[0]);
        let expected = doc["test"].as_array().unwrap();
        assert_eq!(cap.udp.len(), expected.len());
        for (pkt, want) in cap.udp.iter().zip(expected) {
            let mut pkt = pkt.clone();
            let role = match want["dir"].as_str().unwrap() {
                "S->R" => PacketRole::Sender,
                _ => PacketRole::Reflector,
            };
            test.unprotect(role, mode, &mut pkt).unwrap();
            let u32_at = |o: usize| u32::from_be_bytes(pkt[o..o + 4].try_into().unwrap());
            assert_eq!(u64::from(u32_at(0)), want["seq"].as_u64().unwrap());
            assert_eq!(f64::from(u32_at(16)), want["ts"].as_f64().unwrap().floor());
            if role == PacketRole::Reflector {
                assert_eq!(u64::from(u32_at(48)), want["sender_seq"].as_u64().unwrap());
                assert_eq!(u64::from(pkt[80]), want["sender_ttl"].as_u64().unwrap());
            }
        }
        // The same packet with one flipped HMAC bit must fail.
        assert_eq!(expected[0]["dir"], "S->R");
        let mut bad = cap.udp[0].clone();
        bad[PacketRole::Sender.hmac_offset()] ^= 1;
        assert!(matches!(
            test.unprotect(PacketRole::Sender, mode, &mut bad),
            Err(CryptoError::BadHmac { .. })
        ));
    }

    #[test]
    fn golden_authenticated_v4() {
        replay("twamp-auth-v4");
    }

    #[test]
    fn golden_encrypted_v4() {
        replay("twamp-enc-v4");
    }

    #[test]
    fn golden_encrypted_v6() {
        replay("twamp-enc-v6-port8620");
    }

    #[test]
    fn golden_mixed_v4_control_stream() {
        replay("twamp-mixed-v4");
    }
}

// ------------------------------------------------------------ property tests

mod props {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> impl Strategy<Value = SessionKeys> {
        (any::<[u8; 16]>(), any::<[u8; 32]>()).prop_map(|(aes, hmac)| SessionKeys { aes, hmac })
    }

    fn role_mode() -> impl Strategy<Value = (PacketRole, TestProtection)> {
        (
            prop_oneof![Just(PacketRole::Sender), Just(PacketRole::Reflector)],
            prop_oneof![
                Just(TestProtection::Authenticated),
                Just(TestProtection::Encrypted)
            ],
        )
    }

    /// A packet of at least the role's minimum length (up to 96 octets of
    /// padding) with a random body.
    fn packet(role: PacketRole) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), role.min_len()..role.min_len() + 96)
    }

    fn case() -> impl Strategy<Value = (SessionKeys, PacketRole, TestProtection, Vec<u8>)> {
        (keys(), role_mode()).prop_flat_map(|(k, (r, m))| (Just(k), Just(r), Just(m), packet(r)))
    }

    proptest! {
        #[test]
        fn protect_then_unprotect_round_trips((k, role, mode, plain) in case()) {
            let keys = TestKeys::new(&k);
            let mut pkt = plain.clone();
            keys.protect(role, mode, &mut pkt).unwrap();
            let covered = mode.covered_len(role);
            let at = role.hmac_offset();
            // Uncovered octets before the HMAC and the padding stay in clear.
            prop_assert_eq!(&pkt[covered..at], &plain[covered..at]);
            prop_assert_eq!(&pkt[at + 16..], &plain[at + 16..]);
            keys.unprotect(role, mode, &mut pkt).unwrap();
            prop_assert_eq!(&pkt[..at], &plain[..at]);
            prop_assert_eq!(&pkt[at + 16..], &plain[at + 16..]);
        }

        #[test]
        fn one_flipped_covered_or_hmac_bit_fails(
            (k, role, mode, plain) in case(),
            pick in any::<usize>(),
            bit in 0u8..8,
        ) {
            let keys = TestKeys::new(&k);
            let mut pkt = plain;
            keys.protect(role, mode, &mut pkt).unwrap();
            let covered = mode.covered_len(role);
            let at = role.hmac_offset();
            let pick = pick % (covered + 16);
            let index = if pick < covered { pick } else { at + pick - covered };
            pkt[index] ^= 1 << bit;
            let err = keys.unprotect(role, mode, &mut pkt).unwrap_err();
            let is_bad_hmac = matches!(err, CryptoError::BadHmac { .. });
            prop_assert!(is_bad_hmac, "{:?}", err);
        }

        #[test]
        fn uncovered_changes_do_not_matter(
            (k, role, mode, plain) in case(),
            pick in any::<usize>(),
            value in any::<u8>(),
        ) {
            let keys = TestKeys::new(&k);
            let mut pkt = plain;
            keys.protect(role, mode, &mut pkt).unwrap();
            let covered = mode.covered_len(role);
            let at = role.hmac_offset();
            // Uncovered: cleartext fields of authenticated mode and padding.
            let uncovered: Vec<usize> = (covered..at).chain(at + 16..pkt.len()).collect();
            prop_assume!(!uncovered.is_empty());
            pkt[uncovered[pick % uncovered.len()]] = value;
            prop_assert!(keys.unprotect(role, mode, &mut pkt).is_ok());
        }

        #[test]
        fn unprotect_of_random_input_never_panics(
            k in keys(),
            (role, mode) in role_mode(),
            mut junk in proptest::collection::vec(any::<u8>(), 0..160),
        ) {
            let keys = TestKeys::new(&k);
            let long_enough = junk.len() >= role.min_len();
            let res = keys.unprotect(role, mode, &mut junk);
            // Random input is accepted only by a 2^-128 accident.
            prop_assert!(res.is_err());
            if !long_enough {
                prop_assert!(matches!(res, Err(CryptoError::Wire(_))));
            }
        }

        #[test]
        fn control_stream_round_trip_and_tamper(
            k in keys(),
            iv in any::<[u8; 16]>(),
            msgs in proptest::collection::vec((1usize..6, any::<u8>()), 1..6),
            flip in any::<(usize, u8)>(),
        ) {
            let mut tx = ControlTx::new(&k, &iv);
            let mut rx = ControlRx::new(&k, &iv);
            let mut plain = Vec::new();
            let mut wire = Vec::new();
            for &(blocks, fill) in &msgs {
                let mut m = vec![fill; blocks * 16 + 16];
                tx.seal(&mut m, blocks * 16).unwrap();
                wire.push(m);
                plain.push(vec![fill; blocks * 16]);
            }
            let mut tampered = wire.clone();
            for (m, p) in wire.iter_mut().zip(&plain) {
                let at = m.len() - 16;
                rx.open(m, at).unwrap();
                prop_assert_eq!(&m[..at], &p[..]);
            }
            // Flip one bit of the stream: that message's check fails.
            let mut rx = ControlRx::new(&k, &iv);
            let total: usize = tampered.iter().map(Vec::len).sum();
            let mut index = flip.0 % total;
            let mut failed = false;
            for m in tampered.iter_mut() {
                if index < m.len() {
                    m[index] ^= 1 << (flip.1 % 8);
                    let at = m.len() - 16;
                    failed = rx.open(m, at).is_err();
                    break;
                }
                index -= m.len();
                let at = m.len() - 16;
                rx.open(m, at).unwrap();
            }
            prop_assert!(failed);
        }

        #[test]
        fn token_round_trip(k in keys(), challenge in any::<[u8; 16]>(), salt in any::<[u8; 16]>()) {
            let key = token_key(&SharedSecret::from_slice(b"s"), &salt, 1).unwrap();
            let token = seal_token(&key, &challenge, &k);
            let opened = open_token(&key, &token, &challenge).unwrap();
            prop_assert_eq!(opened.aes, k.aes);
            prop_assert_eq!(opened.hmac, k.hmac);
        }

        #[test]
        fn esp_round_trip_and_any_flip_fails(
            key in any::<[u8; 16]>(),
            salt in any::<[u8; 4]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..80),
            spi in any::<u32>(),
            seq in any::<u32>(),
            iv in any::<[u8; 8]>(),
            flip in any::<(usize, u8)>(),
        ) {
            let esp = EspGcm128::new(&key, &salt);
            let mut buf = vec![0u8; EspGcm128::sealed_len(payload.len())];
            buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + payload.len()].copy_from_slice(&payload);
            let len = esp.seal(spi, seq, &iv, 17, payload.len(), &mut buf).unwrap();
            prop_assert_eq!(len, buf.len());
            prop_assert_eq!((len - PAYLOAD_OFFSET - 16) % 4, 0);
            let mut bad = buf.clone();
            let opened = esp.open(&mut buf).unwrap();
            prop_assert_eq!((opened.spi, opened.seq, opened.next_header), (spi, seq, 17));
            prop_assert_eq!(&buf[opened.payload], &payload[..]);
            let i = flip.0 % bad.len();
            bad[i] ^= 1 << (flip.1 % 8);
            prop_assert!(esp.open(&mut bad).is_err());
        }

        #[test]
        fn esp_open_of_random_input_never_panics(
            mut junk in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            prop_assert!(EspGcm128::new(&[1; 16], &[2; 4]).open(&mut junk).is_err());
        }

        #[test]
        fn stamp_hmac_covers_exactly_octets_0_to_111(
            key in proptest::collection::vec(any::<u8>(), 0..100),
            mut pkt in proptest::collection::vec(any::<u8>(), 112..200),
            pick in any::<usize>(),
            bit in 0u8..8,
        ) {
            let stamp = StampHmac::new(&key);
            stamp.seal_packet(&mut pkt).unwrap();
            stamp.verify_packet(&pkt).unwrap();
            let mut tail = pkt.clone();
            if tail.len() > 112 {
                let i = 112 + pick % (tail.len() - 112);
                tail[i] ^= 1 << bit;
                prop_assert!(stamp.verify_packet(&tail).is_ok());
            }
            pkt[pick % 112] ^= 1 << bit;
            prop_assert!(stamp.verify_packet(&pkt).is_err());
        }

        #[test]
        fn keyfile_parse_never_panics(text in "\\PC*") {
            let _ = KeyFile::parse(&text);
        }

        #[test]
        fn keyfile_round_trip(
            entries in proptest::collection::btree_map(
                "[a-zA-Z0-9._@-]{1,80}",
                proptest::collection::vec(any::<u8>(), 1..40),
                1..8,
            ),
            upper in any::<bool>(),
        ) {
            let mut text = String::from("# generated\n\n");
            for (id, secret) in &entries {
                let hex = hex::encode(secret);
                let hex = if upper { hex.to_uppercase() } else { hex };
                text.push_str(&format!("{id}\t{hex}\n"));
            }
            let file = KeyFile::parse(&text).unwrap();
            prop_assert_eq!(file.len(), entries.len());
            for (id, secret) in &entries {
                let mut key_id = [0u8; 80];
                key_id[..id.len()].copy_from_slice(id.as_bytes());
                prop_assert_eq!(file.lookup(&key_id).unwrap().expose(), &secret[..]);
            }
        }
    }
}
