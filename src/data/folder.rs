//! torchvision's ImageFolder layout: `DIR/train/<class>/*.png|jpg|jpeg` and
//! `DIR/test/<class>/*.png|jpg|jpeg`, classes sorted by name (label = index in that order),
//! files found recursively under each class folder (following symbolic links, refusing a
//! loop) and sorted by path, then the classes interleaved. macOS's `._*` metadata files are
//! skipped; images in formats vit does not read are skipped with a note.
//!
//! Every image is decoded as RGB, resized to `image_size`×`image_size` (bilinear,
//! antialiased when shrinking) when it is not already that size, and written in CHW order
//! into one uint8 tensor ([`image_file::decode_images`], on libtorch's CPU threads).

use super::{image_file, Dataset, Split, TestSet};
use crate::fsutil::{file_id, FileId};
use crate::listing::noun_for;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// An image file and its label.
type LabeledFile = (PathBuf, i64);

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Image formats vit does not decode (torchvision's other extensions, and phones' HEIC):
/// counted, so that a folder of them is not skipped without a word.
const OTHER_IMAGE_EXTENSIONS: [&str; 10] = [
    "bmp", "gif", "webp", "tif", "tiff", "ppm", "pgm", "heic", "heif", "avif",
];

/// Reads `root/train` and `root/test`; the test split must have the same classes.
pub fn load(root: &Path, image_size: i64) -> Result<Dataset> {
    let size = checked_size(image_size)?;
    let (classes, train_files) = scan_split(&root.join("train"))?;
    let (test_classes, test_files) = scan_split(&root.join("test"))?;
    ensure_same_classes(root, &classes, &test_classes)?;
    // Both splits in one pass, so that one error names every bad file of either.
    let (train_count, test_count) = (train_files.len() as i64, test_files.len() as i64);
    let both = decode_labeled(
        &[train_files, test_files].concat(),
        size,
        "use a smaller --image-size",
    )?;
    let split = |start: i64, count: i64| Split {
        images: both.images.narrow(0, start, count),
        labels: both.labels.narrow(0, start, count),
    };
    Ok(Dataset {
        name: super::FOLDER.into(),
        train: split(0, train_count),
        test: split(train_count, test_count),
        classes,
    })
}

/// Fails unless the train and test splits under `root` have the same classes, naming each
/// side's extra ones.
fn ensure_same_classes(
    root: &Path,
    train_classes: &[String],
    test_classes: &[String],
) -> Result<()> {
    if test_classes == train_classes {
        return Ok(());
    }
    // Each side's extra classes, quoted (a folder name may hold spaces or commas).
    let only_in = |these: &[String], those: &[String], split: &str, other: &str| {
        let extra: Vec<String> = these
            .iter()
            .filter(|class| !those.contains(class))
            .map(|class| format!("{class:?}"))
            .collect();
        (!extra.is_empty())
            .then(|| format!("{split}/ has {} that {other}/ lacks", extra.join(", ")))
    };
    let differences: Vec<String> = [
        only_in(train_classes, test_classes, "train", "test"),
        only_in(test_classes, train_classes, "test", "train"),
    ]
    .into_iter()
    .flatten()
    .collect();
    bail!(
        "{}: the test classes differ from the train classes ({}); both splits need the \
         same class folders",
        root.display(),
        differences.join("; ")
    );
}

/// Reads `root/test` alone, at a checkpoint's image size: `root/train` may be missing.
/// With `only`, decodes that test image alone (see [`super::load_test`]).
pub fn load_test(root: &Path, image_size: i64, only: Option<i64>) -> Result<TestSet> {
    let size = checked_size(image_size)?;
    let (classes, mut files) = scan_split(&root.join("test"))?;
    if let Some(index) = only {
        super::check_test_index(index, files.len() as i64)?;
        files = vec![files.swap_remove(index as usize)];
    }
    // The size is the model's: only the count can change.
    let remedy = match only {
        Some(_) => image_file::ONE_CHECKPOINT_IMAGE,
        None => "the checkpoint sets the image size, so evaluate on a test folder of fewer images",
    };
    Ok(TestSet {
        name: super::FOLDER.into(),
        test: decode_labeled(&files, size, remedy)?,
        classes,
        files: Some(files.into_iter().map(|(path, _)| path).collect()),
    })
}

fn checked_size(image_size: i64) -> Result<u32> {
    ensure!(
        image_size > 0,
        "--image-size must be positive, got {image_size}"
    );
    u32::try_from(image_size).with_context(|| format!("--image-size {image_size} is too large"))
}

/// Decodes the files into uint8 images [files.len(), 3, size, size] and their labels,
/// int64 `[files.len()]`; `remedy` is what to do where they do not fit in memory.
fn decode_labeled(files: &[LabeledFile], size: u32, remedy: &str) -> Result<Split> {
    let paths: Vec<&Path> = files.iter().map(|(path, _)| path.as_path()).collect();
    let labels: Vec<i64> = files.iter().map(|(_, label)| *label).collect();
    Ok(Split {
        images: image_file::decode_images(&paths, size, remedy)?,
        labels: Tensor::from_slice(&labels),
    })
}

/// The sorted class folder names of one split and its (file, label) list.
fn scan_split(dir: &Path) -> Result<(Vec<String>, Vec<LabeledFile>)> {
    if !dir.is_dir() {
        return Err(missing_split(dir));
    }
    let classes = class_folders(dir)?;
    let mut per_class = Vec::new();
    let (mut other_images, mut not_files) = (Vec::new(), Vec::new());
    for class in &classes {
        let mut found = FolderImages::default();
        found.collect(&dir.join(class), &mut Vec::new())?;
        // A dataset is read whole, or not at all.
        if let Some((_, error)) = found.unreadable.into_iter().next() {
            return Err(error);
        }
        if found.images.is_empty() {
            let other_formats = match found.other_images.as_slice() {
                [] => String::new(),
                others => format!(" ({})", other_formats(others)),
            };
            bail!(
                "{}: no .png, .jpg or .jpeg files in class folder `{class}`{other_formats}: \
                 add its images, or move the folder away",
                dir.display()
            );
        }
        found.images.sort();
        per_class.push(found.images);
        other_images.append(&mut found.other_images);
        not_files.append(&mut found.not_files);
    }
    note_skipped(dir, &other_images, &not_files);
    Ok((classes, interleaved(per_class)))
}

/// The error for a split folder `dir` that is not there.
fn missing_split(dir: &Path) -> anyhow::Error {
    // `--data-dir DIR/train` (or `DIR/test`): the split given for the dataset.
    let given = dir.parent().unwrap_or(Path::new(""));
    let is_split = matches!(
        given.file_name().and_then(|name| name.to_str()),
        Some("train" | "test")
    );
    let above = crate::fsutil::folder_of(given);
    const LAYOUT: &str = "a folder dataset needs DIR/train/<class>/*.png|jpg|jpeg and \
                          DIR/test/<class>/*.png|jpg|jpeg (evaluating, only test/)";
    if let Some(file) = crate::fsutil::file_in_the_way(given) {
        return anyhow!(
            "{} is a file, not a folder: --data-dir takes the folder that holds train/ and \
             test/",
            file.display()
        );
    }
    let cifar = [
        &super::cifar::CIFAR10_FORMAT,
        &super::cifar::CIFAR100_FINE_FORMAT,
    ]
    .into_iter()
    .find(|format| given.join(format.release.folder()).is_dir());
    if let Some(format) = cifar {
        return anyhow!(
            "{} is missing: {} holds {}, a CIFAR download, not a folder dataset: pass \
             --dataset {} for it, or --data-dir the folder of your own images ({LAYOUT})",
            dir.display(),
            given.display(),
            format.release.folder(),
            format.dataset
        );
    }
    if is_split && above.join("test").is_dir() {
        return anyhow!(
            "{} is missing: {} is one split of the dataset, not the dataset: pass \
             --data-dir {}",
            dir.display(),
            given.display(),
            above.display()
        );
    }
    if holds_images(given) {
        return anyhow!(
            "{} is missing: {} holds images itself, not in class folders, and {LAYOUT}: sort \
             them into such folders (`vit predict --checkpoint FILE {}` classifies images as \
             they are)",
            dir.display(),
            given.display(),
            given.display()
        );
    }
    anyhow!(
        "{} is missing: {LAYOUT}; give --data-dir the folder that holds train/ and test/",
        crate::fsutil::shown_where_missing(dir)
    )
}

/// Whether the folder `dir` has PNG or JPEG files of its own (not in subfolders).
fn holds_images(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            let path = entry.path();
            path.is_file() && has_extension(&path, &EXTENSIONS)
        })
    })
}

/// The names of the folders in the split folder `dir`, sorted: its classes.
fn class_folders(dir: &Path) -> Result<Vec<String>> {
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.path().is_dir() {
            let name = entry.file_name().into_string().map_err(|name| {
                anyhow!(
                    "{}: class folder name {:?} is not UTF-8, and vit keeps class names as \
                     text (in checkpoints, CSVs and pictures): rename the folder in UTF-8",
                    dir.display(),
                    name
                )
            })?;
            classes.push(name);
        }
    }
    classes.sort();
    ensure!(
        !classes.is_empty(),
        "{}: no class folders found: put each class's images in a folder of its own, \
         {0}/<class>/*.png|jpg|jpeg",
        dir.display()
    );
    Ok(classes)
}

/// Each class's files (label = position in `per_class`) taken in turn: the first of each
/// class, then the second, ..., so that the first N images (`--train-subset N`) cover
/// every class, as CIFAR's shuffled ones do.
fn interleaved(per_class: Vec<Vec<PathBuf>>) -> Vec<LabeledFile> {
    let mut per_class: Vec<_> = per_class.into_iter().map(Vec::into_iter).collect();
    let mut files = Vec::new();
    loop {
        let before = files.len();
        for (label, found) in per_class.iter_mut().enumerate() {
            files.extend(found.next().map(|path| (path, label as i64)));
        }
        if files.len() == before {
            return files;
        }
    }
}

/// A folder that could not be read, and the error that names it.
pub type UnreadableFolder = (PathBuf, anyhow::Error);

/// The image files found under one folder (a class folder, or one given to `vit predict`).
#[derive(Default)]
struct FolderImages {
    images: Vec<PathBuf>,
    /// Images in formats vit does not read.
    other_images: Vec<PathBuf>,
    /// Named as images, but pipes, sockets or devices: opening a pipe would wait forever.
    not_files: Vec<PathBuf>,
    /// The subfolders that could not be read (a loop of links, no permission), each with
    /// the error that names it; the images beside them are still found.
    unreadable: Vec<UnreadableFolder>,
}

impl FolderImages {
    /// Adds the files under `dir`, recursively. `ancestors` holds the folders above it, by
    /// (device, inode): a symbolic link back to one of them would repeat their images
    /// (under one class's label, for a class folder) without end. An error is `dir`'s own;
    /// its subfolders' go to `unreadable`.
    fn collect(&mut self, dir: &Path, ancestors: &mut Vec<(FileId, PathBuf)>) -> Result<()> {
        let metadata =
            std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        let id = file_id(&metadata);
        if let Some((_, ancestor)) = ancestors.iter().find(|(folder, _)| *folder == id) {
            bail!(
                "{} is {} again, through a symbolic link: remove the link that makes this loop",
                dir.display(),
                ancestor.display()
            );
        }
        ancestors.push((id, dir.to_path_buf()));
        let listed = self.collect_entries(dir, ancestors);
        ancestors.pop();
        listed
    }

    fn collect_entries(
        &mut self,
        dir: &Path,
        ancestors: &mut Vec<((u64, u64), PathBuf)>,
    ) -> Result<()> {
        let list_error = || format!("cannot list {}", dir.display());
        for entry in std::fs::read_dir(dir).with_context(list_error)? {
            let path = entry.with_context(list_error)?.path();
            if path.is_dir() {
                if let Err(error) = self.collect(&path, ancestors) {
                    self.unreadable.push((path, error));
                }
            } else if is_apple_double(&path) {
                // macOS's metadata beside each file copied from its disks: never an image.
            } else if has_extension(&path, &EXTENSIONS) {
                // A broken link stays an image: reading it says what is wrong.
                match crate::fsutil::kind_if_not_a_file(&path) {
                    Some(_) => self.not_files.push(path),
                    None => self.images.push(path),
                }
            } else if has_extension(&path, &OTHER_IMAGE_EXTENSIONS) {
                self.other_images.push(path);
            }
        }
        Ok(())
    }
}

/// The image files under `dir` (`vit predict DIR`), found as in a class folder and sorted
/// by path, and the subfolders that could not be read, each with the error that names it
/// (the images elsewhere in `dir` are still found); images in other formats are skipped
/// with a note. An error is `dir`'s own, or that it holds no image at all.
pub fn image_files_under(dir: &Path) -> Result<(Vec<PathBuf>, Vec<UnreadableFolder>)> {
    let mut found = FolderImages::default();
    found.collect(dir, &mut Vec::new())?;
    note_skipped(dir, &found.other_images, &found.not_files);
    ensure!(
        !found.images.is_empty() || !found.unreadable.is_empty(),
        "{}: no .png, .jpg or .jpeg files in it or its subfolders",
        dir.display()
    );
    found.images.sort();
    Ok((found.images, found.unreadable))
}

/// Notes the images under `dir` in formats vit does not read, and the entries named as
/// images that are not files, if any.
fn note_skipped(dir: &Path, other_images: &[PathBuf], not_files: &[PathBuf]) {
    if !other_images.is_empty() {
        eprintln!(
            "note: {}: skipped {}",
            dir.display(),
            other_formats(other_images)
        );
    }
    if let [first, ..] = not_files {
        eprintln!(
            "note: {}: skipped {} {} of a pipe, socket or device, not a file, such as {}",
            dir.display(),
            not_files.len(),
            noun_for(not_files.len(), "image name"),
            first.display()
        );
    }
}

/// "N image files in formats vit does not read, such as PATH: convert them to PNG or JPEG"
/// ("1 image file" for one)
fn other_formats(files: &[PathBuf]) -> String {
    format!(
        "{} image {} in formats vit does not read, such as {}: convert them to PNG or JPEG",
        files.len(),
        noun_for(files.len(), "file"),
        files[0].display()
    )
}

fn is_apple_double(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.as_encoded_bytes().starts_with(b"._"))
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| {
            extensions
                .iter()
                .any(|known| known.eq_ignore_ascii_case(extension))
        })
}
