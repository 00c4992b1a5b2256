//! Network namespaces, interfaces and CPU pinning for the lab.
//!
//! `setns` changes only the calling thread, so everything that must happen
//! inside a namespace (creating sockets, attaching XDP by ifindex,
//! `BPF_PROG_TEST_RUN` against a device there) runs on a thread that entered
//! it first ([`run_in`], or [`enter`] at the start of a long-lived thread).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `/run/netns/<name>`, where `ip netns` and the lab keep named namespaces.
pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &Path) -> io::Result<()> {
    let f = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    // SAFETY: `f` is an open namespace file for the duration of the call;
    // setns only affects the calling thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("setns {}: {e}", path.display()),
        ));
    }
    Ok(())
}

/// Runs `f` on a new thread inside the namespace at `path` and returns its
/// result (a panic in `f` comes back as an error).
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let path = path.to_owned();
    std::thread::spawn(move || -> io::Result<T> {
        enter(&path)?;
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("thread in the namespace panicked"))?
}

/// The index of interface `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::other("NUL in name"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("interface {name}: {e}")));
    }
    Ok(i)
}

/// The MAC address of interface `name` in the calling thread's namespace.
pub fn mac_address(name: &str) -> io::Result<[u8; 6]> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!("interface name {name} too long")));
    }
    // SAFETY: plain socket(2) call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; the ioctl
    // writes only inside it.
    let r = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = io::Error::last_os_error();
    // SAFETY: `fd` is the socket opened above, closed exactly once.
    unsafe { libc::close(fd) };
    if r != 0 {
        return Err(io::Error::new(err.kind(), format!("MAC of {name}: {err}")));
    }
    // SAFETY: after a successful SIOCGIFHWADDR the union holds ifru_hwaddr.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

/// Pins the thread or process `tid` (0: the calling thread) to `core`.
pub fn pin(tid: libc::pid_t, core: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_ZERO/CPU_SET only write
    // inside it, and sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("pin {tid} to CPU {core}: {e}"),
            ));
        }
    }
    Ok(())
}

/// Gives thread `tid` (0: the calling thread) SCHED_FIFO priority `prio`,
/// so that builds and other tenants of a shared machine do not delay it by
/// whole scheduler slices (the kernel's RT throttling still leaves them 5 %).
pub fn set_fifo(tid: libc::pid_t, prio: i32) -> io::Result<()> {
    let p = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: sched_setscheduler reads `p`, valid for the call.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &p) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("SCHED_FIFO for {tid}: {e}"),
        ));
    }
    Ok(())
}

/// Real-time priorities of the benchmark's threads (SCHED_FIFO): the
/// counter's NAPI above the generator on the generator CPU, the reflector's
/// NAPI above its user-space thread on the reflector CPU.
pub mod prio {
    /// The counter's NAPI thread.
    pub const COUNTER_NAPI: i32 = 50;
    /// The reflector's NAPI thread.
    pub const REFLECTOR_NAPI: i32 = 40;
    /// A reflector's user-space thread (socket echo).
    pub const REFLECTOR_THREAD: i32 = 30;
    /// The generator thread.
    pub const GENERATOR: i32 = 20;
}

/// Number of CPUs the kernel has online.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Switches interface `iface` of namespace `ns` to threaded NAPI and pins
/// its NAPI threads to `core`, so that the interface's receive processing
/// (and the XDP program on it) runs on a known CPU. The interface must have
/// its NAPI instances (a veth has them once an XDP program is attached).
/// With `fifo`, the threads also get SCHED_FIFO priority `fifo` so that they
/// preempt a busy thread on the same CPU (the generator) as soon as
/// packets arrive. Returns the pinned thread ids.
pub fn thread_napi(
    ns: &str,
    iface: &str,
    core: usize,
    fifo: Option<i32>,
) -> io::Result<Vec<libc::pid_t>> {
    // `ip netns exec` mounts the namespace's own sysfs, where the interface
    // is visible.
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c"])
        .arg(format!("echo 1 > /sys/class/net/{iface}/threaded"))
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "threaded NAPI on {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // Thread names are "napi/<iface>-<napi id>", cut to 15 characters.
    let prefix = format!("napi/{iface}-");
    let prefix = &prefix[..prefix.len().min(15)];
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
            if comm.trim_end().starts_with(prefix) {
                pin(pid, core)?;
                if let Some(prio) = fifo {
                    set_fifo(pid, prio)?;
                }
                pids.push(pid);
            }
        }
    }
    if pids.is_empty() {
        return Err(io::Error::other(format!(
            "no NAPI thread of {iface} found (no XDP program attached?)"
        )));
    }
    Ok(pids)
}

/// Turns TX checksum offload off on `iface` in namespace `ns`: locally
/// generated UDP would otherwise cross the veth with its checksum pending.
pub fn tx_checksum_off(ns: &str, iface: &str) -> io::Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", path_of(ns).display()))
        .args(["--", "ethtool", "-K", iface, "tx", "off"])
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ethtool -K {iface} tx off: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
