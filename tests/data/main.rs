//! The data layer on generated files: both CIFAR binary formats, their errors, the
//! download's verification and atomicity, ImageFolder reading, and the augmentation
//! invariants. No network and no real dataset needed.

// The shared helpers of every test crate, from the folder above this crate's.
mod cifar;
#[path = "../common/mod.rs"]
mod common;
mod download;
mod image_decoding;
mod image_folder;
mod summary;
mod transforms;

use common::record;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};
use vit_tch::cli::{DatasetArgs, DatasetName};
use vit_tch::data::{self, image_file};

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

/// What the tests' decodes say to do where the images do not fit in memory.
const REMEDY: &str = "(what to do)";

/// [`image_file::decode_images`], with [`REMEDY`].
fn decode_images(files: &[&Path], size: u32) -> anyhow::Result<Tensor> {
    image_file::decode_images(files, size, REMEDY)
}
