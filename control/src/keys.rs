//! Where shared secrets come from: the [`KeySource`] seam, the static
//! sources (a perfSONAR `.pfs` key file and `[security.secrets]` in the
//! configuration) and the file checks done before any secret is read.
//!
//! A protected-mode client names a KeyID in its Set-Up-Response; the server
//! derives the token key from that KeyID's shared secret (RFC 4656 §3.1).
//! [`Keys`] answers that question for the connection state machine:
//!
//! * without the IKEv2-derived Mode bit the KeyID is an identity, looked up
//!   in [`StaticKeys`]; an unknown identity is refused with Accept 1;
//! * with the IKEv2-derived bit (RFC 7717 §5) the KeyID is SPIi ‖ SPIr and
//!   the secret comes from an IKEv2 SA. That source plugs in with
//!   [`Keys::set_ikev2`] (any [`KeySource`]); until one is installed every
//!   such request is refused with Accept 6, "cannot find the IKEv2 SA"
//!   (RFC 7717 §5.3).
//!
//! Secrets never appear in logs, errors or `Debug` output: errors name the
//! file, the line and the column, never the octets.
//!
//! # File checks
//!
//! A file holding secrets (the key file, or the configuration file when it
//! has `[security.secrets]`) must be a regular file owned by root or by the
//! daemon's user and give no permission at all to group or others (mode
//! `600` or `400`). Anything else is refused with a message saying
//! `chmod 600 FILE` (or whom it should belong to): a secret others can read
//! or rewrite is not a secret.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ricochet_protocol::accept::Accept;
use ricochet_protocol::crypto::{SharedSecret, TokenKeyDerivation, KEY_ID_LEN};
use ricochet_protocol::keyfile::KeyFile;
use ricochet_protocol::modes::{Modes, Selection};
use ricochet_protocol::server::KeyId;

use crate::config::Config;

/// Where the shared secret of a KeyID comes from (RFC 4656 §3.1,
/// RFC 7717 §5).
pub trait KeySource: Send {
    /// The secret for `key_id` under the client's `selection`. `Err` is the
    /// Accept value of the Server-Start refusal: 1 for an unknown identity,
    /// 6 for an unknown IKEv2 SA.
    fn secret(&self, key_id: &KeyId, selection: &Selection) -> Result<SharedSecret, Accept>;
    /// Re-read whatever may have changed under the source (every sweep;
    /// `force` on SIGHUP). Static sources are replaced on reload instead.
    fn refresh(&mut self, force: bool) {
        let _ = force;
    }
    /// How the token key is derived from this source's secrets (PBKDF2
    /// unless the source says otherwise; see `ikev2.token_key`).
    fn token_key_derivation(&self) -> TokenKeyDerivation {
        TokenKeyDerivation::Pbkdf2
    }
}

/// Identities and secrets known in advance: the key file and the
/// configuration's `[security.secrets]`.
#[derive(Default)]
pub struct StaticKeys {
    secrets: HashMap<String, SharedSecret>,
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&str> = self.secrets.keys().map(String::as_str).collect();
        ids.sort_unstable();
        f.debug_struct("StaticKeys")
            .field("identities", &ids)
            .finish()
    }
}

impl StaticKeys {
    /// Load the key file and the configured secrets of `config`.
    /// `config_path` is the file `config` was read from (checked like a key
    /// file when it holds secrets); `None` for a configuration built in
    /// memory.
    pub fn load(config: &Config, config_path: Option<&Path>) -> Result<StaticKeys, String> {
        let mut keys = StaticKeys::default();
        let mut origin: HashMap<String, String> = HashMap::new();
        if let Some(path) = &config.security.key_file {
            let file = read_key_file(path)?;
            for entry in file.entries() {
                let name = entry.identity().to_owned();
                origin.insert(
                    name.clone(),
                    format!("{} line {}", path.display(), entry.line()),
                );
                keys.secrets.insert(name, entry.secret().clone());
            }
        }
        if !config.security.secrets.is_empty() {
            if let Some(path) = config_path {
                check_secret_file(path, "configuration file (it has [security.secrets])")?;
            }
        }
        let mut problems = Vec::new();
        for (name, hex) in &config.security.secrets {
            if let Some(first) = origin.get(name) {
                problems.push(format!(
                    "security.secrets.{name:?} is also defined in {first}; keep one"
                ));
                continue;
            }
            match decode_hex_secret(hex.expose()) {
                Ok(secret) => {
                    keys.secrets.insert(name.clone(), secret);
                }
                Err(why) => problems.push(format!("security.secrets.{name:?}: {why}")),
            }
        }
        if problems.is_empty() {
            Ok(keys)
        } else {
            Err(problems.join("; "))
        }
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// True when no identity is known.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Whether `identity` is known.
    pub fn contains(&self, identity: &str) -> bool {
        self.secrets.contains_key(identity)
    }
}

impl KeySource for StaticKeys {
    fn secret(&self, key_id: &KeyId, _selection: &Selection) -> Result<SharedSecret, Accept> {
        let end = key_id.iter().position(|&b| b == 0).unwrap_or(KEY_ID_LEN);
        std::str::from_utf8(&key_id[..end])
            .ok()
            .and_then(|name| self.secrets.get(name))
            .cloned()
            .ok_or(Accept::Failure)
    }
}

/// The daemon's key sources: the static identities, and the RFC 7717 IKEv2
/// source once one exists.
#[derive(Default)]
pub struct Keys {
    static_keys: StaticKeys,
    ikev2: Option<Box<dyn KeySource>>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("static_keys", &self.static_keys)
            .field("ikev2", &self.ikev2.is_some())
            .finish()
    }
}

impl Keys {
    /// Keys from the static sources only.
    pub fn new(static_keys: StaticKeys) -> Keys {
        Keys {
            static_keys,
            ikev2: None,
        }
    }

    /// Replace the static keys (SIGHUP).
    pub fn set_static(&mut self, static_keys: StaticKeys) {
        self.static_keys = static_keys;
    }

    /// The static keys in use.
    pub fn static_keys(&self) -> &StaticKeys {
        &self.static_keys
    }

    /// Install the RFC 7717 source: it answers every Set-Up-Response that
    /// selects the IKEv2-derived Mode bit (KeyID = SPIi ‖ SPIr).
    pub fn set_ikev2(&mut self, source: Box<dyn KeySource>) {
        self.ikev2 = Some(source);
    }

    /// Whether an RFC 7717 source is installed.
    pub fn has_ikev2(&self) -> bool {
        self.ikev2.is_some()
    }

    /// Let the IKEv2 source re-read changed files (`force`: even unchanged
    /// ones, on SIGHUP).
    pub fn refresh(&mut self, force: bool) {
        if let Some(source) = &mut self.ikev2 {
            source.refresh(force);
        }
    }

    /// How the token key of a connection with `selection` is derived: the
    /// IKEv2 source's choice for the IKEv2-derived Mode bit, PBKDF2
    /// otherwise.
    pub fn token_key_derivation(&self, selection: &Selection) -> TokenKeyDerivation {
        match &self.ikev2 {
            Some(source) if selection.has(Modes::IKEV2_DERIVED) => source.token_key_derivation(),
            _ => TokenKeyDerivation::Pbkdf2,
        }
    }
}

impl KeySource for Keys {
    fn secret(&self, key_id: &KeyId, selection: &Selection) -> Result<SharedSecret, Accept> {
        if selection.has(Modes::IKEV2_DERIVED) {
            return match &self.ikev2 {
                Some(source) => source.secret(key_id, selection),
                None => Err(Accept::Ikev2SaNotFound),
            };
        }
        self.static_keys.secret(key_id, selection)
    }
}

/// Decode a hex-encoded secret (as in `.pfs` files: an even number of hex
/// digits, either case). Errors give the position, never the characters.
pub fn decode_hex_secret(hex: &str) -> Result<SharedSecret, String> {
    if hex.is_empty() {
        return Err("the secret is empty; give it hex-encoded".to_owned());
    }
    let mut octets = zeroize::Zeroizing::new(vec![0u8; hex.len() / 2]);
    match hex::decode_to_slice(hex, &mut octets[..]) {
        Ok(()) => Ok(SharedSecret::from_slice(&octets)),
        Err(hex::FromHexError::OddLength | hex::FromHexError::InvalidStringLength) => Err(format!(
            "the secret has an odd number ({}) of hex digits",
            hex.len()
        )),
        Err(hex::FromHexError::InvalidHexCharacter { index, .. }) => Err(format!(
            "the secret is not hex (character {} is not a hex digit)",
            index + 1
        )),
    }
}

/// Read a STAMP HMAC-SHA-256 key (`stamp.session.key_file`): one line of
/// hex, at least 16 octets, after [`check_secret_file`]. The key is never
/// echoed in errors.
pub fn read_stamp_key(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let what = "stamp.session.key_file";
    check_secret_file(path, what)?;
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{what} {}: cannot read it: {e}; let the daemon's user read it",
            path.display()
        )
    })?);
    let hex = text.trim();
    let secret = decode_hex_secret(hex).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let key = zeroize::Zeroizing::new(secret.expose().to_vec());
    if key.len() < 16 {
        return Err(format!(
            "{what} {}: the key has {} octets; give at least 16 (32 recommended for HMAC-SHA-256)",
            path.display(),
            key.len()
        ));
    }
    Ok(key)
}

/// Read and parse a perfSONAR key file after [`check_secret_file`]. Bad
/// lines are reported with their numbers.
pub fn read_key_file(path: &Path) -> Result<KeyFile, String> {
    check_secret_file(path, "security.key_file")?;
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "security.key_file {}: cannot read it: {e}; let the daemon's user read it",
            path.display()
        )
    })?;
    KeyFile::parse(&text).map_err(|errors| {
        format!(
            "security.key_file {}: {errors}; the format is identity<TAB>hex secret per line",
            path.display()
        )
    })
}

/// Check that the file at `path` (described as `what` in messages) may hold
/// secrets: a regular file, owned by root or by the daemon's effective user,
/// with no permission for group or others.
pub fn check_secret_file(path: &Path, what: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "{what} {}: {e}; create it (identity<TAB>hex secret per line) or fix the path",
            path.display()
        )
    })?;
    if !meta.is_file() {
        return Err(format!("{what} {} is not a regular file", path.display()));
    }
    let euid = rustix::process::geteuid().as_raw();
    check_owner_and_mode(meta.uid(), meta.mode(), euid).map_err(|problem| {
        let path = path.display();
        match problem {
            FileProblem::Mode(mode) => format!(
                "{what} {path} is accessible by group or others (mode {mode:03o}); \
                 run chmod 600 {path}"
            ),
            FileProblem::Owner(uid) => format!(
                "{what} {path} belongs to uid {uid}, not to root or to the daemon's user \
                 (uid {euid}); run chown {euid} {path}"
            ),
        }
    })
}

/// Why a file may not hold secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileProblem {
    /// Group or others have some permission (the mode's permission bits).
    Mode(u32),
    /// Owned by this uid, which is neither root nor the daemon's user.
    Owner(u32),
}

/// The ownership and permission rule of [`check_secret_file`], on the raw
/// values of `stat(2)`.
pub fn check_owner_and_mode(uid: u32, mode: u32, euid: u32) -> Result<(), FileProblem> {
    if uid != 0 && uid != euid {
        return Err(FileProblem::Owner(uid));
    }
    if mode & 0o077 != 0 {
        return Err(FileProblem::Mode(mode & 0o777));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HexSecret;
    use ricochet_protocol::modes::SecurityMode;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A file removed when the test ends.
    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn selection(features: Modes) -> Selection {
        Selection {
            security: SecurityMode::Encrypted,
            features,
        }
    }

    fn key_id(name: &str) -> KeyId {
        let mut k = [0u8; KEY_ID_LEN];
        k[..name.len()].copy_from_slice(name.as_bytes());
        k
    }

    fn temp(name: &str, text: &str, mode: u32) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("ricochet-keys-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        TempFile(path)
    }

    #[test]
    fn owner_and_mode_rule() {
        assert_eq!(check_owner_and_mode(1000, 0o100600, 1000), Ok(()));
        assert_eq!(
            check_owner_and_mode(0, 0o100400, 1000),
            Ok(()),
            "root may own it"
        );
        assert_eq!(
            check_owner_and_mode(1000, 0o100640, 1000),
            Err(FileProblem::Mode(0o640))
        );
        assert_eq!(
            check_owner_and_mode(1000, 0o100602, 1000),
            Err(FileProblem::Mode(0o602)),
            "writable by others is refused too"
        );
        assert_eq!(
            check_owner_and_mode(1001, 0o100600, 1000),
            Err(FileProblem::Owner(1001))
        );
    }

    #[test]
    fn key_file_is_loaded_and_looked_up() {
        let f = temp(
            "good.pfs",
            "# lab\ninterop\t7477616d702d676f6c64656e2d736563726574\n",
            0o600,
        );
        let mut c = Config::default();
        c.security.key_file = Some(f.0.clone());
        let keys = StaticKeys::load(&c, None).expect("loads");
        assert_eq!(keys.len(), 1);
        let s = keys
            .secret(&key_id("interop"), &selection(Modes::NONE))
            .expect("known");
        // The secret is the decoded hex (spec pitfall 7).
        assert_eq!(s.expose(), b"twamp-golden-secret");
        assert_eq!(
            keys.secret(&key_id("intero"), &selection(Modes::NONE))
                .map(|_| ()),
            Err(Accept::Failure)
        );
        assert!(!format!("{keys:?}").contains("7477"), "{keys:?}");
    }

    #[test]
    fn readable_key_file_is_refused_with_the_chmod_hint() {
        let f = temp("open.pfs", "interop 00ff\n", 0o644);
        let mut c = Config::default();
        c.security.key_file = Some(f.0.clone());
        let e = StaticKeys::load(&c, None).expect_err("mode 644");
        assert!(
            e.contains(&format!("chmod 600 {}", f.0.display())) && e.contains("644"),
            "{e}"
        );
    }

    #[test]
    fn bad_lines_are_reported_with_numbers_and_without_secrets() {
        let f = temp("bad.pfs", "ok 00ff\nbroken s3cr3tzz\nodd abc\n", 0o600);
        let mut c = Config::default();
        c.security.key_file = Some(f.0.clone());
        let e = StaticKeys::load(&c, None).expect_err("bad lines");
        assert!(e.contains("line 2") && e.contains("line 3"), "{e}");
        assert!(!e.contains("s3cr3t") && !e.contains("abc"), "{e}");
        c.security.key_file = Some(f.0.with_extension("missing"));
        let e = StaticKeys::load(&c, None).expect_err("missing");
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn configured_secrets_are_decoded_and_checked() {
        let mut c = Config::default();
        c.security
            .secrets
            .insert("lab".to_owned(), HexSecret::new("6869"));
        let keys = StaticKeys::load(&c, None).expect("loads");
        assert_eq!(
            keys.secret(&key_id("lab"), &selection(Modes::NONE))
                .expect("known")
                .expose(),
            b"hi"
        );
        c.security
            .secrets
            .insert("bad".to_owned(), HexSecret::new("s3cr3t"));
        let e = StaticKeys::load(&c, None).expect_err("not hex");
        assert!(e.contains("\"bad\"") && !e.contains("s3cr3t"), "{e}");

        // The configuration file holding them must be private too.
        c.security.secrets.remove("bad");
        let f = temp("control.toml", "", 0o644);
        let e = StaticKeys::load(&c, Some(&f.0)).expect_err("644");
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn an_identity_in_both_sources_is_refused() {
        let f = temp("dup.pfs", "lab 00ff\n", 0o600);
        let mut c = Config::default();
        c.security.key_file = Some(f.0.clone());
        c.security
            .secrets
            .insert("lab".to_owned(), HexSecret::new("0102"));
        let e = StaticKeys::load(&c, None).expect_err("duplicate");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn hex_errors_name_positions_only() {
        assert_eq!(
            decode_hex_secret("0g").map(|_| ()),
            Err("the secret is not hex (character 2 is not a hex digit)".to_owned())
        );
        assert!(decode_hex_secret("abc").is_err());
        assert!(decode_hex_secret("").is_err());
        assert_eq!(
            decode_hex_secret("00FFaa").expect("hex").expose(),
            &[0, 0xff, 0xaa]
        );
    }

    struct FixedSa;
    impl KeySource for FixedSa {
        fn secret(&self, key_id: &KeyId, _: &Selection) -> Result<SharedSecret, Accept> {
            if key_id[..8] == [1, 2, 3, 4, 5, 6, 7, 8] {
                Ok(SharedSecret::from_slice(b"ike"))
            } else {
                Err(Accept::Ikev2SaNotFound)
            }
        }
    }

    #[test]
    fn ikev2_selection_goes_to_the_ikev2_source_only() {
        let mut c = Config::default();
        c.security
            .secrets
            .insert("lab".to_owned(), HexSecret::new("6869"));
        let mut keys = Keys::new(StaticKeys::load(&c, None).expect("loads"));
        let ike = selection(Modes::IKEV2_DERIVED);
        // No IKEv2 source: Accept 6 (RFC 7717 §5.3), even for a known name.
        assert_eq!(
            keys.secret(&key_id("lab"), &ike).map(|_| ()),
            Err(Accept::Ikev2SaNotFound)
        );
        assert!(keys.secret(&key_id("lab"), &selection(Modes::NONE)).is_ok());
        keys.set_ikev2(Box::new(FixedSa));
        let mut spis = [0u8; KEY_ID_LEN];
        spis[..8].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(keys.secret(&spis, &ike).expect("SA").expose(), b"ike");
        assert_eq!(
            keys.secret(&key_id("lab"), &ike).map(|_| ()),
            Err(Accept::Ikev2SaNotFound)
        );
    }
}
