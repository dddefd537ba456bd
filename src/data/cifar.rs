//! Readers for the CIFAR-10 and CIFAR-100 binary releases.
//!
//! CIFAR-10 (`cifar-10-batches-bin/`): data_batch_1..5.bin and test_batch.bin, each record
//! 1 label byte + 3,072 pixel bytes (the R, G and B planes, 32x32 row-major), class names
//! in batches.meta.txt. CIFAR-100 (`cifar-100-binary/`): train.bin and test.bin, each
//! record a coarse label byte, a fine label byte and 3,072 pixel bytes, class names in
//! fine_label_names.txt and coarse_label_names.txt.
//!
//! Each file is read in one pass: one `std::fs::read`, one uint8 tensor built from the
//! bytes, then a reshape and narrow into images and labels.

use super::download::ArchiveSpec;
use super::{Dataset, Split};
use crate::listing::{and_more, first_and_more, noun_for};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Bytes of one 32x32 RGB image.
const IMAGE_BYTES: usize = 3 * 32 * 32;
/// The folder `cifar-10-binary.tar.gz` unpacks to.
pub const CIFAR10_FOLDER: &str = "cifar-10-batches-bin";
/// The folder `cifar-100-binary.tar.gz` unpacks to.
pub const CIFAR100_FOLDER: &str = "cifar-100-binary";

/// The files of one official binary release, as its archive unpacks them.
#[derive(Debug)]
pub struct Release {
    /// The binary release's archive, as `vit download` fetches it, and the folder it
    /// unpacks to.
    pub archive: &'static ArchiveSpec<'static>,
    /// The folder of torchvision's download (the Python release), which vit does not read.
    python_folder: &'static str,
    /// The training batch files in order, each with its official number of images.
    train_files: &'static [(&'static str, usize)],
    /// The test batch file with its official number of images.
    test_file: (&'static str, usize),
}

const CIFAR10_RELEASE: Release = Release {
    archive: &super::download::CIFAR10_ARCHIVE,
    python_folder: "cifar-10-batches-py",
    train_files: &[
        ("data_batch_1.bin", 10_000),
        ("data_batch_2.bin", 10_000),
        ("data_batch_3.bin", 10_000),
        ("data_batch_4.bin", 10_000),
        ("data_batch_5.bin", 10_000),
    ],
    test_file: ("test_batch.bin", 10_000),
};
const CIFAR100_RELEASE: Release = Release {
    archive: &super::download::CIFAR100_ARCHIVE,
    python_folder: "cifar-100-python",
    train_files: &[("train.bin", 50_000)],
    test_file: ("test.bin", 10_000),
};

impl Release {
    /// The folder under `--data-dir` that holds the release.
    pub fn folder(&self) -> &'static str {
        self.archive.folder
    }
}

/// The layout of one binary format's records, and the release that holds them.
#[derive(Debug, Clone, Copy)]
pub struct RecordFormat {
    /// Label bytes before the pixels (1 for CIFAR-10, 2 for CIFAR-100).
    pub label_bytes: usize,
    /// Which of the label bytes is used.
    pub label_index: usize,
    /// Labels must be below this.
    pub num_classes: usize,
    /// For messages and the download hint: "cifar10" or "cifar100".
    pub dataset: &'static str,
    /// The release's files, under `--data-dir`.
    pub release: &'static Release,
    /// The release's file that names these labels' classes.
    class_names_file: &'static str,
}

impl RecordFormat {
    fn record_bytes(&self) -> usize {
        self.label_bytes + IMAGE_BYTES
    }
}

pub const CIFAR10_FORMAT: RecordFormat = RecordFormat {
    label_bytes: 1,
    label_index: 0,
    num_classes: 10,
    dataset: super::CIFAR10,
    release: &CIFAR10_RELEASE,
    class_names_file: "batches.meta.txt",
};
pub const CIFAR100_FINE_FORMAT: RecordFormat = RecordFormat {
    label_bytes: 2,
    label_index: 1,
    num_classes: 100,
    dataset: super::CIFAR100,
    release: &CIFAR100_RELEASE,
    class_names_file: "fine_label_names.txt",
};
pub const CIFAR100_COARSE_FORMAT: RecordFormat = RecordFormat {
    label_bytes: 2,
    label_index: 0,
    num_classes: 20,
    dataset: super::CIFAR100,
    release: &CIFAR100_RELEASE,
    class_names_file: "coarse_label_names.txt",
};

/// Reads `format`'s release under `data_dir` (`DATA_DIR/cifar-10-batches-bin/`, or
/// `DATA_DIR/cifar-100-binary/`: 50,000 training and 10,000 test images) as the dataset
/// `name`, with a warning when its classes are not the official release's even counts.
pub fn load(data_dir: &Path, format: &RecordFormat, name: &str) -> Result<Dataset> {
    let dataset = read(data_dir, format, name)?;
    warn_if_uneven(
        data_dir,
        format,
        &dataset.classes,
        &official_splits(&dataset, format),
    );
    Ok(dataset)
}

/// The class names and test images of `format`'s release under `data_dir`, without its
/// training batches (`vit eval` needs none of them), with [`load`]'s warning.
pub fn load_test(data_dir: &Path, format: &RecordFormat) -> Result<(Vec<String>, Split)> {
    let dir = data_dir.join(format.release.folder());
    let classes = read_class_names(&dir.join(format.class_names_file), format, data_dir)?;
    let test = read_test(&dir, format, data_dir)?;
    let official = ("test", &test, format.release.test_file.1);
    warn_if_uneven(data_dir, format, &classes, &[official]);
    Ok((classes, test))
}

/// [`load`] without the class counts' check.
fn read(data_dir: &Path, format: &RecordFormat, name: &str) -> Result<Dataset> {
    let release = format.release;
    let dir = data_dir.join(release.folder());
    let classes = read_class_names(&dir.join(format.class_names_file), format, data_dir)?;
    let parts = release
        .train_files
        .iter()
        .map(|&(file, images)| read_records(&dir.join(file), format, images, data_dir))
        .collect::<Result<Vec<_>>>()?;
    // One copy: the batches' strided views straight into one contiguous tensor.
    let train = Split {
        images: Tensor::cat(&parts.iter().map(|s| &s.images).collect::<Vec<_>>(), 0),
        labels: Tensor::cat(&parts.iter().map(|s| &s.labels).collect::<Vec<_>>(), 0),
    };
    drop(parts);
    let test = read_test(&dir, format, data_dir)?;
    Ok(Dataset {
        name: name.into(),
        train,
        test,
        classes,
    })
}

/// The test batch of the release in `dir`.
fn read_test(dir: &Path, format: &RecordFormat, data_dir: &Path) -> Result<Split> {
    let (test_file, test_images) = format.release.test_file;
    read_batch(&dir.join(test_file), format, test_images, data_dir)
}

/// A split read (what it is, for a message), and the number of images the official
/// release has in it.
type OfficialSplit<'a> = (&'static str, &'a Split, usize);

/// The splits of `dataset`, read from `format`'s release, with their official sizes.
fn official_splits<'a>(dataset: &'a Dataset, format: &RecordFormat) -> [OfficialSplit<'a>; 2] {
    let release = format.release;
    let train_images = release.train_files.iter().map(|&(_, images)| images).sum();
    [
        ("training", &dataset.train, train_images),
        ("test", &dataset.test, release.test_file.1),
    ]
}

/// Warns where [`uneven_classes`] finds a split uneven.
fn warn_if_uneven(
    data_dir: &Path,
    format: &RecordFormat,
    classes: &[String],
    splits: &[OfficialSplit],
) {
    if let Some(uneven) = uneven_classes(classes, splits, format) {
        let dir = data_dir.join(format.release.folder());
        eprintln!(
            "warning: {uneven}; to replace it, {}",
            download_again(&dir.join(format.class_names_file), format, data_dir)
        );
    }
}

/// Where a split of the official size has not its even share of images in every class (as
/// a file of zeros has, all of class 0): what differs, for a message.
fn uneven_classes(
    classes: &[String],
    splits: &[OfficialSplit],
    format: &RecordFormat,
) -> Option<String> {
    let release = format.release;
    splits.iter().find_map(|&(what, split, official)| {
        let per_class = (official / format.num_classes) as i64;
        if split.len() != official as i64 {
            return None; // Not the official files: their reader already warned.
        }
        let counts = split.class_counts(format.num_classes);
        let uneven: Vec<String> = (classes.iter().zip(counts))
            .filter(|&(_, count)| count != per_class)
            .map(|(class, count)| format!("{class} {count}"))
            .collect();
        (!uneven.is_empty()).then(|| {
            // Five classes say which are off; the count says how many.
            let (shown, more) = first_and_more(&uneven, 5);
            format!(
                "the {what} images in {} are not the official release's {per_class} of each \
                 class ({}{}): a file is damaged, or not the official one",
                release.folder(),
                shown.join(", "),
                and_more(more)
            )
        })
    })
}

/// Checks that `data_dir` holds the whole official release of `format`'s dataset, for
/// `vit download` (which keeps a dataset folder that is there): every batch file of the
/// official size, the class-names files, and the official count of images in each class.
pub fn check_release(data_dir: &Path, format: &RecordFormat) -> Result<()> {
    let release = format.release;
    let dir = data_dir.join(release.folder());
    for &(file, images) in release.train_files.iter().chain([&release.test_file]) {
        let path = dir.join(file);
        let official = (images * format.record_bytes()) as u64;
        match std::fs::metadata(&path) {
            Ok(metadata) if metadata.len() == official => {}
            Ok(metadata) => bail!(
                "{} is {} {} where the official file is {official}: {}",
                path.display(),
                metadata.len(),
                noun_for(metadata.len(), "byte"),
                download_again(&path, format, data_dir)
            ),
            Err(_) => bail!("{}", missing(&path, format, data_dir)),
        }
    }
    // The class names of each format of the release (CIFAR-100's fine and coarse labels).
    let formats = [CIFAR10_FORMAT, CIFAR100_FINE_FORMAT, CIFAR100_COARSE_FORMAT];
    let class_names_files = formats
        .iter()
        .filter(|other| other.release.folder() == release.folder())
        .map(|other| other.class_names_file);
    for file in class_names_files {
        let path = dir.join(file);
        ensure!(path.is_file(), "{}", missing(&path, format, data_dir));
    }
    let dataset = read(data_dir, format, format.dataset)?;
    match uneven_classes(&dataset.classes, &official_splits(&dataset, format), format) {
        Some(uneven) => bail!("{uneven}"),
        None => Ok(()),
    }
}

/// The message for a file of a dataset that is not there.
fn missing(path: &Path, format: &RecordFormat, data_dir: &Path) -> String {
    let folder = path.parent().unwrap_or(path);
    let release = format.release;
    let archive = data_dir.join(release.archive.file_name);
    let other = match release.folder() {
        CIFAR10_FOLDER => CIFAR100_FINE_FORMAT,
        _ => CIFAR10_FORMAT,
    };
    let (other_folder, other_dataset) = (other.release.folder(), other.dataset);
    let download = format!(
        "run `vit download --dataset {} --data-dir {}`",
        format.dataset,
        data_dir.display()
    );
    // An incomplete copy first: one nested inside the dataset folder is read as any other.
    let advice = if folder.is_dir() {
        format!(
            "{} is incomplete: {}",
            folder.display(),
            download_again(path, format, data_dir)
        )
    } else if let Some(advice) = dataset_folder_given(data_dir, format.release.folder()) {
        advice
    } else if let Some(parent) = folder_holding(data_dir, other_folder) {
        // The other CIFAR's folder itself: a download there would nest this one inside it.
        format!(
            "{} is {other_dataset}'s folder, {other_folder}, and --data-dir takes the folder \
             that holds it: pass --data-dir {} --dataset {other_dataset} for it; for {}, run \
             `vit download --dataset {} --data-dir {}`",
            data_dir.display(),
            parent.display(),
            format.dataset,
            format.dataset,
            parent.display()
        )
    } else if archive.is_file() {
        // The archive fetched by hand, not unpacked.
        format!(
            "{} holds {}, not unpacked: run `vit download --dataset {} --data-dir {} --from {}`",
            data_dir.display(),
            release.archive.file_name,
            format.dataset,
            data_dir.display(),
            archive.display()
        )
    } else if data_dir.join(release.python_folder).is_dir() {
        // The notebook's `torchvision.datasets.CIFAR100(root, download=True)` leaves this.
        format!(
            "{} holds {}, torchvision's Python release, which vit does not read: vit reads \
             the binary release; {download} (it goes beside the other)",
            data_dir.display(),
            release.python_folder
        )
    } else if data_dir.join(other_folder).is_dir() {
        // `--dataset` left out (CIFAR-100) where CIFAR-10 was downloaded, or the reverse.
        format!(
            "{} holds {other_folder}: pass --dataset {other_dataset} for it; for {}, {download}",
            data_dir.display(),
            format.dataset
        )
    } else if data_dir.join("test").is_dir() {
        // An ImageFolder tree (or its test split alone) given without --dataset folder.
        format!(
            "{} holds a test/ folder: for your own images, pass --dataset folder; for {}, \
             {download}",
            data_dir.display(),
            format.dataset
        )
    } else {
        download
    };
    format!(
        "{} is missing: {advice}",
        crate::fsutil::shown_where_missing(path)
    )
}

/// The advice for a `data_dir` that is the dataset's `folder` itself, not the folder
/// holding it (`vit download` there would nest a second copy inside the first).
pub fn dataset_folder_given(data_dir: &Path, folder: &str) -> Option<String> {
    folder_holding(data_dir, folder).map(|parent| {
        format!(
            "--data-dir takes the folder that holds {folder}: pass --data-dir {}",
            parent.display()
        )
    })
}

/// Where `data_dir` is the dataset folder `folder` itself, the folder that holds it.
fn folder_holding(data_dir: &Path, folder: &str) -> Option<PathBuf> {
    // Resolved, so that `--data-dir .` inside the dataset's folder is seen as that too.
    let resolved = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    // The folder as given, unless it is `.` or a link: then the resolved one's.
    let parent = match data_dir.file_name() {
        Some(name) if name == folder => crate::fsutil::folder_of(data_dir),
        _ => resolved.parent().unwrap_or(Path::new("/")),
    };
    (resolved.file_name() == Some(std::ffi::OsStr::new(folder))).then(|| parent.to_path_buf())
}

/// What to do about a dataset folder with a bad or missing file: `vit download` skips a
/// folder that exists, so it has to go first.
fn download_again(path: &Path, format: &RecordFormat, data_dir: &Path) -> String {
    format!(
        "delete {}, then run `vit download --dataset {} --data-dir {}`",
        path.parent().unwrap_or(path).display(),
        format.dataset,
        data_dir.display()
    )
}

fn read_file(path: &Path, format: &RecordFormat, data_dir: &Path) -> Result<Vec<u8>> {
    // Looked at before it is opened: a named pipe's open would wait for a writer forever.
    if let Some(kind) = crate::fsutil::kind_if_not_a_file(path) {
        bail!(
            "cannot read {}: it is {kind}, not the dataset's file; {}",
            path.display(),
            download_again(path, format, data_dir)
        );
    }
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{}", missing(path, format, data_dir))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            let file = crate::fsutil::file_in_the_way(path).unwrap_or(data_dir);
            let advice = match file == data_dir {
                true => format!(
                    "--data-dir takes the folder that holds {}",
                    format.release.folder()
                ),
                false => format!(
                    "move it away, then run `vit download --dataset {} --data-dir {}`",
                    format.dataset,
                    data_dir.display()
                ),
            };
            bail!(
                "cannot read {}: {} is a file, not a folder; {advice}",
                path.display(),
                file.display()
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Reads one binary batch file of R records into uint8 images [R, 3, 32, 32] (contiguous)
/// and int64 labels `[R]`, warning when R is not the `official` count.
/// `data_dir` only feeds the `vit download` hint of the messages.
fn read_batch(
    path: &Path,
    format: &RecordFormat,
    official: usize,
    data_dir: &Path,
) -> Result<Split> {
    let split = read_records(path, format, official, data_dir)?;
    Ok(Split {
        images: split.images.contiguous(),
        labels: split.labels,
    })
}

/// [`read_batch`] with the images left as a strided view into the records tensor.
fn read_records(
    path: &Path,
    format: &RecordFormat,
    official: usize,
    data_dir: &Path,
) -> Result<Split> {
    let bytes = read_file(path, format, data_dir)?;
    let record = format.record_bytes();
    if bytes.is_empty() || bytes.len() % record != 0 {
        bail!(
            "{}: size {} {} is not a positive multiple of the record size {} \
             ({} label {} + {} pixel bytes); the file is truncated or not a {} batch: {}",
            path.display(),
            bytes.len(),
            noun_for(bytes.len(), "byte"),
            record,
            format.label_bytes,
            noun_for(format.label_bytes, "byte"),
            IMAGE_BYTES,
            format.dataset,
            download_again(path, format, data_dir)
        );
    }
    let n = bytes.len() / record;
    if n != official {
        // Only a warning: a file of whole records may be a deliberate subset, but a copy cut
        // at a record boundary looks just the same.
        let what = match n < official {
            true => "it may be cut short",
            false => "it is not the official file",
        };
        eprintln!(
            "warning: {} holds {n} {} where the official release has {official}: {what}; \
             to replace it, {}",
            path.display(),
            noun_for(n, "image"),
            download_again(path, format, data_dir)
        );
    }
    if let Some((i, label)) = bytes
        .chunks_exact(record)
        .map(|r| r[format.label_index])
        .enumerate()
        .find(|&(_, label)| label as usize >= format.num_classes)
    {
        bail!(
            "{}: record {} has label {}, out of range for {} classes; the file is corrupt \
             or not a {} batch: {}",
            path.display(),
            i,
            label,
            format.num_classes,
            format.dataset,
            download_again(path, format, data_dir)
        );
    }
    let records = Tensor::from_slice(&bytes).reshape([n as i64, record as i64]);
    drop(bytes);
    let labels = records
        .select(1, format.label_index as i64)
        .to_kind(Kind::Int64);
    let images = records
        .narrow(1, format.label_bytes as i64, IMAGE_BYTES as i64)
        .reshape([n as i64, 3, 32, 32]);
    Ok(Split { images, labels })
}

/// One class name a line (blank lines ignored); exactly `num_classes` of them, each once.
fn read_class_names(path: &Path, format: &RecordFormat, data_dir: &Path) -> Result<Vec<String>> {
    let bytes = read_file(path, format, data_dir)?;
    let Ok(text) = String::from_utf8(bytes) else {
        bail!(
            "{}: not a UTF-8 text file: {}",
            path.display(),
            download_again(path, format, data_dir)
        );
    };
    // An editor's byte-order mark is not part of the first name (trim keeps it).
    let names: Vec<String> = text
        .strip_prefix('\u{feff}')
        .unwrap_or(&text)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != format.num_classes {
        bail!(
            "{}: {} class {}, expected {} (one a line): {}",
            path.display(),
            names.len(),
            noun_for(names.len(), "name"),
            format.num_classes,
            download_again(path, format, data_dir)
        );
    }
    // A checkpoint records the names, and a folder of test images is matched to them by
    // name: two classes of one name could not be told apart.
    if let Some(name) = names
        .iter()
        .enumerate()
        .find_map(|(i, name)| names[..i].contains(name).then_some(name))
    {
        bail!(
            "{}: the class name {name:?} is there twice; each class needs its own name: {}",
            path.display(),
            download_again(path, format, data_dir)
        );
    }
    Ok(names)
}
