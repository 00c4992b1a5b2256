//! The `esp_state` array (`BPF_F_MMAPABLE`) mapped into the reflector: the
//! per-SA counters and outbound sequence counters every poller updates with
//! atomic operations, without a system call or a lock. The values live in
//! the pinned map, so a restarted reflector continues the sequence numbers
//! (and so never reuses an AES-GCM IV under a key).

use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use libbpf_rs::{MapCore, MapHandle};

use super::esp_abi::{EspState, MAX_ESP_SAS};
use super::BpfError;

const WORDS_PER_SA: usize = EspState::LEN / 8;

/// The shared mapping of `esp_state`. Unmapped on drop.
#[derive(Debug)]
pub struct EspStateShared {
    base: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is only accessed through `AtomicU64` operations, which
// are safe to share between threads; the pointer stays valid until drop.
unsafe impl Send for EspStateShared {}
// SAFETY: as above: every access is atomic.
unsafe impl Sync for EspStateShared {}

impl EspStateShared {
    pub(crate) fn map(map: &MapHandle) -> Result<EspStateShared, BpfError> {
        let vsize = map.value_size() as usize;
        if vsize != EspState::LEN || map.max_entries() != MAX_ESP_SAS {
            return Err(BpfError::BadMapData(format!(
                "esp_state: value {vsize} octets × {} entries, expected {} × {MAX_ESP_SAS}",
                map.max_entries(),
                EspState::LEN
            )));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = (EspState::LEN * MAX_ESP_SAS as usize).div_ceil(page) * page;
        // SAFETY: mapping a BPF_F_MMAPABLE array map's fd, shared, for its
        // whole (page-rounded) value area, as the kernel documents; the
        // result is checked below and unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(BpfError::Io {
                what: "mmap esp_state (is it BPF_F_MMAPABLE?)".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(p.cast::<AtomicU64>()).ok_or_else(|| {
            BpfError::BadMapData("mmap of esp_state returned a null pointer".into())
        })?;
        Ok(EspStateShared { base, len })
    }

    fn word(&self, slot: u32, w: usize) -> Option<&AtomicU64> {
        if slot >= MAX_ESP_SAS || w >= WORDS_PER_SA {
            return None;
        }
        let i = slot as usize * WORDS_PER_SA + w;
        // SAFETY: i * 8 < MAX_ESP_SAS * EspState::LEN <= self.len (checked
        // above), the mapping is 8-aligned (page-aligned base, 96-octet
        // values) and lives as long as `self`.
        Some(unsafe { &*self.base.as_ptr().add(i) })
    }

    /// Adds `v` to word `w` (an `EspState::W_*`) of `slot`.
    pub fn add(&self, slot: u32, w: usize, v: u64) {
        if let Some(a) = self.word(slot, w) {
            a.fetch_add(v, Ordering::Relaxed);
        }
    }

    /// Adds `v` and returns the new value (`None` for a bad index).
    pub fn add_fetch(&self, slot: u32, w: usize, v: u64) -> Option<u64> {
        self.word(slot, w)
            .map(|a| a.fetch_add(v, Ordering::Relaxed).wrapping_add(v))
    }

    /// Sets `bits` in word `w`.
    pub fn or(&self, slot: u32, w: usize, bits: u64) {
        if let Some(a) = self.word(slot, w) {
            a.fetch_or(bits, Ordering::Relaxed);
        }
    }

    /// Reads word `w`.
    pub fn load(&self, slot: u32, w: usize) -> u64 {
        self.word(slot, w).map_or(0, |a| a.load(Ordering::Relaxed))
    }
}

impl Drop for EspStateShared {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned and were given.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}
