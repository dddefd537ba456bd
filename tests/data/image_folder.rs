//! ImageFolder datasets: classes numbered as torchvision does, links followed or refused,
//! and undecodable or skipped files explained.

use crate::common::{assert_contains, TempDir};
use crate::{args, common, decode_images, error_of, i64s, load_named, u8s, REMEDY};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tch::Kind;
use vit_tch::cli::DatasetName;
use vit_tch::data::{self, folder, image_file};

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
