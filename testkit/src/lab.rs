//! The two-namespace lab for end-to-end tests: `scripts/lab.sh` (the single
//! description of the lab) brings it up under a unique name, and dropping the
//! [`Lab`] deletes it again, also when the test fails or panics.
//!
//! Addresses come only from 198.18.0.0/15 and 2001:2::/48.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Which end of the veth pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The session-sender's namespace (198.18.0.1, 2001:2::1).
    Sender,
    /// The reflector's namespace (198.18.0.2, 2001:2::2).
    Reflector,
}

/// A running lab; deleted on drop.
pub struct Lab {
    name: String,
}

pub const SENDER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const REFLECTOR_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const SENDER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
pub const REFLECTOR_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
/// Addresses for 802.1Q-tagged test frames (VLAN 100 in the tests): a second
/// subnet of the benchmarking ranges, 198.18.1.0/24 and 2001:2:0:1::/64. The
/// lab kernel has no 802.1Q support (`CONFIG_VLAN_8021Q` unset), so no VLAN
/// sub-interface carries them: tests build tagged frames themselves and send
/// them on the veth through a packet socket.
pub const SENDER_VLAN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const REFLECTOR_VLAN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const SENDER_VLAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
pub const REFLECTOR_VLAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab.sh")
}

/// True when this process may create network namespaces (root).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Lab {
    /// Brings up a lab named after `tag` and this process (at most 8 characters
    /// reach the interface names). Panics with the script's output on failure.
    pub fn up(tag: &str) -> Lab {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let mut name = format!(
            "{}{:x}{:x}",
            tag.chars().take(2).collect::<String>(),
            std::process::id() % 0xfff,
            n
        );
        name.truncate(8);
        let lab = Lab { name };
        let out = lab.script("up");
        assert!(
            out.status.success(),
            "lab up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    fn script(&self, verb: &str) -> Output {
        Command::new("bash")
            .arg(script())
            .arg(verb)
            .env("LAB", &self.name)
            .output()
            .expect("bash runs")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace of a side (`/run/netns/<name>`).
    pub fn netns(&self, side: Side) -> String {
        match side {
            Side::Sender => format!("{}-s", self.name),
            Side::Reflector => format!("{}-r", self.name),
        }
    }

    /// The veth interface of a side.
    pub fn iface(&self, side: Side) -> String {
        match side {
            Side::Sender => format!("{}s", self.name),
            Side::Reflector => format!("{}r", self.name),
        }
    }

    pub fn addr(side: Side, v6: bool) -> IpAddr {
        match (side, v6) {
            (Side::Sender, false) => SENDER_V4.into(),
            (Side::Reflector, false) => REFLECTOR_V4.into(),
            (Side::Sender, true) => SENDER_V6.into(),
            (Side::Reflector, true) => REFLECTOR_V6.into(),
        }
    }

    /// The path of a side's namespace, for `setns(2)` (enter it from a
    /// thread to open sockets there: a socket stays in the namespace it was
    /// created in).
    pub fn netns_path(&self, side: Side) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns(side)))
    }

    /// Runs `f` on a new thread inside a side's network namespace and
    /// returns its result (sockets it creates belong to that namespace).
    pub fn in_netns<T: Send + 'static>(
        &self,
        side: Side,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let path = self.netns_path(side);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd; it changes only the
            // network namespace of this (fresh, single-purpose) thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("namespace thread")
    }

    /// A side's address for 802.1Q-tagged test frames (198.18.1.0/24,
    /// 2001:2:0:1::/64; see [`SENDER_VLAN_V4`]).
    pub fn vlan_addr(side: Side, v6: bool) -> IpAddr {
        match (side, v6) {
            (Side::Sender, false) => SENDER_VLAN_V4.into(),
            (Side::Reflector, false) => REFLECTOR_VLAN_V4.into(),
            (Side::Sender, true) => SENDER_VLAN_V6.into(),
            (Side::Reflector, true) => REFLECTOR_VLAN_V6.into(),
        }
    }

    /// A command that runs `program` inside a side's namespace (through
    /// `nsenter --net`, which keeps bpffs visible, unlike `ip netns exec`).
    pub fn command(&self, side: Side, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns(side)))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs a command to completion inside a side's namespace.
    pub fn run(&self, side: Side, program: &str, args: &[&str]) -> Output {
        self.command(side, program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter runs")
    }

    /// Starts a long-running process inside a side's namespace.
    pub fn spawn(&self, side: Side, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Child {
        self.command(side, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsenter runs")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.script("down");
    }
}

/// The path of a workspace binary built by cargo next to the running test
/// (`target/<profile>/<name>`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test executable lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace` (make test does)",
        p.display()
    );
    p
}
