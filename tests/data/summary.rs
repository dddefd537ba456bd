//! `vit data`: per-channel statistics, the dataset's identity, the counts per split, and
//! the data commands' entry points.

use crate::common::{assert_contains, write_cifar10, TempDir};
use crate::{args, common, entries, error_of, load_named};
use tch::{Device, Kind, Tensor};
use vit_tch::cli::DatasetName;
use vit_tch::data;

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
