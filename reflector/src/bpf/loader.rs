//! Loading, pinning, attaching and detaching the XDP program.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::query::{ProgInfoIter, ProgInfoQueryOptions};
use libbpf_rs::{MapCore, MapHandle, Object, ObjectBuilder, ProgramInput, Xdp, XdpFlags};

use super::maps::{Maps, PINNED_MAPS};
use super::{BpfError, OBJECT};

/// Where the maps are pinned unless configured otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ricochet";

/// `BPF_F_XDP_DEV_BOUND_ONLY` (linux/bpf.h, kernel 6.3): the program is
/// bound to one device and may call its XDP metadata kfuncs.
const BPF_F_XDP_DEV_BOUND_ONLY: u32 = 1 << 6;

/// The program of the object that takes T2 from the kernel TAI clock.
const PROG_GENERIC: &str = "ricochet_xdp";
/// The device-bound program that asks the driver for the RX timestamp.
const PROG_HWTS: &str = "ricochet_xdp_hwts";

/// How to load the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Directory for the pinned maps; created if missing. Existing pins
    /// there are reused, so sessions survive a data-plane restart.
    pub pin_dir: PathBuf,
    /// Bind the program to this interface (ifindex) so that it can read NIC
    /// receive timestamps (`bpf_xdp_metadata_rx_timestamp`). A bound
    /// program attaches only to that interface, in native mode.
    pub bind_ifindex: Option<u32>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            bind_ifindex: None,
        }
    }
}

/// How to attach to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP only.
    Native,
    /// Native, falling back to generic (skb) XDP with a warning: generic
    /// XDP runs after the stack allocated an skb and is far slower.
    NativeOrGeneric,
    /// Generic (skb) XDP only (for testing; logged as a warning).
    Generic,
}

/// XDP return codes (`enum xdp_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAction {
    /// XDP_ABORTED
    Aborted,
    /// XDP_DROP
    Drop,
    /// XDP_PASS
    Pass,
    /// XDP_TX
    Tx,
    /// XDP_REDIRECT
    Redirect,
    /// Anything else.
    Other(u32),
}

impl From<u32> for XdpAction {
    fn from(v: u32) -> Self {
        match v {
            0 => XdpAction::Aborted,
            1 => XdpAction::Drop,
            2 => XdpAction::Pass,
            3 => XdpAction::Tx,
            4 => XdpAction::Redirect,
            o => XdpAction::Other(o),
        }
    }
}

/// Result of one BPF_PROG_TEST_RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// What the program returned.
    pub action: XdpAction,
    /// The frame after the program (from `data_meta` when metadata was
    /// added, as the kernel reports it).
    pub data: Vec<u8>,
}

/// The loaded XDP program and its maps.
#[derive(Debug)]
pub struct XdpProgram {
    obj: Object,
    prog: &'static str,
    maps: Maps,
    pin_dir: PathBuf,
    bound: Option<u32>,
}

fn err(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> BpfError {
    let what = what.into();
    move |source| BpfError::Libbpf { what, source }
}

impl XdpProgram {
    /// Opens the embedded object, optionally binds it to a device, loads it
    /// (the verifier runs here) and pins the shared maps.
    pub fn load(opts: &LoadOptions) -> Result<XdpProgram, BpfError> {
        fs::create_dir_all(&opts.pin_dir).map_err(|source| BpfError::Io {
            what: format!("create pin directory {}", opts.pin_dir.display()),
            source,
        })?;
        let mut open = ObjectBuilder::default()
            .name("ricochet")
            .map_err(err("name object"))?
            .open_memory(OBJECT)
            .map_err(err("open BPF object"))?;

        for mut map in open.maps_mut() {
            let name = map.name().to_string_lossy().into_owned();
            if PINNED_MAPS.contains(&name.as_str()) {
                let path = opts.pin_dir.join(&name);
                map.set_pin_path(&path)
                    .map_err(err(format!("set pin path {}", path.display())))?;
            }
        }
        let prog = if opts.bind_ifindex.is_some() {
            PROG_HWTS
        } else {
            PROG_GENERIC
        };
        for mut p in open.progs_mut() {
            let name = p.name().to_string_lossy().into_owned();
            p.set_autoload(name == prog);
            if name == prog {
                if let Some(ifindex) = opts.bind_ifindex {
                    p.set_ifindex(ifindex);
                    p.set_flags(BPF_F_XDP_DEV_BOUND_ONLY);
                }
            }
        }
        let obj = open.load().map_err(|source| BpfError::Libbpf {
            what: format!(
                "load XDP program {prog} (verifier log above; or stale pins in {} from another version)",
                opts.pin_dir.display()
            ),
            source,
        })?;

        let handle = |name: &str| -> Result<MapHandle, BpfError> {
            let map = obj
                .maps()
                .find(|m| m.name() == name)
                .ok_or_else(|| BpfError::BadMapData(format!("map {name} missing from object")))?;
            MapHandle::try_from(&map).map_err(err(format!("duplicate fd of map {name}")))
        };
        let maps = Maps {
            sessions: handle("sessions")?,
            listeners: handle("listeners")?,
            clock: handle("clock")?,
            counters: handle("counters")?,
            xsks: handle("xsks")?,
            keys: handle("keys")?,
            esp_sas: handle("esp_sas")?,
            esp_keys: handle("esp_keys")?,
            esp_state: handle("esp_state")?,
        };
        Ok(XdpProgram {
            obj,
            prog,
            maps,
            pin_dir: opts.pin_dir.clone(),
            bound: opts.bind_ifindex,
        })
    }

    /// The shared maps.
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The interface the program is bound to, if any.
    pub fn bound_ifindex(&self) -> Option<u32> {
        self.bound
    }

    fn program(&self) -> Result<libbpf_rs::ProgramMut<'_>, BpfError> {
        self.obj
            .progs_mut()
            .find(|p| p.name() == self.prog)
            .ok_or_else(|| BpfError::BadMapData(format!("program {} missing", self.prog)))
    }

    /// Attaches to `ifindex`. With another XDP program already attached the
    /// call fails instead of replacing it.
    pub fn attach(&self, ifindex: u32, mode: AttachMode) -> Result<Attachment, BpfError> {
        let prog = self.program()?;
        let fd = prog
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| BpfError::Io {
                what: "duplicate program fd".into(),
                source,
            })?;
        let idx = i32::try_from(ifindex).map_err(|_| BpfError::NoInterface(ifindex.to_string()))?;
        let try_mode =
            |flags: XdpFlags| Xdp::new(fd.as_fd()).attach(idx, flags | XdpFlags::UPDATE_IF_NOEXIST);
        let flags = match mode {
            AttachMode::Native => {
                try_mode(XdpFlags::DRV_MODE)
                    .map_err(err(format!("attach native XDP to ifindex {ifindex}")))?;
                XdpFlags::DRV_MODE
            }
            AttachMode::Generic => {
                tracing::warn!(
                    ifindex,
                    "attaching XDP in GENERIC (skb) mode: slow path, for testing only"
                );
                try_mode(XdpFlags::SKB_MODE)
                    .map_err(err(format!("attach generic XDP to ifindex {ifindex}")))?;
                XdpFlags::SKB_MODE
            }
            AttachMode::NativeOrGeneric => match try_mode(XdpFlags::DRV_MODE) {
                Ok(()) => XdpFlags::DRV_MODE,
                Err(e) => {
                    tracing::warn!(
                        ifindex,
                        error = %e,
                        "NATIVE XDP ATTACH FAILED; falling back to GENERIC (skb) mode: \
                         every packet now pays for an skb, timestamps are taken later and \
                         throughput is a fraction of native"
                    );
                    try_mode(XdpFlags::SKB_MODE)
                        .map_err(err(format!("attach generic XDP to ifindex {ifindex}")))?;
                    XdpFlags::SKB_MODE
                }
            },
        };
        Ok(Attachment {
            ifindex: idx,
            flags: flags.bits(),
            fd,
            attached: true,
        })
    }

    /// Attaches to `ifindex` in native mode like [`XdpProgram::attach`];
    /// when an XDP program is already attached there and it uses this
    /// program's pinned `sessions` map (an earlier instance left it with
    /// `--keep-attached`), replaces it atomically (`XDP_FLAGS_REPLACE`): the
    /// interface is never without the program, so nothing the old one
    /// reflected is lost. Any other program is left alone (an error).
    /// Returns the attachment and the replaced program's id.
    pub fn attach_or_adopt(
        &self,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<(Attachment, Option<u32>), BpfError> {
        let first = match self.attach(ifindex, mode) {
            Ok(a) => return Ok((a, None)),
            Err(e) => e,
        };
        if mode == AttachMode::Generic {
            return Err(first);
        }
        let idx = i32::try_from(ifindex).map_err(|_| BpfError::NoInterface(ifindex.to_string()))?;
        let prog = self.program()?;
        let old_id = match Xdp::new(prog.as_fd()).query_id(idx, XdpFlags::DRV_MODE) {
            Ok(id) if id != 0 => id,
            _ => return Err(first),
        };
        let ours = self
            .maps
            .sessions
            .info()
            .map_err(err("read the sessions map id"))?
            .info
            .id;
        let old =
            ProgInfoIter::with_query_opts(ProgInfoQueryOptions::default().include_map_ids(true))
                .find(|p| p.id == old_id);
        match old {
            Some(p) if p.map_ids.contains(&ours) => {}
            other => {
                let name =
                    other.map_or_else(|| "?".to_owned(), |p| p.name.to_string_lossy().into_owned());
                return Err(BpfError::Busy(format!(
                    "XDP program {name} (id {old_id}) is attached to ifindex {ifindex} and does not \
                     use the maps pinned in {}; detach it first (ip link set dev IF xdp off)",
                    self.pin_dir.display()
                )));
            }
        }
        let old_fd = libbpf_rs::Program::fd_from_id(old_id)
            .map_err(err(format!("open XDP program id {old_id}")))?;
        let fd = prog
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| BpfError::Io {
                what: "duplicate program fd".into(),
                source,
            })?;
        Xdp::new(fd.as_fd())
            .replace(idx, old_fd.as_fd())
            .map_err(err(format!(
                "replace XDP program id {old_id} on ifindex {ifindex}"
            )))?;
        tracing::info!(
            ifindex,
            old_id,
            "replaced the XDP program an earlier instance left attached"
        );
        Ok((
            Attachment {
                ifindex: idx,
                flags: XdpFlags::DRV_MODE.bits(),
                fd,
                attached: true,
            },
            Some(old_id),
        ))
    }

    /// Runs the program once on `frame` with BPF_PROG_TEST_RUN (not
    /// available for a device-bound program).
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRun, BpfError> {
        let prog = self.program()?;
        // Room for growth (bpf_xdp_adjust_tail) and metadata.
        let mut out = vec![0u8; frame.len() + 4096];
        let input = ProgramInput {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let o = prog.test_run(input).map_err(err("BPF_PROG_TEST_RUN"))?;
        let action = XdpAction::from(o.return_value);
        let data = o.data.map(|d| d.to_vec()).unwrap_or_default();
        Ok(TestRun { action, data })
    }

    /// Removes the pinned maps (uninstall, tests). The maps live on while
    /// this object or another holder keeps them open.
    pub fn unpin_maps(&self) -> Result<(), BpfError> {
        for name in PINNED_MAPS {
            let p = self.pin_dir.join(name);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(BpfError::Io {
                        what: format!("unpin {}", p.display()),
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

/// The program attached to an interface; detached on [`Attachment::detach`]
/// or drop.
#[derive(Debug)]
pub struct Attachment {
    ifindex: i32,
    /// `XdpFlags` bits (the type has no Debug).
    flags: u32,
    fd: OwnedFd,
    attached: bool,
}

impl Attachment {
    /// Whether the attachment fell back to generic mode.
    pub fn is_generic(&self) -> bool {
        self.flags & XdpFlags::SKB_MODE.bits() != 0
    }

    /// Detaches the program.
    pub fn detach(mut self) -> Result<(), BpfError> {
        self.attached = false;
        Xdp::new(self.fd.as_fd())
            .detach(self.ifindex, XdpFlags::from_bits_retain(self.flags))
            .map_err(err(format!("detach XDP from ifindex {}", self.ifindex)))
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.attached {
            if let Err(e) = Xdp::new(self.fd.as_fd())
                .detach(self.ifindex, XdpFlags::from_bits_retain(self.flags))
            {
                tracing::warn!(ifindex = self.ifindex, error = %e, "XDP detach failed");
            }
        }
    }
}

/// The ifindex of a network interface by name, in the calling thread's
/// network namespace.
pub fn ifindex(name: &str) -> Result<u32, BpfError> {
    let c = std::ffi::CString::new(name).map_err(|_| BpfError::NoInterface(name.to_owned()))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(BpfError::NoInterface(name.to_owned()));
    }
    Ok(idx)
}
