//! Typed access to the XDP program's maps, either from the loaded object or
//! from their pins (the control plane is a separate process and opens the
//! pins; the maps are the only contract between the two).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::abi::{
    ClockState, Counter, Entry, EntryConfig, ListenerKey, RawEntry, RawKeys, SessionKey, SlotKeys,
    MAX_SLOTS,
};
use super::esp_abi::{EspSaKey, EspSlotKeys, EspState, RawEspKeys, RawEspSa, MAX_ESP_SAS};
use super::esp_shared::EspStateShared;
use super::BpfError;

/// Names of the maps that are pinned (file names under the pin directory).
pub const PINNED_MAPS: [&str; 9] = [
    "sessions",
    "listeners",
    "clock",
    "counters",
    "xsks",
    "keys",
    "esp_sas",
    "esp_keys",
    "esp_state",
];

/// Handles on the shared maps.
#[derive(Debug)]
pub struct Maps {
    pub(crate) sessions: MapHandle,
    pub(crate) listeners: MapHandle,
    pub(crate) clock: MapHandle,
    pub(crate) counters: MapHandle,
    pub(crate) xsks: MapHandle,
    pub(crate) keys: MapHandle,
    pub(crate) esp_sas: MapHandle,
    pub(crate) esp_keys: MapHandle,
    pub(crate) esp_state: MapHandle,
}

fn ctx(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> BpfError {
    let what = what.into();
    move |source| BpfError::Libbpf { what, source }
}

impl Maps {
    /// Opens the maps pinned under `dir` (e.g. `/sys/fs/bpf/ricochet`).
    pub fn open_pinned(dir: &Path) -> Result<Maps, BpfError> {
        let open = |name: &str| {
            let p = dir.join(name);
            MapHandle::from_pinned_path(&p).map_err(ctx(format!("open pinned map {}", p.display())))
        };
        Ok(Maps {
            sessions: open("sessions")?,
            listeners: open("listeners")?,
            clock: open("clock")?,
            counters: open("counters")?,
            xsks: open("xsks")?,
            keys: open("keys")?,
            esp_sas: open("esp_sas")?,
            esp_keys: open("esp_keys")?,
            esp_state: open("esp_state")?,
        })
    }

    /// Adds a session with fresh state (sequence 0, full bucket). Fails if
    /// the key exists.
    pub fn insert_session(&self, key: &SessionKey, cfg: &EntryConfig) -> Result<(), BpfError> {
        insert(&self.sessions, "sessions", &key.to_bytes(), cfg)
    }

    /// Changes a session's configuration, keeping its sequence counter,
    /// bucket and counters. Fails if the key does not exist. (The read and
    /// the write are two syscalls: packets reflected in between keep their
    /// sequence numbers, at worst one number is reused.)
    pub fn update_session(&self, key: &SessionKey, cfg: &EntryConfig) -> Result<(), BpfError> {
        update(&self.sessions, "sessions", &key.to_bytes(), cfg)
    }

    /// Removes a session; `Ok(false)` if it was not there.
    pub fn remove_session(&self, key: &SessionKey) -> Result<bool, BpfError> {
        remove(&self.sessions, "sessions", &key.to_bytes())
    }

    /// Reads a session.
    pub fn session(&self, key: &SessionKey) -> Result<Option<Entry>, BpfError> {
        get(&self.sessions, "sessions", &key.to_bytes())
    }

    /// Every session key in the map.
    pub fn session_keys(&self) -> Result<Vec<SessionKey>, BpfError> {
        self.sessions
            .keys()
            .map(|k| SessionKey::from_bytes(&k))
            .collect()
    }

    /// Adds a listener with fresh state. Fails if the key exists.
    pub fn insert_listener(&self, key: &ListenerKey, cfg: &EntryConfig) -> Result<(), BpfError> {
        insert(&self.listeners, "listeners", &key.to_bytes(), cfg)
    }

    /// Changes a listener's configuration, keeping its state.
    pub fn update_listener(&self, key: &ListenerKey, cfg: &EntryConfig) -> Result<(), BpfError> {
        update(&self.listeners, "listeners", &key.to_bytes(), cfg)
    }

    /// Removes a listener; `Ok(false)` if it was not there.
    pub fn remove_listener(&self, key: &ListenerKey) -> Result<bool, BpfError> {
        remove(&self.listeners, "listeners", &key.to_bytes())
    }

    /// Reads a listener.
    pub fn listener(&self, key: &ListenerKey) -> Result<Option<Entry>, BpfError> {
        get(&self.listeners, "listeners", &key.to_bytes())
    }

    /// Writes the clock state the program uses for T2/T3.
    pub fn write_clock(&self, clock: &ClockState) -> Result<(), BpfError> {
        self.clock
            .update(&0u32.to_ne_bytes(), &clock.to_bytes(), MapFlags::ANY)
            .map_err(ctx("write clock"))
    }

    /// Reads the clock state.
    pub fn clock(&self) -> Result<ClockState, BpfError> {
        let v = self
            .clock
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(ctx("read clock"))?
            .ok_or_else(|| BpfError::BadMapData("clock entry 0 missing".into()))?;
        ClockState::from_bytes(&v)
    }

    /// The per-CPU counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, BpfError> {
        let mut out = Counters::default();
        for c in Counter::ALL {
            let per_cpu = self
                .counters
                .lookup_percpu(&(c as u32).to_ne_bytes(), MapFlags::ANY)
                .map_err(ctx(format!("read counter {}", c.name())))?
                .unwrap_or_default();
            let mut sum = 0u64;
            for v in per_cpu {
                let b: [u8; 8] = v
                    .get(..8)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| BpfError::BadMapData("counter value size".into()))?;
                sum = sum.wrapping_add(u64::from_ne_bytes(b));
            }
            out.0[c as usize] = sum;
        }
        Ok(out)
    }

    /// Registers the AF_XDP socket `xsk` for receive queue `queue`.
    pub fn set_xsk(&self, queue: u32, xsk: BorrowedFd<'_>) -> Result<(), BpfError> {
        let fd = u32::try_from(xsk.as_raw_fd())
            .map_err(|_| BpfError::BadMapData("negative socket fd".into()))?;
        self.xsks
            .update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(ctx(format!("set xsk for queue {queue}")))
    }

    /// Unregisters the socket of `queue`; `Ok(false)` if there was none.
    pub fn remove_xsk(&self, queue: u32) -> Result<bool, BpfError> {
        remove(&self.xsks, "xsks", &queue.to_ne_bytes())
    }
}

impl Maps {
    /// Writes the secured-session state of `slot` (`keys[slot]`). Write it
    /// before the `sessions`/`listeners` entry that carries the same slot
    /// and generation, so that a poller never sees a generation whose keys
    /// are not there yet. The encoded copy is zeroized after the write.
    pub fn write_keys(&self, slot: u32, keys: &SlotKeys) -> Result<(), BpfError> {
        check_slot(slot)?;
        self.keys
            .update(&slot.to_ne_bytes(), &keys.to_bytes(), MapFlags::ANY)
            .map_err(ctx(format!("write keys of slot {slot}")))
    }

    /// Frees `slot`: overwrites its state with zeros (`RC_KEYS_NONE`; an
    /// array entry cannot be deleted). Pollers drop its packets from then on.
    pub fn clear_keys(&self, slot: u32) -> Result<(), BpfError> {
        check_slot(slot)?;
        self.keys
            .update(
                &slot.to_ne_bytes(),
                &[0u8; std::mem::size_of::<RawKeys>()],
                MapFlags::ANY,
            )
            .map_err(ctx(format!("clear keys of slot {slot}")))
    }

    /// Reads the state of `slot`; `Ok(None)` when the slot is unused.
    pub fn read_keys(&self, slot: u32) -> Result<Option<SlotKeys>, BpfError> {
        read_keys(&self.keys, slot)
    }

    /// A handle on the `keys` map for a poller thread (its own descriptor).
    pub fn keys_reader(&self) -> Result<KeysReader, BpfError> {
        Ok(KeysReader {
            map: MapHandle::try_from(&self.keys).map_err(ctx("duplicate keys map fd"))?,
        })
    }
}

impl Maps {
    /// Adds or replaces the inbound SA `key` → `value` (`esp_sas`). Write
    /// `esp_keys[value.slot]` (same generation) first.
    pub fn write_esp_sa(&self, key: &EspSaKey, value: &RawEspSa) -> Result<(), BpfError> {
        self.esp_sas
            .update(&key.to_bytes(), &value.to_bytes(), MapFlags::ANY)
            .map_err(ctx(format!("write esp_sas SPI {:08x}", key.spi)))
    }

    /// Reads an inbound SA entry (with the XDP program's counters).
    pub fn esp_sa(&self, key: &EspSaKey) -> Result<Option<RawEspSa>, BpfError> {
        self.esp_sas
            .lookup(&key.to_bytes(), MapFlags::ANY)
            .map_err(ctx("read esp_sas"))?
            .map(|v| RawEspSa::from_bytes(&v))
            .transpose()
    }

    /// Every inbound SA in `esp_sas`.
    pub fn esp_sa_entries(&self) -> Result<Vec<(EspSaKey, RawEspSa)>, BpfError> {
        let mut out = Vec::new();
        for k in self.esp_sas.keys() {
            let key = EspSaKey::from_bytes(&k)?;
            if let Some(v) = self.esp_sa(&key)? {
                out.push((key, v));
            }
        }
        Ok(out)
    }

    /// Removes an inbound SA; `Ok(false)` if it was not there.
    pub fn remove_esp_sa(&self, key: &EspSaKey) -> Result<bool, BpfError> {
        remove(&self.esp_sas, "esp_sas", &key.to_bytes())
    }

    /// Writes the pollers' state of ESP slot `slot`; the encoded copy is
    /// zeroized after the write.
    pub fn write_esp_keys(&self, slot: u32, keys: &EspSlotKeys) -> Result<(), BpfError> {
        check_esp_slot(slot)?;
        self.esp_keys
            .update(&slot.to_ne_bytes(), &keys.to_bytes()?, MapFlags::ANY)
            .map_err(ctx(format!("write esp_keys of slot {slot}")))
    }

    /// Frees ESP slot `slot` (zeros: alg NONE).
    pub fn clear_esp_keys(&self, slot: u32) -> Result<(), BpfError> {
        check_esp_slot(slot)?;
        self.esp_keys
            .update(
                &slot.to_ne_bytes(),
                &[0u8; std::mem::size_of::<RawEspKeys>()],
                MapFlags::ANY,
            )
            .map_err(ctx(format!("clear esp_keys of slot {slot}")))
    }

    /// Reads ESP slot `slot`; `Ok(None)` when unused.
    pub fn read_esp_keys(&self, slot: u32) -> Result<Option<EspSlotKeys>, BpfError> {
        read_esp_keys(&self.esp_keys, slot)
    }

    /// Zeroes the counters and the outbound sequence counter of ESP slot
    /// `slot` (a new SA in the slot).
    pub fn reset_esp_state(&self, slot: u32) -> Result<(), BpfError> {
        check_esp_slot(slot)?;
        self.esp_state
            .update(&slot.to_ne_bytes(), &[0u8; EspState::LEN], MapFlags::ANY)
            .map_err(ctx(format!("reset esp_state of slot {slot}")))
    }

    /// As [`Self::reset_esp_state`], the outbound sequence counter set to
    /// `tx_seq` (the last number used; the pollers send from the next).
    pub fn reset_esp_state_at(&self, slot: u32, tx_seq: u64) -> Result<(), BpfError> {
        check_esp_slot(slot)?;
        let mut v = [0u8; EspState::LEN];
        let at = EspState::W_TX_SEQ * 8;
        v[at..at + 8].copy_from_slice(&tx_seq.to_ne_bytes());
        self.esp_state
            .update(&slot.to_ne_bytes(), &v, MapFlags::ANY)
            .map_err(ctx(format!("reset esp_state of slot {slot}")))
    }

    /// Reads the counters of ESP slot `slot`.
    pub fn esp_state(&self, slot: u32) -> Result<EspState, BpfError> {
        check_esp_slot(slot)?;
        let v = self
            .esp_state
            .lookup(&slot.to_ne_bytes(), MapFlags::ANY)
            .map_err(ctx("read esp_state"))?
            .ok_or_else(|| BpfError::BadMapData(format!("esp_state {slot} missing")))?;
        EspState::from_bytes(&v)
    }

    /// A handle on `esp_keys` for a poller thread (its own descriptor).
    pub fn esp_keys_reader(&self) -> Result<EspKeysReader, BpfError> {
        Ok(EspKeysReader {
            map: MapHandle::try_from(&self.esp_keys).map_err(ctx("duplicate esp_keys fd"))?,
        })
    }

    /// The `esp_state` array mapped into this process (shared by the
    /// pollers; atomic updates, no syscalls).
    pub fn esp_state_shared(&self) -> Result<EspStateShared, BpfError> {
        EspStateShared::map(&self.esp_state)
    }
}

/// Read access to `esp_keys` for one AF_XDP poller.
#[derive(Debug)]
pub struct EspKeysReader {
    map: MapHandle,
}

impl EspKeysReader {
    /// The state of ESP slot `slot`; `Ok(None)` when unused.
    pub fn read(&self, slot: u32) -> Result<Option<EspSlotKeys>, BpfError> {
        read_esp_keys(&self.map, slot)
    }
}

fn check_esp_slot(slot: u32) -> Result<(), BpfError> {
    if slot >= MAX_ESP_SAS {
        return Err(BpfError::BadMapData(format!(
            "ESP slot {slot} out of range (max {})",
            MAX_ESP_SAS - 1
        )));
    }
    Ok(())
}

fn read_esp_keys(map: &MapHandle, slot: u32) -> Result<Option<EspSlotKeys>, BpfError> {
    check_esp_slot(slot)?;
    let mut raw = zeroize::Zeroizing::new([0u8; std::mem::size_of::<RawEspKeys>()]);
    let found = map
        .lookup_into(&slot.to_ne_bytes(), &mut raw[..], MapFlags::ANY)
        .map_err(ctx(format!("read esp_keys of slot {slot}")))?;
    if !found {
        return Ok(None);
    }
    EspSlotKeys::from_bytes(&raw[..])
}

/// Read access to the `keys` map for one AF_XDP poller: one `bpf(2)` lookup
/// per call, no allocation; the raw value is zeroized after decoding.
#[derive(Debug)]
pub struct KeysReader {
    map: MapHandle,
}

impl KeysReader {
    /// Opens the `keys` map pinned under `dir`.
    pub fn open_pinned(dir: &Path) -> Result<KeysReader, BpfError> {
        let p = dir.join("keys");
        Ok(KeysReader {
            map: MapHandle::from_pinned_path(&p)
                .map_err(ctx(format!("open pinned map {}", p.display())))?,
        })
    }

    /// The state of `slot`; `Ok(None)` when the slot is unused.
    pub fn read(&self, slot: u32) -> Result<Option<SlotKeys>, BpfError> {
        read_keys(&self.map, slot)
    }
}

fn check_slot(slot: u32) -> Result<(), BpfError> {
    if slot >= MAX_SLOTS {
        return Err(BpfError::BadMapData(format!(
            "slot {slot} out of range (max {})",
            MAX_SLOTS - 1
        )));
    }
    Ok(())
}

fn read_keys(map: &MapHandle, slot: u32) -> Result<Option<SlotKeys>, BpfError> {
    check_slot(slot)?;
    let mut raw = zeroize::Zeroizing::new([0u8; std::mem::size_of::<RawKeys>()]);
    let found = map
        .lookup_into(&slot.to_ne_bytes(), &mut raw[..], MapFlags::ANY)
        .map_err(ctx(format!("read keys of slot {slot}")))?;
    if !found {
        return Ok(None);
    }
    SlotKeys::from_bytes(&raw[..])
}

fn insert(map: &MapHandle, name: &str, key: &[u8], cfg: &EntryConfig) -> Result<(), BpfError> {
    cfg.check()?;
    map.update(key, &RawEntry::fresh(cfg).to_bytes(), MapFlags::NO_EXIST)
        .map_err(ctx(format!("insert into {name}")))
}

fn update(map: &MapHandle, name: &str, key: &[u8], cfg: &EntryConfig) -> Result<(), BpfError> {
    cfg.check()?;
    let old = map
        .lookup(key, MapFlags::ANY)
        .map_err(ctx(format!("read {name}")))?
        .ok_or(BpfError::NotFound(name.to_owned()))?;
    let new = RawEntry::from_bytes(&old)?.reconfigured(cfg);
    map.update(key, &new.to_bytes(), MapFlags::EXIST)
        .map_err(ctx(format!("update {name}")))
}

fn remove(map: &MapHandle, name: &str, key: &[u8]) -> Result<bool, BpfError> {
    match map.delete(key) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ctx(format!("remove from {name}"))(e)),
    }
}

fn get(map: &MapHandle, name: &str, key: &[u8]) -> Result<Option<Entry>, BpfError> {
    map.lookup(key, MapFlags::ANY)
        .map_err(ctx(format!("read {name}")))?
        .map(|v| RawEntry::from_bytes(&v)?.entry())
        .transpose()
}

/// The per-CPU counters summed over CPUs, indexed by [`Counter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Counter::COUNT]);

impl Counters {
    /// One counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Counter-wise difference `self - earlier` (for tests and rates).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut out = Counters::default();
        for (i, o) in out.0.iter_mut().enumerate() {
            *o = self.0[i].wrapping_sub(earlier.0[i]);
        }
        out
    }

    /// (name, value) pairs for metrics.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(move |c| (c.name(), self.get(*c)))
    }
}
