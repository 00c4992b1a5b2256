//! perfSONAR-compatible shared-secret files (`*.pfs`, written by I2util's
//! `pfstore`).
//!
//! Format, one entry per line (as parsed by I2util `I2ParsePFFile`):
//!
//! ```text
//! # comment
//! alice<TAB>7477616d702d736563726574
//! ```
//!
//! * `identity`, then one or more spaces/tabs, then the secret hex-encoded
//!   (even number of digits, upper or lower case); only whitespace may follow.
//!   The hex is decoded and the raw octets are the shared secret (the PBKDF2
//!   password of RFC 4656 §3.1; spec pitfall 7).
//! * Blank lines are ignored; a line whose first non-blank character is `#`
//!   is a comment. Comments after the secret are **not** allowed, and an
//!   entry line must not start with whitespace: perfSONAR rejects both, and a
//!   file both programs read must mean the same to both.
//! * The identity is the KeyID of Set-Up-Response, so at most 80 octets
//!   (RFC 4656 §3.1); longer identities are reported (perfSONAR silently
//!   keeps them, and no client could ever name them).
//! * A duplicate identity is reported (perfSONAR would silently use the
//!   first).
//!
//! Parsing collects every bad line, with its 1-based line number, and never
//! echoes secret characters in an error. This module does no file I/O.

use crate::crypto::{SharedSecret, KEY_ID_LEN};
use core::fmt;
use thiserror::Error;
use zeroize::Zeroizing;

/// What is wrong with one line of a key file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyFileErrorKind {
    /// The line starts with whitespace (allowed only before `#`).
    #[error("entry starts with whitespace")]
    LeadingWhitespace,
    /// An identity with no secret after it.
    #[error("identity without a hex secret")]
    MissingSecret,
    /// A character of the secret is not a hex digit.
    #[error("secret is not hex (column {column})")]
    BadHex {
        /// 1-based column (in characters) of the offending character.
        column: usize,
    },
    /// The secret has an odd number of hex digits.
    #[error("secret has an odd number ({digits}) of hex digits")]
    OddHexLength {
        /// Number of hex digits.
        digits: usize,
    },
    /// Something other than whitespace follows the secret.
    #[error(
        "unexpected text after the secret (column {column}; trailing comments are not allowed)"
    )]
    TrailingData {
        /// 1-based column (in characters) where it starts.
        column: usize,
    },
    /// The identity does not fit the 80-octet KeyID field.
    #[error("identity is {len} octets, the KeyID field holds at most 80")]
    IdentityTooLong {
        /// Identity length in octets (UTF-8).
        len: usize,
    },
    /// The identity contains a NUL, which the NUL-padded KeyID cannot carry.
    #[error("identity contains a NUL character")]
    NulInIdentity,
    /// The identity was already defined.
    #[error("duplicate identity (first defined on line {first_line})")]
    DuplicateIdentity {
        /// Line of the first definition.
        first_line: usize,
    },
}

/// One bad line of a key file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {kind}")]
pub struct KeyFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub kind: KeyFileErrorKind,
}

/// Every bad line of a key file (at least one), in line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileErrors(pub Vec<KeyFileError>);

impl fmt::Display for KeyFileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key file has {} bad line(s)", self.0.len())?;
        for e in &self.0 {
            write!(f, "; {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KeyFileErrors {}

/// One identity and its secret.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    identity: String,
    secret: SharedSecret,
    line: usize,
}

impl KeyEntry {
    /// The identity (KeyID without its NUL padding).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The decoded shared secret.
    pub fn secret(&self) -> &SharedSecret {
        &self.secret
    }

    /// The line it was defined on.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The 80-octet KeyID field a client sends for this identity.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        let mut id = [0u8; KEY_ID_LEN];
        id[..self.identity.len()].copy_from_slice(self.identity.as_bytes());
        id
    }
}

/// A parsed key file: identities and their secrets.
#[derive(Debug, Clone, Default)]
pub struct KeyFile {
    entries: Vec<KeyEntry>,
}

/// C `isspace` in the "C" locale, which I2util uses.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// The identity part of a KeyID field: the octets before the first NUL
/// (C-string semantics, as perfSONAR reads it).
fn identity_octets(key_id: &[u8; KEY_ID_LEN]) -> &[u8] {
    let end = key_id.iter().position(|&b| b == 0).unwrap_or(KEY_ID_LEN);
    &key_id[..end]
}

impl KeyFile {
    /// Parses the text of a `.pfs` file, reporting every bad line.
    pub fn parse(text: &str) -> Result<KeyFile, KeyFileErrors> {
        let mut file = KeyFile::default();
        let mut errors = Vec::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            match parse_line(raw) {
                Ok(None) => {}
                Ok(Some((identity, secret))) => {
                    if let Some(first) = file.entries.iter().find(|e| e.identity == identity) {
                        errors.push(KeyFileError {
                            line,
                            kind: KeyFileErrorKind::DuplicateIdentity {
                                first_line: first.line,
                            },
                        });
                    } else {
                        file.entries.push(KeyEntry {
                            identity: identity.to_owned(),
                            secret,
                            line,
                        });
                    }
                }
                Err(kind) => errors.push(KeyFileError { line, kind }),
            }
        }
        if errors.is_empty() {
            Ok(file)
        } else {
            Err(KeyFileErrors(errors))
        }
    }

    /// The secret for the KeyID field of a Set-Up-Response (80 octets, the
    /// identity NUL-padded). The identity is the octets before the first NUL;
    /// it must equal an entry's identity exactly.
    pub fn lookup(&self, key_id: &[u8; KEY_ID_LEN]) -> Option<&SharedSecret> {
        let wanted = identity_octets(key_id);
        self.entries
            .iter()
            .find(|e| e.identity.as_bytes() == wanted)
            .map(|e| &e.secret)
    }

    /// The secret of an identity given as text.
    pub fn get(&self, identity: &str) -> Option<&SharedSecret> {
        self.entries
            .iter()
            .find(|e| e.identity == identity)
            .map(|e| &e.secret)
    }

    /// All entries, in file order.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the file defines no identity.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Parses one line: `Ok(None)` for blank and comment lines.
fn parse_line(raw: &str) -> Result<Option<(&str, SharedSecret)>, KeyFileErrorKind> {
    let trimmed = raw.trim_start_matches(is_space);
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    if trimmed.len() != raw.len() {
        return Err(KeyFileErrorKind::LeadingWhitespace);
    }
    let id_end = raw.find(is_space).unwrap_or(raw.len());
    let identity = &raw[..id_end];
    let after_id = &raw[id_end..];
    let hex = after_id.trim_start_matches(is_space);
    let hex_start = raw.len() - hex.len();
    let hex_len = hex.find(is_space).unwrap_or(hex.len());
    let (hex, tail) = hex.split_at(hex_len);

    if identity.len() > KEY_ID_LEN {
        return Err(KeyFileErrorKind::IdentityTooLong {
            len: identity.len(),
        });
    }
    if identity.contains('\0') {
        return Err(KeyFileErrorKind::NulInIdentity);
    }
    if hex.is_empty() {
        return Err(KeyFileErrorKind::MissingSecret);
    }
    let column = |byte_offset: usize| raw[..byte_offset].chars().count() + 1;
    if let Some(pos) = tail.find(|c: char| !is_space(c)) {
        return Err(KeyFileErrorKind::TrailingData {
            column: column(hex_start + hex_len + pos),
        });
    }
    if let Some(pos) = hex.find(|c: char| !c.is_ascii_hexdigit()) {
        return Err(KeyFileErrorKind::BadHex {
            column: column(hex_start + pos),
        });
    }
    if hex.len() % 2 != 0 {
        return Err(KeyFileErrorKind::OddHexLength { digits: hex.len() });
    }
    let mut secret = Zeroizing::new(Vec::with_capacity(hex.len() / 2));
    for pair in hex.as_bytes().chunks_exact(2) {
        secret.push(hex_value(pair[0]) << 4 | hex_value(pair[1]));
    }
    Ok(Some((
        identity,
        SharedSecret::new(core::mem::take(&mut *secret)),
    )))
}

/// Value of an ASCII hex digit already checked by `is_ascii_hexdigit`.
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit.wrapping_sub(b'A').wrapping_add(10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_id(identity: &str) -> [u8; KEY_ID_LEN] {
        let mut id = [0u8; KEY_ID_LEN];
        id[..identity.len()].copy_from_slice(identity.as_bytes());
        id
    }

    #[test]
    fn perfsonar_interop_line() {
        // The pfs line of /work/shared/interop/perfsonar-5.2.3/README.md.
        let f = KeyFile::parse("interop\t7477616d702d676f6c64656e2d736563726574\n").unwrap();
        assert_eq!(f.len(), 1);
        let secret = f.lookup(&key_id("interop")).unwrap();
        assert_eq!(secret.expose(), b"twamp-golden-secret");
        assert_eq!(f.entries()[0].key_id(), key_id("interop"));
    }

    #[test]
    fn comments_blank_lines_spaces_case_crlf() {
        let text = "# perfSONAR pfs\n\n   \n  # indented comment\nalice  \t 7477616D702D736563726574  \r\nbob 00ff\r\n";
        let f = KeyFile::parse(text).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f.get("alice").unwrap().expose(), b"twamp-secret");
        assert_eq!(f.get("bob").unwrap().expose(), &[0x00, 0xff]);
        assert_eq!(f.entries()[1].line(), 6);
        assert!(f.get("carol").is_none());
        assert!(KeyFile::parse("").unwrap().is_empty());
    }

    #[test]
    fn lookup_is_exact_on_the_identity() {
        let f = KeyFile::parse("alice 01\nal 02\n").unwrap();
        assert_eq!(f.lookup(&key_id("al")).unwrap().expose(), &[2]);
        assert_eq!(f.lookup(&key_id("alice")).unwrap().expose(), &[1]);
        assert!(f.lookup(&key_id("ali")).is_none());
        assert!(f.lookup(&key_id("alicex")).is_none());
        assert!(f.lookup(&[0u8; KEY_ID_LEN]).is_none());
        // An 80-octet identity fills the field with no NUL.
        let long = "x".repeat(80);
        let f = KeyFile::parse(&format!("{long} aa")).unwrap();
        assert_eq!(f.lookup(&[b'x'; KEY_ID_LEN]).unwrap().expose(), &[0xaa]);
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let long = "y".repeat(81);
        let text = format!(
            "good 0102\n\
             nosecret\n\
             nosecret2   \n\
             badhex 01zz\n\
             odd 012\n\
             trailing 0102 # comment\n\
             {long} 01\n \
             indented 01\n\
             good 0304\n\
             nul\0id 01\n"
        );
        let errs = KeyFile::parse(&text).unwrap_err();
        let got: Vec<(usize, KeyFileErrorKind)> =
            errs.0.iter().map(|e| (e.line, e.kind.clone())).collect();
        assert_eq!(
            got,
            vec![
                (2, KeyFileErrorKind::MissingSecret),
                (3, KeyFileErrorKind::MissingSecret),
                (4, KeyFileErrorKind::BadHex { column: 10 }),
                (5, KeyFileErrorKind::OddHexLength { digits: 3 }),
                (6, KeyFileErrorKind::TrailingData { column: 15 }),
                (7, KeyFileErrorKind::IdentityTooLong { len: 81 }),
                (8, KeyFileErrorKind::LeadingWhitespace),
                (9, KeyFileErrorKind::DuplicateIdentity { first_line: 1 }),
                (10, KeyFileErrorKind::NulInIdentity),
            ]
        );
        let msg = errs.to_string();
        assert!(msg.contains("9 bad line(s)"), "{msg}");
        assert!(
            msg.contains("line 4: secret is not hex (column 10)"),
            "{msg}"
        );
    }

    #[test]
    fn errors_never_echo_the_secret() {
        let errs = KeyFile::parse("id s3cr3tzz\nid2 abc\n").unwrap_err();
        let msg = format!("{errs} {errs:?}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
        assert!(!msg.contains("abc"), "{msg}");
        let f = KeyFile::parse("id 6869").unwrap();
        assert!(!format!("{f:?}").contains("hi"));
        assert!(!format!("{f:?}").contains("6869"));
    }
}
