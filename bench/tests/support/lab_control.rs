//! Daemon plumbing shared by the lab tests (`lab_e2e`, `lab_ike`,
//! `lab_ike_charon`): private files, a child killed by PID on drop, and
//! `ricochet-control` started in the reflector namespace with a bounded wait
//! until it accepts TWAMP-Control on 198.18.0.2:862. Each test keeps its
//! own control.toml: that is what it tests.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use ricochet_testkit::lab::{workspace_bin, Lab, Side};

/// A spawned daemon, killed (by PID) and reaped on drop.
pub struct Daemon {
    pub child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` to `path` with mode 0600 (keys, configs naming keys).
pub fn write_private(path: &Path, text: &str) -> PathBuf {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_owned()
}

/// Writes `config` to `dir/control.toml` (0600), starts `ricochet-control`
/// with it in the reflector namespace and waits (bounded, 20 s) until it
/// accepts TWAMP-Control connections on 198.18.0.2:862. Panics with its
/// stderr if it exits first.
pub fn start_control_config(lab: &Lab, dir: &Path, config: &str) -> Daemon {
    let cfg = write_private(&dir.join("control.toml"), config);
    let bin = workspace_bin("ricochet-control");
    let child = lab.spawn(Side::Reflector, &bin, &["--config", cfg.to_str().unwrap()]);
    let mut d = Daemon { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = lab.run(
            Side::Sender,
            "bash",
            &["-c", "exec 3<>/dev/tcp/198.18.0.2/862"],
        );
        if probe.status.success() {
            return d;
        }
        if let Some(status) = d.child.try_wait().unwrap() {
            let mut err = String::new();
            d.child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("ricochet-control exited with {status}: {err}");
        }
        assert!(Instant::now() < deadline, "ricochet-control never listened");
        std::thread::sleep(Duration::from_millis(50)); // polling a port, not synchronising threads
    }
}
