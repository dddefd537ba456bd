//! The data layer on generated files: both CIFAR binary formats, their errors, the
//! download's verification and atomicity, ImageFolder reading, and the augmentation
//! invariants. No network and no real dataset needed.

mod common;

use common::{
    assert_contains, cifar10_files, cuda_device, pixel, record, write_cifar10, TempDir,
    CIFAR10_CLASSES,
};

use flate2::{write::GzEncoder, Compression};
use md5::{Digest, Md5};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use vit_tch::cli::{DatasetArgs, DatasetName};
use vit_tch::data::download::{fetch, ArchiveSpec, Fetched};
use vit_tch::data::{self, folder, image_file, transforms, CIFAR_MEAN, CIFAR_STD};

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts that a failed download left no data folder: it created the folder, and removes
/// it with the rest.
fn assert_no_data_folder(data_dir: &Path) {
    assert!(!data_dir.exists(), "{} is left", data_dir.display());
}

fn write_cifar100(data_dir: &Path) -> PathBuf {
    let dir = data_dir.join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    let split = |start: usize, n: usize| {
        let mut bytes = Vec::new();
        for i in start..start + n {
            bytes.extend(record(&[(i % 20) as u8, (i * 7 % 100) as u8], i));
        }
        bytes
    };
    std::fs::write(dir.join("train.bin"), split(0, 25)).unwrap();
    std::fs::write(dir.join("test.bin"), split(25, 5)).unwrap();
    let fine: Vec<String> = (0..100).map(|i| format!("fine{i}")).collect();
    let coarse: Vec<String> = (0..20).map(|i| format!("coarse{i}")).collect();
    std::fs::write(dir.join("fine_label_names.txt"), fine.join("\n")).unwrap();
    std::fs::write(dir.join("coarse_label_names.txt"), coarse.join("\n")).unwrap();
    dir
}

fn u8s(t: &Tensor) -> Vec<u8> {
    Vec::<u8>::try_from(&t.flatten(0, -1)).unwrap()
}

fn i64s(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(&t.flatten(0, -1).to_kind(Kind::Int64)).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.flatten(0, -1).to_kind(Kind::Float)).unwrap()
}

fn args(dataset: DatasetName, data_dir: &Path, coarse_labels: bool) -> DatasetArgs {
    DatasetArgs {
        dataset,
        data_dir: data_dir.to_path_buf(),
        coarse_labels,
    }
}

fn error_of<T: std::fmt::Debug>(result: anyhow::Result<T>) -> String {
    format!("{:#}", result.expect_err("expected an error"))
}

/// Loads the dataset `dataset_args` names at `image_size`, checking that it is called
/// `expected_name` and that `data::dataset_name` knew that name before loading.
fn load_named(dataset_args: &DatasetArgs, image_size: i64, expected_name: &str) -> data::Dataset {
    let dataset = data::load(dataset_args, image_size).unwrap();
    assert_eq!(dataset.name, expected_name);
    let known_before = data::dataset_name(dataset_args);
    assert_eq!(known_before, dataset.name);
    dataset
}

#[test]
fn cifar10_reads_back_exactly() {
    let tmp = TempDir::new("c10");
    write_cifar10(&tmp.0);
    let ds = load_named(&args(DatasetName::Cifar10, &tmp.0, false), 32, "cifar10");
    assert_eq!(ds.classes, CIFAR10_CLASSES);
    assert_eq!(ds.train.images.size(), [15, 3, 32, 32]);
    assert_eq!(ds.train.images.kind(), Kind::Uint8);
    assert_eq!(ds.train.labels.kind(), Kind::Int64);
    assert_eq!(ds.test.images.size(), [4, 3, 32, 32]);
    assert_eq!(ds.train.len(), 15);
    let expected: Vec<u8> = (0..15).flat_map(|i| record(&[], i)).collect();
    assert_eq!(u8s(&ds.train.images), expected);
    assert_eq!(
        i64s(&ds.train.labels),
        (0..15).map(|i| i % 10).collect::<Vec<i64>>()
    );
    assert_eq!(
        u8s(&ds.test.images),
        (15..19).flat_map(|i| record(&[], i)).collect::<Vec<u8>>()
    );
    assert_eq!(i64s(&ds.test.labels), vec![5, 6, 7, 8]);
    // CHW: [i, c, y, x] is plane c, row y, column x of record i.
    for (i, c, y, x) in [(0, 0, 0, 1), (3, 1, 5, 30), (14, 2, 31, 0), (7, 2, 17, 9)] {
        let v = ds
            .train
            .images
            .int64_value(&[i as i64, c as i64, y as i64, x as i64]);
        assert_eq!(v, pixel(i, c, y, x) as i64, "image {i} c{c} y{y} x{x}");
    }
    let sub = ds.train.subset(4);
    assert_eq!(sub.len(), 4);
    assert_eq!(ds.train.subset(100).len(), 15);
    assert_eq!(u8s(&sub.images), expected[..4 * 3072]);
    assert_eq!(sub.to_device(Device::Cpu).len(), 4);
    let picked = ds.train.batch(&Tensor::from_slice(&[14i64, 0, 3]));
    assert_eq!(i64s(&picked.labels), [4, 0, 3]);
    assert_eq!(u8s(&picked.images.get(0)), record(&[], 14));
    assert_eq!(
        ds.train.class_counts(10),
        vec![2, 2, 2, 2, 2, 1, 1, 1, 1, 1]
    );
}

#[test]
fn cifar100_fine_and_coarse_labels() {
    let tmp = TempDir::new("c100");
    write_cifar100(&tmp.0);
    let fine = load_named(&args(DatasetName::Cifar100, &tmp.0, false), 32, "cifar100");
    assert_eq!(fine.classes.len(), 100);
    assert_eq!(fine.classes[3], "fine3");
    assert_eq!(
        i64s(&fine.train.labels),
        (0..25).map(|i| i * 7 % 100).collect::<Vec<i64>>()
    );
    assert_eq!(
        i64s(&fine.test.labels),
        (25..30).map(|i| i * 7 % 100).collect::<Vec<i64>>()
    );
    assert_eq!(
        u8s(&fine.train.images),
        (0..25).flat_map(|i| record(&[], i)).collect::<Vec<u8>>()
    );
    assert_eq!(
        u8s(&fine.test.images),
        (25..30).flat_map(|i| record(&[], i)).collect::<Vec<u8>>()
    );
    let coarse = load_named(
        &args(DatasetName::Cifar100, &tmp.0, true),
        32,
        "cifar100-coarse",
    );
    assert_eq!(coarse.classes.len(), 20);
    assert_eq!(coarse.classes[19], "coarse19");
    assert_eq!(
        i64s(&coarse.train.labels),
        (0..25).map(|i| i % 20).collect::<Vec<i64>>()
    );
    assert_eq!(u8s(&coarse.train.images), u8s(&fine.train.images));
    let err = error_of(data::load(&args(DatasetName::Cifar10, &tmp.0, true), 32));
    assert_contains(&err, "--coarse-labels");
}

#[test]
fn missing_files_name_the_download_command() {
    let tmp = TempDir::new("missing");
    let err = error_of(data::load(&args(DatasetName::Cifar10, &tmp.0, false), 32));
    let command = format!(
        "vit download --dataset cifar10 --data-dir {}",
        tmp.0.display()
    );
    // An absolute path is shown as it is, with no "(in the current folder, ...)".
    let meta = tmp.0.join("cifar-10-batches-bin/batches.meta.txt");
    assert_contains(
        &err,
        &format!("{} is missing: run `{command}`", meta.display()),
    );
    let err = error_of(data::load(&args(DatasetName::Cifar100, &tmp.0, false), 32));
    let command = format!(
        "vit download --dataset cifar100 --data-dir {}",
        tmp.0.display()
    );
    assert_contains(&err, &command);
    // The default `--data-dir data` is relative: the message says where vit looked for it.
    let output = std::process::Command::new(common::vit_binary())
        .args(["data", "--dataset", "cifar10"])
        .current_dir(&tmp.0)
        .output()
        .unwrap();
    let where_vit_runs = format!(
        "data/cifar-10-batches-bin/batches.meta.txt (in the current folder, {}) is missing: \
         run `vit download --dataset cifar10 --data-dir data`",
        tmp.0.display()
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_contains(&stderr, &where_vit_runs);
    // A ~ the shell did not expand (after `=`) is a folder named ~ there: said so.
    let output = std::process::Command::new(common::vit_binary())
        .args(["data", "--dataset", "cifar10", "--data-dir=~/data"])
        .current_dir(&tmp.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "~/data/cifar-10-batches-bin/batches.meta.txt (the shell left its ~ as it is, as \
             after `=`: give the folder apart from its flag, `--data-dir ~/...`, or write \
             $HOME) is missing"
        ),
        "{stderr}"
    );
    // torchvision's download (the notebook's), which vit does not read, named as such...
    let python = tmp.0.join("cifar-100-python");
    std::fs::create_dir(&python).unwrap();
    let err = error_of(data::load(&args(DatasetName::Cifar100, &tmp.0, false), 32));
    assert!(
        err.contains(
            "holds cifar-100-python, torchvision's Python release, which vit does not \
                      read"
        ) && err.contains(&command),
        "{err}"
    );
    std::fs::remove_dir(&python).unwrap();
    // ...and the binary archive fetched by hand: `vit download --from` unpacks it.
    let archive = tmp.0.join("cifar-10-binary.tar.gz");
    std::fs::write(&archive, b"an archive").unwrap();
    let err = error_of(data::load(&args(DatasetName::Cifar10, &tmp.0, false), 32));
    let unpack = format!(
        "holds cifar-10-binary.tar.gz, not unpacked: run `vit download --dataset cifar10 \
         --data-dir {} --from {}`",
        tmp.0.display(),
        archive.display()
    );
    assert_contains(&err, &unpack);
    std::fs::remove_file(&archive).unwrap();

    // One batch missing from an otherwise complete tree.
    let dir = write_cifar10(&tmp.0);
    std::fs::remove_file(dir.join("data_batch_3.bin")).unwrap();
    let err = error_of(data::load(&args(DatasetName::Cifar10, &tmp.0, false), 32));
    assert!(
        err.contains("data_batch_3.bin") && err.contains("vit download"),
        "{err}"
    );
    // `vit download` would skip the existing folder: the message says to delete it.
    let incomplete = format!(
        "{} is incomplete: delete {0}, then run `vit download",
        dir.display()
    );
    assert_contains(&err, &incomplete);

    // --data-dir naming the dataset's own folder: the parent is what it takes.
    let err = error_of(data::load(&args(DatasetName::Cifar10, &dir, false), 32));
    let parent = format!(
        "--data-dir takes the folder that holds cifar-10-batches-bin: pass --data-dir {}",
        tmp.0.display()
    );
    assert_contains(&err, &parent);

    // CIFAR-100 asked of CIFAR-10's own folder: the folder holding it is the one to
    // pass, for either (a download into CIFAR-10's folder would nest one in the other).
    let err = error_of(data::load(&args(DatasetName::Cifar100, &dir, false), 32));
    let parent = format!(
        "{} is cifar10's folder, cifar-10-batches-bin, and --data-dir takes the folder that \
         holds it: pass --data-dir {1} --dataset cifar10 for it; for cifar100, run `vit \
         download --dataset cifar100 --data-dir {1}`",
        dir.display(),
        tmp.0.display()
    );
    assert_contains(&err, &parent);

    // Left without --dataset (CIFAR-100) where CIFAR-10 is: that one is named first.
    let err = error_of(data::load(&args(DatasetName::Cifar100, &tmp.0, false), 32));
    assert_contains(
        &err,
        "holds cifar-10-batches-bin: pass --dataset cifar10 for it; for cifar100",
    );

    // The reverse, CIFAR-10 asked where only CIFAR-100 is, or of CIFAR-100's own folder:
    // CIFAR-100 is named for it, not a download of CIFAR-10.
    let only_100 = TempDir::new("missing-only-100");
    let cifar100 = only_100.0.join("cifar-100-binary");
    std::fs::create_dir(&cifar100).unwrap();
    let err = error_of(data::load(
        &args(DatasetName::Cifar10, &only_100.0, false),
        32,
    ));
    assert_contains(
        &err,
        "holds cifar-100-binary: pass --dataset cifar100 for it; for cifar10",
    );
    let err = error_of(data::load(
        &args(DatasetName::Cifar10, &cifar100, false),
        32,
    ));
    assert!(
        err.contains(&format!(
            "{} is cifar100's folder, cifar-100-binary, and --data-dir takes the folder that \
             holds it: pass --data-dir {} --dataset cifar100 for it",
            cifar100.display(),
            only_100.0.display()
        )),
        "{err}"
    );

    // A file where a folder should be: --data-dir itself, or the dataset's folder.
    let file = tmp.0.join("notes");
    std::fs::write(&file, "mine").unwrap();
    let err = error_of(data::load(&args(DatasetName::Cifar10, &file, false), 32));
    assert!(
        err.contains(&format!(
            "{} is a file, not a folder; --data-dir takes the folder that holds",
            file.display()
        )),
        "{err}"
    );
    let in_place = TempDir::new("missing-file-in-place");
    let dataset_folder = in_place.0.join("cifar-10-batches-bin");
    std::fs::write(&dataset_folder, "mine").unwrap();
    let err = error_of(data::load(
        &args(DatasetName::Cifar10, &in_place.0, false),
        32,
    ));
    assert!(
        err.contains(&format!(
            "{} is a file, not a folder; move it away, then run `vit download",
            dataset_folder.display()
        )),
        "{err}"
    );

    // A folder where a batch file should be.
    let folder_in_place = TempDir::new("folder-in-place");
    let dir = write_cifar10(&folder_in_place.0);
    let batch = dir.join("data_batch_1.bin");
    std::fs::remove_file(&batch).unwrap();
    std::fs::create_dir(&batch).unwrap();
    let err = error_of(data::load(
        &args(DatasetName::Cifar10, &folder_in_place.0, false),
        32,
    ));
    assert!(
        err.contains(&format!(
            "cannot read {}: it is a folder, not the dataset's file; delete {}, then run `vit \
             download --dataset cifar10 --data-dir {}`",
            batch.display(),
            dir.display(),
            folder_in_place.0.display()
        )),
        "{err}"
    );

    // A named pipe there: refused before it is opened, whose open would wait for a writer
    // forever (on a thread, so that a regression fails the test rather than hang it).
    std::fs::remove_dir(&batch).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&batch)
        .status()
        .unwrap();
    assert!(made.success());
    let (sender, receiver) = std::sync::mpsc::channel();
    let data_dir = folder_in_place.0.clone();
    std::thread::spawn(move || {
        let loaded = data::load(&args(DatasetName::Cifar10, &data_dir, false), 32);
        let _ = sender.send(error_of(loaded));
    });
    let err = receiver
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("a named pipe as a batch file was opened and waited on");
    assert!(
        err.contains(&format!(
            "cannot read {}: it is a named pipe (FIFO), not the dataset's file; delete {}",
            batch.display(),
            dir.display()
        )),
        "{err}"
    );
}

#[test]
fn bad_sizes_and_labels_are_named() {
    let tmp = TempDir::new("bad");
    let dir = write_cifar10(&tmp.0);
    let load = || error_of(data::load(&args(DatasetName::Cifar10, &tmp.0, false), 32));

    let mut bytes = std::fs::read(dir.join("test_batch.bin")).unwrap();
    bytes.truncate(bytes.len() - 100);
    std::fs::write(dir.join("test_batch.bin"), &bytes).unwrap();
    let err = load();
    assert!(
        err.contains("test_batch.bin") && err.contains("not a positive multiple"),
        "{err}"
    );
    assert_contains(&err, "3073");
    let advice = format!("delete {}, then run `vit download", dir.display());
    assert_contains(&err, &advice);
    // An empty file is no batch, though 0 is a multiple of the record size.
    std::fs::write(dir.join("test_batch.bin"), []).unwrap();
    let err = load();
    assert_contains(
        &err,
        "test_batch.bin: size 0 bytes is not a positive multiple",
    );
    // Counts of one read as one.
    std::fs::write(dir.join("test_batch.bin"), [0u8]).unwrap();
    let err = load();
    assert!(
        err.contains(
            "size 1 byte is not a positive multiple of the record size 3073 (1 label \
                       byte + 3072 pixel bytes)"
        ),
        "{err}"
    );

    // A class-names file that is not ten names, or not text, gets the same advice.
    write_cifar10(&tmp.0);
    std::fs::write(dir.join("batches.meta.txt"), "a\nb\nc\nd\ne\n").unwrap();
    let err = load();
    assert!(
        err.contains("5 class names, expected 10") && err.contains(&advice),
        "{err}"
    );
    std::fs::write(dir.join("batches.meta.txt"), "a\n").unwrap();
    let err = load();
    assert_contains(&err, "1 class name, expected 10");
    std::fs::write(dir.join("batches.meta.txt"), [0xff, 0xfe, 0x00]).unwrap();
    let err = load();
    assert!(
        err.contains("not a UTF-8 text file") && err.contains(&advice),
        "{err}"
    );
    // Two classes of one name could not be told apart by a folder of test images.
    std::fs::write(
        dir.join("batches.meta.txt"),
        "a\nb\nc\nd\ne\nf\ng\nh\ni\na\n",
    )
    .unwrap();
    let err = load();
    assert!(
        err.contains("the class name \"a\" is there twice") && err.contains(&advice),
        "{err}"
    );
    // A byte-order mark (as some editors save) is not part of the first name.
    std::fs::write(
        dir.join("batches.meta.txt"),
        "\u{feff}a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n",
    )
    .unwrap();
    let dataset = data::load(&args(DatasetName::Cifar10, &tmp.0, false), 32).unwrap();
    assert_eq!(dataset.classes[..2], ["a", "b"]);

    write_cifar10(&tmp.0);
    let mut bytes = std::fs::read(dir.join("data_batch_2.bin")).unwrap();
    bytes[3073] = 10; // second record's label
    std::fs::write(dir.join("data_batch_2.bin"), &bytes).unwrap();
    let err = load();
    assert!(
        err.contains("data_batch_2.bin") && err.contains("record 1 has label 10"),
        "{err}"
    );
    assert_contains(&err, "out of range");

    let dir = write_cifar100(&tmp.0);
    let mut bytes = std::fs::read(dir.join("train.bin")).unwrap();
    bytes[1] = 100; // first record's fine label
    std::fs::write(dir.join("train.bin"), &bytes).unwrap();
    let err = error_of(data::load(&args(DatasetName::Cifar100, &tmp.0, false), 32));
    assert!(
        err.contains("train.bin") && err.contains("label 100"),
        "{err}"
    );
    // The coarse labels of the same file are fine.
    data::load(&args(DatasetName::Cifar100, &tmp.0, true), 32).unwrap();
    bytes[3074 * 2] = 20; // third record's coarse label
    std::fs::write(dir.join("train.bin"), &bytes).unwrap();
    let err = error_of(data::load(&args(DatasetName::Cifar100, &tmp.0, true), 32));
    assert!(
        err.contains("record 2 has label 20") && err.contains("then run `vit download"),
        "{err}"
    );
    std::fs::write(dir.join("train.bin"), vec![0u8; 3073]).unwrap();
    let err = error_of(data::load(&args(DatasetName::Cifar100, &tmp.0, false), 32));
    assert_contains(&err, "3074");
}

#[test]
fn files_of_other_sizes_than_the_official_release_are_read_with_a_warning() {
    // A copy cut at a record boundary reads as whole records: only its count tells.
    let tmp = TempDir::new("counts");
    let dir = write_cifar10(&tmp.0);
    let data_dir = tmp.0.to_str().unwrap();
    let output = common::vit(&["data", "--dataset", "cifar10", "--data-dir", data_dir]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for (file, images) in [
        ("data_batch_1.bin", "1 image"),
        ("data_batch_5.bin", "5 images"),
        ("test_batch.bin", "4 images"),
    ] {
        // Fewer images than the release's: a copy cut short at a record boundary.
        let warning = format!(
            "warning: {} holds {images} where the official release has 10000: it may be cut \
             short",
            dir.join(file).display()
        );
        assert!(stderr.contains(&warning), "{warning} not in:\n{stderr}");
    }
    assert!(stderr.contains(&format!("delete {}, then run `vit download", dir.display())));
    // A size of 0 is no size, whatever the dataset.
    let output = common::run_vit(&["data", "--data-dir", data_dir, "--image-size", "0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_contains(&stderr, "expected a whole number of 1 or more");
    write_cifar100(&tmp.0);
    let output = common::vit(&["data", "--dataset", "cifar100", "--data-dir", data_dir]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("train.bin holds 25 images where the official release has 50000"));
    assert!(stderr.contains("test.bin holds 5 images where the official release has 10000"));

    // Files of the official size whose classes are not the release's even counts (all
    // zeros, sparse: no disk space taken) are read with a warning, in the fine labels'
    // classes or the coarse ones'.
    let cifar100 = tmp.0.join("cifar-100-binary");
    for (file, images) in [("train.bin", 50_000), ("test.bin", 10_000)] {
        let file = std::fs::File::create(cifar100.join(file)).unwrap();
        file.set_len(images * 3074).unwrap();
    }
    for (flags, per_class) in [(&[][..], 500), (&["--coarse-labels"][..], 2500)] {
        let mut args = vec!["data", "--dataset", "cifar100", "--data-dir", data_dir];
        args.extend(flags);
        let output = common::vit(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let warning = format!(
            "warning: the training images in cifar-100-binary are not the official release's \
             {per_class} of each class ("
        );
        let advice = format!("delete {}, then run `vit download", cifar100.display());
        assert!(
            output.status.success() && stderr.contains(&warning) && stderr.contains(&advice),
            "{warning} not in:\n{stderr}"
        );
    }
}

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

/// [B,3,H,W] int64 images whose pixel (c, y, x) holds c*10000 + (y+1)*100 + (x+1), so a
/// zero can only be padding.
fn coordinate_images(b: i64, h: i64, w: i64) -> Tensor {
    let c = Tensor::arange(3, (Kind::Int64, Device::Cpu)).view([1, 3, 1, 1]) * 10000;
    let y = (Tensor::arange(h, (Kind::Int64, Device::Cpu)) + 1).view([1, 1, h, 1]) * 100;
    let x = (Tensor::arange(w, (Kind::Int64, Device::Cpu)) + 1).view([1, 1, 1, w]);
    (c + y + x).expand([b, 3, h, w], false).contiguous()
}

/// Checks that every image of `out` is `coordinate_images` shifted by at most `p` rows and
/// columns, zeros exactly where the shift leaves the image; returns how often each row
/// and column shift (-p..=p) occurred.
fn check_crops(out: &Tensor, h: i64, w: i64, p: i64) -> (Vec<usize>, Vec<usize>) {
    let b = out.size()[0];
    assert_eq!(out.size(), [b, 3, h, w]);
    let v = i64s(&out.to_device(Device::Cpu));
    let (hu, wu) = (h as usize, w as usize);
    let mut seen_dy = vec![0usize; 2 * p as usize + 1];
    let mut seen_dx = vec![0usize; 2 * p as usize + 1];
    for i in 0..b as usize {
        let img = &v[i * 3 * hu * wu..(i + 1) * 3 * hu * wu];
        // Some pixel is real (|shift| <= p < size); it gives the shift.
        let k = img.iter().position(|&v| v != 0).unwrap();
        let (y, x) = ((k / wu) % hu, k % wu);
        let (sy, sx) = (img[k] / 100 % 100 - 1, img[k] % 100 - 1);
        let (dy, dx) = (sy - y as i64, sx - x as i64);
        assert!(
            dy.abs() <= p && dx.abs() <= p,
            "shift ({dy}, {dx}) beyond the padding"
        );
        seen_dy[(dy + p) as usize] += 1;
        seen_dx[(dx + p) as usize] += 1;
        for c in 0..3 {
            for y in 0..hu {
                for x in 0..wu {
                    let (yy, xx) = (y as i64 + dy, x as i64 + dx);
                    let inside = (0..h).contains(&yy) && (0..w).contains(&xx);
                    let expected = if inside {
                        c as i64 * 10000 + (yy + 1) * 100 + xx + 1
                    } else {
                        0
                    };
                    assert_eq!(
                        img[(c * hu + y) * wu + x],
                        expected,
                        "image {i} ({c},{y},{x})"
                    );
                }
            }
        }
    }
    (seen_dy, seen_dx)
}

#[test]
fn random_crop_is_a_shifted_window_within_the_padding() {
    let _lock = common::seeded(1);
    let out = transforms::random_crop(&coordinate_images(600, 32, 32), 4);
    let (seen_dy, seen_dx) = check_crops(&out, 32, 32, 4);
    // Every offset occurs (missing one of 9 in 600 draws: p < 1e-29).
    assert!(seen_dy.iter().all(|&n| n > 0), "{seen_dy:?}");
    assert!(seen_dx.iter().all(|&n| n > 0), "{seen_dx:?}");
    // Non-square images keep their size.
    check_crops(
        &transforms::random_crop(&coordinate_images(50, 12, 20), 3),
        12,
        20,
        3,
    );
    // Works on uint8 too, and padding 0 is the identity.
    let u = coordinate_images(2, 8, 8)
        .remainder(256)
        .to_kind(Kind::Uint8);
    assert_eq!(transforms::random_crop(&u, 2).size(), [2, 3, 8, 8]);
    assert_eq!(u8s(&transforms::random_crop(&u, 0)), u8s(&u));
}

/// A crop's row and column offsets are drawn independently: over 600 images, the two
/// differ in about 8 of 9 (equal by chance in 1 of 9).
#[test]
fn random_crop_draws_the_row_and_column_offsets_independently() {
    let _lock = common::seeded(1);
    let out = transforms::random_crop(&coordinate_images(600, 32, 32), 4);
    // The middle pixel of channel 0 is inside every window: (17 + dy) * 100 + 17 + dx.
    let middle = i64s(&out.select(1, 0).select(1, 16).select(1, 16));
    let differ = middle.iter().filter(|&&v| v / 100 != v % 100).count();
    common::assert_binomial_count(
        "crops with other row and column offsets",
        differ,
        600,
        8.0 / 9.0,
    );
}

#[test]
fn horizontal_flip_happens_about_half_the_time() {
    let _lock = common::seeded(2);
    let n = 2000i64;
    let images = coordinate_images(n, 4, 6);
    let out = transforms::random_horizontal_flip(&images, 0.5);
    let same = out.eq_tensor(&images).view([n, -1]).all_dim(1, false);
    let flipped = out
        .eq_tensor(&images.flip([3]))
        .view([n, -1])
        .all_dim(1, false);
    assert!(
        bool::try_from(same.logical_or(&flipped).all()).unwrap(),
        "neither kept nor mirrored"
    );
    let count = flipped.sum(Kind::Int64).int64_value(&[]);
    assert!((800..=1200).contains(&count), "{count} of {n} flipped");
    assert_eq!(
        i64s(&transforms::random_horizontal_flip(&images, 0.0)),
        i64s(&images)
    );
    assert_eq!(
        i64s(&transforms::random_horizontal_flip(&images, 1.0)),
        i64s(&images.flip([3]))
    );
    // p 0 never flips, not even an image whose draw is exactly 0.0 (torchvision flips where
    // `torch.rand(1) < p`): seed 146 draws it for image 18,555 of 32,768.
    let n = 32_768;
    tch::manual_seed(146);
    let draws = Tensor::rand([n], (Kind::Float, Device::Cpu));
    assert_eq!(i64s(&draws.eq(0.0).nonzero()), [18_555], "seed 146's draws");
    let pairs = coordinate_images(n, 1, 2);
    tch::manual_seed(146);
    let out = transforms::random_horizontal_flip(&pairs, 0.0);
    let flipped = out.ne_tensor(&pairs).view([n, -1]).any_dim(1, false);
    assert_eq!(
        i64s(&flipped.nonzero()),
        [0i64; 0],
        "images flipped with p 0"
    );
}

fn random_uint8_batch(b: i64) -> Tensor {
    Tensor::randint(256, [b, 3, 32, 32], (Kind::Uint8, Device::Cpu))
}

#[test]
fn a_fixed_seed_gives_the_same_batch() {
    let _lock = common::seeded(3);
    let images = random_uint8_batch(64);
    tch::manual_seed(42);
    let a = transforms::train_transform(&images, 32);
    tch::manual_seed(42);
    let b = transforms::train_transform(&images, 32);
    tch::manual_seed(43);
    let c = transforms::train_transform(&images, 32);
    assert_eq!(a.size(), [64, 3, 32, 32]);
    assert_eq!(a.kind(), Kind::Float);
    assert!(a.equal(&b));
    assert!(!a.equal(&c));
    let big = transforms::train_transform(&images, 64);
    assert_eq!(big.size(), [64, 3, 64, 64]);
}

/// `train_transform` is the notebook's `RandomCrop(32, padding=4)` then
/// `RandomHorizontalFlip()` (p 0.5), then `ToTensor` and `Normalize`: undoing the
/// normalisation gives back uint8 pixels, each image a window of the zero-padded image
/// shifted by -4..=4 rows and columns (every shift occurring), mirrored about half the time.
/// The pixels carry their coordinates (R = row + 1, G = column + 1, B = 7), so that a zero
/// can only be padding.
#[test]
fn train_transform_is_the_notebooks_crop_with_padding_4_and_flip_with_p_half() {
    let _lock = common::seeded(6);
    let (n, side) = (1000i64, 32i64);
    let options = (Kind::Int64, Device::Cpu);
    let rows = (Tensor::arange(side, options) + 1).view([1, 1, side, 1]);
    let cols = (Tensor::arange(side, options) + 1).view([1, 1, 1, side]);
    let image = Tensor::cat(
        &[
            rows.expand([1, 1, side, side], false),
            cols.expand([1, 1, side, side], false),
            Tensor::full([1, 1, side, side], 7, options),
        ],
        1,
    );
    let images = image.expand([n, 3, side, side], false).to_kind(Kind::Uint8);
    let out = transforms::train_transform(&images, side);
    assert_eq!(out.size(), [n, 3, side, side]);
    // The notebook's Normalize, undone with its constants written out.
    let mean = Tensor::from_slice(&[0.4914, 0.4822, 0.4465]).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&[0.2023, 0.1994, 0.2010]).view([1, 3, 1, 1]);
    let levels = (out.to_kind(Kind::Double) * std + mean) * 255.0;
    let pixels = levels.round();
    assert!(
        (&levels - &pixels).abs().max().double_value(&[]) < 1e-3,
        "not whole uint8 levels"
    );
    let pixels = pixels.to_kind(Kind::Int64);
    // Mirrored: the column numbers fall from left to right (the middle pixels are never
    // padding, as a shift is at most 4).
    let flipped = pixels
        .select(1, 1)
        .select(1, side / 2)
        .select(1, side / 2)
        .lt_tensor(
            &pixels
                .select(1, 1)
                .select(1, side / 2)
                .select(1, side / 2 - 1),
        );
    let mirrored_back = pixels
        .flip([3])
        .where_self(&flipped.view([n, 1, 1, 1]), &pixels);
    // In `coordinate_images`' numbering (channel c, row r, column k as c*10000 + r*100 + k),
    // zero where padding.
    let (r, k) = (mirrored_back.select(1, 0), mirrored_back.select(1, 1));
    let real = r.ne(0).unsqueeze(1);
    let channel = (Tensor::arange(3, options) * 10000).view([1, 3, 1, 1]);
    let numbered =
        (channel + (r * 100 + k).unsqueeze(1)).where_self(&real, &Tensor::zeros([1], options));
    let (seen_dy, seen_dx) = check_crops(&numbered, side, side, 4);
    assert!(seen_dy.iter().all(|&n| n > 0), "{seen_dy:?}");
    assert!(seen_dx.iter().all(|&n| n > 0), "{seen_dx:?}");
    let count = flipped.sum(Kind::Int64).int64_value(&[]) as usize;
    common::assert_binomial_count("mirrored images", count, n as usize, 0.5);
}

#[test]
fn test_transform_is_the_normalize_formula() {
    let _lock = common::seeded(4);
    let images = random_uint8_batch(5);
    let a = transforms::test_transform(&images, 32);
    let b = transforms::test_transform(&images, 32);
    assert!(a.equal(&b));
    // The notebook's `Normalize` constants, written out: CIFAR_MEAN and CIFAR_STD must be
    // these.
    let mean = [0.4914, 0.4822, 0.4465];
    let std = [0.2023, 0.1994, 0.2010];
    assert_eq!((CIFAR_MEAN, CIFAR_STD), (mean, std));
    let pixels = u8s(&images);
    let out = f32s(&a);
    for (i, (&p, &o)) in pixels.iter().zip(&out).enumerate() {
        let c = (i / 1024) % 3;
        let expected = (p as f64 / 255.0 - mean[c]) / std[c];
        assert!((o as f64 - expected).abs() < 1e-5, "{i}: {o} vs {expected}");
    }

    // Resizing a constant image keeps it constant, up and down: every pixel of every
    // channel of every image (each its own value), borders included.
    let values = [[200u8, 17, 96], [0, 255, 128]];
    let constant = Tensor::from_slice(values.as_flattened())
        .view([2, 3, 1, 1])
        .expand([2, 3, 32, 32], false)
        .contiguous();
    for size in [64, 224, 16] {
        let out = transforms::test_transform(&constant, size);
        assert_eq!(out.size(), [2, 3, size, size]);
        let out = f32s(&out);
        let plane = (size * size) as usize;
        for (i, v) in out.iter().enumerate() {
            let (b, c) = (i / (3 * plane), (i / plane) % 3);
            let expected = (values[b][c] as f64 / 255.0 - mean[c]) / std[c];
            assert!(
                (*v as f64 - expected).abs() < 1e-4,
                "{size}: image {b}, channel {c}, pixel {}: {v} vs {expected}",
                i % plane
            );
        }
    }
}

/// A batch that shrinks along one side and grows along the other is antialiased along the
/// side that shrinks, as torchvision's `Resize` (antialias=True) does: rows one in four
/// bright, shrunk 4x (64 -> 16) while the columns grow (8 -> 16), come out a quarter bright
/// away from the edges (each output row averages eight input rows with the triangle filter).
/// A plain bilinear resize would sample two dark rows for each and give 0.
#[test]
fn resizing_down_one_side_and_up_the_other_is_antialiased() {
    let options = (Kind::Int64, Device::Cpu);
    let rows = Tensor::arange(64, options).remainder(4).eq(0);
    let images = rows
        .to_kind(Kind::Float)
        .view([1, 1, 64, 1])
        .expand([2, 3, 64, 8], false);
    let out = transforms::resize(&images, 16);
    assert_eq!(out.size(), [2, 3, 16, 16]);
    let inner = f32s(&out.narrow(2, 1, 14));
    assert!(
        inner.iter().all(|&v| (v - 0.25).abs() < 1e-5),
        "{:?}",
        &inner[..16]
    );
}

/// The transforms' constants are uploaded once per device and then shared: the values
/// arrive exactly, on the device asked for, and a second request is the same storage.
#[test]
fn device_constants_are_uploaded_once() {
    let values = [0.25, -1.5, 1e-3, 7.0];
    for device in common::devices() {
        let first = transforms::device_constants(&values, device);
        assert_eq!(first.device(), device);
        assert_eq!(first.kind(), Kind::Double);
        let back = Vec::<f64>::try_from(first.to_device(Device::Cpu)).unwrap();
        assert_eq!(back, values);
        let again = transforms::device_constants(&values, device);
        assert_eq!(
            first.data_ptr(),
            again.data_ptr(),
            "{device:?}: uploaded twice"
        );
        let other = transforms::device_constants(&values[..3], device);
        assert_ne!(
            first.data_ptr(),
            other.data_ptr(),
            "{device:?}: other values"
        );
        assert_eq!(other.size(), [3]);
    }
}

#[test]
fn channel_stats_of_constant_images() {
    let images = Tensor::cat(
        &[
            Tensor::full([4, 1, 8, 8], 51, (Kind::Uint8, Device::Cpu)),
            Tensor::full([4, 1, 8, 8], 102, (Kind::Uint8, Device::Cpu)),
            Tensor::full([4, 1, 8, 8], 255, (Kind::Uint8, Device::Cpu)),
        ],
        1,
    );
    let split = data::Split {
        images,
        labels: Tensor::zeros([4], (Kind::Int64, Device::Cpu)),
    };
    let (mean, std) = split.channel_stats();
    for (m, e) in mean.iter().zip([0.2, 0.4, 1.0]) {
        assert!((m - e).abs() < 1e-6, "{mean:?}");
    }
    assert!(std.iter().all(|s| s.abs() < 1e-6), "{std:?}");
}

/// Per channel, the population mean and standard deviation of the [0,1] pixels, worked out
/// by hand: channel 0 half black, half white (mean 0.5, std 0.5); channel 1 all 51 (0.2,
/// 0); channel 2 one white pixel in four (0.25, sqrt(0.25 * 0.75)).
#[test]
fn channel_stats_are_the_population_mean_and_std() {
    let planes: [[u8; 4]; 3] = [[0, 255, 255, 0], [51; 4], [0, 0, 255, 0]];
    let image = Tensor::from_slice(planes.as_flattened()).view([1, 3, 2, 2]);
    let split = data::Split {
        images: image.repeat([3, 1, 1, 1]),
        labels: Tensor::zeros([3], (Kind::Int64, Device::Cpu)),
    };
    let (mean, std) = split.channel_stats();
    let expected_std = [0.5, 0.0, (0.25f64 * 0.75).sqrt()];
    for c in 0..3 {
        assert!((mean[c] - [0.5, 0.2, 0.25][c]).abs() < 1e-9, "{mean:?}");
        assert!((std[c] - expected_std[c]).abs() < 1e-9, "{std:?}");
    }
}

/// Per channel, the statistics of every image, in each of the chunks they are summed in
/// (2048 images each): channel 0 is black in the first chunk's images and white in the
/// rest, channel 1 all 51, channel 2 white in every other image.
#[test]
fn channel_stats_cover_every_chunk() {
    const IMAGES: i64 = 5000;
    const FIRST_CHUNK: i64 = 2048;
    let index = Tensor::arange(IMAGES, (Kind::Int64, Device::Cpu));
    let planes = [
        index.ge(FIRST_CHUNK).to_kind(Kind::Int64) * 255,
        index.full_like(51),
        index.remainder(2) * 255,
    ];
    let split = data::Split {
        images: Tensor::stack(&planes, 1)
            .to_kind(Kind::Uint8)
            .view([IMAGES, 3, 1, 1]),
        labels: Tensor::zeros([IMAGES], (Kind::Int64, Device::Cpu)),
    };
    let (mean, std) = split.channel_stats();
    let white = (IMAGES - FIRST_CHUNK) as f64 / IMAGES as f64;
    let expected_mean = [white, 0.2, 0.5];
    let expected_std = [(white * (1.0 - white)).sqrt(), 0.0, 0.5];
    for c in 0..3 {
        assert!((mean[c] - expected_mean[c]).abs() < 1e-9, "{mean:?}");
        assert!((std[c] - expected_std[c]).abs() < 1e-9, "{std:?}");
    }
}

/// A dataset's identity (what a resumed run compares) changes with any sampled pixel of
/// either split (the first and the last sampled value here) and with any label, not only
/// with the counts; the same images give the same one.
#[test]
fn the_data_identity_follows_the_pixels_and_labels() {
    let split = |n: i64, seed: i64| data::Split {
        images: (Tensor::arange(n * 3 * 8 * 8, (Kind::Int64, Device::Cpu)) * seed)
            .remainder(251)
            .to_kind(Kind::Uint8)
            .view([n, 3, 8, 8]),
        labels: Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(2),
    };
    let dataset = || data::Dataset {
        name: "folder".into(),
        train: split(4, 3),
        test: split(2, 5),
        classes: vec!["a".into(), "b".into()],
    };
    let original = dataset().identity();
    assert_eq!(dataset().identity(), original);
    for changed in ["train", "test"] {
        for what in ["first pixel", "last sampled pixel", "last label"] {
            let other = dataset();
            let split = match changed {
                "train" => &other.train,
                _ => &other.test,
            };
            let pixels = split.images.view([-1]);
            // Every 61st value is sampled, from the first.
            let last_sampled = (pixels.size()[0] - 1) / 61 * 61;
            let mut value = match what {
                "first pixel" => pixels.get(0),
                "last sampled pixel" => pixels.get(last_sampled),
                _ => split.labels.get(split.len() - 1),
            };
            // 255 - v differs from any pixel value v, and 1 - l from a label l of 0 or 1.
            let top = if what == "last label" { 1 } else { 255 };
            let _ = value.fill_(top - value.int64_value(&[]));
            let identity = other.identity();
            assert_ne!(
                identity.fingerprint, original.fingerprint,
                "the {changed} split's {what} changed"
            );
            assert_eq!(
                (
                    identity.train_images,
                    identity.test_images,
                    &identity.classes
                ),
                (4, 2, &original.classes)
            );
        }
    }
}

/// Writes DIR/<split>/<class>/<name>.png, a `size`×`size` image whose pixel (x, y) is
/// (value, x, y).
fn write_png(dir: &Path, split: &str, class: &str, name: &str, value: u8, size: u32) {
    let folder = dir.join(split).join(class);
    std::fs::create_dir_all(&folder).unwrap();
    let image = image::RgbImage::from_fn(size, size, |x, y| image::Rgb([value, x as u8, y as u8]));
    image.save(folder.join(format!("{name}.png"))).unwrap();
}

#[test]
fn image_folder_reads_classes_in_name_order() {
    let tmp = TempDir::new("folder");
    // Written out of order; "bird" sorts before "cat" and "zebra".
    write_png(&tmp.0, "train", "zebra", "b", 30, 8);
    write_png(&tmp.0, "train", "zebra", "a", 31, 8);
    write_png(&tmp.0, "train", "bird", "x", 10, 8);
    write_png(&tmp.0, "train", "bird", "w", 12, 8);
    write_png(&tmp.0, "train", "cat", "y", 20, 8);
    write_png(&tmp.0, "test", "cat", "t", 21, 8);
    write_png(&tmp.0, "test", "bird", "t", 11, 8);
    write_png(&tmp.0, "test", "zebra", "t", 32, 8);
    std::fs::write(tmp.0.join("train/cat/notes.txt"), "not an image").unwrap();

    let ds = load_named(&args(DatasetName::Folder, &tmp.0, false), 8, "folder");
    // One of its splits given for the dataset: the error names the folder to pass.
    for split in ["train", "test"] {
        let given = args(DatasetName::Folder, &tmp.0.join(split), false);
        for err in [
            error_of(data::load(&given, 8)),
            error_of(data::load_test(&given, 8, None)),
        ] {
            assert!(
                err.contains(&format!(
                    "{split} is one split of the dataset, not the dataset: pass --data-dir {}",
                    tmp.0.display()
                )),
                "{err}"
            );
        }
    }
    assert_eq!(ds.classes, ["bird", "cat", "zebra"]);
    // The same folder without --dataset folder: the error says to pass it.
    let err = error_of(data::load(&args(DatasetName::Cifar100, &tmp.0, false), 32));
    assert_contains(
        &err,
        "holds a test/ folder: for your own images, pass --dataset folder",
    );
    // Classes interleaved, so that any first N images cover every class.
    assert_eq!(i64s(&ds.train.labels), [0, 1, 2, 0, 2]);
    assert_eq!(i64s(&ds.test.labels), [0, 1, 2]);
    assert_eq!(ds.train.images.size(), [5, 3, 8, 8]);
    assert_eq!(ds.train.images.kind(), Kind::Uint8);
    // Files sorted within a class (w before x, a before b); CHW: channel 0 = value, 1 = x,
    // 2 = y.
    let red: Vec<i64> = (0..5)
        .map(|i| ds.train.images.int64_value(&[i, 0, 3, 5]))
        .collect();
    assert_eq!(red, [12, 20, 31, 10, 30]);
    assert_eq!(ds.train.images.int64_value(&[1, 1, 3, 5]), 5);
    assert_eq!(ds.train.images.int64_value(&[1, 2, 3, 5]), 3);
    // The test split holds test/'s images, not train/'s (whose labels run alike).
    let red: Vec<i64> = (0..3)
        .map(|i| ds.test.images.int64_value(&[i, 0, 3, 5]))
        .collect();
    assert_eq!(red, [11, 21, 32]);
    // A size of 0 is refused by the reader too, not only by the command line.
    for err in [
        error_of(folder::load(&tmp.0, 0)),
        error_of(folder::load_test(&tmp.0, 0, None)),
    ] {
        assert_contains(&err, "--image-size must be positive, got 0");
    }

    // Resized on load.
    let ds = data::load(&args(DatasetName::Folder, &tmp.0, false), 4).unwrap();
    assert_eq!(ds.train.images.size(), [5, 3, 4, 4]);
    assert_eq!(
        i64s(&ds.train.images.select(1, 0).select(0, 0)),
        vec![12; 16]
    );

    // A class only in the test split.
    write_png(&tmp.0, "test", "dog", "t", 40, 8);
    let err = error_of(data::load(&args(DatasetName::Folder, &tmp.0, false), 8));
    assert!(
        err.contains(
            "the test classes differ from the train classes (test/ has \"dog\" that train/ \
             lacks); both splits need the same class folders"
        ),
        "{err}"
    );
    std::fs::remove_dir_all(tmp.0.join("test")).unwrap();
    let err = error_of(data::load(&args(DatasetName::Folder, &tmp.0, false), 8));
    let needs = "is missing: a folder dataset needs DIR/train/<class>/*.png|jpg|jpeg";
    assert_contains(&err, &format!("{} {needs}", tmp.0.join("test").display()));
    // A relative --data-dir is read from the folder vit runs in: the message names it.
    let relative = Path::new("no-such-folder-dataset");
    let err = error_of(data::load(&args(DatasetName::Folder, relative, false), 8));
    let here = std::env::current_dir().unwrap();
    assert!(
        err.contains(&format!(
            "no-such-folder-dataset/train (in the current folder, {}) {needs}",
            here.display()
        )),
        "{err}"
    );
    assert!(
        err.ends_with("; give --data-dir the folder that holds train/ and test/"),
        "{err}"
    );
    // Loose images given as the dataset: they need class folders, or `vit predict`.
    let loose = tmp.0.join("loose");
    std::fs::create_dir_all(&loose).unwrap();
    image::RgbImage::new(4, 4)
        .save_with_format(loose.join("cat.PNG"), image::ImageFormat::Png)
        .unwrap();
    let err = error_of(data::load(&args(DatasetName::Folder, &loose, false), 8));
    let expected = format!(
        "{} is missing: {} holds images itself, not in class folders, and a folder dataset \
         needs DIR/train/<class>/*.png|jpg|jpeg",
        loose.join("train").display(),
        loose.display()
    );
    assert_contains(&err, &expected);
    let predict = format!("`vit predict --checkpoint FILE {}`", loose.display());
    assert_contains(&err, &predict);
    // A file given as the folder is named as one.
    let file = tmp.0.join("test.txt");
    std::fs::write(&file, b"").unwrap();
    let err = error_of(data::load(&args(DatasetName::Folder, &file, false), 8));
    let expected = format!(
        "{} is a file, not a folder: --data-dir takes the folder that holds train/ and test/",
        file.display()
    );
    assert_contains(&err, &expected);
    // A CIFAR download read as a folder dataset: the --dataset it needs, or the --data-dir
    // the user meant (the default, data, is where CIFAR goes).
    let cifar = tmp.0.join("downloads");
    std::fs::create_dir_all(cifar.join("cifar-100-binary")).unwrap();
    let err = error_of(data::load(&args(DatasetName::Folder, &cifar, false), 8));
    assert!(
        err.contains(
            "holds cifar-100-binary, a CIFAR download, not a folder dataset: pass \
             --dataset cifar100 for it, or --data-dir the folder of your own images (a folder \
             dataset needs DIR/train/<class>/*.png|jpg|jpeg and DIR/test/<class>/*.png|jpg|jpeg \
             (evaluating, only test/))"
        ),
        "{err}"
    );
}

#[test]
fn image_folder_names_undecodable_files() {
    let tmp = TempDir::new("folderbad");
    write_png(&tmp.0, "train", "a", "ok", 1, 4);
    write_png(&tmp.0, "test", "a", "ok", 1, 4);
    std::fs::write(tmp.0.join("train/a/broken.jpg"), b"not a jpeg").unwrap();
    let err = error_of(folder::load(&tmp.0, 4));
    assert_contains(&err, "broken.jpg");
    assert_contains(&err, "convert, replace or remove it");
    // Every bad file of either split is named at once, not one per run.
    std::fs::write(tmp.0.join("train/a/empty.png"), b"").unwrap();
    std::fs::write(tmp.0.join("test/a/text.jpeg"), b"text").unwrap();
    let err = error_of(folder::load(&tmp.0, 4));
    assert!(
        err.contains("3 files cannot be decoded: the first is below, the others are")
            && err.contains("train/a/empty.png")
            && err.contains("test/a/text.jpeg"),
        "{err}"
    );
    let empty = tmp.0.join("train/a/empty.png");
    let err = error_of(decode_images(&[empty.as_path()], 4));
    assert!(
        err.contains(&format!(
            "{} is empty (0 bytes): replace or remove it",
            empty.display()
        )),
        "{err}"
    );
    std::fs::remove_file(&empty).unwrap();
    std::fs::remove_file(tmp.0.join("test/a/text.jpeg")).unwrap();
    // A size no memory holds is an error before any file is read (not an abort).
    let broken = tmp.0.join("train/a/broken.jpg");
    let err = error_of(decode_images(&[broken.as_path()], 1 << 24));
    assert!(
        err.contains(&format!(
            "1 image of 16777216x16777216 pixels needs 844424.9 GB, more memory than there \
             is; {REMEDY}"
        )),
        "{err}"
    );
    // Training's flag sets the size; a checkpoint's test folder can change only its count.
    let err = error_of(folder::load(&tmp.0, 1 << 24));
    assert_contains(
        &err,
        "more memory than there is; use a smaller --image-size",
    );
    let err = error_of(folder::load_test(&tmp.0, 1 << 24, None));
    assert!(
        err.contains(
            "more memory than there is; the checkpoint sets the image size, so evaluate on a \
             test folder of fewer images"
        ),
        "{err}"
    );
}

/// What the tests' decodes say to do where the images do not fit in memory.
const REMEDY: &str = "(what to do)";

/// [`image_file::decode_images`], with [`REMEDY`].
fn decode_images(files: &[&Path], size: u32) -> anyhow::Result<Tensor> {
    image_file::decode_images(files, size, REMEDY)
}

/// Of many files that cannot be decoded, the error names ten besides the first (whose
/// own error it shows) and counts the others.
#[test]
fn image_folder_lists_ten_undecodable_files_and_counts_the_others() {
    let tmp = TempDir::new("folder-undecodable");
    write_png(&tmp.0, "train", "a", "ok", 1, 4);
    write_png(&tmp.0, "test", "a", "ok", 1, 4);
    for i in 0..13 {
        let path = tmp.0.join(format!("train/a/bad{i:02}.jpg"));
        std::fs::write(path, b"not a jpeg").unwrap();
    }
    let err = error_of(folder::load(&tmp.0, 4));
    assert_contains(
        &err,
        "13 files cannot be decoded: the first is below, the others are ",
    );
    let (listed, _) = err.split_once(" and 2 more").expect(&err);
    let (_, listed) = listed.split_once("the others are ").unwrap();
    assert_eq!(listed.split(", ").count(), 10, "{err}");
    assert_eq!(listed.matches(".jpg").count(), 10, "{err}");
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), Compression::fast());
    std::io::Write::write_all(&mut encoder, bytes).unwrap();
    encoder.finish().unwrap()
}

/// A PNG file: its signature, an IHDR of `width` x `height` at 8 bits of `colour_type`,
/// then `chunks` (kind, data), each with its length and CRC.
fn png_file(width: u32, height: u32, colour_type: u8, chunks: &[(&[u8], &[u8])]) -> Vec<u8> {
    png_file_interlaced(width, height, colour_type, false, chunks)
}

/// [`png_file`], Adam7-interlaced where `interlaced`.
fn png_file_interlaced(
    width: u32,
    height: u32,
    colour_type: u8,
    interlaced: bool,
    chunks: &[(&[u8], &[u8])],
) -> Vec<u8> {
    let header = [
        &width.to_be_bytes()[..],
        &height.to_be_bytes(),
        &[8, colour_type, 0, 0, u8::from(interlaced)],
    ]
    .concat();
    let mut file = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(&b"IHDR"[..], &header[..])]
        .into_iter()
        .chain(chunks.iter().copied())
    {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        file.extend((data.len() as u32).to_be_bytes());
        file.extend([kind, data].concat());
        file.extend(crc.sum().to_be_bytes());
    }
    file
}

/// A JPEG of 64x64 noise, as a camera would write it.
fn jpeg_bytes() -> Vec<u8> {
    let image = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([
            pixel(7, 0, y as usize, x as usize),
            (x * y) as u8,
            (x ^ y) as u8 * 4,
        ])
    });
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    bytes
}

/// What PIL refuses, vit refuses too, naming the file: a JPEG cut short (which the decoder
/// would fill with made-up pixels) and an image too large to decode (whose header alone says
/// so); a file read from a pipe decodes.
#[test]
fn images_cut_short_or_too_large_are_refused() {
    let tmp = TempDir::new("imagecheck");
    let decode = |name: &str, bytes: &[u8]| {
        let path = tmp.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        decode_images(&[path.as_path()], 8).map(|_| ())
    };
    let jpeg = jpeg_bytes();
    decode("whole.jpg", &jpeg).unwrap();
    // A phone's motion photo appends a video, whose bytes may look like any marker.
    let trailer = [&jpeg[..], b"\xff\xda\x00\x08video\xff\xda"].concat();
    decode("trailer.jpg", &trailer).unwrap();
    // An embedded thumbnail (in an APP2 segment, as EXIF holds one) is skipped whole.
    let segment_length = (jpeg.len() + 2) as u16;
    let thumbnail = [b"\xff\xe2", &segment_length.to_be_bytes()[..], &jpeg[..]].concat();
    let with_thumbnail = [&jpeg[..2], &thumbnail[..], &jpeg[2..]].concat();
    decode("thumbnail.jpg", &with_thumbnail).unwrap();
    let scan = jpeg
        .windows(2)
        .position(|pair| pair == [0xFF, 0xDA])
        .unwrap();
    assert!(jpeg.len() - scan > 1000, "too little image data to cut");
    for (name, bytes) in [
        ("no-end.jpg", &jpeg[..jpeg.len() - 2]),
        ("half.jpg", &jpeg[..scan + 500]),
        (
            "thumbnail-half.jpg",
            &with_thumbnail[..with_thumbnail.len() - 40],
        ),
        // Cut short, then another whole JPEG after it (whose end marker is not this one's).
        ("appended.jpg", &[&jpeg[..scan + 500], &jpeg[..]].concat()),
        // Cut inside its headers, where the decoder itself stops: the same message, on one
        // line (not the decoder's, which said "Not enough bytes" twice, over three lines).
        ("headers.jpg", &jpeg[..scan / 2]),
        ("start.jpg", &jpeg[..4]),
    ] {
        let err = error_of(decode(name, bytes));
        assert!(
            err.contains(name) && err.contains("ends before its image data") && !err.contains('\n'),
            "{err}"
        );
    }
    // A file the decoder refuses for what it holds: its words, on one line, once.
    // Its frame header (SOF) says 12 bits a sample, of a baseline JPEG.
    let mut garbled = jpeg.clone();
    let frame = jpeg
        .windows(2)
        .position(|pair| pair == [0xFF, 0xC0])
        .unwrap();
    garbled[frame + 4] = 12;
    let err = error_of(decode("garbled.jpg", &garbled));
    assert!(
        err.starts_with("cannot decode")
            && err.contains("garbled.jpg, a damaged JPEG file: replace it")
            && err.matches("12 bits").count() == 1
            && !err.contains('\n'),
        "{err}"
    );
    // A PNG one of whose chunks before the image data fails its checksum (CRC) is damaged
    // too, not a format to convert, and its chunk is named; from the image data on, PIL
    // checks no CRC, nor does vit.
    let text = (&b"tEXt"[..], &b"a\0b"[..]);
    let mut bad_crc = png_file(1, 1, 0, &[text, (b"IDAT", &zlib(&[0, 7])), (b"IEND", &[])]);
    let text_crc = 8 + 25 + 8 + 3;
    bad_crc[text_crc] ^= 0xFF;
    let err = error_of(decode("crc.png", &bad_crc));
    assert!(
        err.starts_with("cannot decode")
            && err.contains("crc.png, a damaged PNG file")
            && err.contains("CRC error in its tEXt chunk")
            && !err.contains("convert"),
        "{err}"
    );
    let idat = zlib(&[0, 7]);
    let mut after_crc = png_file(1, 1, 0, &[(b"IDAT", &idat), text, (b"IEND", &[])]);
    let idat_end = 8 + 25 + 12 + idat.len();
    for chunk_end in [idat_end, idat_end + 15, after_crc.len()] {
        after_crc[chunk_end - 4] ^= 0xFF;
    }
    let path = tmp.0.join("after.png");
    std::fs::write(&path, &after_crc).unwrap();
    let image = decode_images(&[path.as_path()], 1).unwrap();
    assert_eq!(
        Vec::<u8>::try_from(image.flatten(0, -1)).unwrap(),
        [7, 7, 7]
    );
    // A chunk's name is cut at the end of its name, not at a brace or a " }" in it: one
    // written with escapes, one with a space and a brace.
    let odd = png_file(
        1,
        1,
        0,
        &[(b"A }B", b""), (b"IDAT", &zlib(&[0, 7])), (b"IEND", &[])],
    );
    let err = error_of(decode("brace.png", &odd));
    assert!(err.contains("A }B") && !err.contains("critical:"), "{err}");
    let mut odd_name = png_file(1, 1, 0, &[(b"IDAT", &zlib(&[0, 7])), (b"IEND", &[])]);
    odd_name[14] = 1;
    let err = error_of(decode("name.png", &odd_name));
    assert!(
        err.contains(r"IH\u{1}R chunk") && !err.contains("critical"),
        "{err}"
    );

    // A greyscale PNG of 20000x10000 (a 200 MB image from a header of a few bytes): only
    // its header is written, so only the header can be what refuses it.
    let bomb = png_file(
        20000,
        10000,
        0,
        // The first row's bytes (the decoder reads the header up to here).
        &[(b"IDAT", &zlib(&[0; 20001])), (b"IEND", &[])],
    );
    let err = error_of(decode("bomb.png", &bomb));
    assert!(
        err.contains("bomb.png is 20000x10000 pixels") && err.contains("downscale"),
        "{err}"
    );
    let header_only = png_file(i32::MAX as u32, 1, 6, &[]);
    let err = error_of(decode("wide.png", &header_only));
    assert_contains(&err, "wide.png is 2147483647x1 pixels");
    // A strip under the pixel limit, too wide for the resize's column pass (its float
    // buffer, width x 8 x 16 bytes, would be 1.15 GB), is resized with the passes turned:
    // black on the left, white on the right, and the middle between.
    let mut row = vec![0u8; 9_000_001];
    row[4_500_001..].fill(255);
    let strip = png_file(9_000_000, 1, 0, &[(b"IDAT", &zlib(&row)), (b"IEND", &[])]);
    let path = tmp.0.join("strip.png");
    std::fs::write(&path, &strip).unwrap();
    let resized = decode_images(&[path.as_path()], 8).unwrap();
    assert_eq!(resized.size(), [1, 3, 8, 8]);
    let columns = i64s(&resized.get(0).get(0).get(0));
    // Every row and channel alike.
    assert_eq!(i64s(&resized), columns.repeat(24));
    assert_eq!(
        (columns[..3].to_vec(), columns[5..].to_vec()),
        (vec![0; 3], vec![255; 3])
    );
    assert!(
        columns[2] < columns[3] && columns[3] < columns[4] && columns[4] < 255,
        "{columns:?}"
    );

    let fifo = tmp.0.join("pipe.jpg");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let writer = {
        let (fifo, jpeg) = (fifo.clone(), jpeg.clone());
        std::thread::spawn(move || std::fs::write(fifo, jpeg).unwrap())
    };
    let piped = decode_images(&[fifo.as_path()], 8).unwrap();
    writer.join().unwrap();
    let whole = decode_images(&[tmp.0.join("whole.jpg").as_path()], 8).unwrap();
    assert!(piped.equal(&whole));
}

/// JPEG files as PIL (libjpeg) writes them, in the variants cameras and tools use
/// (progressive, restart markers, an EXIF thumbnail, ...): vit decodes each whole file and
/// refuses it at each length where PIL refuses it cut (`jpeg_reference.py`).
#[test]
fn jpegs_decode_whole_and_are_refused_where_pil_refuses_them_cut() {
    let fixture = common::fixture("jpeg_files");
    let tmp = TempDir::new("jpegfixture");
    let mut variants = Vec::new();
    for (name, file) in &fixture.tensors {
        let Some(cuts) = fixture.tensors.get(&format!("{name}.cuts")) else {
            continue;
        };
        let bytes = Vec::<u8>::try_from(file).unwrap();
        let path = tmp.0.join(format!("{name}.jpg"));
        std::fs::write(&path, &bytes).unwrap();
        if let Err(error) = decode_images(&[path.as_path()], 8) {
            panic!("{name}: {error:#}");
        }
        for cut in Vec::<i64>::try_from(cuts).unwrap() {
            std::fs::write(&path, &bytes[..cut as usize]).unwrap();
            let decoded = decode_images(&[path.as_path()], 8);
            assert!(
                decoded.is_err(),
                "{name}, cut to {cut} of {} bytes, was decoded",
                bytes.len()
            );
        }
        variants.push(name.as_str());
    }
    assert_eq!(variants.len(), 8, "{variants:?}");
}

/// The same JPEG variants decode close to PIL's pixels (`convert("RGB")`, greyscale and
/// CMYK included): `image`'s decoder reconstructs a little differently from libjpeg, within
/// a few levels, never by a wrong colour, a shifted block or a level added everywhere.
/// Measured on these 44x44 files, in levels of 255: in the whole 16x16 blocks (the first
/// 32x32 pixels; a CIFAR image is whole blocks) at most 3 off, 0.38 on average. Past them,
/// where a colour image with subsampled chroma (4:2:0) ends inside a block, up to 15 off
/// (blue, in the last column: the two upsample the chroma differently at the edge), 0.46 on
/// average over the whole image; without subsampling (4:4:4, grey, CMYK), at most 2 off
/// anywhere and 0.014 on average.
#[test]
fn jpegs_decode_close_to_pils_pixels() {
    // (region, max, mean) bounds: the whole blocks, then the whole image.
    let bounds = |name: &str| match name {
        "optimized_444" | "grey" | "cmyk" => [(32, 2, 0.05), (44, 2, 0.05)],
        _ => [(32, 4, 0.45), (44, 16, 0.55)],
    };
    let fixture = common::fixture("jpeg_files");
    let tmp = TempDir::new("jpegpixels");
    let mut variants = Vec::new();
    for (name, file) in &fixture.tensors {
        let Some(pixels) = fixture.tensors.get(&format!("{name}.pixels")) else {
            continue;
        };
        let expected = pixels.permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Int64);
        let side = pixels.size()[0];
        assert_eq!(pixels.size(), [side, side, 3], "{name}: a square image");
        let path = tmp.0.join(format!("{name}.jpg"));
        std::fs::write(&path, Vec::<u8>::try_from(file).unwrap()).unwrap();
        let decoded = decode_images(&[path.as_path()], side as u32)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let error = (decoded.to_kind(Kind::Int64) - expected).abs();
        let bounds = bounds(name);
        assert_eq!(
            side, bounds[1].0,
            "{name}: the side the bounds were measured on"
        );
        for (region, max_bound, mean_bound) in bounds {
            let error = error.narrow(2, 0, region).narrow(3, 0, region);
            let max = error.max().int64_value(&[]);
            let mean = error
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[]);
            // With --nocapture: the figures the doc comment quotes.
            println!("{name}, first {region}x{region}: max error {max}, mean {mean:.3}");
            assert!(
                max <= max_bound && mean <= mean_bound,
                "{name}, first {region}x{region} pixels: max error {max}, mean {mean:.3} \
                 levels from PIL's pixels"
            );
        }
        variants.push(name.as_str());
    }
    assert_eq!(variants.len(), 8, "{variants:?}");
}

/// PNG variants (`png_reference.py`) decode to PIL's pixels (16-bit grey: to its high
/// byte), also with their last 16 bytes cut off (the last data chunk's CRC, the IEND chunk),
/// and are refused where PIL refuses them, cut inside their image data.
#[test]
fn pngs_decode_to_pils_pixels_and_are_refused_where_pil_refuses_them_cut() {
    let fixture = common::fixture("png_files");
    let tmp = TempDir::new("pngfixture");
    let mut variants = Vec::new();
    for (name, file) in &fixture.tensors {
        let Some(pixels) = fixture.tensors.get(&format!("{name}.pixels")) else {
            continue;
        };
        let expected = pixels.permute([2, 0, 1]).unsqueeze(0);
        let side = pixels.size()[0] as u32;
        let bytes = Vec::<u8>::try_from(file).unwrap();
        let path = tmp.0.join(format!("{name}.png"));
        let lengths = |key: &str| Vec::<i64>::try_from(&fixture.tensors[&format!("{name}.{key}")]);
        for length in [bytes.len() as i64]
            .into_iter()
            .chain(lengths("decoded").unwrap())
        {
            std::fs::write(&path, &bytes[..length as usize]).unwrap();
            match decode_images(&[path.as_path()], side) {
                Ok(images) => assert!(
                    images.equal(&expected),
                    "{name}, {length} of {} bytes: pixels differ from PIL's",
                    bytes.len()
                ),
                Err(e) => panic!("{name}, {length} of {} bytes: {e:#}", bytes.len()),
            }
        }
        for length in lengths("refused").unwrap() {
            std::fs::write(&path, &bytes[..length as usize]).unwrap();
            let Err(err) = decode_images(&[path.as_path()], side) else {
                panic!(
                    "{name}, cut to {length} of {} bytes, was decoded",
                    bytes.len()
                );
            };
            let err = format!("{err:#}");
            assert!(
                err.contains("ends before its image data does"),
                "{name}, {length}: {err}"
            );
        }
        variants.push(name.as_str());
    }
    assert_eq!(variants.len(), 12, "{variants:?}");

    // A palette that is not whole RGB entries (PIL drops the stray bytes) is refused by
    // name; the decoder would panic on it.
    let stray_byte: &[u8] = &[255, 0, 0, 7];
    let png = png_file(
        1,
        1,
        3,
        &[
            (b"PLTE", stray_byte),
            (b"IDAT", &zlib(&[0, 0])),
            (b"IEND", &[]),
        ],
    );
    let path = tmp.0.join("palette.png");
    std::fs::write(&path, &png).unwrap();
    let err = error_of(decode_images(&[path.as_path()], 1));
    assert!(
        err.contains("palette.png") && err.contains("not whole RGB entries"),
        "{err}"
    );
    // In a colour image the palette is only a suggestion, never used: decoded, as in PIL.
    let png = png_file(
        1,
        1,
        2,
        &[
            (b"PLTE", stray_byte),
            (b"IDAT", &zlib(&[0, 1, 2, 3])),
            (b"IEND", &[]),
        ],
    );
    std::fs::write(&path, &png).unwrap();
    let image = decode_images(&[path.as_path()], 1).unwrap();
    assert_eq!(Vec::<u8>::try_from(image.reshape([-1])).unwrap(), [1, 2, 3]);
}

/// The stored rows of an RGB image (`pixels[y][x]`) interlaced with Adam7: the rows of its
/// seven passes (each every `dx`-th pixel from `x0` of every `dy`-th row from `y0`), a pass
/// without pixels left out, each row after filter byte 0.
fn adam7_rows(pixels: &[Vec<[u8; 3]>]) -> Vec<u8> {
    let (height, width) = (pixels.len(), pixels[0].len());
    let passes = [
        (0, 8, 0, 8),
        (4, 8, 0, 8),
        (0, 4, 4, 8),
        (2, 4, 0, 4),
        (0, 2, 2, 4),
        (1, 2, 0, 2),
        (0, 1, 1, 2),
    ];
    let mut bytes = Vec::new();
    for (x0, dx, y0, dy) in passes {
        if x0 >= width || y0 >= height {
            continue;
        }
        for row in pixels[y0..].iter().step_by(dy) {
            bytes.push(0);
            bytes.extend(row[x0..].iter().step_by(dx).flatten());
        }
    }
    bytes
}

/// What PIL decodes or refuses at the edges of the PNG format (checked with Pillow 12:
/// `Image.open(...).convert("RGB")`): interlaced images so small that some of Adam7's passes
/// are empty decode to their pixels; a bad CRC on an ancillary chunk before the image data
/// (PIL: "cannot identify image file") or a bad zlib checksum after it ("broken data
/// stream") is refused; an image of exactly 2 x `Image.MAX_IMAGE_PIXELS` (178,956,970)
/// pixels is opened (with a warning), one pixel more is a `DecompressionBombError`.
#[test]
fn pngs_at_the_edges_of_the_format_are_decoded_or_refused_as_pil_does() {
    let tmp = TempDir::new("png-edges");
    let decode = |name: &str, bytes: &[u8], size: u32| {
        let path = tmp.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        decode_images(&[path.as_path()], size)
    };
    for side in 1..=9usize {
        let pixels: Vec<Vec<[u8; 3]>> = (0..side)
            .map(|y| {
                (0..side)
                    .map(|x| {
                        [
                            pixel(side, 0, y, x),
                            pixel(side, 1, y, x),
                            pixel(side, 2, y, x),
                        ]
                    })
                    .collect()
            })
            .collect();
        let png = png_file_interlaced(
            side as u32,
            side as u32,
            2,
            true,
            &[(b"IDAT", &zlib(&adam7_rows(&pixels))), (b"IEND", &[])],
        );
        let name = format!("interlaced_{side}.png");
        let decoded = decode(&name, &png, side as u32).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let expected: Vec<u8> = (0..3)
            .flat_map(|c| pixels.iter().flatten().map(move |rgb| rgb[c]))
            .collect();
        assert_eq!(u8s(&decoded), expected, "{name}");
    }

    // One pixel, (10, 20, 30).
    let rows = zlib(&[0, 10, 20, 30]);
    // gAMA 1/2.2, as an image editor writes it, but one bit of its CRC flipped.
    let gamma = 45_455u32.to_be_bytes();
    let mut png = png_file(
        1,
        1,
        2,
        &[(b"gAMA", &gamma), (b"IDAT", &rows), (b"IEND", &[])],
    );
    let decoded = decode("gamma.png", &png, 1).unwrap();
    assert_eq!(u8s(&decoded), [10, 20, 30]);
    let gamma_crc = png.windows(4).position(|w| w == b"gAMA").unwrap() + 8;
    png[gamma_crc] ^= 1;
    let err = error_of(decode("bad-crc.png", &png, 1));
    assert_contains(&err, "bad-crc.png");
    // The zlib stream's Adler-32 checksum (its last 4 bytes) with one bit flipped.
    let mut bad_checksum = rows.clone();
    *bad_checksum.last_mut().unwrap() ^= 1;
    let png = png_file(1, 1, 2, &[(b"IDAT", &bad_checksum), (b"IEND", &[])]);
    let err = error_of(decode("bad-checksum.png", &png, 1));
    assert_contains(&err, "bad-checksum.png");
    // The image data split in two chunks, the second only the checksum, which comes after
    // every row: decoded; with one bit of either chunk's CRC flipped, decoded too, as PIL
    // does, which checks no CRC from the image data on (`image` refuses it).
    let (data, checksum) = rows.split_at(rows.len() - 4);
    let mut png = png_file(
        1,
        1,
        2,
        &[(b"IDAT", data), (b"IDAT", checksum), (b"IEND", &[])],
    );
    assert_eq!(u8s(&decode("split.png", &png, 1).unwrap()), [10, 20, 30]);
    // The second IDAT's CRC (before IEND's 12 bytes), then the first's.
    for crc in [png.len() - 12 - 4, 8 + 25 + 8 + data.len()] {
        png[crc] ^= 1;
        assert_eq!(u8s(&decode("bad-crc.png", &png, 1).unwrap()), [10, 20, 30]);
    }

    // The pixel limit, told from the header: a few bytes of image data follow it (both
    // files are far short of their first row, so either is refused, for one reason or the
    // other).
    let limit = 178_956_970u32;
    let first_row = zlib(&[0; 11]);
    for (width, refused_by_size) in [(limit, false), (limit + 1, true)] {
        let png = png_file(width, 1, 0, &[(b"IDAT", &first_row), (b"IEND", &[])]);
        let err = error_of(decode("limit.png", &png, 8));
        assert_eq!(
            err.contains("pixels, more than vit decodes"),
            refused_by_size,
            "{width}x1: {err}"
        );
    }
}

/// Classes are numbered in the order of Python's `sorted()` of their folder names, as
/// torchvision's ImageFolder numbers them (by code point: digits, capitals, `_`, small
/// letters, then other letters), whatever order the folders were made in or the file
/// system lists them.
#[test]
fn image_folder_numbers_classes_in_pythons_sorted_order() {
    let tmp = TempDir::new("folder-order");
    let made = ["zebra", "Yak", "10", "9", "ant", "émeu", "_misc", "bee"];
    for (value, class) in made.iter().enumerate() {
        for split in ["train", "test"] {
            write_png(&tmp.0, split, class, "0", value as u8, 2);
        }
    }
    let ds = folder::load(&tmp.0, 2).unwrap();
    // sorted(["zebra", "Yak", "10", "9", "ant", "émeu", "_misc", "bee"]) in Python.
    let sorted = ["10", "9", "Yak", "_misc", "ant", "bee", "zebra", "émeu"];
    assert_eq!(ds.classes, sorted);
    for split in [&ds.train, &ds.test] {
        let labels = i64s(&split.labels);
        assert_eq!(labels, (0..8).collect::<Vec<i64>>());
        // Each image is its class's: the red value it was written with.
        for (row, &label) in labels.iter().enumerate() {
            let class = sorted[label as usize];
            let value = made.iter().position(|made| *made == class).unwrap();
            assert_eq!(
                split.images.int64_value(&[row as i64, 0, 0, 0]),
                value as i64
            );
        }
    }
}

/// A link to a sibling folder is no loop: its images are read again, as torchvision's
/// `os.walk(followlinks=True)` reads them; only a link to a folder above is refused.
#[test]
fn image_folder_follows_a_link_to_a_sibling_folder() {
    let tmp = TempDir::new("folder-sibling");
    write_png(&tmp.0, "train", "cat/a", "0", 1, 2);
    write_png(&tmp.0, "train", "cat/c", "0", 2, 2);
    std::os::unix::fs::symlink("a", tmp.0.join("train/cat/b")).unwrap();
    write_png(&tmp.0, "test", "cat", "0", 3, 2);
    let ds = folder::load(&tmp.0, 2).unwrap();
    // a/0.png, b/0.png (a's, through the link), c/0.png: in path order.
    let red: Vec<i64> = (0..3)
        .map(|i| ds.train.images.int64_value(&[i, 0, 0, 0]))
        .collect();
    assert_eq!(red, [1, 1, 2]);
}

/// Files are decoded a block at a time (64 per core): more files than a block, one of
/// them undecodable in the last, each decoded image lands in its own row and the failure
/// is the right file's.
#[test]
fn images_of_several_decoding_blocks_keep_their_order() {
    let tmp = TempDir::new("folder-blocks");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = 2 * 64 * cores + 5;
    let broken = n - 2;
    let paths: Vec<PathBuf> = (0..n)
        .map(|i| {
            let path = tmp.0.join(format!("{i:05}.png"));
            if i == broken {
                std::fs::write(&path, b"not a png").unwrap();
            } else {
                image::RgbImage::from_pixel(1, 1, image::Rgb([i as u8, (i / 256) as u8, 9]))
                    .save(&path)
                    .unwrap();
            }
            path
        })
        .collect();
    let files: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let decoded = image_file::decode_readable(&files, 1, REMEDY).unwrap();
    let failed: Vec<usize> = decoded.failures.iter().map(|(index, _)| *index).collect();
    assert_eq!(failed, [broken]);
    let readable: Vec<usize> = (0..n).filter(|&i| i != broken).collect();
    assert_eq!(decoded.indices, readable);
    let expected: Vec<u8> = readable
        .iter()
        .flat_map(|&i| [i as u8, (i / 256) as u8, 9])
        .collect();
    assert_eq!(u8s(&decoded.images), expected);
    let err = error_of(decode_images(&files, 1));
    assert_contains(&err, &format!("{broken:05}.png"));
}

/// A symbolic link back to a folder above it is refused (it would repeat images without
/// end, under the wrong label); macOS's `._*` files are skipped; a class holding only
/// images vit cannot read says so; so do images without a class folder, and a class
/// folder whose name is not UTF-8.
#[test]
fn image_folder_refuses_link_loops_and_explains_skipped_files() {
    let tmp = TempDir::new("folderloop");
    for split in ["train", "test"] {
        write_png(&tmp.0, split, "cat", "0", 1, 4);
        write_png(&tmp.0, split, "dog", "0", 2, 4);
    }
    std::fs::write(
        tmp.0.join("train/cat/._0.png"),
        b"\x00\x05\x16\x07 AppleDouble",
    )
    .unwrap();
    let dataset = folder::load(&tmp.0, 4).unwrap();
    assert_eq!(dataset.train.len(), 2);

    let link = tmp.0.join("train/cat/up");
    std::os::unix::fs::symlink("..", &link).unwrap();
    let err = error_of(folder::load(&tmp.0, 4));
    assert!(
        err.contains("train/cat/up/cat is") && err.contains("through a symbolic link"),
        "{err}"
    );
    std::fs::remove_file(&link).unwrap();

    // Beside images vit reads, one it does not is skipped with a note; so is a pipe named
    // as an image, whose reading would wait for a writer forever.
    std::fs::write(tmp.0.join("test/dog/1.webp"), b"RIFF").unwrap();
    let pipe = tmp.0.join("train/dog/2.png");
    let made = std::process::Command::new("mkfifo").arg(&pipe).status();
    assert!(made.unwrap().success());
    #[rustfmt::skip]
    let output = common::run_vit(&["data", "--dataset", "folder", "--data-dir", tmp.0.to_str().unwrap(), "--image-size", "4"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("test: skipped 1 image file in formats vit does not read, such as")
            && stderr.contains("1.webp: convert them to PNG or JPEG"),
        "{stderr}"
    );
    let note = format!(
        "train: skipped 1 image name of a pipe, socket or device, not a file, such as {}",
        pipe.display()
    );
    assert_contains(&stderr, &note);
    std::fs::remove_file(&pipe).unwrap();
    // Alone in its class, it is an error that says why.
    std::fs::remove_file(tmp.0.join("test/dog/0.png")).unwrap();
    let err = error_of(folder::load(&tmp.0, 4));
    assert!(
        err.contains("no .png, .jpg or .jpeg files in class folder `dog` (1 image file in")
            && err.contains("1.webp")
            && err.contains("add its images, or move the folder away"),
        "{err}"
    );
    // So it is for `vit eval`, which reads test/ alone (a class without a folder is fine).
    let err = error_of(folder::load_test(&tmp.0, 4, None));
    assert_contains(&err, "no .png, .jpg or .jpeg files in class folder `dog`");
    // Images straight in the split's folder: each class needs a folder of its own.
    let loose = TempDir::new("folder-loose");
    for split in ["train", "test"] {
        std::fs::create_dir_all(loose.0.join(split)).unwrap();
        std::fs::copy(
            tmp.0.join("train/cat/0.png"),
            loose.0.join(split).join("0.png"),
        )
        .unwrap();
    }
    let err = error_of(folder::load(&loose.0, 4));
    assert_contains(
        &err,
        "no class folders found: put each class's images in a folder of its own",
    );
    // A class folder whose name is not UTF-8 (Latin-1 "café") is told to be renamed.
    let latin1 = loose
        .0
        .join("train")
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir(&latin1).unwrap();
    let err = error_of(folder::load(&loose.0, 4));
    assert!(
        err.contains(
            "class folder name \"caf\\xE9\" is not UTF-8, and vit keeps class names as text \
             (in checkpoints, CSVs and pictures): rename the folder in UTF-8"
        ),
        "{err}"
    );
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

/// A folder given to `vit predict` that holds no image but a subfolder it cannot read
/// (here a link back up) is reported as that subfolder's error, not as a folder without
/// images: the images may be in it.
#[test]
fn a_folder_of_only_an_unreadable_subfolder_names_that_subfolder() {
    let tmp = TempDir::new("folder-only-unreadable");
    let sub = tmp.0.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::os::unix::fs::symlink("..", sub.join("up")).unwrap();
    let (images, unreadable) = folder::image_files_under(&tmp.0).unwrap();
    assert!(images.is_empty(), "{images:?}");
    let folders: Vec<&Path> = unreadable.iter().map(|(path, _)| path.as_path()).collect();
    assert_eq!(folders, [sub.join("up")]);
    let error = format!("{:#}", unreadable[0].1);
    assert_contains(&error, "through a symbolic link");
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

/// The same invariants on the GPU, where there is one (skipped otherwise).
#[test]
fn transforms_on_cuda_when_available() {
    let Some(cuda) = cuda_device("skipped") else {
        return;
    };
    let _lock = common::seeded(5);
    let out = transforms::random_crop(&coordinate_images(600, 32, 32).to_device(cuda), 4);
    assert_eq!(out.device(), cuda);
    let (seen_dy, seen_dx) = check_crops(&out, 32, 32, 4);
    assert!(seen_dy.iter().all(|&n| n > 0) && seen_dx.iter().all(|&n| n > 0));

    let images = coordinate_images(2000, 4, 6).to_device(cuda);
    let flipped = transforms::random_horizontal_flip(&images, 0.5)
        .eq_tensor(&images.flip([3]))
        .view([2000, -1])
        .all_dim(1, false);
    let count = flipped.sum(Kind::Int64).int64_value(&[]);
    assert!((800..=1200).contains(&count), "{count} of 2000 flipped");

    let batch = random_uint8_batch(64);
    let on_gpu = batch.to_device(cuda);
    tch::manual_seed(42);
    let a = transforms::train_transform(&on_gpu, 64);
    tch::manual_seed(42);
    let b = transforms::train_transform(&on_gpu, 64);
    assert_eq!(a.device(), cuda);
    assert_eq!(a.size(), [64, 3, 64, 64]);
    assert!(a.equal(&b));
    for size in [32, 64] {
        let gpu = transforms::test_transform(&on_gpu, size).to_device(Device::Cpu);
        let cpu = transforms::test_transform(&batch, size);
        assert!(gpu.allclose(&cpu, 1e-4, 1e-4, false), "size {size}");
    }
}

/// `vit data --threads` sets libtorch's thread count as the other commands' does: more
/// threads than the cores here are warned about, and the summary is given all the same.
#[test]
fn vit_data_takes_threads_as_the_other_commands_do() {
    let tmp = TempDir::new("data-threads");
    write_cifar10(&tmp.0);
    let cores = std::thread::available_parallelism().unwrap().get();
    let threads = (cores + 1).to_string();
    #[rustfmt::skip]
    let output = common::vit(&["data", "--dataset", "cifar10", "--data-dir", tmp.0.to_str().unwrap(), "--threads", &threads]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "warning: --threads {threads} is more than the {cores} "
        )),
        "{stderr}"
    );
    assert!(!output.stdout.is_empty(), "{stderr}");
}

/// `vit data`'s table counts each class's images in the training split and in the test
/// split, each in its own (the small CIFAR-10 copy's differ: 2 or 1 a class in training,
/// 0 or 1 in test), and gives the training images' channel statistics.
#[test]
fn vit_data_counts_each_split_on_its_own() {
    let tmp = TempDir::new("data-table");
    write_cifar10(&tmp.0);
    let data_dir = tmp.0.to_str().unwrap();
    let output = common::vit(&["data", "--dataset", "cifar10", "--data-dir", data_dir]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let dataset = load_named(&args(DatasetName::Cifar10, &tmp.0, false), 32, "cifar10");
    let (train, test) = (
        dataset.train.class_counts(10),
        dataset.test.class_counts(10),
    );
    assert_ne!(
        train, test,
        "the copy's splits tell one count from the other"
    );
    // The table's rows: label, class, training images, test images.
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|words| words.len() == 4 && words[0].parse::<usize>().is_ok())
        .collect();
    let expected: Vec<Vec<String>> = (0..10)
        .map(|label| {
            let class = dataset.classes[label].clone();
            vec![
                label.to_string(),
                class,
                train[label].to_string(),
                test[label].to_string(),
            ]
        })
        .collect();
    assert_eq!(rows, expected, "{stdout}");
    let (mean, std) = dataset.train.channel_stats();
    let stats = format!(
        "mean {:.4} {:.4} {:.4}, std {:.4} {:.4} {:.4}",
        mean[0], mean[1], mean[2], std[0], std[1], std[2]
    );
    assert!(stdout.contains(&stats), "{stats}: {stdout}");
}

#[test]
fn cli_entry_points() {
    use clap::Parser;
    use vit_tch::cli::{Cli, DataArgs, DownloadArgs, DownloadableDataset, ThreadsArgs};
    let tmp = TempDir::new("cli");
    write_cifar10(&tmp.0);
    let data_args = DataArgs {
        data: args(DatasetName::Cifar10, &tmp.0, false),
        image_size: 32,
        threads: ThreadsArgs { threads: None },
    };
    data::run_summary(&data_args).unwrap();
    let download = |dataset, from: &str| DownloadArgs {
        dataset,
        data_dir: tmp.0.clone(),
        from: Some(from.to_string()),
    };
    // A folder there is checked, not fetched again: the (nonexistent) source is never
    // touched. This small copy is not the release, so it is refused as such...
    let err = error_of(data::run_download(&download(
        DownloadableDataset::Cifar10,
        "/nonexistent/",
    )));
    assert!(
        err.contains("is there but not a whole dataset") && !err.contains("/nonexistent/"),
        "{err}"
    );
    // ... as is one whose every file has the official size but is all zeros (every image
    // a black airplane: sparse files, no disk space taken)...
    let dir = tmp.0.join("cifar-10-batches-bin");
    #[rustfmt::skip]
    let names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch"];
    for name in names {
        let file = std::fs::File::create(dir.join(format!("{name}.bin"))).unwrap();
        file.set_len(10_000 * 3073).unwrap();
    }
    let err = error_of(data::run_download(&download(
        DownloadableDataset::Cifar10,
        "/nonexistent/",
    )));
    assert!(
        err.contains("is there but not a whole dataset")
            && err.contains(
                "the training images in cifar-10-batches-bin are not the official release's \
                 5000 of each class (airplane 50000, automobile 0, bird 0, cat 0, deer 0 and 5 more)"
            ),
        "{err}"
    );
    // ... while one of the official size with 1,000 images of each class in each file is
    // in place.
    let mut records = vec![0u8; 10_000 * 3073];
    for (i, record) in records.chunks_exact_mut(3073).enumerate() {
        record[0] = (i % 10) as u8;
    }
    for name in names {
        std::fs::write(dir.join(format!("{name}.bin")), &records).unwrap();
    }
    data::run_download(&download(DownloadableDataset::Cifar10, "/nonexistent/")).unwrap();
    // One record more than the official file is not the release either, though its
    // classes are read without complaint.
    let test_batch = dir.join("test_batch.bin");
    let mut longer = records.clone();
    longer.extend_from_slice(&records[..3073]);
    std::fs::write(&test_batch, &longer).unwrap();
    let err = error_of(data::run_download(&download(
        DownloadableDataset::Cifar10,
        "/nonexistent/",
    )));
    assert!(
        err.contains(&format!(
            "{} is 30733073 bytes where the official file is 30730000",
            test_batch.display()
        )),
        "{err}"
    );
    std::fs::write(&test_batch, &records).unwrap();
    // A folder dataset is the user's own: `download` does not offer it.
    let err = Cli::try_parse_from(["vit", "download", "--dataset", "folder"]).unwrap_err();
    assert!(
        err.to_string()
            .contains("[possible values: cifar10, cifar100]"),
        "{err}"
    );
    // The official spec: a small local file is refused by size, and nothing is left.
    std::fs::write(tmp.0.join("small.tar.gz"), b"tiny").unwrap();
    let from = tmp.0.join("small.tar.gz").display().to_string();
    let err = error_of(data::run_download(&download(
        DownloadableDataset::Cifar100,
        &from,
    )));
    assert_contains(&err, "168513733");
    assert_eq!(entries(&tmp.0), ["cifar-10-batches-bin", "small.tar.gz"]);
}
