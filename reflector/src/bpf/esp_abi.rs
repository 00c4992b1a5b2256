//! Rust mirror of the ESP part of `ebpf/ricochet.h`: the `esp_sas` key and
//! value, the `esp_keys` value (an SA's state for the AF_XDP pollers) and
//! the `esp_state` value (per-SA counters and the outbound sequence
//! counter, shared through an mmap). Layouts are checked against the BTF in
//! `abi::tests::layout_matches_btf`.

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, SocketAddr};

use ricochet_protocol::crypto::EspKeys;
use zeroize::Zeroizing;

use super::abi::{addr_bytes, addr_from, check_len, ne_u16, ne_u32, ne_u64, put, Family};
use super::BpfError;

/// Capacity of `esp_sas`, `esp_keys` and `esp_state` (`RC_MAX_ESP_SAS`).
pub const MAX_ESP_SAS: u32 = 4096;
/// `RC_ESP_KEY_LEN`: octets of each direction's key block.
pub const ESP_KEY_LEN: usize = 64;
/// The NAT-T port (RFC 3948), `RC_ESP_UDP_PORT`.
pub const ESP_UDP_PORT: u16 = 4500;

/// `struct rc_esp_sa_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawEspSaKey {
    /// Network byte order.
    pub spi: [u8; 4],
    pub family: u8,
    pub _pad: [u8; 3],
    pub local_addr: [u8; 16],
}

/// `struct rc_esp_sa`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawEspSa {
    pub slot: u32,
    pub generation: u32,
    pub flags: u16,
    pub _pad0: u16,
    pub _pad1: u32,
    pub rx_packets: u64,
    pub redirected: u64,
}

/// `struct rc_esp_keys` (holds key material: encode/decode only).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawEspKeys {
    pub generation: u32,
    pub instance: u32,
    pub spi_in: u32,
    pub spi_out: u32,
    pub alg: u8,
    pub key_len: u8,
    pub flags: u8,
    pub _pad0: u8,
    pub replay_window: u32,
    pub inner_slot: u32,
    pub inner_generation: u32,
    pub tx_state: u32,
    pub tx_next: u32,
    pub life_packets: u64,
    pub life_bytes: u64,
    pub expires_ns: u64,
    pub rekey_ns: u64,
    pub sel_local: [u8; 16],
    pub sel_remote: [u8; 16],
    pub sel_local_port: [u8; 2],
    pub sel_remote_port: [u8; 2],
    pub sel_family: u8,
    pub _pad2: [u8; 3],
    pub key_in: [u8; ESP_KEY_LEN],
    pub key_out: [u8; ESP_KEY_LEN],
}

/// `struct rc_esp_state`: per-SA counters (the pollers update them with
/// atomic operations on the shared mapping).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EspState {
    /// Last outbound sequence number used.
    pub tx_seq: u64,
    /// Packets authenticated and accepted.
    pub rx_packets: u64,
    /// Their ESP octets.
    pub rx_bytes: u64,
    /// Replies sealed with this SA.
    pub tx_packets: u64,
    /// Their ESP octets.
    pub tx_bytes: u64,
    /// Refused by the anti-replay window.
    pub replay_drops: u64,
    /// ICV (or trailer) failures.
    pub icv_failures: u64,
    /// Replies not sent: outbound sequence numbers used up.
    pub seq_exhausted: u64,
    /// Inner packets outside the traffic selectors (or not TWAMP/STAMP).
    pub selector_drops: u64,
    /// Packets past a hard lifetime.
    pub expired_drops: u64,
    /// [`EspState::REKEY_SEQ`] … bits: why the SA should be rekeyed.
    pub rekey_needed: u64,
    pub _reserved: u64,
}

impl EspState {
    /// Sequence numbers near their end (RFC 4303 §3.3.3).
    pub const REKEY_SEQ: u64 = 1 << 0;
    /// 90 % of the packet lifetime.
    pub const REKEY_PACKETS: u64 = 1 << 1;
    /// 90 % of the octet lifetime.
    pub const REKEY_BYTES: u64 = 1 << 2;
    /// 90 % of the time lifetime.
    pub const REKEY_TIME: u64 = 1 << 3;
    /// A hard lifetime passed: the SA no longer carries packets.
    pub const REKEY_EXPIRED: u64 = 1 << 4;
    /// Octets of one value.
    pub const LEN: usize = size_of::<EspState>();
    /// Field offsets, in `u64` words, for the pollers' atomic updates.
    pub const W_TX_SEQ: usize = 0;
    pub const W_RX_PACKETS: usize = 1;
    pub const W_RX_BYTES: usize = 2;
    pub const W_TX_PACKETS: usize = 3;
    pub const W_TX_BYTES: usize = 4;
    pub const W_REPLAY: usize = 5;
    pub const W_ICV: usize = 6;
    pub const W_SEQ_EXHAUSTED: usize = 7;
    pub const W_SELECTOR: usize = 8;
    pub const W_EXPIRED: usize = 9;
    pub const W_REKEY: usize = 10;

    /// Parses map octets.
    pub fn from_bytes(b: &[u8]) -> Result<EspState, BpfError> {
        check_len("esp_state", b, Self::LEN)?;
        let w = |i: usize| ne_u64(b, i * 8);
        Ok(EspState {
            tx_seq: w(0),
            rx_packets: w(1),
            rx_bytes: w(2),
            tx_packets: w(3),
            tx_bytes: w(4),
            replay_drops: w(5),
            icv_failures: w(6),
            seq_exhausted: w(7),
            selector_drops: w(8),
            expired_drops: w(9),
            rekey_needed: w(10),
            _reserved: 0,
        })
    }
}

/// `rc_esp_sa.flags`: which encapsulations the inbound SA accepts.
pub mod sa_flags {
    /// IP protocol 50.
    pub const RAW: u16 = 1 << 0;
    /// ESP in UDP 4500.
    pub const UDP: u16 = 1 << 1;
}

/// The `esp_sas` key of an inbound SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EspSaKey {
    /// The inbound SPI (receiver-chosen).
    pub spi: u32,
    /// Our (outer destination) address.
    pub local: IpAddr,
}

impl EspSaKey {
    /// The key as map octets.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<RawEspSaKey>()];
        put(
            &mut b,
            offset_of!(RawEspSaKey, spi),
            &self.spi.to_be_bytes(),
        );
        b[offset_of!(RawEspSaKey, family)] = Family::of(&self.local) as u8;
        put(
            &mut b,
            offset_of!(RawEspSaKey, local_addr),
            &addr_bytes(&self.local),
        );
        b
    }
}

impl EspSaKey {
    /// Parses map octets (as returned by key iteration).
    pub fn from_bytes(b: &[u8]) -> Result<EspSaKey, BpfError> {
        check_len("esp_sas key", b, size_of::<RawEspSaKey>())?;
        let family = match b[offset_of!(RawEspSaKey, family)] {
            4 => Family::V4,
            6 => Family::V6,
            f => return Err(BpfError::BadMapData(format!("esp_sas key family {f}"))),
        };
        let o = offset_of!(RawEspSaKey, local_addr);
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[o..o + 16]);
        Ok(EspSaKey {
            spi: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            local: addr_from(family, &a),
        })
    }
}

impl RawEspSa {
    /// The value as map octets.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<RawEspSa>()];
        put(&mut b, offset_of!(RawEspSa, slot), &self.slot.to_ne_bytes());
        put(
            &mut b,
            offset_of!(RawEspSa, generation),
            &self.generation.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(RawEspSa, flags),
            &self.flags.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(RawEspSa, rx_packets),
            &self.rx_packets.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(RawEspSa, redirected),
            &self.redirected.to_ne_bytes(),
        );
        b
    }

    /// Parses map octets.
    pub fn from_bytes(b: &[u8]) -> Result<RawEspSa, BpfError> {
        check_len("esp_sas value", b, size_of::<RawEspSa>())?;
        Ok(RawEspSa {
            slot: ne_u32(b, offset_of!(RawEspSa, slot)),
            generation: ne_u32(b, offset_of!(RawEspSa, generation)),
            flags: ne_u16(b, offset_of!(RawEspSa, flags)),
            _pad0: 0,
            _pad1: 0,
            rx_packets: ne_u64(b, offset_of!(RawEspSa, rx_packets)),
            redirected: ne_u64(b, offset_of!(RawEspSa, redirected)),
        })
    }
}

/// `rc_esp_keys.flags`.
pub mod key_flags {
    /// Extended Sequence Numbers.
    pub const ESN: u8 = 1 << 0;
    /// Tunnel mode (inner IP header); else transport mode.
    pub const TUNNEL: u8 = 1 << 1;
    /// Replies in UDP 4500 (RFC 3948); else raw ESP.
    pub const UDP: u8 = 1 << 2;
}

/// `RC_ESP_ALG_AES_GCM_16`.
pub const ALG_AES_GCM_16: u8 = 1;
/// `RC_ESP_ALG_AES_CBC_SHA256`.
pub const ALG_AES_CBC_SHA256: u8 = 2;

/// Traffic selectors of the inner packets: the reflector's test endpoint
/// and the sender's (port 0 = any port; the unspecified address = any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspSelectors {
    /// The reflector's test address and port (inner destination).
    pub local: SocketAddr,
    /// The Session-Sender's (inner source).
    pub remote: SocketAddr,
}

impl EspSelectors {
    /// Whether an inner packet from `src` to `dst` is inside the selectors.
    pub fn admits(&self, src: SocketAddr, dst: SocketAddr) -> bool {
        fn ok(sel: SocketAddr, a: SocketAddr) -> bool {
            (sel.ip().is_unspecified() || sel.ip() == a.ip())
                && (sel.port() == 0 || sel.port() == a.port())
                && sel.is_ipv4() == a.is_ipv4()
        }
        ok(self.local, dst) && ok(self.remote, src)
    }
}

/// What the pollers need for one SA (`struct rc_esp_keys`). Key material
/// is zeroized on drop and never shown by `Debug`.
#[derive(Clone, Debug)]
pub struct EspSlotKeys {
    /// The generation of the `esp_sas` entry this belongs to.
    pub generation: u32,
    /// New for every new SA in the slot.
    pub instance: u32,
    /// Our SPI (inbound).
    pub spi_in: u32,
    /// The peer's SPI for the replies (outbound).
    pub spi_out: u32,
    /// Inbound keys.
    pub key_in: EspKeys,
    /// Outbound keys (same transform).
    pub key_out: EspKeys,
    /// 64-bit sequence numbers.
    pub esn: bool,
    /// Tunnel mode (else transport).
    pub tunnel: bool,
    /// Replies in UDP 4500 (else raw ESP).
    pub udp: bool,
    /// Anti-replay window in packets; 0 = off.
    pub replay_window: u32,
    /// The inner session's `keys` slot and generation.
    pub inner_slot: u32,
    pub inner_generation: u32,
    /// `esp_state` index of the outbound SA (its sequence counter).
    pub tx_state: u32,
    /// Deferred outbound switch (rekey): the `esp_keys` slot of the
    /// session's newest SA whose outbound half replaces this one's once a
    /// packet authenticated on its inbound SPI (`esp_state.rx_packets`).
    pub tx_next: Option<u32>,
    /// Hard lifetimes; 0 = none. `expires_ns` is CLOCK_TAI.
    pub life_packets: u64,
    pub life_bytes: u64,
    pub expires_ns: u64,
    /// CLOCK_TAI ns from which "rekey needed (time)" is raised; 0 = none.
    pub rekey_ns: u64,
    /// Inner traffic selectors.
    pub selectors: EspSelectors,
}

fn key_block(k: &EspKeys) -> Result<(u8, u8, Zeroizing<[u8; ESP_KEY_LEN]>), BpfError> {
    let mut b = Zeroizing::new([0u8; ESP_KEY_LEN]);
    let (alg, len) = match k {
        EspKeys::AesGcm { key, salt } => {
            b[32..36].copy_from_slice(salt);
            (ALG_AES_GCM_16, key.len())
        }
        EspKeys::AesCbcHmacSha256 { enc_key, auth_key } => {
            if auth_key.len() != 32 {
                return Err(BpfError::BadMapData(
                    "ESP HMAC key must be 32 octets".into(),
                ));
            }
            b[32..64].copy_from_slice(auth_key);
            (ALG_AES_CBC_SHA256, enc_key.len())
        }
    };
    let key = match k {
        EspKeys::AesGcm { key, .. } => key,
        EspKeys::AesCbcHmacSha256 { enc_key, .. } => enc_key,
    };
    if len != 16 && len != 32 {
        return Err(BpfError::BadMapData(format!(
            "ESP cipher key of {len} octets (16 or 32)"
        )));
    }
    b[..len].copy_from_slice(key);
    Ok((alg, len as u8, b))
}

fn keys_from_block(alg: u8, len: u8, b: &[u8]) -> Result<EspKeys, BpfError> {
    let len = usize::from(len);
    if len != 16 && len != 32 {
        return Err(BpfError::BadMapData(format!("esp_keys key_len {len}")));
    }
    match alg {
        ALG_AES_GCM_16 => {
            let mut salt = [0u8; 4];
            salt.copy_from_slice(&b[32..36]);
            Ok(EspKeys::AesGcm {
                key: b[..len].to_vec(),
                salt,
            })
        }
        ALG_AES_CBC_SHA256 => Ok(EspKeys::AesCbcHmacSha256 {
            enc_key: b[..len].to_vec(),
            auth_key: b[32..64].to_vec(),
        }),
        a => Err(BpfError::BadMapData(format!("esp_keys alg {a}"))),
    }
}

impl EspSlotKeys {
    /// The value as map octets; zeroized when dropped.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, BpfError> {
        let (alg, len, kin) = key_block(&self.key_in)?;
        let (alg_out, len_out, kout) = key_block(&self.key_out)?;
        if (alg, len) != (alg_out, len_out) {
            return Err(BpfError::BadMapData(
                "inbound and outbound ESP transforms differ".into(),
            ));
        }
        if Family::of(&self.selectors.local.ip()) != Family::of(&self.selectors.remote.ip()) {
            return Err(BpfError::BadMapData(
                "traffic selectors of different families".into(),
            ));
        }
        let mut b = Zeroizing::new(vec![0u8; size_of::<RawEspKeys>()]);
        macro_rules! w {
            ($f:ident, $v:expr) => {
                put(&mut b, offset_of!(RawEspKeys, $f), &$v.to_ne_bytes())
            };
        }
        w!(generation, self.generation);
        w!(instance, self.instance);
        w!(spi_in, self.spi_in);
        w!(spi_out, self.spi_out);
        b[offset_of!(RawEspKeys, alg)] = alg;
        b[offset_of!(RawEspKeys, key_len)] = len;
        let mut flags = 0;
        if self.esn {
            flags |= key_flags::ESN;
        }
        if self.tunnel {
            flags |= key_flags::TUNNEL;
        }
        if self.udp {
            flags |= key_flags::UDP;
        }
        b[offset_of!(RawEspKeys, flags)] = flags;
        w!(replay_window, self.replay_window);
        w!(inner_slot, self.inner_slot);
        w!(inner_generation, self.inner_generation);
        w!(tx_state, self.tx_state);
        w!(tx_next, self.tx_next.map_or(0, |n| n.saturating_add(1)));
        w!(life_packets, self.life_packets);
        w!(life_bytes, self.life_bytes);
        w!(expires_ns, self.expires_ns);
        w!(rekey_ns, self.rekey_ns);
        let sel = &self.selectors;
        put(
            &mut b,
            offset_of!(RawEspKeys, sel_local),
            &addr_bytes(&sel.local.ip()),
        );
        put(
            &mut b,
            offset_of!(RawEspKeys, sel_remote),
            &addr_bytes(&sel.remote.ip()),
        );
        put(
            &mut b,
            offset_of!(RawEspKeys, sel_local_port),
            &sel.local.port().to_be_bytes(),
        );
        put(
            &mut b,
            offset_of!(RawEspKeys, sel_remote_port),
            &sel.remote.port().to_be_bytes(),
        );
        b[offset_of!(RawEspKeys, sel_family)] = Family::of(&sel.local.ip()) as u8;
        put(&mut b, offset_of!(RawEspKeys, key_in), &kin[..]);
        put(&mut b, offset_of!(RawEspKeys, key_out), &kout[..]);
        Ok(b)
    }

    /// Parses map octets; `Ok(None)` for an unused slot (alg 0).
    pub fn from_bytes(b: &[u8]) -> Result<Option<EspSlotKeys>, BpfError> {
        check_len("esp_keys", b, size_of::<RawEspKeys>())?;
        let alg = b[offset_of!(RawEspKeys, alg)];
        if alg == 0 {
            return Ok(None);
        }
        let len = b[offset_of!(RawEspKeys, key_len)];
        let ki = offset_of!(RawEspKeys, key_in);
        let ko = offset_of!(RawEspKeys, key_out);
        let family = match b[offset_of!(RawEspKeys, sel_family)] {
            4 => Family::V4,
            6 => Family::V6,
            f => {
                return Err(BpfError::BadMapData(format!(
                    "esp_keys selector family {f}"
                )))
            }
        };
        let addr = |off: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[off..off + 16]);
            addr_from(family, &a)
        };
        let port = |off: usize| u16::from_be_bytes([b[off], b[off + 1]]);
        let flags = b[offset_of!(RawEspKeys, flags)];
        Ok(Some(EspSlotKeys {
            generation: ne_u32(b, offset_of!(RawEspKeys, generation)),
            instance: ne_u32(b, offset_of!(RawEspKeys, instance)),
            spi_in: ne_u32(b, offset_of!(RawEspKeys, spi_in)),
            spi_out: ne_u32(b, offset_of!(RawEspKeys, spi_out)),
            key_in: keys_from_block(alg, len, &b[ki..ki + ESP_KEY_LEN])?,
            key_out: keys_from_block(alg, len, &b[ko..ko + ESP_KEY_LEN])?,
            esn: flags & key_flags::ESN != 0,
            tunnel: flags & key_flags::TUNNEL != 0,
            udp: flags & key_flags::UDP != 0,
            replay_window: ne_u32(b, offset_of!(RawEspKeys, replay_window)),
            inner_slot: ne_u32(b, offset_of!(RawEspKeys, inner_slot)),
            inner_generation: ne_u32(b, offset_of!(RawEspKeys, inner_generation)),
            tx_state: ne_u32(b, offset_of!(RawEspKeys, tx_state)),
            tx_next: ne_u32(b, offset_of!(RawEspKeys, tx_next)).checked_sub(1),
            life_packets: ne_u64(b, offset_of!(RawEspKeys, life_packets)),
            life_bytes: ne_u64(b, offset_of!(RawEspKeys, life_bytes)),
            expires_ns: ne_u64(b, offset_of!(RawEspKeys, expires_ns)),
            rekey_ns: ne_u64(b, offset_of!(RawEspKeys, rekey_ns)),
            selectors: EspSelectors {
                local: SocketAddr::new(
                    addr(offset_of!(RawEspKeys, sel_local)),
                    port(offset_of!(RawEspKeys, sel_local_port)),
                ),
                remote: SocketAddr::new(
                    addr(offset_of!(RawEspKeys, sel_remote)),
                    port(offset_of!(RawEspKeys, sel_remote_port)),
                ),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EspSlotKeys {
        EspSlotKeys {
            generation: 5,
            instance: 9,
            spi_in: 0x4907_5e1d,
            spi_out: 0x4d87_7f21,
            key_in: EspKeys::gcm_from_keymat(&[0x11; 20]).unwrap(),
            key_out: EspKeys::gcm_from_keymat(&[0x22; 20]).unwrap(),
            esn: true,
            tunnel: false,
            udp: true,
            replay_window: 1024,
            inner_slot: 3,
            inner_generation: 4,
            tx_state: 7,
            tx_next: Some(0),
            life_packets: 1000,
            life_bytes: 0,
            expires_ns: 42,
            rekey_ns: 40,
            selectors: EspSelectors {
                local: "198.18.0.2:862".parse().unwrap(),
                remote: "198.18.0.1:0".parse().unwrap(),
            },
        }
    }

    #[test]
    fn esp_keys_encoding_follows_the_header_and_round_trips() {
        let k = sample();
        let b = k.to_bytes().unwrap();
        assert_eq!(b.len(), size_of::<RawEspKeys>());
        assert_eq!(b[offset_of!(RawEspKeys, alg)], ALG_AES_GCM_16);
        assert_eq!(b[offset_of!(RawEspKeys, key_len)], 16);
        assert_eq!(
            b[offset_of!(RawEspKeys, flags)],
            key_flags::ESN | key_flags::UDP
        );
        let ki = offset_of!(RawEspKeys, key_in);
        assert_eq!(&b[ki..ki + 16], &[0x11; 16], "cipher key at 0");
        assert_eq!(&b[ki + 32..ki + 36], &[0x11; 4], "salt at 32");
        assert_eq!(&b[ki + 16..ki + 32], &[0; 16]);
        let tn = offset_of!(RawEspKeys, tx_next);
        assert_eq!(&b[tn..tn + 4], &1u32.to_ne_bytes(), "tx_next is 1 + slot");
        let p = offset_of!(RawEspKeys, sel_local_port);
        assert_eq!(&b[p..p + 2], &862u16.to_be_bytes());
        let back = EspSlotKeys::from_bytes(&b).unwrap().unwrap();
        assert_eq!(*back.to_bytes().unwrap(), *b);
        assert!(format!("{back:?}").contains("redacted"));
        assert!(EspSlotKeys::from_bytes(&vec![0u8; b.len()])
            .unwrap()
            .is_none());

        let mut cbc = sample();
        cbc.key_in = EspKeys::AesCbcHmacSha256 {
            enc_key: vec![1; 32],
            auth_key: vec![2; 32],
        };
        assert!(cbc.to_bytes().is_err(), "transforms must match");
        cbc.key_out = cbc.key_in.clone();
        let b = cbc.to_bytes().unwrap();
        assert_eq!(b[offset_of!(RawEspKeys, alg)], ALG_AES_CBC_SHA256);
        let back = EspSlotKeys::from_bytes(&b).unwrap().unwrap();
        assert_eq!(back.key_out, cbc.key_out);
    }

    #[test]
    fn sa_key_is_spi_in_network_order_then_address() {
        let b = EspSaKey {
            spi: 0x0102_0304,
            local: "2001:2::2".parse().unwrap(),
        }
        .to_bytes();
        assert_eq!(b.len(), 24);
        assert_eq!(&b[..4], &[1, 2, 3, 4]);
        assert_eq!(b[4], 6);
        assert_eq!(b[8], 0x20);
        let k = EspSaKey::from_bytes(&b).unwrap();
        assert_eq!(
            (k.spi, k.local),
            (0x0102_0304, "2001:2::2".parse().unwrap())
        );
        assert!(EspSaKey::from_bytes(&b[..23]).is_err());
    }

    #[test]
    fn selectors_admit_only_the_test_endpoints() {
        let s = EspSelectors {
            local: "198.18.0.2:862".parse().unwrap(),
            remote: "198.18.0.1:0".parse().unwrap(),
        };
        let ok = |src: &str, dst: &str| s.admits(src.parse().unwrap(), dst.parse().unwrap());
        assert!(ok("198.18.0.1:40000", "198.18.0.2:862"));
        assert!(!ok("198.18.0.1:40000", "198.18.0.2:22"));
        assert!(!ok("198.18.0.9:40000", "198.18.0.2:862"));
        assert!(!ok("[2001:2::1]:40000", "[2001:2::2]:862"));
    }
}
