//! Randomness is injected: the endpoint never draws its own. The caller hands
//! an [`Rng`] to every call that needs SPIs, nonces, IVs or DH private values
//! (a CSPRNG in production, e.g. `getrandom`; a deterministic one in tests).

/// A source of random octets. Production callers MUST back it with a
/// cryptographically secure generator.
pub trait Rng {
    fn fill(&mut self, dest: &mut [u8]);
}

/// A deterministic generator for tests and replays: SHA-256 in counter mode
/// over a seed. Not for production keys.
#[derive(Debug, Clone)]
pub struct SeqRng {
    seed: u64,
    counter: u64,
}

impl SeqRng {
    pub fn new(seed: u64) -> Self {
        SeqRng { seed, counter: 0 }
    }
}

impl Rng for SeqRng {
    fn fill(&mut self, dest: &mut [u8]) {
        use sha2::{Digest, Sha256};
        for chunk in dest.chunks_mut(32) {
            let mut h = Sha256::new();
            h.update(self.seed.to_be_bytes());
            h.update(self.counter.to_be_bytes());
            self.counter += 1;
            let d = h.finalize();
            chunk.copy_from_slice(&d[..chunk.len()]);
        }
    }
}

/// The operating system's CSPRNG (`getrandom(2)`), for drivers and daemons.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRng;

impl Rng for OsRng {
    fn fill(&mut self, dest: &mut [u8]) {
        let mut done = 0;
        while done < dest.len() {
            let rest = &mut dest[done..];
            // SAFETY: `rest` is a valid, writable buffer of `rest.len()` octets
            // for the duration of the call; getrandom writes at most that many.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n > 0 {
                done += n as usize;
            } else {
                let err = std::io::Error::last_os_error();
                assert!(
                    err.kind() == std::io::ErrorKind::Interrupted,
                    "getrandom failed: {err}"
                );
            }
        }
    }
}
