//! `.lock` in a run folder: one vit process writes a run folder at a time, and a run writes
//! only into the folder it locked.

use super::checks::saved_progress;
use super::run_folder_unwritable;
use crate::fsutil::{file_id, io_error_kind, kind_if_not_a_file, FileId, Remedy};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

/// The lock file's name in a run folder.
pub(super) const LOCK_FILE: &str = ".lock";

/// `.lock` in a run folder, locked (an advisory file lock) while a vit process writes
/// the folder: a second process given the same folder (a parallel run, or a resume while
/// the run still trains) is refused instead of mixing its files in. The operating system
/// releases the lock when the process ends, however it ends; the file stays, holding the
/// last holder's PID for the message.
pub(super) struct RunLock {
    _file: std::fs::File,
    /// The lock file and its folder, as they were when locked.
    pub(super) place: LockPlace,
}

impl RunLock {
    /// Locks the run folder `dir`; where it takes no lock file, the error says why and
    /// what to do, as `remedy` says.
    pub(super) fn take(dir: &Path, remedy: Remedy) -> Result<Self> {
        use std::io::{Seek, Write};
        let path = dir.join(LOCK_FILE);
        let not_vits = || {
            anyhow!(
                "{} is already there, and is not a lock vit made (those are files that hold a \
                 process ID): a run in {} would replace it. Move it away",
                path.display(),
                dir.display()
            )
        };
        // vit's lock files are regular files: another `.lock` (a folder, or a pipe, whose
        // read would wait forever) is the user's, and is left as it is.
        if kind_if_not_a_file(&path).is_some() {
            return Err(not_vits());
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| run_folder_unwritable(dir, e, remedy))?;
        lock_or_refuse(&mut file, dir, &path)?;
        match read_lock(&mut file).with_context(|| format!("cannot read {}", path.display()))? {
            LockContent::Vits(_) => {}
            LockContent::Other => return Err(not_vits()),
        }
        // Only for the message a refused process prints.
        let _ = file.set_len(0).and_then(|()| file.rewind());
        let _ = write!(file, "{}", std::process::id());
        let cannot_read = |path: &Path| format!("cannot read {}", path.display());
        let lock = file.metadata().with_context(|| cannot_read(&path))?;
        let folder = std::fs::metadata(dir).with_context(|| cannot_read(dir))?;
        let place = LockPlace {
            lock: file_id(&lock),
            folder: file_id(&folder),
        };
        Ok(Self { _file: file, place })
    }
}

/// Locks `file`, the `.lock` at `path` in the run folder `dir`, or refuses where another
/// vit process holds it (naming its PID) or the file system refuses locks; where it has
/// none, warns and goes on unlocked.
fn lock_or_refuse(file: &mut std::fs::File, dir: &Path, path: &Path) -> Result<()> {
    match try_lock_for_a_moment(file) {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = match read_lock(file) {
                Ok(LockContent::Vits(Some(pid))) => pid.to_string(),
                // Being written at this moment, perhaps.
                _ => "unknown".to_string(),
            };
            bail!(
                "{} is in use by another vit process (PID {pid}): wait for it to end, or \
                 choose another --out",
                dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            eprintln!(
                "warning: the file system of {} has no file locks: nothing keeps a second \
                 vit process out of this run folder",
                dir.display()
            );
            Ok(())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| {
            format!(
                "cannot lock {}: its file system refused a file lock; choose another --out \
                 (on a local disk)",
                path.display()
            )
        }),
    }
}

/// Where a run took its lock: the identities of the `.lock` it locked and of its folder.
/// The run holds the file open, so its inode is not reused: while the folder's `.lock`
/// has it, the folder is the one locked, and any other file there is a new lock, which
/// another run may hold (the folder removed, and a run started in its place).
#[derive(Clone, Copy)]
pub(super) struct LockPlace {
    lock: FileId,
    folder: FileId,
}

impl LockPlace {
    /// Fails unless `dir`'s `.lock` is still the file locked, saying what happened: the
    /// folder was removed (or moved), replaced, or lost its `.lock`. One stat where it
    /// holds, as it does unless one of these happened.
    fn ensure_unchanged(&self, dir: &Path) -> Result<()> {
        let id = |path: &Path| std::fs::metadata(path).ok().map(|m| file_id(&m));
        if id(&dir.join(LOCK_FILE)) == Some(self.lock) {
            return Ok(());
        }
        let shown = dir.display();
        let moved = "(had it been moved, resume it where it is: --out THERE --resume)";
        match id(dir) {
            None => bail!(
                "{shown} was removed while this run trained: the run stops, as its files \
                 have nowhere to go {moved}"
            ),
            Some(folder) if folder == self.folder => bail!(
                "{shown}/{LOCK_FILE} was removed or replaced while this run trained, which \
                 lets another vit process into the folder (another run there now?): this run \
                 stops without writing; once no other run uses the folder, resume it \
                 (--out {shown} --resume)"
            ),
            Some(_) => bail!(
                "{shown} was removed or replaced while this run trained (another run there \
                 now?): this run stops without writing, to keep its files out of that folder \
                 {moved}"
            ),
        }
    }
}

/// Fails unless the run folder `dir` is still the one its run locked, at `place` (None:
/// opened only to read, see [`resume_lock`]): checked before each write as the run trains.
pub(super) fn ensure_folder_locked(dir: &Path, place: Option<&LockPlace>) -> Result<()> {
    match place {
        Some(place) => place.ensure_unchanged(dir),
        None => bail!(
            "cannot write to {}: it was opened without its lock, only to read",
            dir.display()
        ),
    }
}

/// The lock of the run in `dir`, resumed for `epochs` epochs, from the attempt to take it
/// (`taken`); none where a finished run is on a read-only file system: nothing can write
/// there, so no run can come in, and the resume of a finished run writes nothing (it
/// only says that the run finished, and its best models).
pub(super) fn resume_lock(
    dir: &Path,
    epochs: usize,
    taken: Result<RunLock>,
) -> Result<Option<RunLock>> {
    match taken {
        Ok(lock) => Ok(Some(lock)),
        Err(e)
            if io_error_kind(&e) == Some(std::io::ErrorKind::ReadOnlyFilesystem)
                && saved_progress(dir).is_some_and(|saved| saved.epochs_done >= epochs) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// What a `.lock` holds.
enum LockContent {
    /// vit's: its holder's process ID, or none while it is being written.
    Vits(Option<u32>),
    /// Anything else: a file of the user's.
    Other,
}

/// Reads a `.lock` from its start: at most a few bytes, as a process ID is short.
fn read_lock(file: &mut std::fs::File) -> std::io::Result<LockContent> {
    use std::io::{Read, Seek};
    file.rewind()?;
    let mut bytes = Vec::new();
    file.by_ref().take(32).read_to_end(&mut bytes)?;
    let text = bytes.trim_ascii();
    if text.is_empty() {
        return Ok(LockContent::Vits(None));
    }
    let pid = std::str::from_utf8(text)
        .ok()
        .filter(|text| text.bytes().all(|byte| byte.is_ascii_digit()))
        .and_then(|text| text.parse().ok());
    Ok(pid.map_or(LockContent::Other, |pid| LockContent::Vits(Some(pid))))
}

/// `file.try_lock()`, tried again for up to a second while another holds the lock: a lock
/// can outlive its holder for a moment, as a child the holder forks (to run a command)
/// shares it until that child starts its program.
fn try_lock_for_a_moment(file: &std::fs::File) -> Result<(), std::fs::TryLockError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match file.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}
