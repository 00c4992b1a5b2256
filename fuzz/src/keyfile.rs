//! perfSONAR `.pfs` key-file harness (`ricochet_protocol::keyfile`).

use ricochet_protocol::keyfile::KeyFile;

/// [`KeyFile::parse`] on arbitrary text: an accepted file's entries are
/// well-formed KeyIDs (1–80 octets, no NUL, no whitespace) found again by
/// `get` and by `lookup` of their KeyID field, and writing them back as
/// `identity<TAB>hex` lines parses to the same entries; a refused file
/// reports lines that exist, in order.
pub fn keyfile(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match KeyFile::parse(&text) {
        Ok(file) => {
            assert_eq!(file.len(), file.entries().len());
            let mut rewritten = String::new();
            for e in file.entries() {
                let id = e.identity();
                assert!(!id.is_empty() && id.len() <= 80, "identity {id:?}");
                assert!(!id.contains('\0'), "NUL in identity {id:?}");
                assert!(!id.starts_with('#'), "comment taken as identity {id:?}");
                assert!(
                    !id.contains([' ', '\t', '\n', '\x0b', '\x0c', '\r']),
                    "whitespace in identity {id:?}"
                );
                assert!(!e.secret().is_empty(), "empty secret for {id:?}");
                assert!(e.line() >= 1);
                assert_eq!(file.get(id).map(|s| s.expose()), Some(e.secret().expose()));
                assert_eq!(
                    file.lookup(&e.key_id()).map(|s| s.expose()),
                    Some(e.secret().expose()),
                    "KeyID of {id:?} does not find it"
                );
                rewritten.push_str(id);
                rewritten.push('\t');
                for b in e.secret().expose() {
                    rewritten.push_str(&format!("{b:02x}"));
                }
                rewritten.push('\n');
            }
            let again = KeyFile::parse(&rewritten).expect("rewritten file parses");
            assert_eq!(again.len(), file.len());
            for (a, b) in again.entries().iter().zip(file.entries()) {
                assert_eq!(a.identity(), b.identity());
                assert_eq!(a.secret().expose(), b.secret().expose());
            }
        }
        Err(errors) => {
            let lines = text.split('\n').count();
            assert!(!errors.0.is_empty(), "an error without a bad line");
            assert!(
                errors.0.windows(2).all(|w| w[0].line <= w[1].line),
                "errors out of line order"
            );
            assert!(errors.0.iter().all(|e| (1..=lines).contains(&e.line)));
            let _ = errors.to_string();
        }
    }
}
