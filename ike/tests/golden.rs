//! The strongSwan 5.9.8 golden exchanges (`shared/interop/strongswan-5.9.8/`):
//! every IKE message in the three captures parses, every SK payload opens
//! with the keys charon logged, and SKEYSEED, SK_*, the PSK AUTH values,
//! the CHILD_SA KEYMAT, the NAT-D hashes and the RFC 7717 secret recompute
//! from the logged inputs. The JSON (charon's log plus an independent Python
//! decode) is the truth; the pcap octets are the input.

use ricochet_ike::auth::psk_auth;
use ricochet_ike::crypto::{nat_hash, EncrAlg, SkKeys};
use ricochet_ike::wire::{self, Header, HeaderRepr, Payload, HEADER_LEN};
use ricochet_ike::{IkeSaInfo, Prf};
use ricochet_protocol::crypto::ikev2::{self as kdf, SkLengths};
use ricochet_testkit::{decoded_json, interop_file, read_pcap, unhex};
use serde_json::Value;

const PEER: &str = "strongswan-5.9.8";
const SCENARIOS: [&str; 3] = [
    "ikev2-a-childless-psk-aesgcm128-ecp256",
    "ikev2-b-child-esp-aesgcm128-x25519",
    "ikev2-c-ike-rekey-aesgcm128-ecp256",
];

fn h(v: &Value) -> Vec<u8> {
    unhex(
        v.as_str()
            .unwrap_or_else(|| panic!("not a hex string: {v}")),
    )
}

/// The IKE SA generations of a scenario (a and b have one).
fn generations(j: &Value) -> Vec<Value> {
    match j.get("ike_sa_generations") {
        Some(g) => g.as_array().unwrap().clone(),
        None => vec![j["ike_sa"].clone()],
    }
}

fn gcm128(key_hex: &Value) -> SkKeys {
    SkKeys::new(EncrAlg::AesGcm16 { key_bits: 128 }, None, &h(key_hex), &[])
}

/// The IKE octets of a frame (non-ESP marker stripped).
fn ike_octets(frame: &Value, udp: &[u8]) -> Vec<u8> {
    let enc = frame["encapsulation"].as_str().unwrap();
    if enc.contains("non-ESP marker") {
        assert_eq!(&udp[..4], &[0, 0, 0, 0]);
        udp[4..].to_vec()
    } else {
        udp.to_vec()
    }
}

fn type_ids(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["type_id"].as_u64().unwrap() as u8)
        .collect()
}

fn check_payloads(frame: &Value, payloads: &[Payload]) {
    let n = frame["frame"].as_u64().unwrap();
    let ours: Vec<u8> = payloads.iter().map(Payload::ptype).collect();
    assert_eq!(
        ours,
        type_ids(&frame["payloads"]),
        "frame {n} payload types"
    );
    for (p, j) in payloads.iter().zip(frame["payloads"].as_array().unwrap()) {
        match p {
            Payload::Ke { group, data } => {
                assert_eq!(u64::from(*group), j["dh_group"].as_u64().unwrap());
                assert_eq!(data, &h(&j["key_exchange_data"]), "frame {n} KE");
            }
            Payload::Nonce(nonce) => assert_eq!(nonce, &h(&j["nonce"])),
            Payload::Notify(no) => {
                assert_eq!(u64::from(no.ntype), j["notify_type"].as_u64().unwrap());
                if let Some(d) = j.get("data") {
                    assert_eq!(no.data, h(d), "frame {n} notify data");
                }
            }
            Payload::IdI(id) | Payload::IdR(id) => {
                assert_eq!(id.body(), h(&j["body_hex"]));
                assert_eq!(id.display(), j["id_data"].as_str().unwrap());
            }
            Payload::Auth { method, data } => {
                assert_eq!(u64::from(*method), j["auth_method"].as_u64().unwrap());
                assert_eq!(data, &h(&j["auth_data"]));
            }
            Payload::Sa(props) => {
                let jp = j["proposals"].as_array().unwrap();
                assert_eq!(props.len(), jp.len());
                for (p, q) in props.iter().zip(jp) {
                    assert_eq!(u64::from(p.number), q["number"].as_u64().unwrap());
                    assert_eq!(p.spi, h(&q["spi"]), "frame {n} proposal SPI");
                    let jt = q["transforms"].as_array().unwrap();
                    assert_eq!(p.transforms.len(), jt.len());
                    for (t, u) in p.transforms.iter().zip(jt) {
                        assert_eq!(u64::from(t.ttype), u["type_id"].as_u64().unwrap());
                        assert_eq!(u64::from(t.id), u["id"].as_u64().unwrap());
                        assert_eq!(
                            t.key_len().map(u64::from),
                            u.get("key_bits").and_then(Value::as_u64)
                        );
                    }
                }
            }
            Payload::TsI(ts) | Payload::TsR(ts) => {
                let js = j["selectors"].as_array().unwrap();
                assert_eq!(ts.len(), js.len());
                for (t, u) in ts.iter().zip(js) {
                    assert_eq!(
                        format!("{}-{}", t.start_addr, t.end_addr),
                        u["addrs"].as_str().unwrap()
                    );
                    assert_eq!(
                        format!("{}-{}", t.start_port, t.end_port),
                        u["ports"].as_str().unwrap()
                    );
                }
            }
            Payload::Delete(d) => {
                assert_eq!(
                    d.spis.iter().map(hex::encode).collect::<Vec<_>>(),
                    j["spis"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap().to_owned())
                        .collect::<Vec<_>>()
                );
            }
            _ => {}
        }
    }
}

#[test]
fn every_ike_message_parses_and_every_sk_payload_opens() {
    let mut opened = 0;
    let mut clear = 0;
    for s in SCENARIOS {
        let j = decoded_json(PEER, &format!("{s}.json"));
        let cap = read_pcap(&interop_file(PEER, &format!("{s}.pcap")));
        let gens = generations(&j);
        for frame in j["frames"].as_array().unwrap() {
            if frame["kind"] != "IKE" {
                continue;
            }
            let n = frame["frame"].as_u64().unwrap() as usize;
            let msg = ike_octets(frame, &cap.udp[n - 1].payload);
            let hdr = HeaderRepr::parse(&Header::new_checked(&msg[..]).unwrap());
            assert_eq!(hex::encode(hdr.spi_i), frame["spi_i"].as_str().unwrap());
            assert_eq!(hex::encode(hdr.spi_r), frame["spi_r"].as_str().unwrap());
            assert_eq!(
                u64::from(hdr.exchange_type),
                frame["exchange_type"].as_u64().unwrap()
            );
            assert_eq!(u64::from(hdr.message_id), frame["msg_id"].as_u64().unwrap());
            assert_eq!(
                format!("{:#04x}", hdr.flags),
                frame["flags"].as_str().unwrap()
            );
            assert_eq!(u64::from(hdr.length), frame["ike_length"].as_u64().unwrap());
            let payloads = match frame.get("sk_key") {
                None => {
                    clear += 1;
                    wire::parse_chain(hdr.next_payload, &msg[HEADER_LEN..]).unwrap()
                }
                Some(k) => {
                    let g = &gens[frame["sa_generation"].as_u64().unwrap() as usize];
                    let key = match k.as_str().unwrap() {
                        "SK_ei" => &g["sk_ei"],
                        "SK_er" => &g["sk_er"],
                        other => panic!("{other}"),
                    };
                    let mut it = wire::PayloadIter::new(hdr.next_payload, &msg[HEADER_LEN..]);
                    let sk = it.next().unwrap().unwrap();
                    assert_eq!(sk.ptype, wire::ptype::SK);
                    let inner = gcm128(key).open(&msg, HEADER_LEN).unwrap();
                    let pt = h(&frame["sk_plaintext"]);
                    let pad = frame["sk_pad_length"].as_u64().unwrap() as usize;
                    assert_eq!(inner, pt[..pt.len() - pad - 1], "frame {n} plaintext");
                    // The wrong direction's key must not open it.
                    let other = if k == "SK_ei" {
                        &g["sk_er"]
                    } else {
                        &g["sk_ei"]
                    };
                    assert!(gcm128(other).open(&msg, HEADER_LEN).is_err());
                    opened += 1;
                    wire::parse_chain(it.next_type(), &inner).unwrap()
                }
            };
            check_payloads(frame, &payloads);
            // Emitting the parsed chain gives back the same octets.
            let mut again = Vec::new();
            wire::emit_chain(&payloads, &mut again);
            if frame.get("sk_key").is_none() {
                assert_eq!(again, msg[HEADER_LEN..], "frame {n} re-emitted");
            }
        }
    }
    // README: 16 distinct encrypted messages (4 in b, 12 in c incl. a's 2) + a's 2 again.
    assert_eq!(opened, 2 + 4 + 12);
    assert_eq!(clear, 2 + 2 + 2);
}

#[test]
fn skeyseed_and_sk_keys_recompute_for_every_generation() {
    for s in SCENARIOS {
        let j = decoded_json(PEER, &format!("{s}.json"));
        let gens = generations(&j);
        for (i, g) in gens.iter().enumerate() {
            let prf = Prf::HmacSha256;
            let (ni, nr, gir) = (h(&g["ni"]), h(&g["nr"]), h(&g["g_ir"]));
            let skeyseed = if i == 0 {
                kdf::skeyseed(prf, &ni, &nr, &gir)
            } else {
                kdf::rekey_skeyseed(prf, &h(&g["sk_d_old"]), &gir, &ni, &nr)
            };
            assert_eq!(&skeyseed[..], &h(&g["skeyseed"])[..], "{s} gen {i}");
            let spi_i: [u8; 8] = h(&g["spi_i"]).try_into().unwrap();
            let spi_r: [u8; 8] = h(&g["spi_r"]).try_into().unwrap();
            let lens = SkLengths {
                prf_key: 32,
                integ_key: 0,
                encr_key: EncrAlg::AesGcm16 { key_bits: 128 }.keymat_len(),
            };
            let k = kdf::ike_sa_keys(prf, &skeyseed, &ni, &nr, &spi_i, &spi_r, lens).unwrap();
            assert_eq!(*k.sk_d, h(&g["sk_d"]));
            assert_eq!(*k.sk_ei, h(&g["sk_ei"]));
            assert_eq!(*k.sk_er, h(&g["sk_er"]));
            assert_eq!(*k.sk_pi, h(&g["sk_pi"]));
            assert_eq!(*k.sk_pr, h(&g["sk_pr"]));
            assert!(g["sk_ai"].is_null() && k.sk_ai.is_empty());
            // The RFC 7717 secret through the public accessor.
            let info = IkeSaInfo {
                spi_i,
                spi_r,
                prf,
                sk_d: k.sk_d.clone(),
                peer: "198.18.77.2:500".parse().unwrap(),
                child: None,
                we_initiated: true,
                peer_id: None,
            };
            assert_eq!(*info.ippm_key(), h(&g["rfc7717_shared_secret"]));
            assert_eq!(info.key_id()[..], h(&g["rfc7717_keyid"])[..]);
        }
    }
}

#[test]
fn psk_auth_payloads_recompute_from_the_signed_octets() {
    for s in &SCENARIOS[..2] {
        let j = decoded_json(PEER, &format!("{s}.json"));
        let cap = read_pcap(&interop_file(PEER, &format!("{s}.pcap")));
        let g = &j["ike_sa"];
        let psk = h(&j["psk"]["hex"]);
        let frames = j["frames"].as_array().unwrap();
        let init_req = ike_octets(&frames[0], &cap.udp[0].payload);
        let init_resp = ike_octets(&frames[1], &cap.udp[1].payload);
        let prf = Prf::HmacSha256;
        let id_body = |f: &Value, t: u64| {
            f["payloads"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["type_id"] == t)
                .map(|p| h(&p["body_hex"]))
                .unwrap()
        };
        let idi = id_body(&frames[2], 35);
        let idr = id_body(&frames[3], 36);
        let mut si = init_req.clone();
        si.extend_from_slice(&h(&g["nr"]));
        si.extend_from_slice(&prf.prf(&h(&g["sk_pi"]), &idi));
        assert_eq!(
            psk_auth(prf, &psk, &si),
            h(&g["auth_payload_data"]["initiator"]),
            "{s}"
        );
        let mut sr = init_resp.clone();
        sr.extend_from_slice(&h(&g["ni"]));
        sr.extend_from_slice(&prf.prf(&h(&g["sk_pr"]), &idr));
        assert_eq!(
            psk_auth(prf, &psk, &sr),
            h(&g["auth_payload_data"]["responder"])
        );
        // A wrong PSK gives another value.
        assert_ne!(
            psk_auth(prf, b"lab-only-psk-0123456789abcdeF", &si),
            h(&g["auth_payload_data"]["initiator"])
        );
    }
}

#[test]
fn child_sa_keymat_recomputes() {
    let j = decoded_json(PEER, &format!("{}.json", SCENARIOS[1]));
    let g = &j["ike_sa"];
    let c = &j["child_sa"];
    let km = kdf::child_sa_keymat(
        Prf::HmacSha256,
        &h(&g["sk_d"]),
        None,
        &h(&g["ni"]),
        &h(&g["nr"]),
        ricochet_ike::EspSuite::GCM128.keymat_len(),
    )
    .unwrap();
    assert_eq!(*km, h(&c["keymat"]));
    assert_eq!(
        km[..20],
        h(&c["initiator_to_responder"]["key_and_salt"])[..]
    );
    assert_eq!(
        km[20..],
        h(&c["responder_to_initiator"]["key_and_salt"])[..]
    );
}

#[test]
fn nat_detection_hashes_match_and_faked_ones_are_seen() {
    for s in SCENARIOS {
        let j = decoded_json(PEER, &format!("{s}.json"));
        for d in j["nat_detection"].as_array().unwrap() {
            // "SHA1(SPIi xx | SPIr yy | ip | port)"
            let text = d["hashed"].as_str().unwrap();
            let parts: Vec<&str> = text
                .trim_start_matches("SHA1(")
                .trim_end_matches(')')
                .split(" | ")
                .collect();
            let spi_i: [u8; 8] = unhex(parts[0].trim_start_matches("SPIi "))
                .try_into()
                .unwrap();
            let spi_r: [u8; 8] = unhex(parts[1].trim_start_matches("SPIr "))
                .try_into()
                .unwrap();
            let addr = format!("{}:{}", parts[2], parts[3]).parse().unwrap();
            let ours = nat_hash(&spi_i, &spi_r, addr);
            assert_eq!(ours[..], h(&d["expected"])[..], "{s}: {text}");
            assert_eq!(
                ours[..] == h(&d["received"])[..],
                d["matches"].as_bool().unwrap()
            );
        }
    }
}
