//! Datasets: the CIFAR-10/100 binary releases (downloaded by `vit download`), torchvision
//! ImageFolder trees, and the notebook's transforms as batched tensor ops.
//!
//! A dataset is held whole as uint8 tensors (60,000 CIFAR images are 184 MB), moved to the
//! training device once; batches are indexed and augmented there (see [`transforms`]; the
//! strong recipe's RandAugment/AutoAugment/random erasing are in [`augment`], MixUp/CutMix
//! in [`mix`]).

pub mod augment;
mod cifar;
pub mod download;
pub mod folder;
pub mod image_file;
pub mod mix;
pub mod transforms;

use crate::cli::{DataArgs, DatasetArgs, DatasetName, DownloadArgs, DownloadableDataset};
use crate::listing::noun_for;
use anyhow::{ensure, Context, Result};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The notebook's `transforms.Normalize` mean (per RGB channel, of [0, 1] pixels).
pub const CIFAR_MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
/// The notebook's `transforms.Normalize` std.
pub const CIFAR_STD: [f64; 3] = [0.2023, 0.1994, 0.2010];

/// One split of [`Split::len`] images: images uint8 [len, 3, H, W] (CHW, RGB, 0..=255),
/// labels int64 `[len]`.
#[derive(Debug)]
pub struct Split {
    pub images: Tensor,
    pub labels: Tensor,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy on `device` (a cheap alias when it is already there).
    pub fn to_device(&self, device: Device) -> Split {
        Split {
            images: self.images.to_device(device),
            labels: self.labels.to_device(device),
        }
    }

    /// The first `n` images (all of them when `n` is larger); shares storage.
    pub fn subset(&self, n: i64) -> Split {
        let n = n.clamp(0, self.len());
        Split {
            images: self.images.narrow(0, 0, n),
            labels: self.labels.narrow(0, 0, n),
        }
    }

    /// The images and labels at `indices` (int64 `[B]`, on the split's device): how a batch is
    /// drawn from a split already on the training device, without a host round trip.
    pub fn batch(&self, indices: &Tensor) -> Split {
        Split {
            images: self.images.index_select(0, indices),
            labels: self.labels.index_select(0, indices),
        }
    }

    /// Says (on stderr) when the images are not `image_size` square: the transforms then
    /// resize each batch as it is used. A folder dataset's images are read at that size.
    pub fn note_resizing(&self, dataset: &str, image_size: i64) {
        let size = self.images.size();
        let (height, width) = (size[2], size[3]);
        if (height, width) != (image_size, image_size) {
            eprintln!(
                "note: {dataset}'s {height}x{width} images are resized to \
                 {image_size}x{image_size} (bilinear) for the model as each batch is used, \
                 which takes time"
            );
        }
    }

    /// Images per class, for `num_classes` classes.
    pub fn class_counts(&self, num_classes: usize) -> Vec<i64> {
        let counts = self
            .labels
            .to_device(Device::Cpu)
            .bincount::<Tensor>(None, num_classes as i64);
        Vec::<i64>::try_from(&counts).unwrap_or_default()
    }

    /// Per-channel mean and (population) std of the images scaled to [0, 1], computed in
    /// chunks (in f64) so a whole dataset never needs a float copy.
    pub fn channel_stats(&self) -> ([f64; 3], [f64; 3]) {
        let image_count = self.len();
        // Images, rows and columns: what a sum over them leaves is one value per channel.
        let all_but_channels = [0i64, 2, 3].as_slice();
        let mut sum = Tensor::zeros([3], (Kind::Double, Device::Cpu));
        let mut sum_sq = Tensor::zeros([3], (Kind::Double, Device::Cpu));
        let chunk = 2048;
        let mut start = 0;
        while start < image_count {
            let len = chunk.min(image_count - start);
            let pixels = self.images.narrow(0, start, len).to_kind(Kind::Double) / 255.0;
            sum += pixels
                .sum_dim_intlist(all_but_channels, false, Kind::Double)
                .to_device(Device::Cpu);
            sum_sq += (&pixels * &pixels)
                .sum_dim_intlist(all_but_channels, false, Kind::Double)
                .to_device(Device::Cpu);
            start += len;
        }
        let size = self.images.size();
        let count = (image_count * size[2] * size[3]).max(1) as f64;
        let mean = &sum / count;
        let var = (&sum_sq / count - &mean * &mean).clamp_min(0.0);
        let std = var.sqrt();
        let rgb = |per_channel: &Tensor| {
            let values = Vec::<f64>::try_from(per_channel).unwrap_or_else(|_| vec![0.0; 3]);
            [values[0], values[1], values[2]]
        };
        (rgb(&mean), rgb(&std))
    }
}

/// The names a dataset records ([`Dataset::name`], config.json, a checkpoint's `dataset`).
pub const CIFAR10: &str = "cifar10";
pub const CIFAR100: &str = "cifar100";
/// CIFAR-100 with its 20 coarse superclasses as the labels.
pub const CIFAR100_COARSE: &str = "cifar100-coarse";
pub const FOLDER: &str = "folder";

/// Why every model vit trains or runs takes 3 channels.
pub const READ_AS_RGB: &str =
    "vit reads CIFAR and image files as RGB (3 channels; greyscale files too)";

/// A loaded dataset, both splits on the CPU.
#[derive(Debug)]
pub struct Dataset {
    /// [`CIFAR10`], [`CIFAR100`], [`CIFAR100_COARSE`] or [`FOLDER`].
    pub name: String,
    pub train: Split,
    pub test: Split,
    pub classes: Vec<String>,
}

impl Dataset {
    pub fn num_classes(&self) -> i64 {
        self.classes.len() as i64
    }

    /// What makes these images the same wherever they are read from (see [`DataIdentity`]).
    pub fn identity(&self) -> DataIdentity {
        use md5::{Digest, Md5};
        let mut hasher = Md5::new();
        for split in [&self.train, &self.test] {
            let labels =
                Vec::<i64>::try_from(split.labels.to_device(Device::Cpu)).expect("int64 labels");
            for label in labels {
                hasher.update(label.to_le_bytes());
            }
            let sample = split
                .images
                .flatten(0, -1)
                .slice(0, None, None, DataIdentity::PIXEL_STRIDE)
                .to_device(Device::Cpu)
                .contiguous();
            hasher.update(Vec::<u8>::try_from(sample).expect("uint8 images"));
        }
        DataIdentity {
            train_images: self.train.len(),
            test_images: self.test.len(),
            classes: self.classes.clone(),
            fingerprint: download::hex_digest(hasher),
        }
    }
}

/// A dataset's images, told apart without their path: a resumed run checks that its data
/// did not change, and may read it from another folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataIdentity {
    /// The dataset's whole training split, which the fingerprint covers: the images a run
    /// trains on each epoch are `TrainSettings::train_subset` of them, where given.
    pub train_images: i64,
    pub test_images: i64,
    pub classes: Vec<String>,
    /// MD5 (hex) of the labels and of every 61st pixel value (`PIXEL_STRIDE`), of the
    /// training split then the test split: cheap (3 MB for CIFAR), and other images, a
    /// subset of them or another order give another.
    pub fingerprint: String,
}

impl DataIdentity {
    /// A prime, so that the sample moves across the positions of an image (unless its
    /// side is a multiple of 61).
    const PIXEL_STRIDE: i64 = 61;
}

/// A dataset's test split alone, which is what evaluating a model needs (a folder dataset
/// then needs no `train` folder, and its training images are not decoded).
#[derive(Debug)]
pub struct TestSet {
    /// As [`Dataset::name`].
    pub name: String,
    pub test: Split,
    pub classes: Vec<String>,
    /// Each test image's file, for a folder dataset (CIFAR's are records in one binary file).
    pub files: Option<Vec<std::path::PathBuf>>,
}

impl TestSet {
    /// Numbers the classes as `classes` (a model's) does, by name: a folder dataset numbers
    /// its class folders in name order, which matches the model's numbers only when it has
    /// the same folders (a held-out folder may lack some classes, or hold a stray one).
    /// Fails naming every class that is not one of `classes`.
    pub fn relabel(&mut self, classes: &[String]) -> Result<()> {
        let numbers: Vec<Option<usize>> = self
            .classes
            .iter()
            .map(|class| classes.iter().position(|known| known == class))
            .collect();
        let unknown: Vec<&String> = self
            .classes
            .iter()
            .zip(&numbers)
            .filter_map(|(class, number)| number.is_none().then_some(class))
            .collect();
        // Class names are compared as they are spelt: a folder named `Bird` for `bird` is
        // pointed out.
        let other_case: Vec<String> = unknown
            .iter()
            .filter_map(|class| {
                let lower = class.to_lowercase();
                let known = classes.iter().find(|known| known.to_lowercase() == lower)?;
                Some(format!("{class:?} is {known:?} in another case"))
            })
            .collect();
        ensure!(
            unknown.is_empty(),
            "the classes {unknown:?} are not among the model's classes {classes:?}{}",
            match other_case.is_empty() {
                true => String::new(),
                false => format!(
                    " ({}: class names must match exactly)",
                    other_case.join(", ")
                ),
            }
        );
        let numbers: Vec<i64> = numbers.into_iter().flatten().map(|n| n as i64).collect();
        let numbers = Tensor::from_slice(&numbers).to_device(self.test.labels.device());
        self.test.labels = numbers.index_select(0, &self.test.labels);
        self.classes = classes.to_vec();
        Ok(())
    }
}

/// The name that the dataset these flags choose records ([`Dataset::name`]), known before
/// it is read.
pub fn dataset_name(args: &DatasetArgs) -> &'static str {
    match (args.dataset, args.coarse_labels) {
        (DatasetName::Cifar10, _) => CIFAR10,
        (DatasetName::Cifar100, false) => CIFAR100,
        (DatasetName::Cifar100, true) => CIFAR100_COARSE,
        (DatasetName::Folder, _) => FOLDER,
    }
}

/// Loads a dataset chosen by the CLI flags; `image_size` is used by folder datasets (CIFAR
/// is 32x32; resizing is left to the transforms).
pub fn load(args: &DatasetArgs, image_size: i64) -> Result<Dataset> {
    ensure_coarse_labels_apply(args)?;
    match cifar_records(args) {
        Some(format) => cifar::load(&args.data_dir, format, dataset_name(args)),
        None => folder::load(&args.data_dir, image_size),
    }
}

/// The CIFAR records the CLI flags choose. None for a folder dataset (and for
/// --coarse-labels with cifar10, which [`load`] refuses).
fn cifar_records(args: &DatasetArgs) -> Option<&'static cifar::RecordFormat> {
    match (args.dataset, args.coarse_labels) {
        (DatasetName::Cifar10, false) => Some(&cifar::CIFAR10_FORMAT),
        (DatasetName::Cifar100, false) => Some(&cifar::CIFAR100_FINE_FORMAT),
        (DatasetName::Cifar100, true) => Some(&cifar::CIFAR100_COARSE_FORMAT),
        (DatasetName::Cifar10, true) | (DatasetName::Folder, _) => None,
    }
}

/// The number of classes of the dataset the CLI flags choose, where its name tells it
/// without reading it: CIFAR's. None for a folder dataset, whose classes are its folders
/// (and for --coarse-labels with cifar10, which [`load`] refuses).
pub fn known_class_count(args: &DatasetArgs) -> Option<usize> {
    cifar_records(args).map(|format| format.num_classes)
}

/// Whether `args.data_dir` holds the folder of the dataset's test split: CIFAR's release
/// folder, or a folder dataset's `test/`.
pub fn has_test_folder(args: &DatasetArgs) -> bool {
    let folder = cifar_records(args).map_or("test", |format| format.release.folder());
    args.data_dir.join(folder).is_dir()
}

/// Fails for `--coarse-labels` with a dataset other than CIFAR-100 (given with `--dataset`,
/// or recorded by the checkpoint evaluated), rather than ignoring it.
fn ensure_coarse_labels_apply(args: &DatasetArgs) -> Result<()> {
    ensure!(
        !args.coarse_labels || args.dataset == DatasetName::Cifar100,
        "--coarse-labels applies to --dataset cifar100 only, not to {}: leave it out",
        dataset_name(args)
    );
    Ok(())
}

/// Loads the test split of a dataset chosen by the CLI flags (see [`load`]); with `only`,
/// that test image alone (a folder dataset decodes no other file), refusing a number that
/// is not one of the split's.
pub fn load_test(args: &DatasetArgs, image_size: i64, only: Option<i64>) -> Result<TestSet> {
    ensure_coarse_labels_apply(args)?;
    let Some(format) = cifar_records(args) else {
        return folder::load_test(&args.data_dir, image_size, only);
    };
    let (classes, mut test) = cifar::load_test(&args.data_dir, format)?;
    if let Some(index) = only {
        check_test_index(index, test.len())?;
        test = Split {
            images: test.images.narrow(0, index, 1),
            labels: test.labels.narrow(0, index, 1),
        };
    }
    Ok(TestSet {
        name: dataset_name(args).to_string(),
        test,
        classes,
        files: None,
    })
}

/// Fails unless `index` is one of a test split's `count` images, naming how many it holds.
fn check_test_index(index: i64, count: i64) -> Result<()> {
    ensure!(
        (0..count).contains(&index),
        "--index {index} is outside the test split, which holds {count} {}{}",
        noun_for(count, "image"),
        match count {
            0 => String::new(),
            1 => ", numbered 0".to_string(),
            _ => format!(", numbered 0 to {}", count - 1),
        }
    );
    Ok(())
}

/// `vit download`: fetch, verify and unpack a CIFAR archive into `--data-dir`.
pub fn run_download(args: &DownloadArgs) -> Result<()> {
    let format = match args.dataset {
        DownloadableDataset::Cifar10 => &cifar::CIFAR10_FORMAT,
        DownloadableDataset::Cifar100 => &cifar::CIFAR100_FINE_FORMAT,
    };
    let spec = format.release.archive;
    // An empty VIT_DATA_MIRROR (set but cleared) means no mirror.
    let source = args
        .from
        .as_deref()
        .filter(|from| !from.is_empty())
        .unwrap_or(download::OFFICIAL_URL);
    match download::fetch(source, &args.data_dir, spec)? {
        download::Fetched::AlreadyPresent(path) => {
            // A folder that is there is not fetched again, so it has to be the whole
            // release: every file of its size, each readable, each class's images all there.
            cifar::check_release(&args.data_dir, format).with_context(|| {
                format!(
                    "{} is there but not a whole dataset: delete it, then run this \
                         command again",
                    path.display()
                )
            })?;
            println!("{} is already in place; nothing to fetch", path.display())
        }
        download::Fetched::Unpacked(path) => println!("unpacked to {}", path.display()),
    }
    Ok(())
}

/// `vit data`: counts per split and class, and the training images' channel statistics.
pub fn run_summary(args: &DataArgs) -> Result<()> {
    args.threads.set_up();
    let start = Instant::now();
    let dataset = load(&args.data, args.image_size)?;
    let elapsed = start.elapsed().as_secs_f64();
    let size = dataset.train.images.size();
    let total = dataset.train.len() + dataset.test.len();
    println!(
        "dataset {} from {}: {} {}, images {}x{}x{} uint8",
        dataset.name,
        args.data.data_dir.display(),
        dataset.classes.len(),
        noun_for(dataset.classes.len(), "class"),
        size[1],
        size[2],
        size[3]
    );
    println!(
        "loaded {total} {} in {elapsed:.3} s",
        noun_for(total, "image")
    );
    for (name, split) in [("train", &dataset.train), ("test ", &dataset.test)] {
        println!(
            "{name} {:>7} {}",
            split.len(),
            noun_for(split.len(), "image")
        );
    }
    let num_classes = dataset.classes.len();
    let train_counts = dataset.train.class_counts(num_classes);
    let test_counts = dataset.test.class_counts(num_classes);
    let width = dataset
        .classes
        .iter()
        .map(|c| c.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:>5}  {:<width$}  {:>7}  {:>7}",
        "label", "class", "train", "test"
    );
    for (i, class) in dataset.classes.iter().enumerate() {
        println!(
            "{:>5}  {:<width$}  {:>7}  {:>7}",
            i, class, train_counts[i], test_counts[i]
        );
    }
    let (mean, std) = dataset.train.channel_stats();
    println!(
        "train pixels in [0,1], per channel (R, G, B): mean {:.4} {:.4} {:.4}, std {:.4} {:.4} {:.4}",
        mean[0], mean[1], mean[2], std[0], std[1], std[2]
    );
    println!(
        "(the transforms normalize with mean {:?} and std {:?}, the notebook's constants)",
        CIFAR_MEAN, CIFAR_STD
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_test_index;

    /// An --index outside the test split is refused with how many images the split holds
    /// ("1 image", "200 images") and their numbers.
    #[test]
    fn an_index_outside_the_test_split_names_its_count() {
        assert!(check_test_index(0, 1).is_ok() && check_test_index(199, 200).is_ok());
        let outside = "is outside the test split, which holds";
        for (index, count, says) in [
            (200, 200, "200 images, numbered 0 to 199"),
            (-1, 200, "200 images, numbered 0 to 199"),
            (1, 1, "1 image, numbered 0"),
            (0, 0, "0 images"),
        ] {
            let error = check_test_index(index, count).unwrap_err().to_string();
            assert_eq!(error, format!("--index {index} {outside} {says}"));
        }
    }
}
