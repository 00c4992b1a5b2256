//! IKEv2 SA record harness (`ricochet_protocol::sa_records`): the lines an
//! external IKE daemon feeds `ricochet-control` (file or Unix socket).

use ricochet_protocol::sa_records::{self, SaLine, MAX_LINE_LEN};

/// [`sa_records::parse_file`] and [`sa_records::parse_line`] on arbitrary
/// text: an accepted record has non-zero SPIs, a secret of exactly its PRF's
/// output length and writes back (`to_line`) to the same record; a refused
/// file reports existing lines in order; no error message repeats a key.
pub fn sa_records(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match sa_records::parse_file(&text) {
        Ok(records) => {
            for (i, r) in records.iter().enumerate() {
                assert_ne!(r.id.spi_i, [0; 8]);
                assert_ne!(r.id.spi_r, [0; 8]);
                assert_eq!(r.secret.len(), r.prf.output_len());
                assert!(
                    records[..i].iter().all(|o| o.id != r.id),
                    "duplicate SA kept"
                );
                let line = r.to_line();
                match sa_records::parse_line(&line) {
                    Ok(Some(SaLine::Record(again))) => {
                        assert_eq!(again.id, r.id);
                        assert_eq!(again.prf, r.prf);
                        assert_eq!(again.secret.expose(), r.secret.expose());
                    }
                    other => panic!("written-back line does not parse: {other:?}"),
                }
            }
        }
        Err(errors) => {
            let lines = text.lines().count();
            assert!(!errors.is_empty(), "an error without a bad line");
            assert!(errors.windows(2).all(|w| w[0].line <= w[1].line));
            assert!(errors.iter().all(|e| (1..=lines).contains(&e.line)));
        }
    }
    for line in text.lines() {
        match sa_records::parse_line(line) {
            Ok(_) => assert!(line.len() <= MAX_LINE_LEN),
            Err(e) => {
                let msg = e.to_string();
                // Messages carry numbers and names, never 8+ hex digits of input.
                assert!(
                    !msg.as_bytes()
                        .windows(8)
                        .any(|w| w.iter().all(u8::is_ascii_hexdigit)
                            && line.contains(std::str::from_utf8(w).unwrap_or("\0"))),
                    "error echoes input: {msg}"
                );
            }
        }
    }
}
