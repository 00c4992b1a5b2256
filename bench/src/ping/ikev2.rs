//! RFC 7717 keys for `ricochet-ping`: an IKEv2-derived shared secret taken
//! from an SA record file (`--ikev2-key-file`), in the format an IKE daemon
//! feeds `ricochet-control` (`ricochet_protocol::sa_records`: `SPIi SPIr PRF
//! KEY` per line, KEY = `prf(SK_d, "IPPM")`).
//!
//! With such a key the client sets the IKEv2-derived Mode bit (0x80)
//! together with its security bit, sends SPIi ‖ SPIr as the KeyID (RFC 7717
//! §5.3) and refuses a server that does not offer 0x80.

use std::fmt;
use std::path::Path;

use ricochet_protocol::crypto::{SharedSecret, TokenKeyDerivation};
use ricochet_protocol::sa_records::{self, SaId, SaRecord};
use zeroize::Zeroizing;

use super::keys::KeyWarning;
use super::PingError;

/// An IKE SA's RFC 7717 key, ready for the control client.
#[derive(Clone)]
pub struct Ikev2Key {
    /// The SA (its SPIs form the KeyID).
    pub sa: SaId,
    /// `prf(SK_d, "IPPM")`.
    pub secret: SharedSecret,
    /// Whether PBKDF2 runs on it (must match the server's `ikev2.token_key`).
    pub token_key: TokenKeyDerivation,
}

impl fmt::Debug for Ikev2Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ikev2Key")
            .field("sa", &format_args!("{}", self.sa))
            .field("secret", &"<redacted>")
            .field("token_key", &self.token_key)
            .finish()
    }
}

/// Parses `SPIi_SPIr` or `SPIi:SPIr` (16 hex digits each).
pub fn parse_sa_id(s: &str) -> Result<SaId, String> {
    let (i, r) = s
        .split_once(['_', ':'])
        .ok_or_else(|| format!("'{s}' is not SPIi_SPIr (16 hex digits each)"))?;
    let line = format!("delete {i} {r}");
    match sa_records::parse_line(&line) {
        Ok(Some(sa_records::SaLine::Delete(id))) => Ok(id),
        Err(e) => Err(format!("'{s}': {e}")),
        Ok(_) => Err(format!("'{s}' is not SPIi_SPIr")),
    }
}

/// Reads the record file at `path` and picks the SA `want` (or the only one
/// in the file).
pub fn load_ikev2_key(
    path: &Path,
    want: Option<SaId>,
    token_key: TokenKeyDerivation,
) -> Result<(Ikev2Key, Vec<KeyWarning>), PingError> {
    let err = |why: String| PingError::KeyFile {
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
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
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
    let records = sa_records::parse_file(&text).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        err(format!(
            "{}; the format is 'SPIi SPIr PRF KEY' per line",
            list.join("; ")
        ))
    })?;
    let pick: Option<&SaRecord> = match want {
        Some(id) => records.iter().find(|r| r.id == id),
        None if records.len() == 1 => records.first(),
        None => {
            return Err(err(format!(
                "{} SAs listed; choose one with --ikev2-sa SPIi_SPIr",
                records.len()
            )))
        }
    };
    let record = pick.ok_or_else(|| {
        err(match want {
            Some(id) => format!("no SA {id}"),
            None => "no SA listed".to_owned(),
        })
    })?;
    Ok((
        Ikev2Key {
            sa: record.id,
            secret: record.secret.clone(),
            token_key,
        },
        warnings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    const A: &str = "30c8551b66ef2dcf 0a873f74e95d606b prfsha256 7ade39607d19e8cac7a1e1a356d7549c9364fae430c1c1de669aa0ffeef01b13";

    fn write(name: &str, text: &str, mode: u32) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "ricochet-ping-ike-{}-{}-{name}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn picks_the_only_sa_or_the_named_one() {
        let one = write("one", &format!("{A}\n"), 0o600);
        let (k, w) = load_ikev2_key(&one, None, TokenKeyDerivation::Pbkdf2).unwrap();
        assert!(w.is_empty());
        assert_eq!(k.sa.to_string(), "30c8551b66ef2dcf_0a873f74e95d606b");
        assert_eq!(k.secret.len(), 32);
        assert!(!format!("{k:?}").contains("7ade"));

        let two = write(
            "two",
            &format!(
                "{A}\n1111111111111111 2222222222222222 2 {}\n",
                "ab".repeat(20)
            ),
            0o644,
        );
        let e = load_ikev2_key(&two, None, TokenKeyDerivation::Pbkdf2).unwrap_err();
        assert!(e.to_string().contains("--ikev2-sa"), "{e}");
        let id = parse_sa_id("1111111111111111:2222222222222222").unwrap();
        let (k, w) = load_ikev2_key(&two, Some(id), TokenKeyDerivation::Direct).unwrap();
        assert_eq!(k.secret.len(), 20);
        assert_eq!(w.len(), 1, "mode 644 is warned about");
        let other = parse_sa_id("3333333333333333_2222222222222222").unwrap();
        assert!(load_ikev2_key(&two, Some(other), TokenKeyDerivation::Pbkdf2).is_err());
        assert!(parse_sa_id("1111").is_err());
        assert!(parse_sa_id("0000000000000000_2222222222222222").is_err());
        for p in [one, two] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
