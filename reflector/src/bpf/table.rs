//! [`BpfSessionTable`]: the [`SessionTable`] of the XDP and AF_XDP paths,
//! programming the maps the reflector daemon pinned.
//!
//! * The program has no "installed but not started" state (`ebpf/ricochet.h`
//!   has no such flag; a packet that matches no entry is passed to the
//!   stack). So [`SessionTable::add`] validates the spec and keeps it in
//!   memory, and [`SessionTable::start`] writes the keys slot (secured
//!   modes) and then inserts the `sessions` entry: before Start-Sessions the
//!   session's packets are not reflected (RFC 5357 §3.7).
//! * Unauthenticated and mixed TWAMP (RFC 5357 §4.2.1, RFC 5618) become
//!   [`Mode::Twamp`] entries the program reflects itself; authenticated and
//!   encrypted sessions become [`Mode::Secured`] entries with a slot of the
//!   `keys` map, whose packets go to the AF_XDP pollers.
//! * [`SessionTable::stop`] keeps the entry until the grace period is over;
//!   [`BpfSessionTable::sweep`] (called by the owner periodically and by
//!   every table operation) removes expired sessions.
//! * [`SessionTable::remove`] deletes the entry and then zeroes its slot.
//! * SIDs are not in the map (the key is the 5-tuple), so the table records
//!   `SID → key, slot` for started sessions in a small registry file (no key
//!   material). A table opened later on the same pins and registry
//!   (a control-plane restart) lists and removes those sessions;
//!   [`BpfSessionTable::orphans`] lists map entries the registry does not
//!   explain.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ricochet_protocol::control::Sid;
use ricochet_protocol::modes::SecurityMode;
use ricochet_protocol::time::TimeFormat;
use ricochet_protocol::twamp_test::SessionFormat;

use super::abi::{
    EntryConfig, EntryFlags, Family, KeyMaterial, ListenerKey, Mode, SessionKey, SlotKeys,
    MAX_SLOTS,
};
use super::{BpfError, Maps};
use crate::session_table::{
    DropBreakdown, EspSaActivity, EspSaSpec, ListenerKind, ListenerSpec, SessionActivity,
    SessionSpec, SessionTable, StampSessionId, StampSessionSpec, TableError,
};

mod esp;

fn dp(e: BpfError) -> TableError {
    TableError::DataPlane(e.to_string())
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Added, not started: nothing in the maps yet.
    Installed,
    /// In the `sessions` map.
    Started,
    /// In the map until this wall-clock deadline (milliseconds since the
    /// Unix epoch, so that it survives a restart through the registry).
    Stopping(u64),
}

struct Record {
    key: SessionKey,
    /// Keys slot of a secured session.
    slot: Option<u32>,
    state: State,
    /// The spec, until the session is started (then it is in the maps).
    pending: Option<SessionSpec>,
    /// The spec as started (for an ESP SA that carries the session; not
    /// in the registry, so absent after a control-plane restart).
    spec: Option<SessionSpec>,
    /// The `keys` slot and generation of the session as the inner session
    /// of ESP SAs, when it has no slot of its own (unauthenticated).
    esp_inner: Option<(u32, u32)>,
}

/// Lowest-free allocator of `keys` slots (`0..MAX_SLOTS`).
#[derive(Debug, Default)]
struct Slots {
    used: BTreeSet<u32>,
}

impl Slots {
    fn take(&mut self) -> Option<u32> {
        self.take_below(MAX_SLOTS)
    }
    fn take_below(&mut self, limit: u32) -> Option<u32> {
        let mut want = 0u32;
        for &u in &self.used {
            if u != want {
                break;
            }
            want += 1;
        }
        (want < limit && self.used.insert(want)).then_some(want)
    }
    fn free(&mut self, slot: u32) {
        self.used.remove(&slot);
    }
}

/// The [`SessionTable`] over the pinned BPF maps. See the module docs.
pub struct BpfSessionTable {
    maps: Maps,
    registry: PathBuf,
    sessions: HashMap<Sid, Record>,
    listeners: HashMap<SocketAddr, (ListenerKey, Option<u32>)>,
    /// Stateful STAMP sessions: their `sessions` entry and keys slot.
    stamp_sessions: HashMap<StampSessionId, (SessionKey, u32)>,
    slots: Slots,
    /// Next generation / instance number (unique per table instance: it
    /// starts from the wall clock so that a restarted table does not reuse
    /// the numbers of the previous one).
    next_gen: u32,
    /// Last observed `rx_packets` of each session and when it changed, for
    /// idle times of sessions without a rate limit.
    seen: Mutex<HashMap<Sid, (u64, Instant)>>,
    /// ESP SAs by inbound SPI.
    esp: HashMap<u32, esp::EspRecord>,
    /// `esp_keys` / `esp_state` slots.
    esp_slots: Slots,
    /// Listeners' reply DSCP (for their ESP inner slot).
    listener_dscp: HashMap<SocketAddr, Option<u8>>,
    /// `keys` slot and generation of a listener as an ESP inner session
    /// (unauthenticated listeners have no slot of their own).
    listener_inner: HashMap<SocketAddr, (u32, u32)>,
    /// Order in which SAs were added (the newest outbound wins).
    esp_added: u64,
    /// Outbound halves of removed SAs and the last sequence number sent
    /// with them: a CHILD_SA removed and added again (bound to the next
    /// session) continues its numbers instead of reusing them under the
    /// same key (RFC 4303 §3.3.3; the peer's replay window drops them).
    esp_retired: Vec<(u32, ricochet_protocol::crypto::EspKeys, u64)>,
}

impl std::fmt::Debug for BpfSessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfSessionTable")
            .field("registry", &self.registry)
            .field("sessions", &self.sessions.len())
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn hex(sid: &Sid) -> String {
    sid.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_sid(s: &str) -> Option<Sid> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Sid(out))
}

/// One registry line: `SID local remote slot|- deadline_ms|-`.
fn parse_line(line: &str) -> Option<(Sid, Record)> {
    let mut f = line.split_whitespace();
    let sid = parse_sid(f.next()?)?;
    let local: SocketAddr = f.next()?.parse().ok()?;
    let remote: SocketAddr = f.next()?.parse().ok()?;
    let slot = match f.next()? {
        "-" => None,
        s => Some(s.parse().ok().filter(|s| *s < MAX_SLOTS)?),
    };
    let state = match f.next()? {
        "-" => State::Started,
        s => State::Stopping(s.parse().ok()?),
    };
    let esp_inner = match f.next() {
        None => None,
        Some(x) => {
            let (s, g) = x.split_once(':')?;
            Some((s.parse().ok().filter(|s| *s < MAX_SLOTS)?, g.parse().ok()?))
        }
    };
    let key = SessionKey::new(local, remote).ok()?;
    Some((
        sid,
        Record {
            key,
            slot,
            state,
            pending: None,
            spec: None,
            esp_inner,
        },
    ))
}

/// The entry flags and Symmetrical Size MBZ length of `format` (the inverse
/// of what the pollers decode, `afxdp::secured`).
fn format_flags(format: &SessionFormat) -> (EntryFlags, u16, u8) {
    let mut flags = EntryFlags::SET_DSCP;
    if format.timestamp_format == TimeFormat::Ptp {
        flags = flags | EntryFlags::PTP;
    }
    if format.dscp_ecn_monitoring {
        flags = flags | EntryFlags::DSCP_ECN;
    }
    if format.symmetrical_size {
        flags = flags | EntryFlags::SYMMETRICAL;
    }
    let mut reflect = 0;
    if let Some(r) = format.reflect_octets {
        flags = flags | EntryFlags::REFLECT_OCTETS;
        reflect = r.length;
    }
    // 0, 27, 28, 30, 56 or 64: always fits.
    let mbz = u8::try_from(format.sender_mbz_len()).unwrap_or(u8::MAX);
    (flags, reflect, mbz)
}

impl BpfSessionTable {
    /// Opens the maps pinned under `pin_dir` and the SID registry at
    /// `registry` (created on the first started session; its directory must
    /// exist and must not be on bpffs, which holds only pins).
    pub fn open(pin_dir: &Path, registry: &Path) -> Result<BpfSessionTable, TableError> {
        let maps = Maps::open_pinned(pin_dir).map_err(dp)?;
        let mut t = BpfSessionTable {
            maps,
            registry: registry.to_owned(),
            sessions: HashMap::new(),
            listeners: HashMap::new(),
            stamp_sessions: HashMap::new(),
            slots: Slots::default(),
            next_gen: u32::try_from(now_ms() / 1000 % u64::from(u32::MAX)).unwrap_or(1) | 1,
            seen: Mutex::new(HashMap::new()),
            esp: HashMap::new(),
            esp_slots: Slots::default(),
            listener_dscp: HashMap::new(),
            listener_inner: HashMap::new(),
            esp_added: 0,
            esp_retired: Vec::new(),
        };
        let text = match fs::read_to_string(registry) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(TableError::DataPlane(format!(
                    "read session registry {}: {e}",
                    registry.display()
                )))
            }
        };
        let pinned: HashSet<SessionKey> = t.maps.session_keys().map_err(dp)?.into_iter().collect();
        for line in text.lines() {
            let Some((sid, rec)) = parse_line(line) else {
                tracing::warn!(line, "ignoring malformed session registry line");
                continue;
            };
            // A registered session whose entry is gone was removed by
            // someone else (or the maps were recreated): forget it.
            if !pinned.contains(&rec.key) {
                continue;
            }
            if let Some(s) = rec.slot {
                t.slots.used.insert(s);
            }
            if let Some((s, _)) = rec.esp_inner {
                t.slots.used.insert(s);
            }
            t.sessions.insert(sid, rec);
        }
        t.esp_reload()?;
        t.save()?;
        t.sweep();
        Ok(t)
    }

    /// The maps this table programs.
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// Entries of the `sessions` map that no registered SID explains
    /// (written by another tool, or their registry line was lost).
    pub fn orphans(&self) -> Result<Vec<SessionKey>, TableError> {
        let known: HashSet<&SessionKey> = self.sessions.values().map(|r| &r.key).collect();
        Ok(self
            .maps
            .session_keys()
            .map_err(dp)?
            .into_iter()
            .filter(|k| !known.contains(k))
            .collect())
    }

    /// Removes stopped sessions whose grace period is over; returns how
    /// many. Call it periodically (the table has no thread of its own).
    pub fn sweep(&mut self) -> usize {
        let now = now_ms();
        let expired: Vec<Sid> = self
            .sessions
            .iter()
            .filter(|(_, r)| matches!(r.state, State::Stopping(d) if d <= now))
            .map(|(s, _)| *s)
            .collect();
        let mut n = 0;
        for sid in expired {
            match self.remove(&sid) {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(error = %e, "removing an expired session failed"),
            }
        }
        n
    }

    fn generation(&mut self) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        self.next_gen
    }

    /// Rewrites the registry (temporary file + rename: never half-written).
    fn save(&self) -> Result<(), TableError> {
        let mut text = String::new();
        for (sid, r) in &self.sessions {
            let deadline = match r.state {
                State::Installed => continue,
                State::Started => "-".to_owned(),
                State::Stopping(d) => d.to_string(),
            };
            let slot = r.slot.map_or("-".to_owned(), |s| s.to_string());
            // optional sixth field: the ESP inner slot:generation
            let esp = r
                .esp_inner
                .map_or(String::new(), |(s, g)| format!(" {s}:{g}"));
            text.push_str(&format!(
                "{} {} {} {slot} {deadline}{esp}\n",
                hex(sid),
                r.key.local,
                r.key.remote
            ));
        }
        let tmp = self.registry.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.registry)
        };
        write().map_err(|e| {
            TableError::DataPlane(format!(
                "write session registry {}: {e}",
                self.registry.display()
            ))
        })
    }

    /// Writes the keys slot (secured) and inserts the entry of `spec`.
    fn install(&mut self, spec: &SessionSpec, key: &SessionKey) -> Result<Option<u32>, TableError> {
        let (flags, reflect_octets, sender_mbz) = format_flags(&spec.format);
        let generation = self.generation();
        let mut cfg = EntryConfig {
            flags,
            dscp: spec.dscp & 0x3f,
            reflect_octets,
            sender_mbz,
            generation,
            rate_pps: spec.rate_limit_pps,
            burst: spec.rate_burst,
            ..EntryConfig::new(Mode::Twamp, spec.rate_limit_pps)
        };
        let material = match spec.security {
            SecurityMode::Unauthenticated | SecurityMode::Mixed => None,
            SecurityMode::Authenticated | SecurityMode::Encrypted => {
                let keys = spec.test_keys.clone().ok_or_else(|| {
                    TableError::DataPlane(format!("session {} has no test keys", spec.sid))
                })?;
                Some(if spec.security == SecurityMode::Authenticated {
                    KeyMaterial::TwampAuthenticated(keys)
                } else {
                    KeyMaterial::TwampEncrypted(keys)
                })
            }
        };
        let slot = match material {
            None => None,
            Some(keys) => {
                let slot = self
                    .slots
                    .take()
                    .ok_or_else(|| TableError::DataPlane("no free keys slot".into()))?;
                let sk = SlotKeys {
                    generation,
                    instance: generation,
                    keys,
                    flags,
                    dscp: cfg.dscp,
                    reflect_octets,
                    sender_mbz,
                    sender: Some(spec.sender),
                };
                if let Err(e) = self.maps.write_keys(slot, &sk) {
                    self.slots.free(slot);
                    return Err(dp(e));
                }
                cfg.mode = Mode::Secured;
                cfg.slot = slot;
                Some(slot)
            }
        };
        if let Err(e) = self.maps.insert_session(key, &cfg) {
            if let Some(s) = slot {
                self.release_slot(s);
            }
            return Err(dp(e));
        }
        Ok(slot)
    }

    fn release_slot(&mut self, slot: u32) {
        if let Err(e) = self.maps.clear_keys(slot) {
            tracing::warn!(slot, error = %e, "clearing a keys slot failed; slot leaked");
            return;
        }
        self.slots.free(slot);
    }
}

impl SessionTable for BpfSessionTable {
    fn add(&mut self, spec: SessionSpec) -> Result<(), TableError> {
        self.sweep();
        if self.sessions.contains_key(&spec.sid) {
            return Err(TableError::Exists(spec.sid));
        }
        let key = SessionKey::new(spec.reflector, spec.sender)
            .map_err(|e| TableError::Address(spec.reflector, e.to_string()))?;
        if self.sessions.values().any(|r| r.key == key)
            || self.maps.session(&key).map_err(dp)?.is_some()
        {
            return Err(TableError::Address(
                spec.reflector,
                format!("a session from {} is already on this port", spec.sender),
            ));
        }
        if matches!(
            spec.security,
            SecurityMode::Authenticated | SecurityMode::Encrypted
        ) && spec.test_keys.is_none()
        {
            return Err(TableError::DataPlane(format!(
                "session {} is {:?} but has no test keys",
                spec.sid, spec.security
            )));
        }
        self.sessions.insert(
            spec.sid,
            Record {
                key,
                slot: None,
                state: State::Installed,
                pending: Some(spec),
                spec: None,
                esp_inner: None,
            },
        );
        Ok(())
    }

    fn start(&mut self, sid: &Sid) -> Result<(), TableError> {
        let rec = self
            .sessions
            .get_mut(sid)
            .ok_or(TableError::NoSuchSession(*sid))?;
        let Some(spec) = rec.pending.take() else {
            return Ok(()); // already started
        };
        let key = rec.key;
        match self.install(&spec, &key) {
            Ok(slot) => {
                if let Some(r) = self.sessions.get_mut(sid) {
                    r.slot = slot;
                    r.state = State::Started;
                    r.spec = Some(spec);
                }
                self.save()
            }
            Err(e) => {
                if let Some(r) = self.sessions.get_mut(sid) {
                    r.pending = Some(spec);
                }
                Err(e)
            }
        }
    }

    fn stop(&mut self, sid: &Sid, grace: Duration) -> Result<(), TableError> {
        let rec = self
            .sessions
            .get_mut(sid)
            .ok_or(TableError::NoSuchSession(*sid))?;
        if rec.state == State::Installed {
            // Never started: nothing to keep reflecting.
            return self.remove(sid);
        }
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        rec.state = State::Stopping(now_ms().saturating_add(grace_ms));
        self.save()?;
        self.sweep();
        Ok(())
    }

    fn remove(&mut self, sid: &Sid) -> Result<(), TableError> {
        let rec = self
            .sessions
            .remove(sid)
            .ok_or(TableError::NoSuchSession(*sid))?;
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(sid);
        }
        if rec.state != State::Installed {
            // The entry first, so the program stops redirecting to the slot
            // before its keys are zeroed.
            if let Err(e) = self.maps.remove_session(&rec.key) {
                self.sessions.insert(*sid, rec);
                return Err(dp(e));
            }
        }
        if let Some(slot) = rec.slot {
            self.release_slot(slot);
        }
        if let Some((slot, _)) = rec.esp_inner {
            self.release_slot(slot);
        }
        self.save()
    }

    fn activity(&self, sid: &Sid) -> Option<SessionActivity> {
        let rec = self.sessions.get(sid)?;
        match rec.state {
            State::Installed => return Some(SessionActivity::default()),
            // Past its grace the session is over, even before a sweep
            // deletes the entry (a restarted control plane then removes it).
            State::Stopping(deadline) if deadline <= now_ms() => return None,
            _ => {}
        }
        let entry = match self.maps.session(&rec.key) {
            Ok(Some(e)) => e,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "reading a session entry failed");
                return None;
            }
        };
        let st = entry.stats;
        let drops = DropBreakdown {
            rate_limited: st.rate_limited,
            malformed: st.bad_length,
            ..DropBreakdown::default()
        };
        let now = Instant::now();
        let idle = (st.rx_packets > 0).then(|| {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let e = seen.entry(*sid).or_insert((st.rx_packets, now));
            if e.0 != st.rx_packets {
                *e = (st.rx_packets, now);
            }
            now.saturating_duration_since(e.1)
        });
        Some(SessionActivity {
            // Secured packets are counted when redirected to the pollers.
            reflected: st.reflected + st.redirected,
            dropped: drops.rate_limited + drops.malformed,
            drops,
            idle,
        })
    }

    fn sessions(&self) -> Vec<Sid> {
        let mut v: Vec<Sid> = self.sessions.keys().copied().collect();
        v.sort_by_key(|s| s.0);
        v
    }

    /// The maps are pinned: sessions keep being reflected while no control
    /// plane runs, and a restarted one adopts them from the registry.
    fn outlives_process(&self) -> bool {
        true
    }

    fn reflector_addr(&self, sid: &Sid) -> Option<SocketAddr> {
        self.sessions.get(sid).map(|r| r.key.local)
    }

    fn add_listener(&mut self, spec: ListenerSpec) -> Result<(), TableError> {
        if self.listeners.contains_key(&spec.local) {
            return Err(TableError::Address(spec.local, "listener exists".into()));
        }
        let key = if spec.local.ip().is_unspecified() {
            ListenerKey::any(Family::of(&spec.local.ip()), spec.local.port())
        } else {
            ListenerKey::exact(spec.local)
        };
        let generation = self.generation();
        let mut cfg = EntryConfig {
            generation,
            burst: spec.rate_burst,
            ..EntryConfig::new(Mode::Stamp, spec.rate_limit_pps)
        };
        if let Some(d) = spec.dscp {
            cfg.flags = EntryFlags::SET_DSCP;
            cfg.dscp = d & 0x3f;
        }
        let slot = match &spec.kind {
            // Plain (and Extra-Padding-only) packets are reflected by the
            // XDP program; TLV-bearing ones go to the pollers through a slot
            // of their own, whose TLVs they process (RFC 8972 §4). Without a
            // free slot the XDP program reflects them with the TLVs copied.
            ListenerKind::Unauthenticated => match self.slots.take() {
                None => {
                    tracing::warn!(local = %spec.local, "no free keys slot: STAMP TLVs of this listener are not processed");
                    None
                }
                Some(slot) => {
                    let sk = SlotKeys {
                        generation,
                        instance: generation,
                        keys: KeyMaterial::StampOpen,
                        flags: cfg.flags,
                        dscp: cfg.dscp,
                        reflect_octets: 0,
                        sender_mbz: 0,
                        sender: None,
                    };
                    if let Err(e) = self.maps.write_keys(slot, &sk) {
                        self.slots.free(slot);
                        return Err(dp(e));
                    }
                    cfg.flags = cfg.flags | EntryFlags::TLV_TO_XSK;
                    cfg.slot = slot;
                    Some(slot)
                }
            },
            ListenerKind::StampAuthenticated { key: k } => {
                let slot = self
                    .slots
                    .take()
                    .ok_or_else(|| TableError::DataPlane("no free keys slot".into()))?;
                let sk = SlotKeys {
                    generation,
                    instance: generation,
                    keys: KeyMaterial::StampAuthenticated(k.clone()),
                    flags: cfg.flags,
                    dscp: cfg.dscp,
                    reflect_octets: 0,
                    sender_mbz: 0,
                    sender: None,
                };
                if let Err(e) = self.maps.write_keys(slot, &sk) {
                    self.slots.free(slot);
                    return Err(dp(e));
                }
                cfg.mode = Mode::Secured;
                cfg.slot = slot;
                Some(slot)
            }
        };
        if let Err(e) = self.maps.insert_listener(&key, &cfg) {
            if let Some(s) = slot {
                self.release_slot(s);
            }
            return Err(TableError::Address(spec.local, e.to_string()));
        }
        self.listeners.insert(spec.local, (key, slot));
        self.listener_dscp.insert(spec.local, spec.dscp);
        Ok(())
    }

    /// A stateful STAMP session becomes a [`Mode::Secured`] `sessions`
    /// entry (keyed by our address and port and the sender's) whose keys
    /// slot says [`KeyMaterial::StampSession`]: every packet goes to the
    /// AF_XDP pollers, which keep the session's own Sequence Number,
    /// process the TLVs and fill Follow-Up Telemetry from the transmit
    /// completions. One session per 4-tuple (the map key); the SSID is
    /// checked by the poller. HMAC keys of at most 32 octets.
    fn add_stamp_session(&mut self, spec: StampSessionSpec) -> Result<(), TableError> {
        let id = spec.id();
        if self.stamp_sessions.contains_key(&id) {
            return Err(TableError::DataPlane(format!("{id} already exists")));
        }
        let key = SessionKey::new(spec.local, spec.sender)
            .map_err(|e| TableError::Address(spec.local, e.to_string()))?;
        if self.sessions.values().any(|r| r.key == key)
            || self.stamp_sessions.values().any(|(k, _)| *k == key)
        {
            return Err(TableError::Address(
                spec.local,
                format!("{id}: the BPF data plane holds one session per sender and local address"),
            ));
        }
        // STAMP sessions are configuration, installed again when the control
        // plane restarts: an entry an earlier run left for this 4-tuple
        // (with its keys slot) is replaced.
        if let Some(old) = self.maps.session(&key).map_err(dp)? {
            let slot = old.config.slot;
            if old.config.mode == Mode::Secured && !self.slots.used.contains(&slot) {
                if let Ok(Some(k)) = self.maps.read_keys(slot) {
                    if matches!(k.keys, KeyMaterial::StampSession { .. }) {
                        let _ = self.maps.clear_keys(slot);
                    }
                }
            }
            self.maps.remove_session(&key).map_err(dp)?;
            tracing::info!(%id, "replaced the STAMP session an earlier run left in the maps");
        }
        let hmac_key = match &spec.key {
            None => None,
            Some(k) if k.len() <= 32 => {
                let mut padded = zeroize::Zeroizing::new([0u8; 32]);
                padded[..k.len()].copy_from_slice(k);
                Some(padded)
            }
            Some(k) => {
                return Err(TableError::DataPlane(format!(
                    "{id}: a {}-octet HMAC key; the BPF data plane takes at most 32",
                    k.len()
                )))
            }
        };
        let generation = self.generation();
        // Packets the XDP token bucket refuses still reach the poller to be
        // counted (Direct Measurement R_RxC, RFC 8972 §4.5), not answered.
        let mut flags = EntryFlags::XSK_REFUSED;
        if spec.timestamp_format == TimeFormat::Ptp {
            flags = flags | EntryFlags::PTP;
        }
        let mut cfg = EntryConfig {
            generation,
            burst: spec.rate_burst,
            ..EntryConfig::new(Mode::Secured, spec.rate_limit_pps)
        };
        if let Some(d) = spec.dscp {
            flags = flags | EntryFlags::SET_DSCP;
            cfg.dscp = d & 0x3f;
        }
        cfg.flags = flags;
        let slot = self
            .slots
            .take()
            .ok_or_else(|| TableError::DataPlane("no free keys slot".into()))?;
        let sk = SlotKeys {
            generation,
            instance: generation,
            keys: KeyMaterial::StampSession {
                ssid: spec.ssid,
                key: hmac_key,
                cos_allowed_dscp: spec.cos_policy.0,
                micro_session_id: spec.micro_session_id,
            },
            flags,
            dscp: cfg.dscp,
            reflect_octets: 0,
            sender_mbz: 0,
            sender: Some(spec.sender),
        };
        if let Err(e) = self.maps.write_keys(slot, &sk) {
            self.slots.free(slot);
            return Err(dp(e));
        }
        cfg.slot = slot;
        if let Err(e) = self.maps.insert_session(&key, &cfg) {
            self.release_slot(slot);
            return Err(dp(e));
        }
        self.stamp_sessions.insert(id, (key, slot));
        Ok(())
    }

    fn remove_stamp_session(&mut self, id: &StampSessionId) -> Result<(), TableError> {
        let (key, slot) = self
            .stamp_sessions
            .remove(id)
            .ok_or_else(|| TableError::DataPlane(format!("{id}: no such STAMP session")))?;
        self.maps.remove_session(&key).map_err(dp)?;
        self.release_slot(slot);
        Ok(())
    }

    fn stamp_activity(&self, id: &StampSessionId) -> Option<SessionActivity> {
        let (key, _) = self.stamp_sessions.get(id)?;
        let st = self.maps.session(key).ok()??.stats;
        let drops = DropBreakdown {
            rate_limited: st.rate_limited,
            malformed: st.bad_length,
            ..DropBreakdown::default()
        };
        Some(SessionActivity {
            // Redirected to the pollers; their own drops are theirs.
            reflected: st.redirected,
            dropped: drops.rate_limited + drops.malformed,
            drops,
            idle: None,
        })
    }

    fn remove_listener(&mut self, local: SocketAddr) -> Result<(), TableError> {
        let (key, slot) = self
            .listeners
            .remove(&local)
            .ok_or_else(|| TableError::Address(local, "no such listener".into()))?;
        self.maps.remove_listener(&key).map_err(dp)?;
        if let Some(s) = slot {
            self.release_slot(s);
        }
        self.listener_dscp.remove(&local);
        if let Some((s, _)) = self.listener_inner.remove(&local) {
            self.release_slot(s);
        }
        Ok(())
    }

    fn add_esp_sa(&mut self, spec: EspSaSpec) -> Result<(), TableError> {
        self.esp_add(spec)
    }

    fn remove_esp_sa(&mut self, inbound_spi: u32) -> Result<(), TableError> {
        self.esp_remove(inbound_spi)
    }

    fn esp_sa_activity(&self, inbound_spi: u32) -> Option<EspSaActivity> {
        self.esp_activity(inbound_spi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_lowest_free_first() {
        let mut s = Slots::default();
        assert_eq!(s.take(), Some(0));
        assert_eq!(s.take(), Some(1));
        assert_eq!(s.take(), Some(2));
        s.free(1);
        assert_eq!(s.take(), Some(1));
        assert_eq!(s.take(), Some(3));
    }

    #[test]
    fn registry_line_round_trip_and_rejects_garbage() {
        let sid = Sid([0xab; 16]);
        let line = format!("{} 198.18.0.1:5000 198.18.0.2:6000 7 -", hex(&sid));
        let (s, r) = parse_line(&line).expect("valid line");
        assert_eq!(s, sid);
        assert_eq!(r.slot, Some(7));
        assert_eq!(r.state, State::Started);
        assert_eq!(r.key.remote, "198.18.0.2:6000".parse().unwrap());
        assert_eq!(r.esp_inner, None);
        let (_, r) = parse_line(&format!("{line} 9:77")).expect("with the ESP field");
        assert_eq!(r.esp_inner, Some((9, 77)));
        assert!(parse_line(&format!("{line} 9")).is_none());
        for bad in [
            "",
            "zz 198.18.0.1:5000 198.18.0.2:6000 - -",
            &format!("{} 198.18.0.1:5000 [2001:db8::1]:6000 - -", hex(&sid)),
            &format!("{} 198.18.0.1:5000 198.18.0.2:6000 4294967295 -", hex(&sid)),
            &format!("{} 198.18.0.1:5000 198.18.0.2:6000 - soon", hex(&sid)),
        ] {
            assert!(parse_line(bad).is_none(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn registry_parser_never_panics(line in ".{0,120}") {
            let _ = parse_line(&line);
        }

        #[test]
        fn registry_line_round_trips(
            sid in proptest::array::uniform16(proptest::num::u8::ANY),
            a in proptest::num::u32::ANY, b in proptest::num::u32::ANY,
            pa in 1u16.., pb in 1u16..,
            slot in proptest::option::of(0..MAX_SLOTS),
            deadline in proptest::option::of(proptest::num::u64::ANY),
        ) {
            let local = SocketAddr::from((std::net::Ipv4Addr::from(a), pa));
            let remote = SocketAddr::from((std::net::Ipv4Addr::from(b), pb));
            let line = format!(
                "{} {local} {remote} {} {}",
                hex(&Sid(sid)),
                slot.map_or("-".into(), |s| s.to_string()),
                deadline.map_or("-".into(), |d| d.to_string()),
            );
            let (s, r) = parse_line(&line).expect("valid");
            proptest::prop_assert_eq!(s, Sid(sid));
            proptest::prop_assert_eq!(r.key, SessionKey::new(local, remote).unwrap());
            proptest::prop_assert_eq!(r.slot, slot);
            proptest::prop_assert_eq!(r.state, deadline.map_or(State::Started, State::Stopping));
        }
    }
}
