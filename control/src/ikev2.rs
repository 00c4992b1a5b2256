//! RFC 7717 key sources: IKEv2-derived shared secrets for the TWAMP
//! authenticated, encrypted and mixed modes.
//!
//! A client that selects the IKEv2-derived Mode bit (0x80) names an IKE SA
//! in its Set-Up-Response KeyID: SPIi ‖ SPIr, then 64 zero octets (RFC 7717
//! §5.3; the server reads only the first 16). [`Ikev2KeySource`] resolves
//! that pair through its [`Ikev2SaDirectory`]s and answers
//! `prf(SK_d, "IPPM")` computed with that SA's negotiated PRF (RFC 7717
//! §5.1). An SA no directory knows is logged and refused with Server-Start
//! Accept 6 (RFC 7717 §5.3).
//!
//! The secret is taken once per control connection, when the Set-Up-Response
//! arrives: the connection's control keys and every test session's keys come
//! from the token it unlocks, so the connection and its sessions keep working
//! when the SA is rekeyed or deleted afterwards (RFC 7717 §5.1: the derived
//! secret stays in use until the session ends). New connections must name the
//! current SA.
//!
//! Directories:
//!
//! * [`SaFile`]: a root-only (0600) file of records
//!   (`ricochet_protocol::sa_records`) that an external IKE daemon rewrites;
//!   re-read when its size, mtime or inode changes (checked every sweep and on
//!   SIGHUP). A file that fails to parse or to pass the permission check keeps
//!   the records read before, with a warning.
//! * [`SaSocket`]: a root-only Unix stream socket taking the same lines plus
//!   `delete SPIi SPIr`, answering `ok` or `error: …` per line, into a
//!   [`SharedSaTable`].
//! * [`SharedSaTable`] directly: where an in-process IKEv2 endpoint publishes
//!   its established SAs (and withdraws deleted ones).
//!
//! Whether PBKDF2 runs on the derived secret is [`TokenKeyDerivation`]
//! (configuration `ikev2.token_key`).

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use ricochet_protocol::accept::Accept;
use ricochet_protocol::crypto::ikev2::{rfc7717_shared_secret, Prf};
use ricochet_protocol::crypto::{SharedSecret, TokenKeyDerivation};
use ricochet_protocol::modes::Selection;
use ricochet_protocol::sa_records::{self, SaId, SaLine, SaRecord, MAX_LINE_LEN};
use ricochet_protocol::server::KeyId;
use zeroize::Zeroizing;

use crate::keys::{check_secret_file, KeySource};

/// Most SAs one table holds: bounds what a feeder can make us store.
pub const MAX_SAS: usize = 65_536;

/// Bad lines of an SA file named in its error message (and so in the log).
const MAX_ERRORS_SHOWN: usize = 5;

/// What a directory knows of one IKE SA: enough to compute its RFC 7717
/// secret.
#[derive(Clone)]
pub enum SaSecret {
    /// The SA's SK_d and PRF (an in-process IKE endpoint).
    SkD {
        /// The negotiated PRF.
        prf: Prf,
        /// SK_d.
        sk_d: Zeroizing<Vec<u8>>,
    },
    /// `prf(SK_d, "IPPM")` computed by the IKE daemon (RFC 7717 §5.1
    /// recommends that the raw IKE keys stay there).
    Derived {
        /// The negotiated PRF.
        prf: Prf,
        /// The derived secret.
        secret: SharedSecret,
    },
}

impl SaSecret {
    /// The RFC 7717 shared secret `prf(SK_d, "IPPM")`, untruncated.
    pub fn ippm_key(&self) -> SharedSecret {
        match self {
            SaSecret::SkD { prf, sk_d } => rfc7717_shared_secret(*prf, sk_d),
            SaSecret::Derived { secret, .. } => secret.clone(),
        }
    }

    /// The SA's PRF.
    pub fn prf(&self) -> Prf {
        match self {
            SaSecret::SkD { prf, .. } | SaSecret::Derived { prf, .. } => *prf,
        }
    }
}

impl fmt::Debug for SaSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SaSecret({:?}, <redacted>)", self.prf())
    }
}

impl From<SaRecord> for SaSecret {
    fn from(r: SaRecord) -> SaSecret {
        SaSecret::Derived {
            prf: r.prf,
            secret: r.secret,
        }
    }
}

/// Resolves IKE SAs by their SPIs.
pub trait Ikev2SaDirectory: Send {
    /// The SA (SPIi, SPIr), if known.
    fn lookup(&self, id: &SaId) -> Option<SaSecret>;
    /// Re-read a source that may have changed (called every sweep; cheap
    /// when nothing changed). `force` re-reads even if it looks unchanged
    /// (SIGHUP).
    fn refresh(&mut self, force: bool) {
        let _ = force;
    }
    /// What this directory is, for logs.
    fn describe(&self) -> String;
}

/// SAs in memory.
#[derive(Default)]
pub struct SaTable {
    sas: HashMap<SaId, SaSecret>,
}

impl fmt::Debug for SaTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaTable")
            .field("sas", &self.sas.len())
            .finish()
    }
}

/// The table is full ([`MAX_SAS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the SA table is full ({MAX_SAS} SAs); delete some first")]
pub struct TableFull;

impl SaTable {
    /// Adds or replaces an SA.
    pub fn insert(&mut self, id: SaId, sa: SaSecret) -> Result<(), TableFull> {
        if self.sas.len() >= MAX_SAS && !self.sas.contains_key(&id) {
            return Err(TableFull);
        }
        self.sas.insert(id, sa);
        Ok(())
    }

    /// Withdraws an SA; true if it was there.
    pub fn remove(&mut self, id: &SaId) -> bool {
        self.sas.remove(id).is_some()
    }

    /// Number of SAs.
    pub fn len(&self) -> usize {
        self.sas.len()
    }

    /// Forgets every SA.
    pub fn clear(&mut self) {
        self.sas.clear();
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.sas.is_empty()
    }

    /// The SA, if known.
    pub fn get(&self, id: &SaId) -> Option<&SaSecret> {
        self.sas.get(id)
    }
}

/// An [`SaTable`] shared between the control loop and whatever feeds it
/// (the socket thread, an in-process IKE endpoint). Control plane only: the
/// lock is never taken on a packet path.
#[derive(Clone, Default, Debug)]
pub struct SharedSaTable(Arc<Mutex<SaTable>>);

impl SharedSaTable {
    /// An empty table.
    pub fn new() -> SharedSaTable {
        SharedSaTable::default()
    }

    /// The table, locked. A panic while it was held cannot leave it
    /// half-updated (every update is one map operation), so a poisoned lock
    /// is simply taken over.
    pub fn lock(&self) -> MutexGuard<'_, SaTable> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Ikev2SaDirectory for SharedSaTable {
    fn lookup(&self, id: &SaId) -> Option<SaSecret> {
        self.lock().get(id).cloned()
    }

    fn describe(&self) -> String {
        "in-process SA table".to_owned()
    }
}

/// What identifies a version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// SA records in a root-only file, re-read when it changes.
pub struct SaFile {
    path: PathBuf,
    table: SaTable,
    stamp: Option<FileStamp>,
}

impl fmt::Debug for SaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaFile")
            .field("path", &self.path)
            .field("sas", &self.table.len())
            .finish()
    }
}

impl SaFile {
    /// Reads `path` (it must pass [`check_secret_file`] and parse).
    pub fn load(path: &Path) -> Result<SaFile, String> {
        let mut f = SaFile {
            path: path.to_owned(),
            table: SaTable::default(),
            stamp: None,
        };
        f.read()?;
        Ok(f)
    }

    /// Number of SAs read.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when the file lists no SA.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn read(&mut self) -> Result<(), String> {
        let what = "ikev2.sa_file";
        check_secret_file(&self.path, what)?;
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| format!("{what} {}: {e}", self.path.display()))?;
        let stamp = FileStamp::of(&meta);
        let mut text = Zeroizing::new(String::new());
        std::fs::File::open(&self.path)
            .and_then(|f| f.take(16 << 20).read_to_string(&mut text))
            .map_err(|e| format!("{what} {}: cannot read it: {e}", self.path.display()))?;
        // Whatever happens next, this version has been looked at.
        self.stamp = Some(stamp);
        // Too many SA lines is refused before parsing: the parser's duplicate
        // check is quadratic in the number of records.
        let sa_lines = text
            .lines()
            .filter(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#')
            })
            .count();
        if sa_lines > MAX_SAS {
            return Err(format!(
                "{what} {}: {sa_lines} SA lines, at most {MAX_SAS}",
                self.path.display()
            ));
        }
        let records = sa_records::parse_file(&text).map_err(|errors| {
            // The first few only: the message goes to the log.
            let list: Vec<String> = errors
                .iter()
                .take(MAX_ERRORS_SHOWN)
                .map(ToString::to_string)
                .collect();
            let more = errors.len().saturating_sub(MAX_ERRORS_SHOWN);
            format!(
                "{what} {}: {} bad line(s): {}{}; the format is 'SPIi SPIr PRF KEY' per line",
                self.path.display(),
                errors.len(),
                list.join("; "),
                if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                }
            )
        })?;
        if records.len() > MAX_SAS {
            return Err(format!(
                "{what} {}: {} SAs, at most {MAX_SAS}",
                self.path.display(),
                records.len()
            ));
        }
        let mut table = SaTable::default();
        for r in records {
            table
                .insert(r.id, r.clone().into())
                .map_err(|e| e.to_string())?;
        }
        self.table = table;
        Ok(())
    }

    fn changed(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(meta) => Some(FileStamp::of(&meta)) != self.stamp,
            // Gone: keep what we have until it comes back (an IKE daemon
            // rewriting it may be between unlink and rename).
            Err(_) => false,
        }
    }
}

impl Ikev2SaDirectory for SaFile {
    fn lookup(&self, id: &SaId) -> Option<SaSecret> {
        self.table.get(id).cloned()
    }

    fn refresh(&mut self, force: bool) {
        if !force && !self.changed() {
            return;
        }
        match self.read() {
            Ok(()) => tracing::info!(
                path = %self.path.display(),
                sas = self.table.len(),
                "IKEv2 SA file re-read"
            ),
            Err(e) => tracing::warn!("{e}; keeping the {} SAs read before", self.table.len()),
        }
    }

    fn describe(&self) -> String {
        format!("SA file {}", self.path.display())
    }
}

/// A root-only Unix stream socket an IKE daemon writes SA records to.
///
/// Protocol: lines as in `ricochet_protocol::sa_records` (a record adds or
/// replaces an SA, `delete SPIi SPIr` withdraws one); each line is answered
/// `ok` or `error: WHAT`. Only root and the daemon's own user may connect
/// (checked with `SO_PEERCRED`); the socket file is mode 0600. One feeder is
/// served at a time, idle ones are dropped after 10 s. SAs fed this way are
/// held in memory only: a feeder must replay its SAs after the daemon
/// restarts (connect and send them all; replacing is harmless).
pub struct SaSocket {
    path: PathBuf,
    table: SharedSaTable,
    stop: Arc<AtomicBool>,
    /// The feeder being served, so that stopping can cut it off.
    current: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for SaSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaSocket")
            .field("path", &self.path)
            .finish()
    }
}

/// How long a feeder may stay silent.
const FEEDER_IDLE: Duration = Duration::from_secs(10);

impl SaSocket {
    /// Binds `path` (a stale socket there is replaced; any other file is an
    /// error) and serves it from a thread, feeding `table`.
    pub fn bind(path: &Path, table: SharedSaTable) -> Result<SaSocket, String> {
        let what = "ikev2.sa_socket";
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(path).map_err(|e| {
                    format!(
                        "{what} {}: cannot remove the old socket: {e}",
                        path.display()
                    )
                })?;
            }
            Ok(_) => {
                return Err(format!(
                    "{what} {} exists and is not a socket; remove it or choose another path",
                    path.display()
                ))
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).map_err(|e| {
            format!(
                "{what} {}: cannot bind: {e}; create its directory (root-only) or choose another path",
                path.display()
            )
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{what} {}: cannot chmod 600: {e}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let thread = {
            let table = table.clone();
            let stop = stop.clone();
            let current = current.clone();
            std::thread::Builder::new()
                .name("ikev2-sa-socket".into())
                .spawn(move || serve(listener, table, stop, current))
                .map_err(|e| format!("{what}: cannot start its thread: {e}"))?
        };
        Ok(SaSocket {
            path: path.to_owned(),
            table,
            stop,
            current,
            thread: Some(thread),
        })
    }

    /// The table it feeds.
    pub fn table(&self) -> &SharedSaTable {
        &self.table
    }
}

impl Drop for SaSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Cut off a feeder being served, then wake the accept(2); the
        // thread sees the flag and ends.
        if let Some(c) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Ikev2SaDirectory for SaSocket {
    fn lookup(&self, id: &SaId) -> Option<SaSecret> {
        self.table.lookup(id)
    }

    fn describe(&self) -> String {
        format!("SA socket {}", self.path.display())
    }
}

fn serve(
    listener: UnixListener,
    table: SharedSaTable,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<UnixStream>>>,
) {
    let euid = rustix::process::geteuid().as_raw();
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(error = %e, "ikev2.sa_socket: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let uid = rustix::net::sockopt::socket_peercred(&conn).map(|c| c.uid.as_raw());
        match uid {
            Ok(uid) if uid == 0 || uid == euid => {}
            other => {
                tracing::warn!(
                    uid = ?other.ok(),
                    "ikev2.sa_socket: refused a feeder that is neither root nor our user"
                );
                let _ = conn.write_all(b"error: not permitted\n");
                continue;
            }
        }
        let _ = conn.set_read_timeout(Some(FEEDER_IDLE));
        let _ = conn.set_write_timeout(Some(FEEDER_IDLE));
        *current.lock().unwrap_or_else(|p| p.into_inner()) = conn.try_clone().ok();
        // Checked again under the slot: a stop that came in between must
        // not leave this feeder uncut.
        if stop.load(Ordering::SeqCst) {
            return;
        }
        feed(conn, &table);
        *current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Serves one feeder until it closes, goes idle or misbehaves.
fn feed(conn: UnixStream, table: &SharedSaTable) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut input = BufReader::new(conn);
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_LINE_LEN + 1));
    loop {
        line.clear();
        // Bounded read of one line: never more than MAX_LINE_LEN + 1 octets.
        match (&mut input)
            .take(MAX_LINE_LEN as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_LINE_LEN {
            let _ = out.write_all(b"error: line too long\n");
            return;
        }
        let answer = match std::str::from_utf8(&line) {
            Err(_) => "error: not UTF-8".to_owned(),
            Ok(text) => apply(text.trim_end_matches(['\n', '\r']), table),
        };
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Applies one line to the table; the answer line.
fn apply(text: &str, table: &SharedSaTable) -> String {
    match sa_records::parse_line(text) {
        Ok(None) => "ok\n".to_owned(),
        Ok(Some(SaLine::Record(r))) => {
            let id = r.id;
            let prf = r.prf;
            match table.lock().insert(id, r.into()) {
                Ok(()) => {
                    tracing::info!(sa = %id, ?prf, "IKEv2 SA added by the SA socket");
                    "ok\n".to_owned()
                }
                Err(e) => format!("error: {e}\n"),
            }
        }
        Ok(Some(SaLine::Delete(id))) => {
            if table.lock().remove(&id) {
                tracing::info!(sa = %id, "IKEv2 SA deleted by the SA socket");
                "ok\n".to_owned()
            } else {
                format!("error: no SA {id}\n")
            }
        }
        Err(e) => format!("error: {e}\n"),
    }
}

/// The RFC 7717 [`KeySource`]: KeyID → SA → `prf(SK_d, "IPPM")`.
pub struct Ikev2KeySource {
    directories: Vec<Box<dyn Ikev2SaDirectory>>,
    derivation: TokenKeyDerivation,
}

impl fmt::Debug for Ikev2KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d: Vec<String> = self.directories.iter().map(|d| d.describe()).collect();
        f.debug_struct("Ikev2KeySource")
            .field("directories", &d)
            .field("derivation", &self.derivation)
            .finish()
    }
}

impl Ikev2KeySource {
    /// A source asking `directories` in order.
    pub fn new(
        directories: Vec<Box<dyn Ikev2SaDirectory>>,
        derivation: TokenKeyDerivation,
    ) -> Ikev2KeySource {
        Ikev2KeySource {
            directories,
            derivation,
        }
    }
}

impl KeySource for Ikev2KeySource {
    fn secret(&self, key_id: &KeyId, _selection: &Selection) -> Result<SharedSecret, Accept> {
        let id = SaId::from_key_id(key_id);
        for d in &self.directories {
            if let Some(sa) = d.lookup(&id) {
                tracing::info!(sa = %id, prf = ?sa.prf(), from = %d.describe(), "RFC 7717 key taken from the IKEv2 SA");
                return Ok(sa.ippm_key());
            }
        }
        // RFC 7717 §5.3: MUST log, SHOULD answer Accept 6.
        tracing::warn!(
            sa = %id,
            "RFC 7717: no IKEv2 SA with these SPIs; refusing the set-up with Accept 6"
        );
        Err(Accept::Ikev2SaNotFound)
    }

    fn refresh(&mut self, force: bool) {
        for d in &mut self.directories {
            d.refresh(force);
        }
    }

    fn token_key_derivation(&self) -> TokenKeyDerivation {
        self.derivation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ricochet_protocol::modes::{Modes, SecurityMode};
    use std::io::BufRead;

    // strongSwan 5.9.8 golden scenario a (../shared/interop/strongswan-5.9.8).
    const GOLDEN_SPI_I: &str = "30c8551b66ef2dcf";
    const GOLDEN_SPI_R: &str = "0a873f74e95d606b";
    const GOLDEN_SK_D: &str = "b134a565a02bf98abe28560692a174e0d369c3f4dff734be48cf9c39fedee892";
    const GOLDEN_IPPM: &str = "7ade39607d19e8cac7a1e1a356d7549c9364fae430c1c1de669aa0ffeef01b13";

    fn golden_id() -> SaId {
        let mut id = SaId {
            spi_i: [0; 8],
            spi_r: [0; 8],
        };
        hex::decode_to_slice(GOLDEN_SPI_I, &mut id.spi_i).unwrap();
        hex::decode_to_slice(GOLDEN_SPI_R, &mut id.spi_r).unwrap();
        id
    }

    fn selection() -> Selection {
        Selection {
            security: SecurityMode::Authenticated,
            features: Modes::IKEV2_DERIVED,
        }
    }

    #[test]
    fn sk_d_yields_the_golden_rfc7717_secret() {
        let table = SharedSaTable::new();
        table
            .lock()
            .insert(
                golden_id(),
                SaSecret::SkD {
                    prf: Prf::HmacSha256,
                    sk_d: Zeroizing::new(hex::decode(GOLDEN_SK_D).unwrap()),
                },
            )
            .unwrap();
        let source = Ikev2KeySource::new(vec![Box::new(table.clone())], Default::default());
        let key_id = golden_id().key_id();
        let secret = source.secret(&key_id, &selection()).expect("known SA");
        assert_eq!(hex::encode(secret.expose()), GOLDEN_IPPM);
        // The KeyID's octets after the SPIs are ignored (RFC 7717 §5.3).
        let mut noisy = key_id;
        noisy[40] = 0xff;
        assert!(source.secret(&noisy, &selection()).is_ok());
        // Reversed SPIs name another SA.
        let reversed = SaId {
            spi_i: golden_id().spi_r,
            spi_r: golden_id().spi_i,
        };
        assert_eq!(
            source.secret(&reversed.key_id(), &selection()).map(|_| ()),
            Err(Accept::Ikev2SaNotFound)
        );
        // Deleted: refused from now on.
        assert!(table.lock().remove(&golden_id()));
        assert_eq!(
            source.secret(&key_id, &selection()).map(|_| ()),
            Err(Accept::Ikev2SaNotFound)
        );
    }

    fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn sa_file_is_reread_when_it_changes_and_kept_when_broken() {
        let dir = tempfile::tempdir().unwrap();
        let line = format!("{GOLDEN_SPI_I} {GOLDEN_SPI_R} prfsha256 {GOLDEN_IPPM}\n");
        let path = private_file(dir.path(), "sas", &format!("# fed by charon\n{line}"));
        let mut f = SaFile::load(&path).expect("loads");
        assert_eq!(f.len(), 1);
        let got = f.lookup(&golden_id()).expect("SA").ippm_key();
        assert_eq!(hex::encode(got.expose()), GOLDEN_IPPM);

        // Replaced atomically (new inode) by a file without it.
        let other = format!(
            "1111111111111111 2222222222222222 prfsha1 {}\n",
            "33".repeat(20)
        );
        let tmp = private_file(dir.path(), "sas.tmp", &other);
        std::fs::rename(&tmp, &path).unwrap();
        f.refresh(false);
        assert!(f.lookup(&golden_id()).is_none());
        assert_eq!(f.len(), 1);

        // A broken version keeps the previous records.
        let tmp = private_file(dir.path(), "sas.tmp", "garbage\n");
        std::fs::rename(&tmp, &path).unwrap();
        f.refresh(false);
        assert_eq!(f.len(), 1);

        // Loose permissions: refused at load, kept on refresh.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SaFile::load(&path).expect_err("644");
        assert!(e.contains("chmod 600"), "{e}");
        let e = SaFile::load(&private_file(dir.path(), "bad", &format!("{line}x\n")))
            .expect_err("bad line");
        assert!(
            e.contains("line 2") && !e.contains(&GOLDEN_IPPM[..8]),
            "{e}"
        );
    }

    /// A huge broken SA file gives a bounded error message (it is logged on
    /// every re-read), and more SA lines than the table takes are refused
    /// without parsing them.
    #[test]
    fn a_huge_sa_file_gives_a_bounded_error() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = "garbage\n".repeat(20_000);
        let e = SaFile::load(&private_file(dir.path(), "g", &garbage)).expect_err("garbage");
        assert!(
            e.contains("20000 bad line(s)"),
            "{}",
            &e[..e.len().min(300)]
        );
        assert!(e.contains("and 19995 more"), "{}", &e[..e.len().min(300)]);
        assert!(e.len() < 2048, "{} octets", e.len());
        let mut many = String::from("# comment\n\n");
        for i in 0..=MAX_SAS as u64 {
            many.push_str(&format!(
                "{:016x} {:016x} prfsha1 {}\n",
                i + 1,
                i + 1,
                "11".repeat(20)
            ));
        }
        let e = SaFile::load(&private_file(dir.path(), "m", &many)).expect_err("too many");
        assert!(
            e.contains(&format!("{} SA lines, at most {MAX_SAS}", MAX_SAS + 1)),
            "{e}"
        );
    }

    #[test]
    fn sa_socket_feeds_the_table_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ikev2.sock");
        let table = SharedSaTable::new();
        let sock = SaSocket::bind(&path, table.clone()).expect("binds");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let conn = UnixStream::connect(&path).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut w = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        let mut ask = |line: &str| {
            w.write_all(line.as_bytes()).unwrap();
            let mut answer = String::new();
            r.read_line(&mut answer).unwrap();
            answer
        };
        assert_eq!(
            ask(&format!(
                "{GOLDEN_SPI_I} {GOLDEN_SPI_R} prfsha256 {GOLDEN_IPPM}\n"
            )),
            "ok\n"
        );
        assert_eq!(
            hex::encode(sock.lookup(&golden_id()).unwrap().ippm_key().expose()),
            GOLDEN_IPPM
        );
        let bad = ask(&format!(
            "{GOLDEN_SPI_I} {GOLDEN_SPI_R} prfsha1 {GOLDEN_IPPM}\n"
        ));
        assert!(bad.starts_with("error: key has 32 octets"), "{bad}");
        assert!(!bad.contains(&GOLDEN_IPPM[..8]));
        assert_eq!(ask("# a comment\n"), "ok\n");
        assert_eq!(
            ask(&format!("delete {GOLDEN_SPI_I} {GOLDEN_SPI_R}\n")),
            "ok\n"
        );
        assert!(table.lock().is_empty());
        assert!(ask(&format!("delete {GOLDEN_SPI_I} {GOLDEN_SPI_R}\n")).starts_with("error: no SA"));
        let long = ask(&format!("{}\n", "a".repeat(MAX_LINE_LEN + 10)));
        assert_eq!(long, "error: line too long\n");
        // A feeder that stays connected does not hold up the stop.
        let idle = UnixStream::connect(&path).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut w2 = idle.try_clone().unwrap();
        let mut r2 = BufReader::new(idle);
        w2.write_all(b"# hello\n").unwrap();
        let mut answer = String::new();
        r2.read_line(&mut answer).unwrap();
        assert_eq!(answer, "ok\n", "being served");
        let t = std::time::Instant::now();
        drop(sock);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(!path.exists(), "the socket file is removed on drop");
    }
}
