//! Files and folders: writes that never leave a half-written file behind, and the checks
//! that a folder can take a run (`--out`) or a picture (`-o`) before the work starts.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Extensions of the files vit writes or reads: a missing `--out` ending in one of them
/// was meant as a file (`--out report.csv`), not as the folder it would be made.
const FILE_EXTENSIONS: [&str; 8] = [
    "csv",
    "png",
    "svg",
    "json",
    "txt",
    "safetensors",
    "pth",
    "pt",
];

/// Refuses an `--out` that names a file, lies below one, or is missing and named as a file
/// (`report.csv`): it takes a folder (created if missing).
pub fn ensure_out_is_a_folder(dir: &Path) -> Result<()> {
    let extension = dir.extension().and_then(|extension| extension.to_str());
    if let Some(extension) = extension.filter(|extension| {
        FILE_EXTENSIONS.contains(&extension.to_ascii_lowercase().as_str())
            && dir.symlink_metadata().is_err()
    }) {
        bail!(
            "--out {} is named as a .{extension} file, but --out takes a folder (created if \
             missing), where the files go: name a folder",
            dir.display()
        );
    }
    match file_in_the_way(dir) {
        Some(file) if file == dir => bail!(
            "--out {} is a file; it takes a folder (created if missing)",
            dir.display()
        ),
        Some(file) => bail!(
            "--out {}: {} is a file, not a folder; move it away, or choose another --out",
            dir.display(),
            file.display()
        ),
        None => Ok(()),
    }
}

/// Whether files can be written in `dir` once it is made, checked without making any of
/// its folders (the command may still fail before it writes): no file stands where a
/// folder of it should be, and the nearest of its folders that exists takes a file (a
/// probe file written there and removed, as [`ensure_can_write_in`] does).
pub fn ensure_can_create_in(dir: &Path) -> Result<()> {
    if let Some(file) = file_in_the_way(dir) {
        bail!(
            "{} is a file, not a folder; move it away, or choose another path",
            file.display()
        );
    }
    let existing = dir
        .ancestors()
        .find(|folder| folder.as_os_str().is_empty() || folder.is_dir())
        .unwrap_or(Path::new(""));
    ensure_can_write_in(existing, Remedy::AnotherFolder)
}

/// `dir` as a message shows it: the current folder, "", as ".".
pub fn shown_folder(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

/// Creates the folder `dir` if missing, and proves that files can be written there
/// (permissions, a read-only or full disk) by writing and removing a temporary one of one
/// disk block (an empty file takes no space, so it would pass on a full disk); an error
/// ends with what to do, as `remedy` says.
pub fn ensure_can_write_in(dir: &Path, remedy: Remedy) -> Result<()> {
    let shown = shown_folder(dir);
    create_folder(shown)?;
    let probe = temporary_sibling(&shown.join(WRITE_CHECK));
    let written = std::fs::write(&probe, [0u8; 4096]);
    // A write cut short by a full disk may still have created the file.
    let _ = std::fs::remove_file(&probe);
    written.map_err(|error| {
        let failed = format!("cannot write to {}", shown.display());
        unwritable(error, failed, remedy)
    })
}

/// The file that proves a folder writable, as a temporary (removed at once, or as stale).
const WRITE_CHECK: &str = "write-check";

/// What to do about a folder that took no file, besides freeing space on its disk or
/// making it writable.
#[derive(Clone, Copy)]
pub enum Remedy<'a> {
    /// Choose another folder: nothing there is needed yet (a command's output).
    AnotherFolder,
    /// Resume the run in this folder (`--out` it, with `--resume`), which keeps the state
    /// the run saved last.
    ResumeRun(&'a Path),
}

/// `error`, from a folder that did not take a file, under `failed` ("cannot write to
/// DIR") and why, from the OS error in its chain: a full disk, a used-up quota or a
/// read-only file system by name, so that none of them reads as a matter of permissions;
/// then what to do, as `remedy` says.
pub fn unwritable(
    error: impl Into<anyhow::Error>,
    failed: String,
    remedy: Remedy,
) -> anyhow::Error {
    use std::io::ErrorKind;
    let error = error.into();
    let kind = io_error_kind(&error);
    let once_freed = match remedy {
        Remedy::AnotherFolder => "or choose a folder on another disk".to_string(),
        Remedy::ResumeRun(run) => format!("then {}", resume_from_its_last_state(run)),
    };
    let why = match (kind, remedy) {
        (Some(ErrorKind::StorageFull), _) => {
            format!(": the disk is full; free some space on it, {once_freed}")
        }
        (Some(ErrorKind::QuotaExceeded), _) => {
            format!(": your disk quota is used up; free some space, {once_freed}")
        }
        (Some(ErrorKind::ReadOnlyFilesystem), Remedy::AnotherFolder) => {
            ": its file system is read-only; choose a folder on another one".to_string()
        }
        (Some(ErrorKind::ReadOnlyFilesystem), Remedy::ResumeRun(run)) => format!(
            ": its file system is read-only; make it writable, then {}; or copy the folder \
             to another disk and resume the copy",
            resume_from_its_last_state(run)
        ),
        (_, Remedy::AnotherFolder) => " (is it writable? If not, choose another folder)".into(),
        (_, Remedy::ResumeRun(run)) => format!(
            " (is it writable? Once it is, {})",
            resume_from_its_last_state(run)
        ),
    };
    error.context(format!("{failed}{why}"))
}

/// The kind of the OS error in `error`'s chain, if any.
pub fn io_error_kind(error: &anyhow::Error) -> Option<std::io::ErrorKind> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
}

/// How to resume the run in `run` from the state its folder keeps, for a message.
fn resume_from_its_last_state(run: &Path) -> String {
    format!(
        "resume the run (--out {} --resume): its folder keeps the state it saved last",
        run.display()
    )
}

/// Creates the folder `dir` and the folders above it that are missing, with an error that
/// says what stood in the way: a file where one of those folders should be, or a folder
/// that cannot be written.
pub fn create_folder(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|error| {
        if let Some(file) = file_in_the_way(dir) {
            return anyhow::anyhow!(
                "cannot create the folder {}: {} is a file, not a folder; move it away, or \
                 choose another path",
                dir.display(),
                file.display()
            );
        }
        if let Some((link, target)) = dangling_link(dir) {
            return anyhow::anyhow!(
                "cannot create the folder {}: {} is a symbolic link to {}, which does not \
                 exist; create that, or choose another path",
                dir.display(),
                link.display(),
                target.display()
            );
        }
        unwritable(
            error,
            format!("cannot create {}", dir.display()),
            Remedy::AnotherFolder,
        )
    })
}

/// The symbolic link to nothing that stands where `path` or a folder above it should be a
/// folder, if any, with its target: create_dir_all finds its name taken.
fn dangling_link(path: &Path) -> Option<(&Path, PathBuf)> {
    path.ancestors().find_map(|path| {
        let target = std::fs::read_link(path).ok()?;
        (!path.exists()).then_some((path, target))
    })
}

/// The file that stands where `path` or a folder above it should be a folder, if any.
pub fn file_in_the_way(path: &Path) -> Option<&Path> {
    path.ancestors()
        .find(|path| !path.as_os_str().is_empty() && path.exists() && !path.is_dir())
}

/// What `path` is where it is there but no regular file (links followed): "a folder", "a
/// named pipe (FIFO)", "a socket", "a character device" (such as /dev/zero) or "a block
/// device". Such a path is refused, or skipped, before it is opened: a pipe's open waits
/// for a writer forever, and /dev/zero's read never ends. None for a regular file, and
/// for a path that cannot be looked at (missing, a broken link), whose open says why.
pub fn kind_if_not_a_file(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let file_type = std::fs::metadata(path).ok()?.file_type();
    let kind = if file_type.is_file() {
        return None;
    } else if file_type.is_dir() {
        "a folder"
    } else if file_type.is_fifo() {
        "a named pipe (FIFO)"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else {
        "a special file"
    };
    Some(kind)
}

/// The folder `path` names its file in: its parent, `.` for a bare name.
pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so
/// a crash or kill at any moment leaves either the old file or the new one, never a mix.
/// The temporaries of earlier writes of `path` killed midway go first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(name) = path.file_name().and_then(|name| name.to_str()) {
        remove_stale_temporaries(folder_of(path), &[name]);
    }
    let tmp = temporary_sibling(path);
    let result = (|| {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        lock_temporary(&file);
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the folder's entry is on disk.
        match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            Some(dir) => std::fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Appends `bytes` to the file at `path` and syncs them to the disk. Where either fails (a
/// full disk), the file is cut back to its length before, so that no part of `bytes` is
/// left: a line cut short would read as a line of someone else's.
pub fn append_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    append_or_cut_back(path, |file| {
        use std::io::Write;
        file.write_all(bytes)?;
        file.sync_data()
    })
}

/// [`append_whole`] with the appending (and syncing) done by `append`.
fn append_or_cut_back(
    path: &Path,
    append: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    let length = file.metadata()?.len();
    let appended = append(&mut file);
    if appended.is_err() {
        // Shrinking a file takes no space, so this works on the disk that is full.
        let _ = file.set_len(length).and_then(|()| file.sync_data());
    }
    appended
}

/// Between a temporary file's name and its writer's PID.
const TEMPORARY_TAG: &str = ".tmp-";

/// `dir/.name.tmp-PID`: hidden, in the same folder (so the rename is atomic), and unique
/// per process.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{TEMPORARY_TAG}{}", std::process::id()))
}

/// What the temporary file called `name` stands in for, and the PID of the process that
/// wrote it, if it is one.
fn temporary_writer(name: &str) -> Option<(&str, u32)> {
    let (of, pid) = name.strip_prefix('.')?.rsplit_once(TEMPORARY_TAG)?;
    Some((of, pid.parse().ok()?))
}

/// Whether process `pid` is known to have ended: `/proc` has no entry for it. Without
/// `/proc` nothing is known, and nothing is taken for ended.
fn process_ended(pid: u32) -> bool {
    Path::new("/proc/self").exists()
        && pid != std::process::id()
        && !Path::new("/proc").join(pid.to_string()).exists()
}

/// Locks `file`, a temporary this process writes (or the folder it unpacks into), until it
/// and every handle cloned from it are closed: an exclusive lock (`File::try_lock`, flock
/// on Linux, as the run folder's lock), which the kernel drops when the process ends,
/// killed or not. A vit that cannot see this process (in another container, or on another
/// host sharing the folder) takes its PID for ended, and the lock is what keeps its sweep
/// off. Best effort: a file system without locks goes without.
pub fn lock_temporary(file: &std::fs::File) {
    let _ = file.try_lock();
}

/// How long a temporary that cannot be locked (a file system without locks, or a folder on
/// NFS) is taken for its writer's after its last change: a live download changes its file
/// all the time, and an unpack takes seconds.
const UNLOCKABLE_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether the temporary at `path`, written by process `pid`, is abandoned: its process has
/// ended as far as this one can see, and no process holds its [`lock_temporary`] lock.
fn writer_ended(path: &Path, pid: u32) -> bool {
    if !process_ended(pid) {
        return false;
    }
    match locked_by_a_writer(path) {
        Some(locked) => !locked,
        None => path
            .symlink_metadata()
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|modified| {
                modified
                    .elapsed()
                    .is_ok_and(|age| age > UNLOCKABLE_KEPT_FOR)
            }),
    }
}

/// Whether a process holds the [`lock_temporary`] lock on `path`; None where that cannot
/// be told (it cannot be opened, or its file system has no locks).
fn locked_by_a_writer(path: &Path) -> Option<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    // For writing where it can be (NFS takes an exclusive flock only on such a file), and
    // non-blocking (a FIFO by a temporary's name would wait for a writer).
    let open = |write| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    };
    let file = open(true).or_else(|_| open(false)).ok()?;
    // A lock taken here goes with `file` at the return.
    match file.try_lock() {
        Ok(()) => Some(false),
        Err(std::fs::TryLockError::WouldBlock) => Some(true),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// Removes from `dir` the temporaries of `temporary_sibling` for the files or folders
/// called `names` (files of `write_atomic`, downloads and unpacked folders) whose writer
/// has ended (killed mid-write; see `writer_ended`): hidden, up to a dataset's size each,
/// and never read. Only those of names vit writes there: a user's file that merely looks
/// alike is kept. Best effort: one it cannot remove is a warning.
pub fn remove_stale_temporaries(dir: &Path, names: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.flatten().map(|entry| entry.path()) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let stale = temporary_writer(&name).is_some_and(|(of, pid)| {
            (names.contains(&of) || of == WRITE_CHECK) && writer_ended(&path, pid)
        });
        if !stale {
            continue;
        }
        if let Err(e) = remove_file_or_folder(&path) {
            eprintln!("warning: cannot remove {}: {e}", path.display());
        }
    }
}

/// Removes `path`, a file or a folder with everything in it.
pub fn remove_file_or_folder(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Files written by `write_atomic` on a thread, one batch in flight, so that the training
/// loop goes on while the disk syncs (a checkpoint is ~13 MB, the resume state up to ~50).
/// Files are written in the order given and batches in the order started, so a kill at any
/// moment leaves what a synchronous writer would have: earlier files new, later ones old.
#[derive(Default)]
pub struct BackgroundWrites {
    in_flight: Option<std::thread::JoinHandle<Result<()>>>,
    /// Called before each file is written (see [`Self::checked_by`]).
    before_each: Option<std::sync::Arc<WriteCheck>>,
}

/// A check that files may still be written where they go (see
/// [`BackgroundWrites::checked_by`]).
type WriteCheck = dyn Fn() -> Result<()> + Send + Sync;

impl BackgroundWrites {
    /// Writes that call `check` before each file: its error (the folder they go to was
    /// removed, say) stops the batch there, as a failed write does.
    pub fn checked_by(check: impl Fn() -> Result<()> + Send + Sync + 'static) -> Self {
        Self {
            in_flight: None,
            before_each: Some(std::sync::Arc::new(check)),
        }
    }

    /// Waits for the batch in flight (returning its error, if any), then starts writing
    /// `files` (path, contents) on a thread.
    pub fn start(&mut self, files: Vec<(PathBuf, Vec<u8>)>) -> Result<()> {
        self.finish()?;
        let before_each = self.before_each.clone();
        self.in_flight = Some(std::thread::spawn(move || {
            files.iter().try_for_each(|(path, bytes)| {
                if let Some(check) = &before_each {
                    check()?;
                }
                write_atomic(path, bytes)
            })
        }));
        Ok(())
    }

    /// The error of the batch in flight if it has already failed, without waiting: lets
    /// a long epoch stop at once on a full disk instead of at its end.
    pub fn check(&mut self) -> Result<()> {
        match &self.in_flight {
            Some(thread) if thread.is_finished() => self.finish(),
            _ => Ok(()),
        }
    }

    /// Waits until every file started is on disk; the first error of the batch in flight.
    pub fn finish(&mut self) -> Result<()> {
        match self.in_flight.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the file-writing thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundWrites {
    /// Leaving early (an error elsewhere) still completes the writes already started.
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("error: {e:#}");
        }
    }
}

/// `path` as shown in a message about data that is missing: a relative path says which
/// folder it is relative to ("data/x (in the current folder, /home/me)"), since the
/// default `--data-dir data` is read from the folder vit runs in; one starting with a `~`
/// the shell left as it is (`--data-dir=~/data`) says so.
pub fn shown_where_missing(path: &Path) -> String {
    if path.starts_with("~") {
        return format!(
            "{} (the shell left its ~ as it is, as after `=`: give the folder apart from its \
             flag, `--data-dir ~/...`, or write $HOME)",
            path.display()
        );
    }
    match (path.is_relative(), std::env::current_dir()) {
        (true, Ok(here)) => format!(
            "{} (in the current folder, {})",
            path.display(),
            here.display()
        ),
        _ => path.display().to_string(),
    }
}

/// Whether nothing is at `path`, not even a link (a dangling one is something there): a
/// path that cannot be checked (a permission) is not called missing.
pub fn is_missing(path: &Path) -> bool {
    (path.symlink_metadata()).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// Whether `a` and `b` name one existing file (through links, `..` or another spelling).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => file_id(&a) == file_id(&b),
        _ => false,
    }
}

/// A file's identity on disk: its device and inode.
pub type FileId = (u64, u64);

/// The identity of the file `metadata` describes.
pub fn file_id(metadata: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino())
}

#[cfg(test)]
mod tests {
    use super::{
        append_or_cut_back, append_whole, ensure_can_write_in, kind_if_not_a_file,
        temporary_sibling, unwritable, Remedy, WRITE_CHECK,
    };
    use crate::temp_dir::TempDir;
    use anyhow::Context;
    use std::path::Path;

    /// An append that fails partway (a full disk) leaves the file as it was, not with a
    /// line cut short, and the next append follows the lines before.
    #[test]
    fn a_failed_append_leaves_the_file_as_it_was() {
        use std::io::Write;
        let dir = TempDir::new("append");
        let path = dir.join("metrics.csv");
        let before = "epoch,lr\n1,0.5\n";
        std::fs::write(&path, before).unwrap();
        let failed = append_or_cut_back(&path, |file| {
            file.write_all(b"2,0.")?;
            Err(std::io::ErrorKind::StorageFull.into())
        });
        assert_eq!(failed.unwrap_err().kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        append_whole(&path, b"2,0.25\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{before}2,0.25\n")
        );
    }

    /// A folder on a full disk (here the write check's file leads to /dev/full) is refused
    /// as such: the check writes a disk block, since an empty file takes no space and
    /// would pass. Its file goes either way.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_folder_on_a_full_disk_fails_the_write_check() {
        let dir = TempDir::new("full-disk");
        let probe = temporary_sibling(&dir.join(WRITE_CHECK));
        std::os::unix::fs::symlink("/dev/full", &probe).unwrap();
        let error = format!(
            "{:#}",
            ensure_can_write_in(&dir, Remedy::AnotherFolder).unwrap_err()
        );
        assert!(
            error.starts_with(&format!(
                "cannot write to {}: the disk is full; free some space on it",
                dir.display()
            )),
            "{error}"
        );
        assert!(probe.symlink_metadata().is_err());
    }

    /// A socket (a server's, left in a folder) is named as one, as the reason it is no
    /// file to read.
    #[test]
    fn a_socket_is_named_as_one() {
        let dir = TempDir::new("socket");
        let path = dir.join("server.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(kind_if_not_a_file(&path), Some("a socket"));
    }

    /// The OS errors a folder gives when it takes no more files (Linux's numbers), as
    /// `write_atomic` passes them on: each is named, only the others ask about permissions,
    /// and each says what to do: for a command's output, choose another folder; for a run
    /// folder, resume the run once the folder takes files again.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_full_disk_is_not_called_a_permissions_problem() {
        let resume =
            "resume the run (--out runs/a --resume): its folder keeps the state it saved last";
        for (errno, another_folder, resume_run) in [
            (
                28,
                ": the disk is full; free some space on it, or choose a folder on another disk",
                format!(": the disk is full; free some space on it, then {resume}"),
            ),
            (
                122,
                ": your disk quota is used up; free some space, or choose a folder on another \
                 disk",
                format!(": your disk quota is used up; free some space, then {resume}"),
            ),
            (
                30,
                ": its file system is read-only; choose a folder on another one",
                format!(
                    ": its file system is read-only; make it writable, then {resume}; or copy \
                     the folder to another disk and resume the copy"
                ),
            ),
            (
                13,
                " (is it writable? If not, choose another folder)",
                format!(" (is it writable? Once it is, {resume})"),
            ),
        ] {
            for (remedy, why) in [
                (Remedy::AnotherFolder, another_folder.to_string()),
                (Remedy::ResumeRun(Path::new("runs/a")), resume_run),
            ] {
                let write: anyhow::Result<()> = Err(std::io::Error::from_raw_os_error(errno))
                    .context("cannot write runs/a/config.json");
                let failed = "cannot write to runs/a".to_string();
                let message = format!("{:#}", unwritable(write.unwrap_err(), failed, remedy));
                let expected =
                    format!("cannot write to runs/a{why}: cannot write runs/a/config.json: ");
                assert!(message.starts_with(&expected), "errno {errno}: {message}");
            }
        }
    }
}
