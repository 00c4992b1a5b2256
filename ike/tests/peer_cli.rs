//! The lab driver's command line: help with examples, clear errors and a
//! non-zero exit for a loose PSK file, an unknown DH group or a bad --child.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn peer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ricochet-ike-peer"))
}

#[test]
fn help_has_examples() {
    let out = peer().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Examples:") && text.contains("--initiate"),
        "{text}"
    );
}

#[test]
fn bad_inputs_fail_with_a_message() {
    let dir = std::env::temp_dir().join(format!("ike-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let psk = dir.join("psk");
    std::fs::write(&psk, "peer secret\n").unwrap();
    let run = |extra: &[&str]| {
        let out = peer()
            .args(["--listen", "127.0.0.1", "--id", "me", "--psk-file"])
            .arg(&psk)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, err) = run(&["--dh", "7"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("supported groups are 14, 19 and 31"), "{err}");
    let (code, err) = run(&[
        "--initiate",
        "127.0.0.2",
        "--child",
        "nonsense",
        "--run-ms",
        "1",
    ]);
    assert_eq!(code, Some(1));
    // Refused before any socket is bound.
    assert!(err.contains("--child wants LOCAL_TS,REMOTE_TS"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
