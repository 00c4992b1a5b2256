//! ESP SAs in the pinned maps ([`BpfSessionTable::add_esp_sa`] and
//! friends): `esp_keys[slot]` (the pollers' state: keys, SPIs, window,
//! lifetimes, selectors, the inner session's `keys` slot), a fresh
//! `esp_state[slot]` (counters, outbound sequence counter) and then the
//! `esp_sas` entry the XDP program looks the inbound SPI up in.
//!
//! Rekey (RFC 7296 §2.8): the new SA is added while the old one is still
//! installed. Both inbound SPIs are then accepted. The outbound switch is
//! deferred: the peer may install the new SA only when it processes the
//! CREATE_CHILD_SA response, so every older SA of the inner session keeps
//! sending with its outbound half and is rewritten (new generation) with
//! `tx_next` = the new SA's slot. The pollers switch those SAs' replies to
//! the new outbound half (its keys, SPI and sequence counter `tx_state`)
//! as soon as one packet authenticated on the new inbound SPI (the new
//! slot's shared `esp_state.rx_packets` is non-zero): all pollers at
//! once, no lock, no syscall per packet. Removing the old SA leaves the
//! new one sending with its own half; removing the newest SA (rollback)
//! points the others back at the newest one left.

use std::net::{IpAddr, SocketAddr};

use ricochet_protocol::crypto::{EspCipher, EspKeys};

use super::{
    dp, format_flags, BpfSessionTable, EntryConfig, EntryFlags, KeyMaterial, SessionKey, SlotKeys,
    State,
};
use crate::bpf::esp_abi::{sa_flags, RawEspSa};
use crate::bpf::{EspSaKey, EspSelectors, EspSlotKeys, MAX_ESP_SAS};
use crate::session_table::{EspInner, EspMode, EspSaActivity, EspSaSpec, TableError};
use ricochet_protocol::modes::SecurityMode;

/// One installed SA.
pub(super) struct EspRecord {
    key: EspSaKey,
    slot: u32,
    /// `None` for an SA found pinned by a restarted table (its session is
    /// known only by its `keys` slot then).
    inner: Option<EspInner>,
    /// As written now (its outbound half may be a newer SA's).
    current: EspSlotKeys,
    /// Its own outbound half: SPI and keys.
    own_out: (u32, EspKeys),
    /// Accepts raw ESP or ESP-in-UDP.
    flags: u16,
    /// Order of addition.
    added: u64,
}

fn bad(spi: u32, why: impl Into<String>) -> TableError {
    TableError::EspSa {
        spi,
        why: why.into(),
    }
}

impl BpfSessionTable {
    /// The `keys` slot, its generation and the selectors of an inner
    /// session, giving an unauthenticated one a slot of its own.
    fn esp_inner_slot(&mut self, inner: EspInner) -> Result<(u32, u32, EspSelectors), TableError> {
        match inner {
            EspInner::Session(sid) => {
                let rec = self
                    .sessions
                    .get(&sid)
                    .ok_or(TableError::NoSuchSession(sid))?;
                if rec.state == State::Installed {
                    return Err(TableError::DataPlane(format!(
                        "session {sid} is not started: start it before adding its ESP SA"
                    )));
                }
                let sel = EspSelectors {
                    local: rec.key.local,
                    remote: rec.key.remote,
                };
                self.esp_only_session(&rec.key)?;
                if let Some(slot) = rec.slot {
                    let k = self.maps.read_keys(slot).map_err(dp)?.ok_or_else(|| {
                        TableError::DataPlane(format!("keys slot {slot} of {sid} is empty"))
                    })?;
                    return Ok((slot, k.generation, sel));
                }
                if let Some((slot, generation)) = rec.esp_inner {
                    return Ok((slot, generation, sel));
                }
                let spec = rec.spec.clone().ok_or_else(|| {
                    TableError::DataPlane(format!(
                        "session {sid} was started by an earlier control plane; \
                         re-add it to carry it in ESP"
                    ))
                })?;
                if matches!(
                    spec.security,
                    SecurityMode::Authenticated | SecurityMode::Encrypted
                ) {
                    return Err(TableError::DataPlane(format!(
                        "session {sid} is secured but has no keys slot"
                    )));
                }
                let (flags, reflect_octets, sender_mbz) = format_flags(&spec.format);
                let generation = self.generation();
                let slot = self
                    .slots
                    .take()
                    .ok_or_else(|| TableError::DataPlane("no free keys slot".into()))?;
                let sk = SlotKeys {
                    generation,
                    instance: generation,
                    keys: KeyMaterial::TwampOpen,
                    flags,
                    dscp: spec.dscp & 0x3f,
                    reflect_octets,
                    sender_mbz,
                    sender: Some(spec.sender),
                };
                if let Err(e) = self.maps.write_keys(slot, &sk) {
                    self.slots.free(slot);
                    return Err(dp(e));
                }
                if let Some(r) = self.sessions.get_mut(&sid) {
                    r.esp_inner = Some((slot, generation));
                }
                self.save()?;
                Ok((slot, generation, sel))
            }
            EspInner::Listener(local) => {
                let (_, own) = *self
                    .listeners
                    .get(&local)
                    .ok_or_else(|| TableError::Address(local, "no such listener".into()))?;
                let any = SocketAddr::new(
                    match local {
                        SocketAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                        SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                    },
                    0,
                );
                let sel = EspSelectors { local, remote: any };
                self.esp_only_listener(local)?;
                if let Some(slot) = own {
                    let k = self.maps.read_keys(slot).map_err(dp)?.ok_or_else(|| {
                        TableError::DataPlane(format!("keys slot {slot} of {local} is empty"))
                    })?;
                    return Ok((slot, k.generation, sel));
                }
                if let Some(&(slot, generation)) = self.listener_inner.get(&local) {
                    return Ok((slot, generation, sel));
                }
                let dscp = self.listener_dscp.get(&local).copied().flatten();
                let generation = self.generation();
                let slot = self
                    .slots
                    .take()
                    .ok_or_else(|| TableError::DataPlane("no free keys slot".into()))?;
                let sk = SlotKeys {
                    generation,
                    instance: generation,
                    keys: KeyMaterial::StampOpen,
                    flags: if dscp.is_some() {
                        EntryFlags::SET_DSCP
                    } else {
                        EntryFlags::empty()
                    },
                    dscp: dscp.unwrap_or(0) & 0x3f,
                    reflect_octets: 0,
                    sender_mbz: 0,
                    sender: None,
                };
                if let Err(e) = self.maps.write_keys(slot, &sk) {
                    self.slots.free(slot);
                    return Err(dp(e));
                }
                self.listener_inner.insert(local, (slot, generation));
                Ok((slot, generation, sel))
            }
        }
    }

    /// Marks the session's entry ESP-only: from now on its test packets in
    /// clear are dropped by the XDP program (RFC 4301 PROTECT), whether or
    /// not an SA is installed at the moment.
    fn esp_only_session(&self, key: &SessionKey) -> Result<(), TableError> {
        let Some(e) = self.maps.session(key).map_err(dp)? else {
            return Err(TableError::DataPlane(format!(
                "session entry {} <- {} is not in the map",
                key.local, key.remote
            )));
        };
        if !e.config.flags.contains(EntryFlags::ESP_ONLY) {
            let cfg = EntryConfig {
                flags: e.config.flags | EntryFlags::ESP_ONLY,
                ..e.config
            };
            self.maps.update_session(key, &cfg).map_err(dp)?;
        }
        Ok(())
    }

    /// As [`Self::esp_only_session`] for a listener.
    fn esp_only_listener(&self, local: SocketAddr) -> Result<(), TableError> {
        let Some((key, _)) = self.listeners.get(&local) else {
            return Err(TableError::Address(local, "no such listener".into()));
        };
        if let Some(e) = self.maps.listener(key).map_err(dp)? {
            if !e.config.flags.contains(EntryFlags::ESP_ONLY) {
                let cfg = EntryConfig {
                    flags: e.config.flags | EntryFlags::ESP_ONLY,
                    ..e.config
                };
                self.maps.update_listener(key, &cfg).map_err(dp)?;
            }
        }
        Ok(())
    }

    pub(super) fn esp_add(&mut self, spec: EspSaSpec) -> Result<(), TableError> {
        let spi = spec.inbound_spi;
        if spi < 256 || spec.outbound_spi < 256 {
            return Err(bad(spi, "SPIs 0..=255 are reserved (RFC 4303 §2.1)"));
        }
        if self.esp.contains_key(&spi) {
            return Err(bad(spi, "an SA with this inbound SPI is installed"));
        }
        if spec.replay_window != 0 && !(64..=4096).contains(&spec.replay_window) {
            return Err(bad(spi, "replay window must be 0 (off) or 64..=4096"));
        }
        let cin = EspCipher::new(&spec.inbound_keys).map_err(|e| bad(spi, e.to_string()))?;
        let cout = EspCipher::new(&spec.outbound_keys).map_err(|e| bad(spi, e.to_string()))?;
        if spec.inbound_keys.name() != spec.outbound_keys.name() {
            return Err(bad(spi, "inbound and outbound transforms differ"));
        }
        drop((cin, cout));
        let (inner_slot, inner_generation, selectors) = self.esp_inner_slot(spec.inner)?;
        let key = EspSaKey {
            spi,
            local: spec.local,
        };
        let slot = self
            .esp_slots
            .take_below(MAX_ESP_SAS)
            .ok_or_else(|| bad(spi, "no free ESP slot"))?;
        let generation = self.generation();
        let now = crate::clock::now_tai_ns();
        let life_ns = spec
            .lifetime
            .time
            .map(|t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).max(1));
        let expires_ns = life_ns.map_or(0, |l| now.saturating_add(l));
        let rekey_ns = life_ns.map_or(0, |l| now.saturating_add(l - l.div_ceil(10)));
        let keys = EspSlotKeys {
            generation,
            instance: generation,
            spi_in: spi,
            spi_out: spec.outbound_spi,
            key_in: spec.inbound_keys.clone(),
            key_out: spec.outbound_keys.clone(),
            esn: spec.esn,
            tunnel: spec.mode == EspMode::Tunnel,
            udp: spec.udp_encap,
            replay_window: spec.replay_window,
            inner_slot,
            inner_generation,
            tx_state: slot,
            tx_next: None,
            life_packets: spec.lifetime.packets,
            life_bytes: spec.lifetime.bytes,
            expires_ns,
            rekey_ns,
            selectors,
        };
        let flags = if spec.udp_encap {
            sa_flags::UDP
        } else {
            sa_flags::RAW
        };
        // the same outbound half sent before (a CHILD_SA bound again):
        // continue its sequence numbers
        let retired = self
            .esp_retired
            .iter()
            .position(|(s, k, _)| *s == spec.outbound_spi && *k == spec.outbound_keys);
        let tx_seq = retired.map_or(0, |i| self.esp_retired[i].2);
        let write = || -> Result<(), TableError> {
            self.maps.reset_esp_state_at(slot, tx_seq).map_err(dp)?;
            self.maps.write_esp_keys(slot, &keys).map_err(dp)?;
            self.maps
                .write_esp_sa(
                    &key,
                    &RawEspSa {
                        slot,
                        generation,
                        flags,
                        ..RawEspSa::default()
                    },
                )
                .map_err(dp)
        };
        if let Err(e) = write() {
            let _ = self.maps.clear_esp_keys(slot);
            self.esp_slots.free(slot);
            return Err(e);
        }
        if let Some(i) = retired {
            self.esp_retired.swap_remove(i);
        }
        self.esp_added += 1;
        self.esp.insert(
            spi,
            EspRecord {
                key,
                slot,
                inner: Some(spec.inner),
                own_out: (spec.outbound_spi, spec.outbound_keys.clone()),
                current: keys,
                flags,
                added: self.esp_added,
            },
        );
        tracing::info!(spi = format_args!("{spi:08x}"), slot, "ESP SA installed");
        // Deferred outbound switch: the older SAs of this session keep
        // their outbound half until the new SA authenticates a packet.
        self.esp_settle(spec.inner)
    }

    /// Rewrites the SAs of `inner` after an addition or removal: the
    /// newest sends with its own outbound half; every other one names the
    /// newest in `tx_next` and keeps its outbound half, unless that half
    /// is gone (its SA removed: the newest's own then) or the pollers have
    /// already switched it to the SA its `tx_next` named (that SA's own,
    /// kept when a further rekey moves `tx_next` on).
    fn esp_settle(&mut self, inner: EspInner) -> Result<(), TableError> {
        let Some((n_slot, n_out)) = self
            .esp
            .values()
            .filter(|r| r.inner == Some(inner))
            .max_by_key(|r| r.added)
            .map(|r| (r.slot, r.own_out.clone()))
        else {
            return Ok(());
        };
        // slot -> own outbound half of this session's SAs
        let halves: Vec<(u32, (u32, EspKeys))> = self
            .esp
            .values()
            .filter(|r| r.inner == Some(inner))
            .map(|r| (r.slot, r.own_out.clone()))
            .collect();
        let own_of = |slot: u32| halves.iter().find(|(s, _)| *s == slot).map(|(_, h)| h);
        let spis: Vec<u32> = self
            .esp
            .iter()
            .filter(|(_, r)| r.inner == Some(inner))
            .map(|(s, _)| *s)
            .collect();
        for spi in spis {
            let Some(r) = self.esp.get(&spi) else {
                continue;
            };
            let (tx_slot, tx_next) = if r.slot == n_slot {
                (n_slot, None)
            } else {
                let switched = match r.current.tx_next {
                    Some(m) if m != r.current.tx_state && own_of(m).is_some() => {
                        let st = self.maps.esp_state(m).map_err(dp)?;
                        (st.rx_packets != 0).then_some(m)
                    }
                    _ => None,
                };
                let tx = match switched {
                    Some(m) => m,
                    None if own_of(r.current.tx_state).is_some() => r.current.tx_state,
                    None => n_slot,
                };
                (tx, Some(n_slot))
            };
            let (spi_out, keys) = if tx_slot == n_slot {
                n_out.clone()
            } else {
                own_of(tx_slot).cloned().unwrap_or_else(|| n_out.clone())
            };
            if r.current.tx_state == tx_slot
                && r.current.tx_next == tx_next
                && r.current.spi_out == spi_out
            {
                continue;
            }
            let generation = self.generation();
            let Some(r) = self.esp.get_mut(&spi) else {
                continue;
            };
            r.current.generation = generation;
            r.current.spi_out = spi_out;
            r.current.key_out = keys;
            r.current.tx_state = tx_slot;
            r.current.tx_next = tx_next;
            self.maps.write_esp_keys(r.slot, &r.current).map_err(dp)?;
            let old = self.maps.esp_sa(&r.key).map_err(dp)?.unwrap_or_default();
            self.maps
                .write_esp_sa(
                    &r.key,
                    &RawEspSa {
                        slot: r.slot,
                        generation,
                        flags: r.flags,
                        ..old
                    },
                )
                .map_err(dp)?;
        }
        Ok(())
    }

    pub(super) fn esp_remove(&mut self, spi: u32) -> Result<(), TableError> {
        let rec = self
            .esp
            .remove(&spi)
            .ok_or_else(|| bad(spi, "no such SA"))?;
        // The lookup entry first: the program stops redirecting to the slot
        // before its keys are zeroed.
        if let Err(e) = self.maps.remove_esp_sa(&rec.key) {
            self.esp.insert(spi, rec);
            return Err(dp(e));
        }
        // its outbound half's last number, should the SA come back
        if let Ok(st) = self.maps.esp_state(rec.slot) {
            if self.esp_retired.len() >= MAX_ESP_SAS as usize {
                self.esp_retired.remove(0);
            }
            self.esp_retired
                .push((rec.own_out.0, rec.own_out.1.clone(), st.tx_seq));
        }
        if let Err(e) = self.maps.clear_esp_keys(rec.slot) {
            tracing::warn!(slot = rec.slot, error = %e, "clearing esp_keys failed; slot leaked");
        } else {
            self.esp_slots.free(rec.slot);
        }
        // SAs that sent with (or waited for) the removed SA's outbound
        // half go to the newest SA of the session that is left.
        if let Some(inner) = rec.inner {
            self.esp_settle(inner)?;
        }
        tracing::info!(spi = format_args!("{spi:08x}"), "ESP SA removed");
        Ok(())
    }

    /// Takes over the SAs a previous table left pinned (a control-plane
    /// restart): their slots and their inner sessions' `keys` slots stay
    /// reserved, they keep being served, and `remove_esp_sa` finds them by
    /// SPI. The session link comes from the registry (sessions); an SA of
    /// a listener or of a forgotten session is served but not switched by
    /// a later rekey.
    pub(super) fn esp_reload(&mut self) -> Result<(), TableError> {
        for (key, sa) in self.maps.esp_sa_entries().map_err(dp)? {
            let Some(keys) = self.maps.read_esp_keys(sa.slot).map_err(dp)? else {
                tracing::warn!(spi = key.spi, "pinned ESP SA without esp_keys: removing it");
                let _ = self.maps.remove_esp_sa(&key);
                continue;
            };
            self.esp_slots.used.insert(sa.slot);
            self.slots.used.insert(keys.inner_slot);
            // its session, if the registry still knows it
            let inner = self
                .sessions
                .iter()
                .find(|(_, r)| {
                    r.slot == Some(keys.inner_slot)
                        || r.esp_inner.map(|(s, _)| s) == Some(keys.inner_slot)
                })
                .map(|(sid, _)| EspInner::Session(*sid));
            self.esp_added += 1;
            tracing::info!(
                spi = format_args!("{:08x}", key.spi),
                slot = sa.slot,
                "ESP SA taken over"
            );
            self.esp.insert(
                key.spi,
                EspRecord {
                    key,
                    slot: sa.slot,
                    inner,
                    own_out: (keys.spi_out, keys.key_out.clone()),
                    current: keys,
                    flags: sa.flags,
                    added: self.esp_added,
                },
            );
        }
        Ok(())
    }

    pub(super) fn esp_activity(&self, spi: u32) -> Option<EspSaActivity> {
        let rec = self.esp.get(&spi)?;
        let st = match self.maps.esp_state(rec.slot) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading esp_state failed");
                return None;
            }
        };
        let xdp = self
            .maps
            .esp_sa(&rec.key)
            .ok()
            .flatten()
            .unwrap_or_default();
        Some(EspSaActivity {
            redirected: xdp.redirected,
            rx_packets: st.rx_packets,
            rx_bytes: st.rx_bytes,
            tx_packets: st.tx_packets,
            tx_bytes: st.tx_bytes,
            replay_drops: st.replay_drops,
            icv_failures: st.icv_failures,
            seq_exhausted: st.seq_exhausted,
            selector_drops: st.selector_drops,
            expired_drops: st.expired_drops,
            rekey_needed: st.rekey_needed,
            tx_seq: st.tx_seq,
        })
    }
}
