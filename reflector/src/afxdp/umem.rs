//! The UMEM: one anonymous mapping split into equal frames (chunks) that the
//! kernel and this process hand to each other through the rings
//! (Documentation/networking/af_xdp.rst, "UMEM").
//!
//! Ownership of a frame is a [`Frame`] token: it is not `Clone`, it is
//! created only when the UMEM is set up ([`Umem::take_frames`]) or when a
//! ring hands a frame back from the kernel, and it is consumed when the frame
//! is given to the kernel again. Octets are reachable only through a token
//! ([`Umem::chunk_mut`]), so this process never touches a frame the kernel
//! may be writing.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// One mapping (anonymous for the UMEM, or a ring of a socket), unmapped on
/// drop.
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is exclusively owned by this value (nobody else
// unmaps it); access to its contents goes through the ring and UMEM types,
// which follow the kernel's ownership protocol.
unsafe impl Send for Mmap {}

impl Mmap {
    /// A private anonymous mapping of `len` octets, populated (so the first
    /// packets do not page-fault) and zeroed.
    pub(crate) fn anonymous(len: usize) -> io::Result<Mmap> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks;
        // no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Self::checked(p, len)
    }

    /// A shared mapping of `len` octets of `fd` at page offset `offset` (an
    /// AF_XDP ring).
    pub(crate) fn shared(fd: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<Mmap> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mmap offset"))?;
        // SAFETY: maps `len` octets of an open socket at an address the
        // kernel picks; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                off,
            )
        };
        Self::checked(p, len)
    }

    fn checked(p: *mut libc::c_void, len: usize) -> io::Result<Mmap> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Mmap { ptr, len })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this value created and
        // nobody else unmaps; no reference into it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A frame owned by this process: which chunk, and where the packet lies in
/// it. Not `Clone`: holding it is owning the chunk.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    base: u64,
    off: u32,
    len: u32,
}

impl Frame {
    /// UMEM offset of the chunk.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Offset of the packet in the chunk.
    pub fn offset(&self) -> usize {
        self.off as usize
    }

    /// Packet length.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the packet is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// UMEM address of the packet (what a descriptor carries).
    pub fn addr(&self) -> u64 {
        self.base + u64::from(self.off)
    }

    /// Places the packet at `off..off + len` of the chunk. `chunk_size` is
    /// the UMEM's frame size; fails if the packet would not fit.
    pub fn set_packet(
        &mut self,
        off: usize,
        len: usize,
        chunk_size: u32,
    ) -> Result<(), OutsideFrame> {
        match off.checked_add(len) {
            Some(end) if end <= chunk_size as usize => {
                self.off = off as u32;
                self.len = len as u32;
                Ok(())
            }
            _ => Err(OutsideFrame { off, len }),
        }
    }
}

/// A packet placement that does not fit its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet at {off}+{len} does not fit the frame")]
pub struct OutsideFrame {
    /// Requested offset.
    pub off: usize,
    /// Requested length.
    pub len: usize,
}

/// The UMEM of one socket.
pub struct Umem {
    mem: Mmap,
    frame_size: u32,
    frame_count: u32,
    handed_out: bool,
}

/// Sizes of a UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UmemConfig {
    /// Frame (chunk) size: 2048 or 4096 octets. A frame holds the
    /// kernel's 256-octet XDP headroom, the metadata and the packet.
    pub frame_size: u32,
    /// Number of frames, a power of two (also the fill and completion ring
    /// sizes, so that every frame always fits in either).
    pub frame_count: u32,
}

impl Default for UmemConfig {
    /// 4096 frames of 2048 octets: 8 MiB, the unprivileged `RLIMIT_MEMLOCK`
    /// of many systems (above it needs `CAP_IPC_LOCK`).
    fn default() -> Self {
        UmemConfig {
            frame_size: 2048,
            frame_count: 4096,
        }
    }
}

impl UmemConfig {
    /// Checks the sizes; returns the mapping length.
    pub fn validate(&self) -> Result<usize, String> {
        if self.frame_size != 2048 && self.frame_size != 4096 {
            return Err(format!(
                "frame size {} (must be 2048 or 4096)",
                self.frame_size
            ));
        }
        if !self.frame_count.is_power_of_two() || self.frame_count < 64 {
            return Err(format!(
                "frame count {} (must be a power of two >= 64)",
                self.frame_count
            ));
        }
        (self.frame_size as usize)
            .checked_mul(self.frame_count as usize)
            .ok_or_else(|| "UMEM size overflows".to_owned())
    }
}

impl Umem {
    /// Maps a zeroed UMEM of `cfg`'s size.
    pub fn new(cfg: &UmemConfig) -> io::Result<Umem> {
        let len = cfg
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Umem {
            mem: Mmap::anonymous(len)?,
            frame_size: cfg.frame_size,
            frame_count: cfg.frame_count,
            handed_out: false,
        })
    }

    /// Start address and length (for `XDP_UMEM_REG`).
    pub(crate) fn region(&self) -> (u64, u64) {
        (self.mem.as_ptr() as u64, self.mem.len() as u64)
    }

    /// Frame size.
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// Number of frames.
    pub fn frame_count(&self) -> u32 {
        self.frame_count
    }

    /// Index of a frame's chunk (0..frame_count).
    pub fn index_of(&self, f: &Frame) -> usize {
        (f.base / u64::from(self.frame_size)) as usize
    }

    /// Every frame, once: the tokens the process starts with. Later calls
    /// return nothing.
    pub fn take_frames(&mut self) -> Vec<Frame> {
        if self.handed_out {
            return Vec::new();
        }
        self.handed_out = true;
        (0..u64::from(self.frame_count))
            .map(|i| Frame {
                base: i * u64::from(self.frame_size),
                off: 0,
                len: 0,
            })
            .collect()
    }

    /// The token for a descriptor the kernel handed back (RX or
    /// completion): `None` if the address or length is outside the UMEM or
    /// crosses a chunk boundary.
    pub(crate) fn frame_from_desc(&self, addr: u64, len: u32) -> Option<Frame> {
        let fs = u64::from(self.frame_size);
        let base = addr - addr % fs;
        let off = addr - base;
        if base >= fs * u64::from(self.frame_count) || off + u64::from(len) > fs {
            return None;
        }
        Some(Frame {
            base,
            off: off as u32,
            len,
        })
    }

    /// The whole chunk of an owned frame.
    pub fn chunk_mut(&mut self, f: &Frame) -> &mut [u8] {
        let fs = self.frame_size as usize;
        debug_assert!(f.base as usize + fs <= self.mem.len());
        // SAFETY: a Frame exists only for a chunk inside the UMEM (checked
        // when it was made) that this process owns: the kernel does not
        // access it until the token is handed back through a ring. `&mut
        // self` makes this the only slice into the UMEM for its lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.mem.as_ptr().add(f.base as usize), fs) }
    }

    /// The whole chunk of an owned frame, read-only.
    pub fn chunk(&self, f: &Frame) -> &[u8] {
        let fs = self.frame_size as usize;
        // SAFETY: as in `chunk_mut`; shared access through `&self`.
        unsafe { std::slice::from_raw_parts(self.mem.as_ptr().add(f.base as usize), fs) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cover_the_umem_once_and_descs_are_bounded() {
        let mut u = Umem::new(&UmemConfig {
            frame_size: 2048,
            frame_count: 64,
        })
        .unwrap();
        let frames = u.take_frames();
        assert_eq!(frames.len(), 64);
        assert_eq!(frames[3].base(), 3 * 2048);
        assert!(u.take_frames().is_empty(), "tokens are handed out once");
        let f = u.frame_from_desc(5 * 2048 + 256, 100).unwrap();
        assert_eq!((f.base(), f.offset(), f.len()), (5 * 2048, 256, 100));
        assert_eq!(u.index_of(&f), 5);
        assert!(u.frame_from_desc(64 * 2048, 10).is_none(), "past the end");
        assert!(
            u.frame_from_desc(2048 + 2000, 100).is_none(),
            "crosses a chunk"
        );
        let chunk = u.chunk_mut(&f);
        assert_eq!(chunk.len(), 2048);
        chunk[0] = 7;
        assert_eq!(u.chunk(&f)[0], 7);
        let mut f = f;
        assert!(f.set_packet(2000, 48, 2048).is_ok());
        assert_eq!(f.addr(), 5 * 2048 + 2000);
        assert!(f.set_packet(2000, 49, 2048).is_err());
    }

    #[test]
    fn config_is_validated() {
        for (fs, n) in [(1024, 64), (2048, 100), (4096, 32)] {
            assert!(UmemConfig {
                frame_size: fs,
                frame_count: n
            }
            .validate()
            .is_err());
        }
        assert_eq!(UmemConfig::default().validate(), Ok(8 << 20));
    }
}
