//! CIFAR's binary files: both formats read back exactly, and every missing, short or
//! mislabelled file named with what to do.

use crate::common::{assert_contains, pixel, record, write_cifar10, TempDir, CIFAR10_CLASSES};
use crate::{args, common, error_of, i64s, load_named, u8s, write_cifar100};
use tch::{Device, Kind, Tensor};
use vit_tch::cli::DatasetName;
use vit_tch::data;

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
