//! IKEv2 SA records: how an external IKE daemon hands RFC 7717 shared
//! secrets to Ricochet (and how `ricochet-ping` is given one).
//!
//! RFC 7717 §5.1 recommends computing `prf(SK_d, "IPPM")` inside the IKE
//! implementation so the raw IKE keys never reach the O/TWAMP process, and
//! leaves the interface out of scope. This is Ricochet's interface: one line
//! per IKE SA, fields separated by spaces or tabs:
//!
//! ```text
//! # SPIi            SPIr             PRF        prf(SK_d, "IPPM"), hex
//! 8d41c1a2e0f3b456 0c7a9e5d3b2f1e08 prfsha256  9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ```
//!
//! * SPIi, SPIr: the IKE SA's SPIs as in the IKE header (not a Child SA's),
//!   16 hex digits each, neither all zero (an established IKE SA has both).
//!   They form the Set-Up-Response KeyID (RFC 7717 §5.3).
//! * PRF: the SA's negotiated PRF, by strongSwan's proposal keyword
//!   (`prfsha1`, `prfsha256`, `prfsha384`, `prfsha512`) or by its IKEv2
//!   Transform Type 2 ID (`2`, `5`, `6`, `7`).
//! * The derived secret `prf(SK_d, "IPPM")`, hex, exactly the PRF's output
//!   length (20, 32, 48 or 64 octets): RFC 7717 does not truncate it.
//! * Blank lines and lines starting with `#` are ignored. In a stream (the
//!   control daemon's Unix socket) a line `delete SPIi SPIr` withdraws an SA;
//!   a record for SPIs already known replaces the old one.
//!
//! Parsing never panics, bounds every line ([`MAX_LINE_LEN`]) and reports
//! errors with the line number and a column, never with key characters. This
//! module does no I/O.

use core::fmt;

use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::ikev2::{rfc7717_key_id, Prf};
use crate::crypto::{SharedSecret, KEY_ID_LEN};

/// Longest accepted line, in octets (a SHA-512 record is about 180).
pub const MAX_LINE_LEN: usize = 512;

/// The two SPIs naming an IKE SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaId {
    /// Initiator's SPI (as in the IKE header).
    pub spi_i: [u8; 8],
    /// Responder's SPI.
    pub spi_r: [u8; 8],
}

impl SaId {
    /// The SA an RFC 7717 KeyID names: its first 16 octets (the rest is
    /// ignored, RFC 7717 §5.3).
    pub fn from_key_id(key_id: &[u8; KEY_ID_LEN]) -> SaId {
        let mut id = SaId {
            spi_i: [0; 8],
            spi_r: [0; 8],
        };
        id.spi_i.copy_from_slice(&key_id[..8]);
        id.spi_r.copy_from_slice(&key_id[8..16]);
        id
    }

    /// The Set-Up-Response KeyID naming this SA: SPIi ‖ SPIr ‖ 64 zeros.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        rfc7717_key_id(&self.spi_i, &self.spi_r)
    }
}

impl fmt::Display for SaId {
    /// `SPIi_SPIr` in hex, as charon prints IKE SA SPIs (`SPIi_i SPIr_r`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.spi_i {
            write!(f, "{b:02x}")?;
        }
        f.write_str("_")?;
        for b in self.spi_r {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One IKE SA and its RFC 7717 shared secret.
#[derive(Clone)]
pub struct SaRecord {
    /// Which SA.
    pub id: SaId,
    /// Its negotiated PRF.
    pub prf: Prf,
    /// `prf(SK_d, "IPPM")`.
    pub secret: SharedSecret,
}

impl fmt::Debug for SaRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaRecord")
            .field("id", &format_args!("{}", self.id))
            .field("prf", &self.prf)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl SaRecord {
    /// The record as a line (without newline), the inverse of
    /// [`parse_line`]. The line holds the secret: write it only to a
    /// private file or socket.
    pub fn to_line(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(64 + 2 * self.secret.len()));
        s.push_str(&self.id.to_string().replace('_', " "));
        s.push(' ');
        s.push_str(prf_keyword(self.prf));
        s.push(' ');
        for b in self.secret.expose() {
            use fmt::Write;
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

/// strongSwan's proposal keyword for a PRF.
pub const fn prf_keyword(prf: Prf) -> &'static str {
    match prf {
        Prf::HmacSha1 => "prfsha1",
        Prf::HmacSha256 => "prfsha256",
        Prf::HmacSha384 => "prfsha384",
        Prf::HmacSha512 => "prfsha512",
    }
}

/// A PRF by keyword or transform ID.
pub fn parse_prf(word: &str) -> Option<Prf> {
    match word.to_ascii_lowercase().as_str() {
        "prfsha1" => Some(Prf::HmacSha1),
        "prfsha256" => Some(Prf::HmacSha256),
        "prfsha384" => Some(Prf::HmacSha384),
        "prfsha512" => Some(Prf::HmacSha512),
        other => other.parse::<u16>().ok().and_then(Prf::from_transform_id),
    }
}

/// One meaningful line.
#[derive(Debug, Clone)]
pub enum SaLine {
    /// Add (or replace) an SA.
    Record(SaRecord),
    /// `delete SPIi SPIr`: withdraw an SA (streams only).
    Delete(SaId),
}

/// What is wrong with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SaLineError {
    /// Longer than [`MAX_LINE_LEN`].
    #[error("line is longer than {MAX_LINE_LEN} octets")]
    TooLong,
    /// Not 4 fields (a record) or 3 fields starting with `delete`.
    #[error("expected 'SPIi SPIr PRF KEY' (or 'delete SPIi SPIr'), got {fields} field(s)")]
    Fields {
        /// Fields found.
        fields: usize,
    },
    /// A SPI that is not 16 hex digits.
    #[error("{which} is not 16 hex digits")]
    BadSpi {
        /// "SPIi" or "SPIr".
        which: &'static str,
    },
    /// A SPI of all zeros (no established IKE SA has one).
    #[error("{which} is zero; an established IKE SA has non-zero SPIs")]
    ZeroSpi {
        /// "SPIi" or "SPIr".
        which: &'static str,
    },
    /// The PRF field names no supported PRF.
    #[error("unknown PRF; use prfsha1, prfsha256, prfsha384, prfsha512 (or 2, 5, 6, 7)")]
    UnknownPrf,
    /// A character of the key is not a hex digit.
    #[error("key is not hex (column {column})")]
    BadKeyHex {
        /// 1-based column in the line.
        column: usize,
    },
    /// The key does not have the PRF's output length.
    #[error("key has {got} octets, {prf:?} gives {expected}")]
    KeyLength {
        /// The record's PRF.
        prf: Prf,
        /// Its output length.
        expected: usize,
        /// Octets given (hex digits / 2, rounded down).
        got: usize,
    },
    /// The same SA appears twice in a file.
    #[error("SA already defined on line {first_line}")]
    Duplicate {
        /// Where it was first defined.
        first_line: usize,
    },
    /// `delete` in a file (files list the SAs that exist).
    #[error("'delete' is for the socket; remove the SA's line from the file instead")]
    DeleteInFile,
}

/// One bad line of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("line {line}: {kind}")]
pub struct SaFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub kind: SaLineError,
}

/// Parses one line: `Ok(None)` for a blank line or a comment.
pub fn parse_line(line: &str) -> Result<Option<SaLine>, SaLineError> {
    if line.len() > MAX_LINE_LEN {
        return Err(SaLineError::TooLong);
    }
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let mut fields = [("", 0usize); 5];
    let mut n = 0;
    for (col, word) in words(line) {
        if n == fields.len() {
            return Err(SaLineError::Fields { fields: n + 1 });
        }
        fields[n] = (word, col);
        n += 1;
    }
    let fields = &fields[..n];
    if fields.len() == 3 && fields[0].0.eq_ignore_ascii_case("delete") {
        let id = SaId {
            spi_i: parse_spi(fields[1].0, "SPIi")?,
            spi_r: parse_spi(fields[2].0, "SPIr")?,
        };
        return Ok(Some(SaLine::Delete(id)));
    }
    if fields.len() != 4 {
        return Err(SaLineError::Fields {
            fields: fields.len(),
        });
    }
    let id = SaId {
        spi_i: parse_spi(fields[0].0, "SPIi")?,
        spi_r: parse_spi(fields[1].0, "SPIr")?,
    };
    let prf = parse_prf(fields[2].0).ok_or(SaLineError::UnknownPrf)?;
    let (hex, col) = fields[3];
    let expected = prf.output_len();
    if let Some(bad) = hex.bytes().position(|c| !c.is_ascii_hexdigit()) {
        return Err(SaLineError::BadKeyHex {
            column: col + bad + 1,
        });
    }
    if hex.len() != 2 * expected {
        return Err(SaLineError::KeyLength {
            prf,
            expected,
            got: hex.len() / 2,
        });
    }
    let mut key = Zeroizing::new([0u8; 64]);
    for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
        key[i] = (nibble(pair[0]) << 4) | nibble(pair[1]);
    }
    Ok(Some(SaLine::Record(SaRecord {
        id,
        prf,
        secret: SharedSecret::from_slice(&key[..expected]),
    })))
}

/// Parses a whole file of records: every bad line is reported (`delete`
/// lines and duplicate SAs are errors in a file).
pub fn parse_file(text: &str) -> Result<Vec<SaRecord>, Vec<SaFileError>> {
    let mut records: Vec<(SaRecord, usize)> = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        match parse_line(line) {
            Ok(None) => {}
            Ok(Some(SaLine::Delete(_))) => errors.push(SaFileError {
                line: line_no,
                kind: SaLineError::DeleteInFile,
            }),
            Ok(Some(SaLine::Record(r))) => {
                if let Some((_, first)) = records.iter().find(|(o, _)| o.id == r.id) {
                    errors.push(SaFileError {
                        line: line_no,
                        kind: SaLineError::Duplicate { first_line: *first },
                    });
                } else {
                    records.push((r, line_no));
                }
            }
            Err(kind) => errors.push(SaFileError {
                line: line_no,
                kind,
            }),
        }
    }
    if errors.is_empty() {
        Ok(records.into_iter().map(|(r, _)| r).collect())
    } else {
        Err(errors)
    }
}

/// Whitespace-separated words with their 0-based octet columns.
fn words(line: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = line;
    let mut offset = 0;
    core::iter::from_fn(move || {
        let start = rest.find(|c: char| !c.is_whitespace())?;
        let after = &rest[start..];
        let len = after.find(char::is_whitespace).unwrap_or(after.len());
        let word = &after[..len];
        let col = offset + start;
        offset += start + len;
        rest = &after[len..];
        Some((col, word))
    })
}

fn parse_spi(word: &str, which: &'static str) -> Result<[u8; 8], SaLineError> {
    if word.len() != 16 || !word.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(SaLineError::BadSpi { which });
    }
    let mut spi = [0u8; 8];
    for (i, pair) in word.as_bytes().chunks_exact(2).enumerate() {
        spi[i] = (nibble(pair[0]) << 4) | nibble(pair[1]);
    }
    if spi == [0; 8] {
        return Err(SaLineError::ZeroSpi { which });
    }
    Ok(spi)
}

/// The value of an ASCII hex digit (checked by the callers).
fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ikev2::rfc7717_shared_secret;

    const SPI_I: &str = "8d41c1a2e0f3b456";
    const SPI_R: &str = "0c7a9e5d3b2f1e08";

    fn hex(octets: &[u8]) -> String {
        octets.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_record_round_trips_and_names_the_key_id() {
        // The secret is what RFC 7717 §5.1 defines: prf(SK_d, "IPPM").
        let secret = rfc7717_shared_secret(Prf::HmacSha256, &[0x11; 32]);
        let line = format!("{SPI_I}\t{SPI_R}  prfsha256 {}", hex(secret.expose()));
        let Some(SaLine::Record(r)) = parse_line(&line).unwrap() else {
            panic!("a record");
        };
        assert_eq!(r.prf, Prf::HmacSha256);
        assert_eq!(r.secret.expose(), secret.expose());
        let key_id = r.id.key_id();
        assert_eq!(
            &key_id[..8],
            &[0x8d, 0x41, 0xc1, 0xa2, 0xe0, 0xf3, 0xb4, 0x56]
        );
        assert_eq!(
            &key_id[8..16],
            &[0x0c, 0x7a, 0x9e, 0x5d, 0x3b, 0x2f, 0x1e, 0x08]
        );
        assert!(key_id[16..].iter().all(|&b| b == 0));
        assert_eq!(SaId::from_key_id(&key_id), r.id);
        let again = parse_line(&r.to_line()).unwrap();
        let Some(SaLine::Record(again)) = again else {
            panic!("round trip");
        };
        assert_eq!(again.id, r.id);
        assert_eq!(again.secret.expose(), r.secret.expose());
        assert!(!format!("{r:?}").contains(&hex(&secret.expose()[..4])));
    }

    #[test]
    fn prf_by_keyword_or_transform_id() {
        for (word, prf) in [
            ("prfsha1", Prf::HmacSha1),
            ("PRFSHA384", Prf::HmacSha384),
            ("7", Prf::HmacSha512),
            ("5", Prf::HmacSha256),
        ] {
            assert_eq!(parse_prf(word), Some(prf), "{word}");
        }
        for word in ["prfmd5", "1", "4", "8", "", "sha256"] {
            assert_eq!(parse_prf(word), None, "{word}");
        }
    }

    #[test]
    fn bad_lines_are_typed_and_never_echo_the_key() {
        let k32 = "ab".repeat(32);
        let cases: Vec<(String, SaLineError)> = vec![
            (
                format!("{SPI_I} {SPI_R} prfsha256"),
                SaLineError::Fields { fields: 3 },
            ),
            (
                format!("{SPI_I} {SPI_R} prfsha256 {k32} extra"),
                SaLineError::Fields { fields: 5 },
            ),
            (
                format!("{SPI_I}0 {SPI_R} prfsha256 {k32}"),
                SaLineError::BadSpi { which: "SPIi" },
            ),
            (
                format!("{SPI_I} 0000000000000000 prfsha256 {k32}"),
                SaLineError::ZeroSpi { which: "SPIr" },
            ),
            (
                format!("{SPI_I} {SPI_R} prfmd5 {k32}"),
                SaLineError::UnknownPrf,
            ),
            (
                format!("{SPI_I} {SPI_R} prfsha1 {k32}"),
                SaLineError::KeyLength {
                    prf: Prf::HmacSha1,
                    expected: 20,
                    got: 32,
                },
            ),
            (
                format!("{SPI_I} {SPI_R} prfsha256 {}zz", "ab".repeat(31)),
                SaLineError::BadKeyHex {
                    column: 44 + 62 + 1,
                },
            ),
            ("x".repeat(MAX_LINE_LEN + 1), SaLineError::TooLong),
            ("delete 0102".into(), SaLineError::Fields { fields: 2 }),
        ];
        for (line, want) in cases {
            let got = parse_line(&line).expect_err(&line);
            assert_eq!(got, want, "{line}");
            assert!(!got.to_string().contains("abab"), "{got}");
        }
        assert!(parse_line("   # comment").unwrap().is_none());
        assert!(parse_line("").unwrap().is_none());
        let Some(SaLine::Delete(id)) = parse_line(&format!("DELETE {SPI_I} {SPI_R}")).unwrap()
        else {
            panic!("delete");
        };
        assert_eq!(id.to_string(), format!("{SPI_I}_{SPI_R}"));
    }

    #[test]
    fn files_report_every_bad_line() {
        let k20 = "01".repeat(20);
        let text = format!(
            "# two SAs\n{SPI_I} {SPI_R} prfsha1 {k20}\n\nbroken\n{SPI_I} {SPI_R} 2 {k20}\n\
             delete {SPI_I} {SPI_R}\n{SPI_R} {SPI_I} prfsha1 {k20}\n"
        );
        let errors = parse_file(&text).unwrap_err();
        assert_eq!(
            errors,
            vec![
                SaFileError {
                    line: 4,
                    kind: SaLineError::Fields { fields: 1 }
                },
                SaFileError {
                    line: 5,
                    kind: SaLineError::Duplicate { first_line: 2 }
                },
                SaFileError {
                    line: 6,
                    kind: SaLineError::DeleteInFile
                },
            ]
        );
        let good = format!("{SPI_I} {SPI_R} prfsha1 {k20}\n{SPI_R} {SPI_I} prfsha1 {k20}\n");
        assert_eq!(parse_file(&good).unwrap().len(), 2);
    }
}
