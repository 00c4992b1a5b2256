//! Pre-shared keys, read from a file only root (or the owner) can read.
//!
//! Format: one entry per line, `IDENTITY SECRET`, separated by whitespace;
//! `#` starts a comment line. IDENTITY is the peer's ID as text (an FQDN such
//! as `a.ike.test`, an e-mail address, or an IP address); `*` matches any
//! peer. SECRET is either `0x` followed by hex octets or the literal ASCII
//! secret (no whitespace), the way strongSwan's `secret = ...` reads it.
//!
//! The file must not be readable or writable by group or others (mode 0600
//! or stricter); [`PskStore::load`] refuses it otherwise, saying how to fix
//! it. Secrets are zeroized on drop and never appear in `Debug` or errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use thiserror::Error;
use zeroize::Zeroizing;

/// Why a PSK file could not be loaded.
#[derive(Debug, Error)]
pub enum PskError {
    #[error("cannot read PSK file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "PSK file {path} has mode {mode:04o}: group/other may access it; run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("PSK file {path} line {line}: {why}")]
    Syntax {
        path: PathBuf,
        line: usize,
        why: &'static str,
    },
}

/// Pre-shared keys by peer identity.
#[derive(Default, Clone)]
pub struct PskStore {
    keys: HashMap<String, Zeroizing<Vec<u8>>>,
}

impl core::fmt::Debug for PskStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        write!(f, "PskStore({ids:?}, secrets redacted)")
    }
}

impl PskStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the secret for `identity` (`*` = any peer).
    pub fn insert(&mut self, identity: &str, secret: &[u8]) {
        self.keys
            .insert(identity.to_owned(), Zeroizing::new(secret.to_vec()));
    }

    /// The secret for a peer identity, falling back to `*`.
    pub fn get(&self, identity: &str) -> Option<&[u8]> {
        self.keys
            .get(identity)
            .or_else(|| self.keys.get("*"))
            .map(|k| &k[..])
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Loads a PSK file, refusing one that group or others may access.
    pub fn load(path: &Path) -> Result<Self, PskError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| PskError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(PskError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        Self::parse(&text).map_err(|(line, why)| PskError::Syntax {
            path: path.to_owned(),
            line,
            why,
        })
    }

    /// Parses the file format; errors carry the 1-based line number.
    pub fn parse(text: &str) -> Result<Self, (usize, &'static str)> {
        let mut s = PskStore::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(id), Some(secret), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err((i + 1, "expected `IDENTITY SECRET`"));
            };
            let bytes = if let Some(h) = secret.strip_prefix("0x") {
                Zeroizing::new(decode_hex(h).ok_or((i + 1, "bad hex after 0x"))?)
            } else {
                Zeroizing::new(secret.as_bytes().to_vec())
            };
            if bytes.is_empty() {
                return Err((i + 1, "empty secret"));
            }
            s.insert(id, &bytes);
        }
        Ok(s)
    }
}

fn decode_hex(h: &str) -> Option<Vec<u8>> {
    if h.len() % 2 != 0 {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ascii_and_hex_and_wildcard() {
        let s = PskStore::parse("# c\na.ike.test lab-only\n* 0x00ff10\n").unwrap();
        assert_eq!(s.get("a.ike.test"), Some(&b"lab-only"[..]));
        assert_eq!(s.get("other"), Some(&[0, 0xff, 0x10][..]));
        assert_eq!(PskStore::parse("x\n").unwrap_err().0, 1);
        assert_eq!(PskStore::parse("\nx 0xabc\n").unwrap_err().0, 2);
        assert!(!format!("{s:?}").contains("lab-only"));
    }

    #[test]
    fn refuses_loose_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ike-psk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("psk");
        std::fs::write(&p, "peer secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = PskStore::load(&p).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            PskStore::load(&p).unwrap().get("peer"),
            Some(&b"secret"[..])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
