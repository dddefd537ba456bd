//! `vit download`: the MD5 check, unpacking that creates nothing it should not, atomic
//! writes that leave nothing behind when they fail or are stopped, and HTTP transfers
//! from a local server.

use crate::common::{assert_contains, cifar10_files, record, TempDir};
use crate::{args, assert_no_data_folder, common, entries, error_of, u8s, write_cifar100};
use flate2::{write::GzEncoder, Compression};
use md5::{Digest, Md5};
use std::path::Path;
use vit_tch::cli::DatasetName;
use vit_tch::data;
use vit_tch::data::download::{fetch, ArchiveSpec, Fetched};

/// A .tar.gz of `entries` (path, bytes), with paths written raw (so `../evil` is possible).
fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (path, bytes) in entries {
        let mut header = tar::Header::new_old();
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, *bytes).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn cifar10_archive() -> Vec<u8> {
    let files = cifar10_files();
    let entries: Vec<(String, &[u8])> = files
        .iter()
        .map(|(name, bytes)| (format!("cifar-10-batches-bin/{name}"), bytes.as_slice()))
        .collect();
    tar_gz(
        &entries
            .iter()
            .map(|(p, b)| (p.as_str(), *b))
            .collect::<Vec<_>>(),
    )
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn spec_for<'a>(bytes: &[u8], md5: &'a str) -> ArchiveSpec<'a> {
    ArchiveSpec {
        file_name: "cifar-10-binary.tar.gz",
        folder: "cifar-10-batches-bin",
        size: bytes.len() as u64,
        md5,
    }
}

/// Writes `archive` to `file` and fetches it from there into `data_dir`, its size and
/// checksum its own, expecting a refusal: the error.
fn refused_archive(archive: &[u8], file: &Path, data_dir: &Path) -> String {
    let md5 = md5_hex(archive);
    std::fs::write(file, archive).unwrap();
    error_of(fetch(
        file.to_str().unwrap(),
        data_dir,
        &spec_for(archive, &md5),
    ))
}

#[test]
fn download_from_local_archive_unpacks_and_skips_when_present() {
    let tmp = TempDir::new("dl");
    let archive = cifar10_archive();
    let md5 = md5_hex(&archive);
    let source = tmp.0.join("mirror");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("cifar-10-binary.tar.gz"), &archive).unwrap();
    let data_dir = tmp.0.join("data");

    // A folder holding the archive, as a mirror would.
    let fetched = fetch(
        source.to_str().unwrap(),
        &data_dir,
        &spec_for(&archive, &md5),
    )
    .unwrap();
    let target = data_dir.join("cifar-10-batches-bin");
    assert_eq!(fetched, Fetched::Unpacked(target.clone()));
    assert_eq!(
        entries(&data_dir),
        ["cifar-10-batches-bin"],
        "no temporaries left"
    );
    let ds = data::load(&args(DatasetName::Cifar10, &data_dir, false), 32).unwrap();
    assert_eq!(ds.train.len(), 15);
    assert_eq!(
        u8s(&ds.test.images),
        (15..19).flat_map(|i| record(&[], i)).collect::<Vec<u8>>()
    );

    // Already in place: not fetched again, even from a source that does not exist.
    let fetched = fetch(
        "/nonexistent/nowhere.tar.gz",
        &data_dir,
        &spec_for(&archive, &md5),
    );
    assert_eq!(fetched.unwrap(), Fetched::AlreadyPresent(target));

    // The archive file itself, as a file:// URL.
    let data_dir2 = tmp.0.join("data2");
    let url = format!("file://{}", source.join("cifar-10-binary.tar.gz").display());
    let fetched = fetch(&url, &data_dir2, &spec_for(&archive, &md5)).unwrap();
    assert!(matches!(fetched, Fetched::Unpacked(_)));
    // With the host `localhost`, and a space in a folder's name escaped as URLs do.
    let spaced = tmp.0.join("mirror folder");
    std::fs::create_dir_all(&spaced).unwrap();
    std::fs::write(spaced.join("cifar-10-binary.tar.gz"), &archive).unwrap();
    let url = format!(
        "file://localhost{}/mirror%20folder/cifar-10-binary.tar.gz",
        tmp.0.display()
    );
    let fetched = fetch(&url, &tmp.0.join("data2b"), &spec_for(&archive, &md5));
    assert!(matches!(fetched.unwrap(), Fetched::Unpacked(_)));

    // A named pipe (as `--from /dev/stdin`) has no size to check first: it is read whole.
    let fifo = tmp.0.join("archive.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success());
    let writer = {
        let (fifo, archive) = (fifo.clone(), archive.clone());
        std::thread::spawn(move || std::fs::write(fifo, archive).unwrap())
    };
    let fetched = fetch(
        fifo.to_str().unwrap(),
        &tmp.0.join("data4"),
        &spec_for(&archive, &md5),
    );
    assert!(matches!(fetched.unwrap(), Fetched::Unpacked(_)));
    writer.join().unwrap();

    // Refused before anything is read: the dataset's folder given as --data-dir (a second
    // copy would go inside it), and a file in the dataset folder's place (left as it is).
    let spec = spec_for(&archive, &md5);
    let err = error_of(fetch(
        source.to_str().unwrap(),
        &data_dir2.join("cifar-10-batches-bin"),
        &spec,
    ));
    assert!(
        err.contains(&format!(
            "--data-dir takes the folder that holds cifar-10-batches-bin: pass --data-dir {}",
            data_dir2.display()
        )),
        "{err}"
    );
    // CIFAR-100's folder given for CIFAR-10: one dataset would be unpacked inside the other.
    let other = data_dir2.join("cifar-100-binary");
    std::fs::create_dir_all(&other).unwrap();
    let err = error_of(fetch(source.to_str().unwrap(), &other, &spec));
    assert!(
        err.contains(&format!(
            "{} is a dataset's folder: --data-dir takes the folder that holds \
             cifar-100-binary: pass --data-dir {}",
            other.display(),
            data_dir2.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 0);
    let data_dir3 = tmp.0.join("data3");
    std::fs::create_dir_all(&data_dir3).unwrap();
    std::fs::write(data_dir3.join("cifar-10-batches-bin"), "mine").unwrap();
    let err = error_of(fetch("/nonexistent/nowhere.tar.gz", &data_dir3, &spec));
    assert!(
        err.contains("cifar-10-batches-bin is there but is not a folder")
            && err.contains("move it away"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(data_dir3.join("cifar-10-batches-bin")).unwrap(),
        "mine"
    );
}

#[test]
fn missing_local_archive_names_where_it_was_given() {
    let tmp = TempDir::new("dlmissing");
    let archive = cifar10_archive();
    let md5 = md5_hex(&archive);
    let data_dir = tmp.0.join("data");
    let missing = tmp.0.join("nowhere.tar.gz");
    let err = error_of(fetch(
        missing.to_str().unwrap(),
        &data_dir,
        &spec_for(&archive, &md5),
    ));
    // A mistyped VIT_DATA_MIRROR is found by its name, not only by the path it held.
    assert!(
        err.contains(&format!(
            "cannot open {}, the archive given with --from or in VIT_DATA_MIRROR: check the \
             path, or leave both unset to fetch from the official site",
            missing.display()
        )),
        "{err}"
    );
    assert_no_data_folder(&data_dir);
}

#[test]
fn checksum_mismatch_and_truncation_leave_nothing() {
    let tmp = TempDir::new("dlbad");
    let archive = cifar10_archive();
    let md5 = md5_hex(&archive);
    let file = tmp.0.join("archive.tar.gz");
    std::fs::write(&file, &archive).unwrap();
    let data_dir = tmp.0.join("data");

    let wrong = "0123456789abcdef0123456789abcdef";
    let err = error_of(fetch(
        file.to_str().unwrap(),
        &data_dir,
        &spec_for(&archive, wrong),
    ));
    // A local copy is the user's: kept, and the message says it is the wrong file.
    assert!(
        err.contains("checksum mismatch") && err.contains("it is not the official archive"),
        "{err}"
    );
    assert!(err.contains(&md5) && err.contains(wrong), "{err}");
    assert_no_data_folder(&data_dir);
    assert_eq!(std::fs::read(&file).unwrap(), archive);

    // An interrupted transfer: the source holds only the first half of the archive.
    let truncated = tmp.0.join("truncated.tar.gz");
    std::fs::write(&truncated, &archive[..archive.len() / 2]).unwrap();
    let spec = spec_for(&archive, &md5);
    let err = error_of(fetch(truncated.to_str().unwrap(), &data_dir, &spec));
    assert_contains(&err, "bytes");
    assert_no_data_folder(&data_dir);

    // A source larger than the expected size.
    let mut longer = archive.clone();
    longer.extend([0u8; 10]);
    std::fs::write(&truncated, &longer).unwrap();
    let err = error_of(fetch(truncated.to_str().unwrap(), &data_dir, &spec));
    assert_contains(&err, "bytes");
    assert_no_data_folder(&data_dir);

    // A missing source.
    let err = error_of(fetch("/nonexistent/a.tar.gz", &data_dir, &spec));
    assert_contains(&err, "/nonexistent/a.tar.gz");
    assert_no_data_folder(&data_dir);

    // Stale temporaries of a killed run (a PID that cannot be running) are swept.
    std::fs::create_dir(&data_dir).unwrap();
    let stale = data_dir.join(".cifar-10-binary.tar.gz.tmp-4294967295");
    std::fs::write(&stale, b"partial").unwrap();
    let stale_unpacked = data_dir.join(".cifar-10-batches-bin.tmp-4294967295/cifar-10-batches-bin");
    std::fs::create_dir_all(&stale_unpacked).unwrap();
    std::fs::write(stale_unpacked.join("data_batch_1.bin"), b"partial").unwrap();
    fetch(file.to_str().unwrap(), &data_dir, &spec).unwrap();
    assert_eq!(entries(&data_dir), ["cifar-10-batches-bin"]);
}

/// The temporary file of a process that still runs (another vit downloading into the same
/// folder) is not swept as stale; one of a process that has ended is, where it stands for
/// a name given or for the write check every folder gets (a user's file or folder that
/// only looks alike is kept).
#[test]
fn only_temporaries_of_ended_processes_are_swept() {
    let tmp = TempDir::new("sweep");
    // Our parent (cargo, or the shell that started this binary) outlives the test; our own
    // PID would prove nothing, as `process_ended` never takes it for ended.
    let running = format!(
        ".cifar-10-binary.tar.gz.tmp-{}",
        std::os::unix::process::parent_id()
    );
    let ended = ".cifar-100-binary.tar.gz.tmp-4294967295";
    let write_check = ".write-check.tmp-4294967295";
    let users = ".notes.tmp-4294967295";
    for name in [running.as_str(), ended, write_check, users] {
        std::fs::write(tmp.0.join(name), b"partial").unwrap();
    }
    let users_folder = tmp.0.join(".photos.tmp-4294967295");
    std::fs::create_dir(&users_folder).unwrap();
    std::fs::write(users_folder.join("a.jpg"), b"precious").unwrap();
    // A download of a process this one cannot see (another container's PIDs, another host
    // sharing the folder): its PID reads as ended, but it holds its temporaries locked.
    let elsewhere = ".cifar-10-binary.tar.gz.tmp-4294967294";
    let elsewhere_unpacking = ".cifar-10-batches-bin.tmp-4294967294";
    std::fs::write(tmp.0.join(elsewhere), b"partial").unwrap();
    std::fs::create_dir(tmp.0.join(elsewhere_unpacking)).unwrap();
    let locks: Vec<std::fs::File> = [elsewhere, elsewhere_unpacking]
        .iter()
        .map(|name| {
            let file = std::fs::File::open(tmp.0.join(name)).unwrap();
            vit_tch::fsutil::lock_temporary(&file);
            file
        })
        .collect();
    let names = [
        "cifar-10-binary.tar.gz",
        "cifar-100-binary.tar.gz",
        "cifar-10-batches-bin",
    ];
    vit_tch::fsutil::remove_stale_temporaries(&tmp.0, &names);
    let mut expected = [
        running.as_str(),
        users,
        ".photos.tmp-4294967295",
        elsewhere,
        elsewhere_unpacking,
    ];
    expected.sort();
    assert_eq!(entries(&tmp.0), expected);
    assert!(users_folder.join("a.jpg").exists());
    // Once their writer ends (its locks go with it), they are stale.
    drop(locks);
    vit_tch::fsutil::remove_stale_temporaries(&tmp.0, &names);
    let mut expected = [running.as_str(), users, ".photos.tmp-4294967295"];
    expected.sort();
    assert_eq!(entries(&tmp.0), expected);
}

/// Whether a process holds a lock on `path` (one this test cannot take; the lock, if
/// taken, goes with `file`).
fn locked(path: &Path) -> bool {
    let file = std::fs::File::open(path).unwrap();
    file.try_lock().is_err()
}

/// A download holds its archive's temporary locked while it writes it, so that the sweep
/// of a vit that cannot see its PID leaves it alone (see the test above).
#[test]
fn a_download_locks_its_temporary_while_it_writes() {
    let tmp = TempDir::new("download-lock");
    let archive = tar_gz(&[("cifar-10-batches-bin/data_batch_1.bin", &[7u8; 5000])]);
    let md5 = md5_hex(&archive);
    let fifo = tmp.0.join("archive.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success());
    let data_dir = tmp.0.join("data");
    let partial = data_dir.join(format!(
        ".cifar-10-binary.tar.gz.tmp-{}",
        std::process::id()
    ));
    let writer = {
        let (fifo, archive, partial) = (fifo.clone(), archive.clone(), partial.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut pipe = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            let (first, rest) = archive.split_at(archive.len() / 2);
            pipe.write_all(first).unwrap();
            // Bytes in the file come after its lock.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while partial.metadata().map_or(true, |m| m.len() == 0) {
                assert!(std::time::Instant::now() < deadline, "nothing written");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let locked_while_written = locked(&partial);
            pipe.write_all(rest).unwrap();
            locked_while_written
        })
    };
    let fetched = fetch(fifo.to_str().unwrap(), &data_dir, &spec_for(&archive, &md5));
    assert!(matches!(fetched.unwrap(), Fetched::Unpacked(_)));
    assert!(
        writer.join().unwrap(),
        "the partial download was not locked"
    );
    assert_eq!(entries(&data_dir), ["cifar-10-batches-bin"]);
}

/// Every atomic write (a confusion matrix of `vit eval`, a picture of `vit plot`, a run's
/// files) first removes what earlier writes of the same file left when killed midway, and
/// only that: another file's temporary, and one of a process still running, are kept.
#[test]
fn an_atomic_write_sweeps_its_own_killed_writes() {
    let tmp = TempDir::new("write-sweep");
    let running = format!(".matrix.csv.tmp-{}", std::os::unix::process::parent_id());
    let others = ".curves.png.tmp-4294967295";
    for name in [".matrix.csv.tmp-4294967295", running.as_str(), others] {
        std::fs::write(tmp.0.join(name), b"partial").unwrap();
    }
    vit_tch::fsutil::write_atomic(&tmp.0.join("matrix.csv"), b"rows").unwrap();
    let mut expected = [running.as_str(), others, "matrix.csv"];
    expected.sort();
    assert_eq!(entries(&tmp.0), expected);
    // A file whose own name holds the temporaries' tag: its killed write is told by the
    // last tag.
    let killed = tmp.0.join(".curves.tmp-2.csv.tmp-4294967295");
    std::fs::write(&killed, b"partial").unwrap();
    vit_tch::fsutil::write_atomic(&tmp.0.join("curves.tmp-2.csv"), b"rows").unwrap();
    assert!(!killed.exists());
}

#[test]
fn escaping_or_stray_entries_are_refused() {
    let tmp = TempDir::new("dlesc");
    let data_dir = tmp.0.join("data");
    let cases: [&[(&str, &[u8])]; 4] = [
        &[("cifar-10-batches-bin/a.bin", b"ok"), ("../evil", b"boom")],
        &[("cifar-10-batches-bin/../../evil", b"boom")],
        &[("/tmp/evil-abs", b"boom")],
        &[("elsewhere/evil", b"boom")],
    ];
    for entries_in in cases {
        let archive = tar_gz(entries_in);
        let err = refused_archive(&archive, &tmp.0.join("evil.tar.gz"), &data_dir);
        assert_contains(&err, "refusing");
        assert_no_data_folder(&data_dir);
        assert!(!tmp.0.join("evil").exists() && !tmp.0.join("data/evil").exists());
    }
}

/// An archive that holds nothing of the dataset's folder (an empty one, or one of its
/// root alone) is refused naming the folder it lacks, and nothing is left.
#[test]
fn an_archive_without_the_dataset_folder_is_refused() {
    let tmp = TempDir::new("dlempty");
    let data_dir = tmp.0.join("data");
    let root_alone: &[(&str, &[u8])] = &[("./", b"")];
    for entries_in in [&[][..], root_alone] {
        let archive = tar_gz(entries_in);
        let err = refused_archive(&archive, &tmp.0.join("empty.tar.gz"), &data_dir);
        assert_contains(&err, "the archive holds no cifar-10-batches-bin/ folder");
        assert_no_data_folder(&data_dir);
    }
}

/// An archive entry that is a link (here a symbolic link to a folder outside, which a later
/// entry `link/victim` would write through) is refused, and nothing is unpacked.
#[test]
fn link_entries_are_refused() {
    let tmp = TempDir::new("dllink");
    let data_dir = tmp.0.join("data");
    let outside = tmp.0.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    builder
        .append_link(&mut header, "cifar-10-batches-bin/link", &outside)
        .unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o644);
    builder
        .append_data(
            &mut header,
            "cifar-10-batches-bin/link/victim",
            &b"boom"[..],
        )
        .unwrap();
    let archive = builder.into_inner().unwrap().finish().unwrap();
    let err = refused_archive(&archive, &tmp.0.join("link.tar.gz"), &data_dir);
    assert!(
        err.contains(
            "archive entry `cifar-10-batches-bin/link` is a link or special file; refusing it"
        ),
        "{err}"
    );
    assert_no_data_folder(&data_dir);
    assert_eq!(entries(&outside), Vec::<String>::new());
}

/// A source of another size than the archive's is refused by the size its server or file
/// system gives, before the transfer (a mirror's folder given without its final `/` is
/// told to add it); one that sends more than the archive's size without saying (a pipe, a
/// server without Content-Length) is cut off once it does. Nothing is left either way.
#[test]
fn sources_of_the_wrong_size_are_refused_by_their_size() {
    let tmp = TempDir::new("dlsize");
    let archive = cifar10_archive();
    let md5 = md5_hex(&archive);
    let spec = spec_for(&archive, &md5);
    let data_dir = tmp.0.join("data");
    let page = b"<html>a mirror's index page</html>".to_vec();
    let expected = format!(
        "is {} bytes, but the official cifar-10-binary.tar.gz is {} bytes: wrong file or a bad mirror",
        page.len(),
        archive.len()
    );
    let folder_url = serve_once(page.clone(), Some(page.len())) + "mirror";
    let err = error_of(fetch(&folder_url, &data_dir, &spec));
    assert!(
        err.contains(&expected)
            && err.contains("for a mirror's folder, end its URL with / and vit appends"),
        "{err}"
    );
    let local = tmp.0.join("index.html");
    std::fs::write(&local, &page).unwrap();
    let err = error_of(fetch(local.to_str().unwrap(), &data_dir, &spec));
    assert!(
        err.contains(&expected) && !err.contains("mirror's folder"),
        "{err}"
    );
    // A server's address alone (its host has dots, as a file name would) is a folder too.
    let host_url = serve_once(page.clone(), Some(page.len()));
    let err = error_of(fetch(host_url.trim_end_matches('/'), &data_dir, &spec));
    assert_contains(&err, "end its URL with / and vit appends");
    // A URL that names a file is no mirror's folder either, even where its query holds a
    // path (as a signed link's may): the file is named before the `?`.
    for file in ["other.tar.gz", "other.tar.gz?from=/mirror"] {
        let file_url = serve_once(page.clone(), Some(page.len())) + file;
        let err = error_of(fetch(&file_url, &data_dir, &spec));
        assert!(
            err.contains(&expected) && !err.contains("mirror's folder"),
            "{file}: {err}"
        );
    }
    assert_no_data_folder(&data_dir);

    // CIFAR-10's archive (its size: a sparse file) given for CIFAR-100 is said to be that.
    let cifar10_sized = tmp.0.join("cifar-10-binary.tar.gz");
    let file = std::fs::File::create(&cifar10_sized).unwrap();
    file.set_len(vit_tch::data::download::CIFAR10_ARCHIVE.size)
        .unwrap();
    let cifar100 = vit_tch::data::download::CIFAR100_ARCHIVE;
    let err = error_of(fetch(cifar10_sized.to_str().unwrap(), &data_dir, &cifar100));
    assert!(
        err.contains(
            "but the official cifar-100-binary.tar.gz is 168513733 bytes: wrong file or a bad mirror (it is \
             the size of cifar-10-binary.tar.gz, the other CIFAR's)"
        ),
        "{err}"
    );
    assert_no_data_folder(&data_dir);

    let longer = [&archive[..], &[0u8; 100]].concat();
    let err = error_of(fetch(&serve_once(longer, None), &data_dir, &spec));
    assert!(
        err.contains(&format!(
            "is larger than the {} bytes of cifar-10-binary.tar.gz: wrong file; removed it",
            archive.len()
        )),
        "{err}"
    );
    assert_no_data_folder(&data_dir);
}

/// `vit download` keeps a CIFAR-100 folder that is there only when it is whole, and that
/// includes the coarse labels' class names, which reading the fine labels never opens:
/// without them, `--coarse-labels` could not read the download.
#[test]
fn a_cifar100_folder_without_its_coarse_class_names_is_not_whole() {
    use vit_tch::cli::{DownloadArgs, DownloadableDataset};
    let tmp = TempDir::new("c100-no-coarse");
    let dir = write_cifar100(&tmp.0);
    // Batch files of the official size (sparse zeros: no disk space taken).
    for (file, images) in [("train.bin", 50_000), ("test.bin", 10_000)] {
        let file = std::fs::File::create(dir.join(file)).unwrap();
        file.set_len(images * 3074).unwrap();
    }
    let coarse = dir.join("coarse_label_names.txt");
    std::fs::remove_file(&coarse).unwrap();
    let err = error_of(data::run_download(&DownloadArgs {
        dataset: DownloadableDataset::Cifar100,
        data_dir: tmp.0.clone(),
        from: Some("/nonexistent/".into()),
    }));
    assert!(
        err.contains("is there but not a whole dataset")
            && err.contains(&format!("{} is missing", coarse.display())),
        "{err}"
    );
}

/// Serves one HTTP request on localhost: `body`, announced as `length` bytes (or with no
/// Content-Length when `None`), then closes the connection.
fn serve_once(body: Vec<u8>, length: Option<usize>) -> String {
    serve_once_with_status("200 OK", body, length)
}

/// [`serve_once`] with another status line than `200 OK`.
fn serve_once_with_status(status: &str, body: Vec<u8>, length: Option<usize>) -> String {
    serve_once_with_head(status, "", body, length)
}

/// [`serve_once`] with the status line `status` and `headers` (each ending in `\r\n`)
/// added to the response's head.
fn serve_once_with_head(
    status: &str,
    headers: &str,
    body: Vec<u8>,
    length: Option<usize>,
) -> String {
    let status = status.to_string();
    let headers = headers.to_string();
    serve_once_answering(move |_| {
        let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n{headers}");
        if let Some(length) = length {
            head += &format!("Content-Length: {length}\r\n");
        }
        head += "\r\n";
        [head.as_bytes(), &body].concat()
    })
}

/// Serves one HTTP request on localhost with what `answer` makes of the request's head
/// (the whole response, head and body), then closes the connection.
fn serve_once_answering(answer: impl FnOnce(&str) -> Vec<u8> + Send + 'static) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
            request.push(byte[0]);
        }
        let _ = stream.write_all(&answer(&String::from_utf8_lossy(&request)));
    });
    format!("http://{address}/")
}

#[test]
fn http_download_and_interrupted_transfers() {
    let tmp = TempDir::new("http");
    let archive = cifar10_archive();
    let md5 = md5_hex(&archive);
    let spec = spec_for(&archive, &md5);
    let data_dir = tmp.0.join("data");
    let half = archive[..archive.len() / 2].to_vec();

    // No server at all: the message says what to do instead.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let err = error_of(fetch(&url, &data_dir, &spec));
    assert!(
        err.contains(&format!(
            "cannot fetch {url}cifar-10-binary.tar.gz: check the network and the URL given \
             with --from (or in VIT_DATA_MIRROR), or pass there the path of a copy of"
        )),
        "{err}"
    );
    assert_no_data_folder(&data_dir);

    // A URL of a scheme vit does not fetch is refused as such, not looked for as a file.
    let err = error_of(fetch("ftp://mirror/cifar.tgz", &data_dir, &spec));
    assert!(
        err.contains(
            "cannot fetch ftp://mirror/cifar.tgz: vit fetches http:// and https:// URLs, \
             file:// URLs and paths, not ftp://"
        ),
        "{err}"
    );
    assert_no_data_folder(&data_dir);
    // As is a file:// URL of another machine's file, not looked for as the path HOST/PATH.
    let err = error_of(fetch("file://mirror/cifar.tgz", &data_dir, &spec));
    assert!(
        err.contains(
            "cannot fetch file://mirror/cifar.tgz: a file:// URL names a file of this machine \
             (file:///PATH), not of mirror; copy cifar-10-binary.tar.gz here"
        ),
        "{err}"
    );
    assert_no_data_folder(&data_dir);

    // A server that answers, but not with the archive: the URL is wrong, not the network.
    let url = serve_once_with_status("404 Not Found", b"no such file".to_vec(), Some(12));
    let err = error_of(fetch(&url, &data_dir, &spec));
    assert!(
        err.contains(&format!(
            "cannot fetch {url}cifar-10-binary.tar.gz: the server answered HTTP 404, so it \
             does not serve cifar-10-binary.tar.gz there; check the URL given with --from \
             (or in VIT_DATA_MIRROR), or pass there the path of a copy of \
             cifar-10-binary.tar.gz fetched elsewhere, or another mirror's URL"
        )) && !err.contains("network"),
        "{err}"
    );
    assert_no_data_folder(&data_dir);

    // The connection drops after half of the announced bytes.
    let url = serve_once(half.clone(), Some(archive.len()));
    let err = error_of(fetch(&url, &data_dir, &spec));
    assert_contains(&err, "removed the partial file");
    assert_no_data_folder(&data_dir);

    // No Content-Length: the short body is noticed at the end.
    let url = serve_once(half, None);
    let err = error_of(fetch(&url, &data_dir, &spec));
    assert_contains(&err, "incomplete transfer");
    assert_no_data_folder(&data_dir);

    // A server that labels the .tar.gz as gzip-encoded (some static servers do): the bytes
    // are the archive's own, so they are kept as they came, not unpacked on the way.
    let url = serve_once_with_head(
        "200 OK",
        "Content-Encoding: gzip\r\n",
        archive.clone(),
        Some(archive.len()),
    );
    let fetched = fetch(&url, &data_dir, &spec).unwrap();
    assert_eq!(
        fetched,
        Fetched::Unpacked(data_dir.join("cifar-10-batches-bin"))
    );
    std::fs::remove_dir_all(&data_dir).unwrap();

    // A server that compresses what it sends unless told not to (a request without
    // Accept-Encoding accepts any encoding): vit asks for the bytes as they are, since it
    // would not undo the compression, and gets the archive.
    let served = archive.clone();
    let url = serve_once_answering(move |request| {
        let identity = request
            .to_ascii_lowercase()
            .contains("accept-encoding: identity\r\n");
        let (encoding, body) = match identity {
            true => ("", served),
            false => {
                let mut gzip = GzEncoder::new(Vec::new(), Compression::fast());
                std::io::Write::write_all(&mut gzip, &served).unwrap();
                ("Content-Encoding: gzip\r\n", gzip.finish().unwrap())
            }
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\n{encoding}Content-Length: {}\r\n\r\n",
            body.len()
        );
        [head.as_bytes(), &body].concat()
    });
    let fetched = fetch(&url, &data_dir, &spec).unwrap();
    assert_eq!(
        fetched,
        Fetched::Unpacked(data_dir.join("cifar-10-batches-bin"))
    );
    std::fs::remove_dir_all(&data_dir).unwrap();

    // The whole archive; a base URL gets the file name appended.
    let url = serve_once(archive.clone(), Some(archive.len()));
    assert!(url.ends_with('/'));
    let fetched = fetch(&url, &data_dir, &spec).unwrap();
    assert_eq!(
        fetched,
        Fetched::Unpacked(data_dir.join("cifar-10-batches-bin"))
    );
    assert_eq!(entries(&data_dir), ["cifar-10-batches-bin"]);
}

/// A failed download removes the folders it created for the data folder (`vit download
/// --data-dir new/data` with neither there), and only those: a folder that was there
/// before stays, empty as it was.
#[test]
fn a_failed_download_removes_the_folders_it_created_and_only_those() {
    let tmp = TempDir::new("dl-created");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let new = tmp.0.join("new");
    let output = common::run_vit(&[
        "download",
        "--dataset",
        "cifar10",
        "--from",
        &url,
        "--data-dir",
        new.join("data").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_contains(&stderr, "cannot fetch");
    assert!(!new.exists(), "{} is left", new.display());

    let mine = tmp.0.join("mine");
    std::fs::create_dir(&mine).unwrap();
    let archive = cifar10_archive();
    let md5 = md5_hex(&archive);
    let spec = spec_for(&archive, &md5);
    for data_dir in [mine.clone(), mine.join("data")] {
        let err = error_of(fetch("/nonexistent/a.tar.gz", &data_dir, &spec));
        assert_contains(&err, "/nonexistent/a.tar.gz");
        assert_eq!(entries(&mine), Vec::<String>::new());
    }
}

/// A data folder that would lie below a file (`--data-dir notes/data`, notes a file) is
/// refused naming that file, which is kept.
#[test]
fn a_data_folder_below_a_file_names_the_file() {
    let tmp = TempDir::new("dl-below-a-file");
    let notes = tmp.0.join("notes");
    std::fs::write(&notes, "mine").unwrap();
    let archive = cifar10_archive();
    let md5 = md5_hex(&archive);
    let spec = spec_for(&archive, &md5);
    let err = error_of(fetch("/nonexistent/a.tar.gz", &notes.join("data"), &spec));
    assert!(
        err.contains(&format!(
            "{} is a file, not a folder; move it away, or choose another path",
            notes.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");
}

/// Ctrl-C during a download (here, a server that has sent 1 MiB of the archive and then
/// waits) removes the partial archive, and the data folder the download created, and ends
/// with status 130. A signal the download was started with ignored (SIGHUP under nohup,
/// SIGTERM where the parent ignored it) stays ignored.
#[test]
fn ctrl_c_during_a_download_removes_the_partial_archive() {
    use std::io::{Read, Write};
    let tmp = TempDir::new("download-ctrl-c");
    let data_dir = tmp.0.join("data");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut byte = [0u8; 1];
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
            request.push(byte[0]);
        }
        let size = vit_tch::data::download::CIFAR10_ARCHIVE.size;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&vec![0u8; 1 << 20]);
        std::thread::sleep(std::time::Duration::from_secs(60));
    });
    let mut nohup = std::process::Command::new("nohup");
    // SAFETY: between fork and exec, signal() is async-signal-safe and touches no memory.
    unsafe {
        use std::os::unix::process::CommandExt;
        nohup.pre_exec(|| {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
            Ok(())
        });
    }
    #[rustfmt::skip]
    let mut child = common::with_default_signals(&mut nohup)
        .arg(common::vit_binary())
        .args(["download", "--dataset", "cifar10", "--from", &url, "--data-dir"])
        .arg(&data_dir)
        // Not a terminal: nohup would write nohup.out.
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let partial_is_there = || {
        std::fs::read_dir(&data_dir).is_ok_and(|found| {
            found
                .flatten()
                .any(|entry| entry.metadata().is_ok_and(|m| m.len() >= 1 << 20))
        })
    };
    let started = std::time::Instant::now();
    while !partial_is_there() {
        assert!(
            started.elapsed().as_secs() < 30,
            "the download did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    common::send("-HUP", &child);
    common::send("-TERM", &child);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP under nohup, or an ignored SIGTERM, ended the download"
    );
    assert!(partial_is_there());
    common::send("-INT", &child);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert_contains(&stderr, "the partial download is removed");
    assert_no_data_folder(&data_dir);
}
