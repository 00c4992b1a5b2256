//! Loading the shared secret for authenticated, encrypted and mixed modes
//! from a perfSONAR `.pfs` key file (RFC 4656 §3.1 KeyID and shared secret;
//! format in `ricochet_protocol::keyfile`).
//!
//! The secret only ever lives in [`SharedSecret`] (zeroized on drop, never
//! printed); the file's text is read into a zeroizing buffer.

use std::fmt;
use std::path::{Path, PathBuf};

use ricochet_protocol::crypto::{SharedSecret, KEY_ID_LEN};
use ricochet_protocol::keyfile::KeyFile;
use ricochet_protocol::server::KeyId;
use zeroize::Zeroizing;

use super::PingError;

/// An identity and its shared secret.
#[derive(Clone)]
pub struct Credentials {
    /// The identity, sent NUL-padded as the Set-Up-Response KeyID.
    pub identity: String,
    /// The shared secret (the PBKDF2 password).
    pub secret: SharedSecret,
}

impl Credentials {
    /// The 80-octet KeyID field: the identity NUL-padded (RFC 4656 §3.1).
    /// Identities longer than 80 octets are refused when the file is parsed.
    pub fn key_id(&self) -> KeyId {
        let mut k = [0u8; KEY_ID_LEN];
        let b = self.identity.as_bytes();
        let n = b.len().min(KEY_ID_LEN);
        k[..n].copy_from_slice(&b[..n]);
        k
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Something about the key file worth telling the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyWarning {
    /// The file's permission bits let group or others read it.
    ReadableByOthers { path: PathBuf, mode: u32 },
}

impl fmt::Display for KeyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyWarning::ReadableByOthers { path, mode } => write!(
                f,
                "key file {} has mode {:03o}: group or others can read the secret (chmod 600 it)",
                path.display(),
                mode & 0o777
            ),
        }
    }
}

/// Reads `path`, checks its permissions and returns `identity`'s secret.
pub fn load_credentials(
    path: &Path,
    identity: &str,
) -> Result<(Credentials, Vec<KeyWarning>), PingError> {
    let io_err = |e: std::io::Error| PingError::KeyFile {
        path: path.to_owned(),
        why: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    let mut warnings = Vec::new();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            warnings.push(KeyWarning::ReadableByOthers {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io_err)?);
    let file = KeyFile::parse(&text).map_err(|e| PingError::KeyFile {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    let secret = file
        .get(identity)
        .cloned()
        .ok_or_else(|| PingError::UnknownIdentity {
            identity: identity.to_owned(),
            path: path.to_owned(),
        })?;
    Ok((
        Credentials {
            identity: identity.to_owned(),
            secret,
        },
        warnings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ricochet-ping-keys-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn loads_the_identity_and_warns_about_open_permissions() {
        let d = tempdir();
        // The interop README's line: "twamp-golden-secret" hex-encoded.
        let text = "# test\ninterop\t7477616d702d676f6c64656e2d736563726574\nbob\t00ff\n";
        let private = write(&d, "private.pfs", text, 0o600);
        let (c, w) = load_credentials(&private, "interop").unwrap();
        assert!(w.is_empty());
        assert_eq!(c.secret.expose(), b"twamp-golden-secret");
        assert_eq!(&c.key_id()[..7], b"interop");
        assert!(c.key_id()[7..].iter().all(|&b| b == 0));
        assert!(!format!("{c:?}").contains("7477"));

        let open = write(&d, "open.pfs", text, 0o644);
        let (_, w) = load_credentials(&open, "bob").unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].to_string().contains("644"), "{}", w[0]);

        assert!(matches!(
            load_credentials(&private, "carol"),
            Err(PingError::UnknownIdentity { .. })
        ));
        assert!(matches!(
            load_credentials(&d.join("missing.pfs"), "bob"),
            Err(PingError::KeyFile { .. })
        ));
        let bad = write(&d, "bad.pfs", "alice\tnothex\n", 0o600);
        let e = load_credentials(&bad, "alice").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(!e.to_string().contains("nothex"), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
