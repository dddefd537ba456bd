//! `vit download`: fetch a CIFAR archive (HTTP(S) or a local copy), check its size and MD5,
//! and unpack it into the data folder, atomically.
//!
//! The archive is streamed to a hidden temporary file beside the data (hashing as it goes),
//! verified, unpacked into a hidden temporary folder, and only then is the dataset folder
//! renamed into place. Any failure, and Ctrl-C, removes the temporaries, so the data folder
//! holds either the complete dataset or nothing of it, even after a kill (the unpacked
//! files are not synced, so a power cut may still leave them short: the readers check
//! every file's size); temporaries left by a killed run are removed by the next one. The
//! folders the download created for the data folder go too, where still empty.

use crate::fsutil::{
    create_folder, lock_temporary, remove_file_or_folder, remove_stale_temporaries,
    temporary_sibling,
};
use crate::listing::noun_for;
use anyhow::{anyhow, bail, ensure, Context, Result};
use md5::{Digest, Md5};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Where the official archives live.
pub const OFFICIAL_URL: &str = "https://www.cs.toronto.edu/~kriz/";

/// What an archive must be: its file name, size and MD5, and the folder it unpacks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveSpec<'a> {
    /// Appended to a base URL (one ending in `/`) or a local folder.
    pub file_name: &'a str,
    /// The one top-level folder every entry lies under; it becomes `DATA_DIR/folder`.
    pub folder: &'a str,
    pub size: u64,
    /// Lowercase hex.
    pub md5: &'a str,
}

pub const CIFAR10_ARCHIVE: ArchiveSpec<'static> = ArchiveSpec {
    file_name: "cifar-10-binary.tar.gz",
    folder: super::cifar::CIFAR10_FOLDER,
    size: 170_052_171,
    md5: "c32a1d4ab5d03f1284b67883e8d87530",
};

pub const CIFAR100_ARCHIVE: ArchiveSpec<'static> = ArchiveSpec {
    file_name: "cifar-100-binary.tar.gz",
    folder: super::cifar::CIFAR100_FOLDER,
    size: 168_513_733,
    md5: "03b5dce01913d631647c71ecec9e9cb8",
};

/// What [`fetch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// `DATA_DIR/folder` already existed; nothing was fetched.
    AlreadyPresent(PathBuf),
    /// The archive was fetched, verified and unpacked to this folder.
    Unpacked(PathBuf),
}

/// Fetches `spec`'s archive from `source` into `data_dir/spec.folder`, unless that folder
/// exists. `source` is an `http(s)://` URL (a base ending in `/` gets the file name
/// appended), a `file://` URL, a local archive, or a local folder holding the archive.
pub fn fetch(source: &str, data_dir: &Path, spec: &ArchiveSpec) -> Result<Fetched> {
    let target = data_dir.join(spec.folder);
    if target.is_dir() {
        return Ok(Fetched::AlreadyPresent(target));
    }
    // This dataset's folder, or the other CIFAR's: a copy unpacked there would be nested.
    for folder in [CIFAR10_ARCHIVE.folder, CIFAR100_ARCHIVE.folder] {
        if let Some(advice) = super::cifar::dataset_folder_given(data_dir, folder) {
            bail!("{} is a dataset's folder: {advice}", data_dir.display());
        }
    }
    // ftp:// and the like would be read as a file's path, and reported missing; as would
    // file://HOST/PATH, as the path HOST/PATH.
    if let Some((scheme, rest)) = url_parts(source) {
        ensure!(
            matches!(scheme.as_str(), "http" | "https" | "file"),
            "cannot fetch {source}: vit fetches http:// and https:// URLs, file:// URLs and \
             paths, not {scheme}://; fetch {} another way and pass its path with --from (or \
             in VIT_DATA_MIRROR)",
            spec.file_name
        );
        let (host, _) = host_and_path(rest);
        ensure!(
            scheme != "file" || host.is_empty() || host.eq_ignore_ascii_case("localhost"),
            "cannot fetch {source}: a file:// URL names a file of this machine \
             (file:///PATH), not of {host}; copy {} here and pass its path with --from (or \
             in VIT_DATA_MIRROR)",
            spec.file_name
        );
    }
    // Found now, not after the download (as if it had appeared while unpacking).
    ensure!(
        target.symlink_metadata().is_err(),
        "{} is there but is not a folder (a file, or a link to nothing): move it away, then \
         run this again",
        target.display()
    );
    remove_temporaries_on_interrupt()?;
    let created = CreatedFolders::create(data_dir)?;
    remove_stale_temporaries(data_dir, &[spec.file_name, spec.folder]);

    let mut archive = TempPath::new(temporary_sibling(&data_dir.join(spec.file_name)));
    let source = resolve_source(source, spec);
    download(&source, &mut archive, spec)?;

    let mut unpack_dir = TempPath::new(temporary_sibling(&data_dir.join(spec.folder)));
    unpack(&archive.path, &mut unpack_dir, spec).with_context(|| {
        format!(
            "cannot unpack {source}; nothing was written to {}",
            data_dir.display()
        )
    })?;
    drop(archive);
    let unpacked = unpack_dir.path.join(spec.folder);
    if target.exists() {
        bail!(
            "{} appeared while unpacking (another `vit download`?)",
            target.display()
        );
    }
    std::fs::rename(&unpacked, &target)
        .with_context(|| format!("cannot move {} to {}", unpacked.display(), target.display()))?;
    created.keep();
    Ok(Fetched::Unpacked(target))
}

/// The URL or path the archive is read from.
fn resolve_source(source: &str, spec: &ArchiveSpec) -> String {
    if is_url(source) {
        if source.ends_with('/') {
            format!("{source}{}", spec.file_name)
        } else {
            source.to_string()
        }
    } else {
        let path = local_path(source);
        if path.is_dir() {
            path.join(spec.file_name).display().to_string()
        } else {
            path.display().to_string()
        }
    }
}

/// The file a local `source` names: a path, or a `file://` URL (`file:///data/a%20b.tar.gz`,
/// `file://localhost/...`, any host taken for this machine), whose `%XX` escapes are
/// decoded.
fn local_path(source: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let Some((_, url_path)) = url_parts(source).filter(|(scheme, _)| scheme == "file") else {
        return PathBuf::from(source);
    };
    // After a host, which `fetch` has checked is this machine.
    let (_, url_path) = host_and_path(url_path);
    let mut decoded = Vec::with_capacity(url_path.len());
    let mut rest = url_path.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        let escaped = (byte == b'%')
            .then(|| tail.get(..2))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(value) => {
                decoded.push(value);
                rest = &tail[2..];
            }
            None => {
                decoded.push(byte);
                rest = tail;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(decoded))
}

/// What follows a URL's `://` (see [`url_parts`]) split into its host and its path, which
/// starts at the first `/` ("" without one).
fn host_and_path(rest: &str) -> (&str, &str) {
    rest.split_at(rest.find('/').unwrap_or(rest.len()))
}

fn is_url(source: &str) -> bool {
    url_parts(source).is_some_and(|(scheme, _)| scheme == "http" || scheme == "https")
}

/// The scheme of the URL `source` (lowercased: `http`, `file`, ...) and what follows its
/// `://`; None where `source` is a path. A scheme is a letter, then letters, digits, `+`,
/// `-` or `.` (RFC 3986), so `./a://b` is a path.
fn url_parts(source: &str) -> Option<(String, &str)> {
    let (scheme, rest) = source.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    valid.then(|| (scheme.to_ascii_lowercase(), rest))
}

/// A temporary file or folder, removed when dropped (after success or failure alike), or
/// by the Ctrl-C handler.
struct TempPath {
    path: PathBuf,
    /// The file or folder, open and locked once made, until it is removed (see
    /// [`TempPath::hold`]).
    lock: Option<File>,
}

/// The temporaries that exist now, for the Ctrl-C handler: ending the process skips drops.
static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

impl TempPath {
    fn new(path: PathBuf) -> Self {
        lock(&TEMPORARIES).push(path.clone());
        Self { path, lock: None }
    }

    /// Locks `file`, the temporary just made (see [`lock_temporary`]), until it is removed:
    /// another vit's sweep leaves it alone for the whole download and unpack.
    fn hold(&mut self, file: &File) -> std::io::Result<()> {
        lock_temporary(file);
        self.lock = Some(file.try_clone()?);
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        lock(&TEMPORARIES).retain(|path| *path != self.path);
        // Removed while still locked: `lock` closes after this.
        let _ = remove_file_or_folder(&self.path);
    }
}

/// The folders a download created to hold its data folder (that one included), deepest
/// first, listed in [`CREATED_FOLDERS`]: removed where still empty when the guard drops
/// (the download failed), or by the Ctrl-C handler, so that a failed download leaves no
/// empty folder behind. A folder that was there before is never listed.
struct CreatedFolders(Vec<PathBuf>);

/// The folders of the downloads in progress (one in `vit download`; a test runs several at
/// once), which the Ctrl-C handler reads; each guard takes out its own.
static CREATED_FOLDERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

impl CreatedFolders {
    /// Creates `dir` and the folders above it that are missing.
    fn create(dir: &Path) -> Result<Self> {
        let folders: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|folder| !folder.as_os_str().is_empty())
            .take_while(|folder| folder.symlink_metadata().is_err())
            .map(Path::to_path_buf)
            .collect();
        lock(&CREATED_FOLDERS).extend(folders.iter().cloned());
        // Made before the folders are, so that any created before a failure go.
        let created = Self(folders);
        create_folder(dir)?;
        Ok(created)
    }

    /// Leaves the folders where they are: they hold the dataset now.
    fn keep(mut self) {
        self.unlist();
        self.0.clear();
    }

    /// Takes this download's folders out of [`CREATED_FOLDERS`].
    fn unlist(&self) {
        lock(&CREATED_FOLDERS).retain(|folder| !self.0.contains(folder));
    }
}

impl Drop for CreatedFolders {
    fn drop(&mut self) {
        self.unlist();
        remove_empty_folders(&self.0);
    }
}

/// Removes each of `folders` that is empty (one with anything in it stays), in order.
fn remove_empty_folders(folders: &[PathBuf]) {
    for folder in folders {
        let _ = std::fs::remove_dir(folder);
    }
}

fn lock(paths: &'static Mutex<Vec<PathBuf>>) -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A list of paths stays usable after a panic elsewhere.
    paths
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes Ctrl-C (or SIGTERM, SIGHUP) remove the temporaries of a download in progress,
/// and the folders it created where empty, then end the process with status 130.
/// Installed once per process.
fn remove_temporaries_on_interrupt() -> Result<()> {
    static INSTALLED: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        crate::runtime::on_interrupt(|| {
            let temporaries: Vec<PathBuf> = lock(&TEMPORARIES).drain(..).collect();
            // The unpacking goes on while this runs: a folder it just added a file to is
            // not empty at the first try.
            let left: Vec<&PathBuf> = temporaries
                .iter()
                .filter(|path| {
                    !(0..5).any(|_| remove_file_or_folder(path).is_ok() || !path.exists())
                })
                .collect();
            remove_empty_folders(&lock(&CREATED_FOLDERS));
            let message = match left.as_slice() {
                [] if temporaries.is_empty() => String::new(),
                [] => "\nInterrupted: the partial download is removed\n".to_string(),
                _ => format!(
                    "\nInterrupted: cannot remove {left:?} now; the next `vit download` does\n"
                ),
            };
            let _ = std::io::stderr().write_all(message.as_bytes());
            crate::runtime::quit_at_once(130);
        })
        .map_err(|e| format!("{e:#}"))
    });
    installed.clone().map_err(|e| anyhow::anyhow!(e))
}

/// Streams `source` into the file `dest`, with a progress bar, checking size and MD5. On
/// any error the file is left for `dest` to remove.
fn download(source: &str, dest: &mut TempPath, spec: &ArchiveSpec) -> Result<()> {
    let (reader, announced) = open_source(source, spec)?;
    if let Some(length) = announced {
        check_announced_size(source, length, spec)?;
    }
    copy_and_verify(reader, source, dest, spec)
}

/// A reader of `source` (a URL or a file), and the size its server or file system gives.
fn open_source(source: &str, spec: &ArchiveSpec) -> Result<(Box<dyn Read>, Option<u64>)> {
    if is_url(source) {
        open_url(source, spec)
    } else {
        open_file(source)
    }
}

/// What to do where `url` (of the archive `file_name`) gave no answer, and where its
/// server refused (an HTTP error status).
struct FetchAdvice {
    no_answer: String,
    refused: String,
}

/// A mirror the user named may be at fault; the official URL, only the network.
fn fetch_advice(url: &str, file_name: &str) -> FetchAdvice {
    if url.starts_with(OFFICIAL_URL) {
        let instead = format!(
            "fetch {file_name} elsewhere and pass its path (or a mirror's URL) with --from (or \
             in VIT_DATA_MIRROR, which make train passes on)"
        );
        FetchAdvice {
            no_answer: format!("check the network, or {instead}"),
            refused: instead,
        }
    } else {
        let given = "the URL given with --from (or in VIT_DATA_MIRROR)";
        let instead = format!(
            "pass there the path of a copy of {file_name} fetched elsewhere, or another \
             mirror's URL"
        );
        FetchAdvice {
            no_answer: format!("check the network and {given}, or {instead}"),
            refused: format!("check {given}, or {instead}"),
        }
    }
}

/// A reader of the body of `url`'s answer, and its Content-Length.
fn open_url(url: &str, spec: &ArchiveSpec) -> Result<(Box<dyn Read>, Option<u64>)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // A server that stops sending mid-transfer fails the download instead of
        // leaving it waiting forever.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into();
    let advice = fetch_advice(url, spec.file_name);
    // Byte for byte: no transparent gzip decoding of the .tar.gz by ureq.
    let response = agent
        .get(url)
        .header("accept-encoding", "identity")
        .call()
        .map_err(|error| match error {
            // The server answered: the network is fine, the URL is not.
            ureq::Error::StatusCode(status) => anyhow!(
                "cannot fetch {url}: the server answered HTTP {status}, so it does not \
                 serve {} there; {}",
                spec.file_name,
                advice.refused
            ),
            error => anyhow::Error::new(error)
                .context(format!("cannot fetch {url}: {}", advice.no_answer)),
        })?;
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    Ok((Box::new(response.into_body().into_reader()), length))
}

/// A reader of the file at `path`, and its size where it is a regular file.
fn open_file(path: &str) -> Result<(Box<dyn Read>, Option<u64>)> {
    // Only --from (or VIT_DATA_MIRROR, its default) names a local file: say which to mend.
    let file = File::open(path).with_context(|| {
        format!(
            "cannot open {path}, the archive given with --from or in VIT_DATA_MIRROR: \
             check the path, or leave both unset to fetch from the official site"
        )
    })?;
    // A pipe (`--from /dev/stdin`) has no length to check before reading.
    let length = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    Ok((Box::new(file), length))
}

/// Refuses a source whose announced `length` is not the archive's, before any transfer.
fn check_announced_size(source: &str, length: u64, spec: &ArchiveSpec) -> Result<()> {
    if length == spec.size {
        return Ok(());
    }
    let path = source.split(['?', '#']).next().unwrap_or(source);
    let last_segment = path.rsplit('/').next().unwrap_or(path);
    let other_archive = [CIFAR10_ARCHIVE, CIFAR100_ARCHIVE]
        .into_iter()
        .find(|other| other.size == length && other.file_name != spec.file_name);
    let hint = if let Some(other) = other_archive {
        format!(
            " (it is the size of {}, the other CIFAR's)",
            other.file_name
        )
    } else if is_url(source) && (!last_segment.contains('.') || names_a_host(path)) {
        // A mirror's folder given without its final `/` names the folder, not the archive.
        format!(
            " (for a mirror's folder, end its URL with / and vit appends {})",
            spec.file_name
        )
    } else {
        String::new()
    };
    bail!(
        "{source} is {length} {}, but the official {} is {} bytes: wrong file or a bad mirror{hint}",
        noun_for(length, "byte"),
        spec.file_name,
        spec.size
    );
}

/// Whether `url` names a server alone (`http://example.org`), whose host has dots that a
/// file name would.
fn names_a_host(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(_, rest)| !rest.contains('/'))
}

/// Copies `reader` (of `source`) into the file `dest` with a progress bar, then checks the
/// size and the MD5 of what came.
fn copy_and_verify(
    mut reader: Box<dyn Read>,
    source: &str,
    dest: &mut TempPath,
    spec: &ArchiveSpec,
) -> Result<()> {
    let bar = progress_bar(spec);
    let mut out = File::create(&dest.path)
        .and_then(|file| dest.hold(&file).map(|()| file))
        .with_context(|| format!("cannot create {}", dest.path.display()))?;
    let dest = &dest.path;
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut received: u64 = 0;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                return Err(e).with_context(|| {
                    format!(
                        "transfer of {source} failed after {received} {}; removed the partial \
                         file",
                        noun_for(received, "byte")
                    )
                });
            }
        };
        received += n as u64;
        if received > spec.size {
            bar.abandon();
            bail!(
                "{source} is larger than the {} bytes of {}: wrong file; removed it",
                spec.size,
                spec.file_name
            );
        }
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n])
            .with_context(|| format!("cannot write {}", dest.display()))?;
        bar.inc(n as u64);
    }
    out.sync_all()
        .with_context(|| format!("cannot write {}", dest.display()))?;
    bar.finish_and_clear();
    if received != spec.size {
        bail!(
            "incomplete transfer of {source}: got {received} of {} bytes (interrupted or \
             truncated); removed the partial file, run the command again",
            spec.size
        );
    }
    let digest = hex_digest(hasher);
    if !digest.eq_ignore_ascii_case(spec.md5) {
        let what_now = if is_url(source) {
            "removed the download (try again, or another mirror with --from)"
        } else {
            "it is not the official archive, or a damaged copy: fetch it again"
        };
        bail!(
            "checksum mismatch for {source}: MD5 {digest}, expected {}; {what_now}",
            spec.md5
        );
    }
    Ok(())
}

/// The download's progress bar: the archive's name, its bytes so far of its size, the
/// speed and the time left.
fn progress_bar(spec: &ArchiveSpec) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(spec.size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(spec.file_name.to_string());
    bar
}

/// Unpacks the .tar.gz `archive` into the folder `dir` (created here). Only directories and
/// regular files under `spec.folder/` are accepted; an entry with `..`, an absolute path, a
/// link or a device is refused, and so is one outside `spec.folder/`.
fn unpack(archive: &Path, dir: &mut TempPath, spec: &ArchiveSpec) -> Result<()> {
    std::fs::create_dir(&dir.path)
        .and_then(|()| dir.hold(&File::open(&dir.path)?))
        .with_context(|| format!("cannot create {}", dir.path.display()))?;
    let dir = &dir.path;
    let file = File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    for entry in tar.entries().context("not a tar.gz archive")? {
        let mut entry = entry.context("corrupt archive")?;
        let raw = entry
            .path()
            .context("corrupt archive entry name")?
            .into_owned();
        let Some(relative) = safe_relative_path(&raw, spec.folder)? else {
            continue;
        };
        let path = dir.join(&relative);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            create_folder(&path)?;
        } else if kind.is_file() {
            if let Some(parent) = path.parent() {
                create_folder(parent)?;
            }
            let mut out =
                File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
            std::io::copy(&mut entry, &mut out)
                .with_context(|| format!("cannot unpack {}", raw.display()))?;
        } else {
            bail!(
                "archive entry `{}` is a link or special file; refusing it",
                raw.display()
            );
        }
    }
    if !dir.join(spec.folder).is_dir() {
        bail!("the archive holds no {}/ folder", spec.folder);
    }
    Ok(())
}

/// The entry's path with `.` components dropped, or `None` for the archive root itself.
/// Refuses any path that could leave the target folder or is outside `folder/`.
fn safe_relative_path(path: &Path, folder: &str) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => bail!(
                "archive entry `{}` would escape the target folder; refusing to unpack",
                path.display()
            ),
        }
    }
    match out.components().next() {
        None => Ok(None),
        Some(Component::Normal(first)) if first == folder => Ok(Some(out)),
        Some(_) => bail!(
            "archive entry `{}` lies outside {folder}/; refusing to unpack",
            path.display()
        ),
    }
}

/// The MD5 of what `hasher` was fed, in lowercase hex.
pub(crate) fn hex_digest(hasher: Md5) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two downloads at once (as tests run them) each remove their own folders when they
    /// fail, whichever ends first; one that succeeds keeps its folders and leaves the
    /// other's listed for the Ctrl-C handler.
    #[test]
    fn downloads_at_once_each_remove_their_own_folders() {
        // Not there yet: the first download makes it, and its removal must leave it to the
        // second, which is inside.
        let scratch = crate::temp_dir::TempDir::new("created");
        let root = scratch.join("root");
        let (a, b) = (root.join("a/data"), root.join("b/data"));
        let first = CreatedFolders::create(&a).unwrap();
        let second = CreatedFolders::create(&b).unwrap();
        drop(first);
        assert!(!a.exists() && !root.join("a").exists() && b.exists());
        assert!(lock(&CREATED_FOLDERS).contains(&b));
        let third = CreatedFolders::create(&a).unwrap();
        third.keep();
        drop(second);
        assert!(a.exists() && !root.join("b").exists());
        assert!(!lock(&CREATED_FOLDERS).iter().any(|f| f.starts_with(&root)));
    }

    #[test]
    fn safe_paths() {
        let ok = |p: &str| safe_relative_path(Path::new(p), "d").unwrap();
        assert_eq!(ok("d/a.bin"), Some(PathBuf::from("d/a.bin")));
        assert_eq!(ok("./d/x/y"), Some(PathBuf::from("d/x/y")));
        assert_eq!(ok("./"), None);
        for bad in [
            "../evil",
            "d/../../evil",
            "/etc/passwd",
            "other/file",
            "d/../e",
        ] {
            assert!(safe_relative_path(Path::new(bad), "d").is_err(), "{bad}");
        }
    }

    /// The official archive's failure points to --from; a mirror's, to the mirror.
    #[test]
    fn fetch_advice_names_the_source_to_mend() {
        let official = fetch_advice(&resolve_source(OFFICIAL_URL, &CIFAR10_ARCHIVE), "a.tgz");
        assert_eq!(
            official.no_answer,
            "check the network, or fetch a.tgz elsewhere and pass its path (or a mirror's URL) \
             with --from (or in VIT_DATA_MIRROR, which make train passes on)"
        );
        assert!(official.refused.starts_with("fetch a.tgz elsewhere"));
        let mirror = fetch_advice("http://m/a.tgz", "a.tgz");
        assert_eq!(
            mirror.refused,
            "check the URL given with --from (or in VIT_DATA_MIRROR), or pass there the path \
             of a copy of a.tgz fetched elsewhere, or another mirror's URL"
        );
        assert!(mirror
            .no_answer
            .starts_with("check the network and the URL given"));
    }

    /// A URL's scheme, in any case, is told from a path that holds `://`.
    #[test]
    fn url_parts_tell_urls_from_paths() {
        assert_eq!(url_parts("HTTPS://m/a"), Some(("https".into(), "m/a")));
        assert_eq!(url_parts("file:///a"), Some(("file".into(), "/a")));
        assert_eq!(url_parts("svn+ssh://m"), Some(("svn+ssh".into(), "m")));
        for path in ["./a://b", "/data/a", "1ftp://m", "://m", "a b://m"] {
            assert_eq!(url_parts(path), None, "{path}");
        }
        assert!(is_url("HTTP://m/a") && !is_url("file:///a") && !is_url("ftp://m"));
        assert_eq!(local_path("FILE:///a%20b"), PathBuf::from("/a b"));
        assert_eq!(local_path("file://LocalHost/a"), PathBuf::from("/a"));
        assert_eq!(local_path("./a://b"), PathBuf::from("./a://b"));
    }

    #[test]
    fn sources() {
        assert_eq!(
            resolve_source(OFFICIAL_URL, &CIFAR10_ARCHIVE),
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
        );
        assert_eq!(
            resolve_source("http://m/x.tgz", &CIFAR10_ARCHIVE),
            "http://m/x.tgz"
        );
        assert_eq!(
            resolve_source("file:///nonexistent/a.tgz", &CIFAR10_ARCHIVE),
            "/nonexistent/a.tgz"
        );
        // A `%` that starts no escape (two hex digits) is the file name's own.
        assert_eq!(
            resolve_source("file:///nonexistent/100%.tgz", &CIFAR10_ARCHIVE),
            "/nonexistent/100%.tgz"
        );
        assert_eq!(
            resolve_source("file:///nonexistent/a%2", &CIFAR10_ARCHIVE),
            "/nonexistent/a%2"
        );
    }
}
