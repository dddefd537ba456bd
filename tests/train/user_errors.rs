//! A user's mistake is one clear error that says what was wrong and what to do, given
//! before any data is read or any weight is trained where it can be.

use crate::common::{assert_contains, vit, vit_fails, TempDir};
use crate::{colour_cifar10, common, fresh_model, read_metrics, save_fresh_model, tiny_run_args};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use tch::{Device, Kind, Tensor};
use vit_tch::model::ViTConfig;

/// config.json records the data folder as text: one not named in UTF-8 is refused before
/// anything is written, and reached through a link named in UTF-8 it trains.
#[test]
fn a_data_folder_not_named_in_utf8_is_refused_unless_linked() {
    let (root, data_dir) = colour_cifar10("non-utf8-data");
    let odd = root.join(OsStr::from_bytes(b"data \xff"));
    std::fs::rename(&data_dir, &odd).unwrap();
    let run = root.join("run");
    let train = |data: &Path| {
        let mut args: Vec<OsString> = tiny_run_args("DATA", run.to_str().unwrap())
            .into_iter()
            .map(|arg| match arg {
                "DATA" => data.as_os_str().to_owned(),
                _ => arg.into(),
            })
            .collect();
        #[rustfmt::skip]
        args.extend(["--epochs", "1", "--warmup-epochs", "0", "--train-subset", "20"].map(OsString::from));
        Command::new(common::vit_binary())
            .args(args)
            .output()
            .unwrap()
    };
    let refused = train(&odd);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("is not named in UTF-8"),
        "{stderr}"
    );
    assert!(!run.exists(), "a refused run left {}", run.display());

    let link = root.join("linked data");
    std::os::unix::fs::symlink(&odd, &link).unwrap();
    let trained = train(&link);
    let stderr = String::from_utf8_lossy(&trained.stderr);
    assert!(trained.status.success(), "{stderr}");
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert_contains(&config, link.to_str().unwrap());
}

#[test]
fn user_errors_say_what_to_do() {
    let (root, data_dir) = colour_cifar10("user-errors");
    let (data, empty) = (data_dir.to_str().unwrap(), root.join("empty"));
    let run = root.join("run");

    let mut args = tiny_run_args(empty.to_str().unwrap(), run.to_str().unwrap());
    args.extend(["--epochs", "1"]);
    let stderr = vit_fails(&args);
    assert_contains(&stderr, "vit download --dataset cifar10");
    // The warm-up's warning comes once a run starts, not before an error that stops it.
    assert!(!stderr.contains("--warmup-epochs"), "{stderr}");

    // --resume of a folder that holds no run says so, before any data is read (this
    // command's CIFAR-100 is not there either); as does an --out that is a link to nothing.
    let nowhere = root.join("nowhere");
    let mut args = tiny_run_args(data, nowhere.to_str().unwrap());
    args.push("--resume");
    let stderr = vit_fails(&args);
    assert_contains(
        &stderr,
        "nowhere does not exist; check --out, or leave out --resume",
    );
    std::fs::create_dir_all(&nowhere).unwrap();
    let stderr = vit_fails(&["train", "--out", nowhere.to_str().unwrap(), "--resume"]);
    assert_contains(
        &stderr,
        "has no config.json, so it holds no vit run; check --out",
    );
    // A metrics.csv may be anyone's, but a resume state tells a run's folder: its
    // config.json gone, or damaged, is to be put back.
    let resume = ["train", "--out", nowhere.to_str().unwrap(), "--resume"];
    std::fs::write(nowhere.join("metrics.csv"), "epoch\n").unwrap();
    let stderr = vit_fails(&resume);
    assert_contains(&stderr, "has no config.json, so it holds no vit run");
    std::fs::write(nowhere.join("resume.safetensors"), "state").unwrap();
    let stderr = vit_fails(&resume);
    assert!(
        stderr.contains("holds a run's resume.safetensors but not its config.json")
            && stderr.contains("put it back, or start a new run with another --out"),
        "{stderr}"
    );
    std::fs::write(nowhere.join("config.json"), "{broken").unwrap();
    let stderr = vit_fails(&resume);
    assert_contains(
        &stderr,
        "config.json is not a vit run config; put back the one the run wrote",
    );
    for file in ["metrics.csv", "resume.safetensors", "config.json"] {
        std::fs::remove_file(nowhere.join(file)).unwrap();
    }
    std::fs::remove_dir(&nowhere).unwrap();
    let link = root.join("link");
    std::os::unix::fs::symlink(&nowhere, &link).unwrap();
    for out in [link.clone(), link.join("run")] {
        let stderr = vit_fails(&tiny_run_args(data, out.to_str().unwrap()));
        assert!(
            stderr.contains(&format!(
                "{} is a symbolic link to {}, which does not exist",
                link.display(),
                nowhere.display()
            )),
            "{stderr}"
        );
    }

    // Weights the last step sent to infinity: the NaN test loss stops the run before
    // they are saved.
    let diverged = root.join("diverged");
    let mut args = tiny_run_args(data, diverged.to_str().unwrap());
    #[rustfmt::skip]
    args.extend(["--lr", "1e30", "--clip-grad", "0", "--epochs", "1", "--batch-size", "600"]);
    let stderr = vit_fails(&args);
    assert!(
        stderr.contains("the test loss became NaN in epoch 1; stopped")
            && stderr.contains("lower --lr or --weight-decay, or --clip-grad 1 to clip"),
        "{stderr}"
    );
    assert!(!diverged.join("best_model.safetensors").exists());

    // Step counts that would wrap around (they made the learning rate 0 or NaN) are
    // refused before a run folder exists.
    let huge = root.join("huge");
    let mut args = tiny_run_args(data, huge.to_str().unwrap());
    args.extend(["--epochs", "4611686018427387904", "--batch-size", "1"]);
    let stderr = vit_fails(&args);
    // The data's 600 training images: 600 steps of one image an epoch.
    let most = usize::MAX / 600;
    assert!(
        stderr.contains(&format!(
            "more steps than vit counts: give at most {most} epochs"
        )),
        "{stderr}"
    );
    assert!(!huge.exists());

    // A libtorch error (here: out of memory) is one line with advice, not a C++ stack.
    // The batch passes vit's own check (its images and blocks' inputs take 0.2 GB), but its
    // attention scores, which that check leaves out, would take 1.7 TB: 100 images of
    // 65,537 tokens squared.
    #[rustfmt::skip]
    let output = Command::new(common::vit_binary())
        .args(["bench", "--config", "tiny", "--image-size", "256", "--patch-size", "1", "--embed-dim", "4",
            "--num-heads", "1", "--mlp-dim", "4", "--num-layers", "1", "--batch-size", "100",
            "--explicit-attention", "--steps", "1", "--warmup", "0", "--device", "cpu"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "as other errors");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Error: libtorch: ") && stderr.contains("can't allocate memory"),
        "{stderr}"
    );
    assert_contains(&stderr, "use a smaller --batch-size or model");
    assert!(
        !stderr.contains("frame #") && !stderr.contains("panicked"),
        "{stderr}"
    );

    // `vit download` does not fetch a dataset folder that exists, so it checks it.
    let partial = root.join("partial");
    std::fs::create_dir_all(partial.join("cifar-10-batches-bin")).unwrap();
    #[rustfmt::skip]
    let stderr = vit_fails(&["download", "--dataset", "cifar10", "--data-dir", partial.to_str().unwrap()]);
    assert_contains(&stderr, "is there but not a whole dataset: delete it");
    // Nor one of whole records that is not the release (this test's small copy).
    #[rustfmt::skip]
    let stderr = vit_fails(&["download", "--dataset", "cifar10", "--data-dir", data]);
    assert!(
        stderr.contains("is there but not a whole dataset")
            && stderr.contains("data_batch_1.bin is ")
            && stderr.contains("bytes where the official file is 30730000"),
        "{stderr}"
    );

    let a_file = root.join("a-file");
    std::fs::write(&a_file, "the user's").unwrap();
    let stderr = vit_fails(&tiny_run_args(data, a_file.to_str().unwrap()));
    assert_contains(&stderr, "is a file; it takes a folder");
    assert_eq!(std::fs::read_to_string(&a_file).unwrap(), "the user's");

    // A missing --out named as a file (vit eval's too) is refused, not made a folder; an
    // existing folder of that name is taken.
    let named_as_a_file = root.join("report.CSV");
    let stderr = vit_fails(&tiny_run_args(data, named_as_a_file.to_str().unwrap()));
    let said = format!(
        "--out {} is named as a .CSV file, but --out takes a folder (created if missing), \
         where the files go: name a folder",
        named_as_a_file.display()
    );
    assert_contains(&stderr, &said);
    let model = root.join("model.safetensors");
    save_fresh_model(&ViTConfig::tiny(), &[("dataset", "cifar10".into())], &model);
    #[rustfmt::skip]
    let eval = ["eval", "--checkpoint", model.to_str().unwrap(), "--data-dir", data, "--device", "cpu", "--out", named_as_a_file.to_str().unwrap()];
    assert!(vit_fails(&eval).contains(&said));
    assert!(!named_as_a_file.exists());
    std::fs::create_dir(&named_as_a_file).unwrap();
    vit(&eval);
    std::fs::remove_dir_all(&named_as_a_file).unwrap();

    // A file where a folder above the run folder should be is named, and kept.
    let below_a_file = a_file.join("run");
    let stderr = vit_fails(&tiny_run_args(data, below_a_file.to_str().unwrap()));
    assert!(
        stderr.contains(&format!(
            "{} is a file, not a folder; move it away",
            a_file.display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&a_file).unwrap(), "the user's");

    let stderr = vit_fails(&tiny_run_args(data, "/proc/vit-cannot-write-here"));
    assert!(
        stderr.contains(
            "cannot create /proc/vit-cannot-write-here (is it writable? If not, choose another \
             folder)"
        ),
        "{stderr}"
    );

    let mut args = tiny_run_args(data, run.to_str().unwrap());
    args.extend(["--num-classes", "100"]);
    let stderr = vit_fails(&args);
    assert_contains(
        &stderr,
        "--num-classes 100 does not match cifar10, which has 10 classes: leave out --num-classes",
    );

    let mut args = tiny_run_args(data, run.to_str().unwrap());
    args.extend(["--in-channels", "1"]);
    let stderr = vit_fails(&args);
    assert!(
        stderr.contains(
            "--in-channels 1: vit reads CIFAR and image files as RGB (3 channels; greyscale \
             files too); leave --in-channels out"
        ),
        "{stderr}"
    );

    for (flag, message) in [
        (
            "--label-smoothing=1.5",
            "--label-smoothing must be in [0, 1)",
        ),
        ("--label-smoothing=1", "--label-smoothing must be in [0, 1)"),
        ("--lr=0", "--lr must be a positive finite number"),
        ("--lr=inf", "--lr must be a positive finite number"),
        // A negative number with a signed exponent is a value too, not a flag `-1`.
        (
            "--lr -1e-3",
            "--lr must be a positive finite number, got -0.001",
        ),
        ("--clip-grad=-1", "--clip-grad must be a finite number >= 0"),
        // A whole-number flag says so of another number.
        (
            "--seed=-1",
            "invalid value '-1' for '--seed <SEED>': expected a whole number of 0 or more",
        ),
        (
            "--embed-dim=32.5",
            "invalid value '32.5' for '--embed-dim <EMBED_DIM>': expected a whole number",
        ),
        (
            "--epochs=0",
            "invalid value '0' for '--epochs <EPOCHS>': expected a whole number of 1 or more",
        ),
        (
            "--batch-size -8",
            "invalid value '-8' for '--batch-size <BATCH_SIZE>': expected a whole number of 1 or \
             more",
        ),
        // A whole number too large for its type is called that, not "not a whole number".
        (
            "--batch-size 9223372036854775808",
            "invalid value '9223372036854775808' for '--batch-size <BATCH_SIZE>': \
             9223372036854775808 is more than vit can count (at most 9223372036854775807)",
        ),
        (
            "--seed -18446744073709551616",
            "invalid value '-18446744073709551616' for '--seed <SEED>': expected a whole number \
             of 0 or more",
        ),
        // The model's flags are named as the user wrote them, not as config fields.
        (
            "--embed-dim=30 --num-heads=4",
            "--embed-dim (30) must be divisible by --num-heads (4)",
        ),
        ("--dropout=1", "--dropout must be in [0, 1), got 1"),
        // Values far from everyday sizes are shown in scientific notation, not digit by digit.
        ("--dropout=1e308", "--dropout must be in [0, 1), got 1e308"),
        (
            "--lr -1e-300",
            "--lr must be a positive finite number, got -1e-300",
        ),
        ("--mlp-dim=0", "--mlp-dim must be positive, got 0"),
        // A negative value after a space is a value, not a flag clap does not know.
        ("--clip-grad -1", "--clip-grad must be a finite number >= 0"),
        ("--ema -0.5", "--ema must be in [0, 1), got -0.5"),
        (
            "--weight-decay=NaN",
            "--weight-decay must be a finite number >= 0",
        ),
        (
            "--mixup=inf",
            "--mixup takes a finite alpha of at least 0.01, or 0 to turn it off; got inf",
        ),
        // Beta(alpha, alpha) of a tiny alpha lands at 0 or 1, and its draws underflow.
        (
            "--cutmix=1e-6",
            "--cutmix takes a finite alpha of at least 0.01, or 0 to turn it off; got 1e-6",
        ),
        (
            "--mixup=0.8 --mix-prob=0",
            "--mix-prob 0 would never mix: pass --mixup 0 --cutmix 0 instead",
        ),
        // Out of range is said as such, not as "0 would never mix".
        (
            "--mixup=0.8 --mix-prob=-0.5",
            "--mix-prob must be in [0, 1], got -0.5",
        ),
        (
            "--randaugment-magnitude=31 --augment-policy=randaugment",
            "--randaugment-magnitude must be in 0..=30, got 31",
        ),
        (
            "--recipe=strong --mixup=0 --cutmix=0 --mix-prob=0.5",
            "--mix-prob needs --mixup or --cutmix (--mixup 0 --cutmix 0 turned both off)",
        ),
        (
            "--recipe=strong --ema=0 --ema-warmup",
            "--ema-warmup needs --ema DECAY (--ema 0 turned it off)",
        ),
        // A negative decay is out of range, not off.
        (
            "--recipe=strong --ema=-0.5 --ema-warmup",
            "--ema must be in [0, 1), got -0.5",
        ),
        (
            "--augment-policy=randaugment --randaugment-ops=17",
            "--randaugment-ops must be in 1..=16, got 17",
        ),
        (
            "--threads=2000",
            "invalid value '2000' for '--threads <THREADS>': expected a whole number from 1 \
             to 1024",
        ),
        (
            "--threads=two",
            "invalid value 'two' for '--threads <THREADS>': expected a whole number from 1 \
             to 1024",
        ),
        (
            "--lr=fast",
            "invalid value 'fast' for '--lr <LR>': expected a number, such as 0.1 or 1e-3",
        ),
        (
            "--mixup=",
            "invalid value '' for '--mixup <MIXUP>': expected a number, such as 0.1 or 1e-3",
        ),
        ("--cuda-graph", "--cuda-graph needs a CUDA device"),
        ("--cuda-graph=step", "--cuda-graph needs a CUDA device"),
        (
            "--cuda-graph=all",
            "invalid value 'all' for '--cuda-graph[=<SCOPE>]'",
        ),
        (
            "--cuda-graph step",
            "tip: a scope follows '=': write --cuda-graph=step",
        ),
        (
            "--train-subset=100000",
            "--train-subset 100000 is more than the 600 training images there are; give 1 \
             to 600, or leave it out to train on all of them",
        ),
        ("--ema=-0.5", "--ema must be in [0, 1), got -0.5"),
        (
            "--random-erasing=1.5",
            "--random-erasing must be in [0, 1], got 1.5",
        ),
        ("--threads=0", "invalid value '0' for '--threads"),
        ("--randaugment-ops=3", "need --augment-policy randaugment"),
        ("--mix-prob=0.5", "--mix-prob needs --mixup or --cutmix"),
        (
            "--mixup=-1 --mix-prob=0.5",
            "--mixup takes a finite alpha of at least 0.01, or 0 to turn it off; got -1",
        ),
        (
            "--switch-prob=0.2 --mixup=0.8",
            "it needs both --mixup and --cutmix",
        ),
        (
            "--mix-off-epoch=5",
            "--mix-off-epoch needs --mixup or --cutmix",
        ),
        ("--ema-warmup", "--ema-warmup needs --ema DECAY"),
        (
            "--mix-off-epoch=0 --recipe=strong",
            "--mix-off-epoch 0 would never mix",
        ),
    ] {
        let mut args = tiny_run_args(data, run.to_str().unwrap());
        args.extend(flag.split(' '));
        let stderr = vit_fails(&args);
        assert!(stderr.contains(message), "{flag}: {stderr}");
    }
    // The flags are checked before the data is read: here there is none.
    let nowhere = root.join("no-data");
    for (flag, message) in [
        (
            "--random-erasing=2",
            "--random-erasing must be in [0, 1], got 2",
        ),
        ("--cuda-graph", "--cuda-graph needs a CUDA device"),
    ] {
        let mut args = tiny_run_args(nowhere.to_str().unwrap(), run.to_str().unwrap());
        args.push(flag);
        let stderr = vit_fails(&args);
        assert!(stderr.contains(message), "{flag}: {stderr}");
    }
    let below_a_file = root.join("a-file").join("run");
    #[rustfmt::skip]
    let stderr = vit_fails(&tiny_run_args(nowhere.to_str().unwrap(), below_a_file.to_str().unwrap()));
    assert_contains(
        &stderr,
        "a-file is a file, not a folder; move it away, or choose another --out",
    );
    assert!(
        !run.exists(),
        "a refused run must not leave a run folder behind"
    );
    // The other commands' sizes, refused before a checkpoint is read.
    for command in [
        "eval --checkpoint none.safetensors --batch-size 0",
        "predict --checkpoint none.safetensors a.png --batch-size 0",
        "bench --batch-size 0",
        "bench --steps 0",
    ] {
        let stderr = vit_fails(&command.split(' ').collect::<Vec<_>>());
        assert!(
            stderr.contains("invalid value '0' for '--") && stderr.contains("of 1 or more"),
            "{command}: {stderr}"
        );
    }

    // A folder of the user's with files a run would overwrite is refused, untouched.
    std::fs::create_dir_all(&run).unwrap();
    for name in ["config.json", "best_model.safetensors"] {
        std::fs::write(run.join(name), "the user's").unwrap();
        let stderr = vit_fails(&tiny_run_args(data, run.to_str().unwrap()));
        assert_contains(&stderr, "is not a vit run folder");
        assert_contains(&stderr, name);
        assert_eq!(
            std::fs::read_to_string(run.join(name)).unwrap(),
            "the user's"
        );
        std::fs::remove_file(run.join(name)).unwrap();
    }
    assert_eq!(
        std::fs::read_dir(&run).unwrap().count(),
        0,
        "files left behind"
    );

    // A folder left by a run that failed before saving anything (config.json and the
    // metrics header only) is started over, with other settings if need be.
    let mut args = tiny_run_args(data, run.to_str().unwrap());
    args.extend(["--epochs", "1", "--batch-size", "100"]);
    vit(&args);
    for name in [
        "best_model.safetensors",
        "last_model.safetensors",
        "resume.safetensors",
    ] {
        std::fs::remove_file(run.join(name)).unwrap();
    }
    let (header, _) = read_metrics(&run);
    std::fs::write(run.join("metrics.csv"), header.join(",") + "\n").unwrap();
    let mut args = tiny_run_args(data, run.to_str().unwrap());
    args.extend(["--epochs", "1", "--batch-size", "50"]);
    let output = vit(&args);
    assert!(String::from_utf8_lossy(&output.stderr).contains("starting it over"));
    assert_eq!(read_metrics(&run).1.len(), 1);

    // A folder another vit process holds (this test locks it, as that process would) is
    // refused, for a resume too; once the holder is gone (the OS releases its lock), the
    // folder is free again, whatever its lock file says.
    let resume = {
        let mut args = tiny_run_args(data, run.to_str().unwrap());
        args.extend(["--epochs", "1", "--batch-size", "50", "--resume"]);
        args
    };
    let holder = std::fs::OpenOptions::new()
        .write(true)
        .open(run.join(".lock"))
        .unwrap();
    holder.try_lock().unwrap();
    std::fs::write(run.join(".lock"), "12345").unwrap();
    let stderr = vit_fails(&resume);
    assert_contains(&stderr, "is in use by another vit process (PID 12345)");
    let stderr = vit_fails(&resume[..resume.len() - 1]);
    assert!(
        stderr.contains("is in use by another vit process"),
        "a fresh run: {stderr}"
    );
    drop(holder);
    vit(&resume);
    std::fs::remove_dir_all(&run).unwrap();

    if !tch::Cuda::is_available() {
        let args = tiny_run_args(data, run.to_str().unwrap());
        let args: Vec<&str> = args
            .into_iter()
            .map(|a| if a == "cpu" { "cuda:0" } else { a })
            .collect();
        let stderr = vit_fails(&args);
        assert_contains(&stderr, "use --device cpu");
    }

    // A checkpoint of another class count than the dataset's.
    let config = ViTConfig {
        num_classes: 5,
        ..ViTConfig::tiny()
    };
    let checkpoint = root.join("five.safetensors");
    let vs = save_fresh_model(&config, &[("dataset", "cifar10".into())], &checkpoint);
    let stderr = vit_fails(&[
        "eval",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--data-dir",
        data,
        "--device",
        "cpu",
    ]);
    assert_contains(&stderr, "has 5 classes but cifar10");
    // attention too: a test image's true class would otherwise get another dataset's name.
    let picture = root.join("five.png");
    #[rustfmt::skip]
    let stderr = vit_fails(&[
        "attention", "--checkpoint", checkpoint.to_str().unwrap(), "--data-dir", data,
        "--index", "0", "--device", "cpu", "-o", picture.to_str().unwrap(),
    ]);
    assert_contains(&stderr, "has 5 classes but cifar10");
    assert!(!picture.exists());
    // An IMAGE with a test image's flag names the flag given; a folder as IMAGE is refused.
    let checkpoint_arg = checkpoint.to_str().unwrap();
    for (extra, message) in [
        (
            vec!["photo.png", "--dataset", "cifar10"],
            "give either an IMAGE file or a test image (--index, --dataset, --data-dir, \
             --coarse-labels), not both: --dataset came with",
        ),
        (
            vec!["photo.png", "--coarse-labels", "--data-dir", data],
            "not both: --data-dir and --coarse-labels came with",
        ),
        (
            vec![root.to_str().unwrap()],
            "is a folder: give one image file (vit predict takes folders)",
        ),
    ] {
        let mut args = vec![
            "attention",
            "--checkpoint",
            checkpoint_arg,
            "--device",
            "cpu",
        ];
        args.extend(&extra);
        args.extend(["-o", picture.to_str().unwrap()]);
        let stderr = vit_fails(&args);
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
    }

    // A greyscale model cannot take the RGB images vit decodes: said so, not a shape error.
    let grey_config = ViTConfig {
        in_channels: 1,
        ..ViTConfig::tiny()
    };
    let grey_model = root.join("grey-model.safetensors");
    save_fresh_model(&grey_config, &[], &grey_model);
    let colour = root.join("colour.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([200, 30, 10]))
        .save(&colour)
        .unwrap();
    let (grey_model, colour) = (grey_model.to_str().unwrap(), colour.to_str().unwrap());
    for command in ["predict", "attention"] {
        let stderr = vit_fails(&[
            command,
            "--checkpoint",
            grey_model,
            colour,
            "--device",
            "cpu",
        ]);
        assert!(
            stderr.contains(&format!(
                "{grey_model} takes images of 1 channel, but vit reads CIFAR and image files \
                 as RGB (3 channels; greyscale files too): it can only run RGB models"
            )),
            "{command}: {stderr}"
        );
    }
    #[rustfmt::skip]
    let stderr = vit_fails(&["eval", "--checkpoint", grey_model, "--dataset", "cifar10", "--data-dir", data, "--device", "cpu"]);
    assert!(
        stderr.contains(&format!(
            "{grey_model} takes images of 1 channel, but vit reads CIFAR and image files as RGB"
        )),
        "{stderr}"
    );

    // A checkpoint that loads but may mislead: another normalisation, a broken class list.
    // Each is a warning; a dataset vit cannot read is an error.
    let odd = root.join("odd.safetensors");
    #[rustfmt::skip]
    let metadata = [
        ("dataset", "imagenet".to_string()), ("classes", "[\"one\"]".into()), ("mean", "[0.5, 0.5, 0.5]".into()),
    ];
    vit_tch::checkpoint::save(&vs, &config, &metadata, &odd).unwrap();
    let picture = root.join("grey.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([128, 128, 128]))
        .save(&picture)
        .unwrap();
    let (odd, picture) = (odd.to_str().unwrap(), picture.to_str().unwrap());
    let output = vit(&["predict", "--checkpoint", odd, picture, "--device", "cpu"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for warning in [
        "records normalisation mean [0.5, 0.5, 0.5]",
        "has `classes` metadata that is not a list of 5 names",
    ] {
        assert!(stderr.contains(warning), "{warning}: {stderr}");
    }
    // NaN weights (a damaged file) would make every output NaN: refused.
    let _ = vs.variables()["head.bias"].detach().fill_(f64::NAN);
    let damaged = root.join("damaged.safetensors");
    vit_tch::checkpoint::save(&vs, &config, &[], &damaged).unwrap();
    let damaged = damaged.to_str().unwrap();
    for args in [
        vec!["predict", "--checkpoint", damaged, picture],
        vec![
            "eval",
            "--checkpoint",
            damaged,
            "--dataset",
            "cifar10",
            "--data-dir",
            data,
        ],
    ] {
        let stderr = vit_fails(&args);
        let command = args[0];
        assert!(
            stderr.contains(&format!(
                "{damaged} has NaN or infinite values in [\"head.bias\"], so its every output \
                 would be NaN: the file is damaged"
            )),
            "{command}: {stderr}"
        );
    }
    let stderr = vit_fails(&["eval", "--checkpoint", odd, "--data-dir", data]);
    assert!(
        stderr
            .contains("records the dataset `imagenet`, which vit cannot read (it reads `cifar10`"),
        "{stderr}"
    );

    // Class names other than the dataset's: the report goes on, with a warning.
    let vs = fresh_model(&ViTConfig::tiny());
    let lettered = root.join("lettered.safetensors");
    let eval_stderr = |classes: String| {
        let metadata = [("dataset", "cifar10".to_string()), ("classes", classes)];
        vit_tch::checkpoint::save(&vs, &ViTConfig::tiny(), &metadata, &lettered).unwrap();
        #[rustfmt::skip]
        let output = vit(&["eval", "--checkpoint", lettered.to_str().unwrap(), "--data-dir", data, "--device", "cpu"]);
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let letters: Vec<String> = ('a'..='j').map(String::from).collect();
    let stderr = eval_stderr(serde_json::to_string(&letters).unwrap());
    assert_contains(&stderr, "was trained on the classes [\"a\"");
    // A broken class list: eval warns as predict does, and reports the dataset's names.
    // So is one with a name that is empty or not one line: eval printed it as it was.
    let mut broken_line = letters.clone();
    broken_line[3] = "x\ny".to_string();
    let mut empty = letters.clone();
    empty[0] = String::new();
    for classes in [
        "[\"one\"]".to_string(),
        serde_json::to_string(&broken_line).unwrap(),
        serde_json::to_string(&empty).unwrap(),
    ] {
        let stderr = eval_stderr(classes.clone());
        assert!(
            stderr.contains(
                "lettered.safetensors has `classes` metadata that is not a list of 10 names \
                 (each a line of text, not empty)"
            ) && !stderr.contains("x\ny"),
            "{classes}: {stderr}"
        );
    }
    // An --out that cannot take the confusion matrix is refused before the test pass (one
    // to make, by the folder it would be made in).
    for (out, error) in [
        ("/proc/vit-eval", "cannot write to /proc (is it writable?"),
        ("/proc/self", "cannot write to /proc/self"),
    ] {
        #[rustfmt::skip]
        let stderr = vit_fails(&["eval", "--checkpoint", lettered.to_str().unwrap(), "--data-dir", data, "--device", "cpu", "--out", out]);
        assert!(
            stderr.contains(&format!(
                "--out is where the confusion matrix goes: {error}"
            )) && stderr.matches("choose another").count() == 1,
            "{stderr}"
        );
    }
    // Before the test set is read, too (a folder dataset is decoded first, which takes a
    // while): with no test set there, the --out is what is refused.
    let no_data = root.join("no-test-set");
    #[rustfmt::skip]
    let stderr = vit_fails(&["eval", "--checkpoint", lettered.to_str().unwrap(), "--data-dir", no_data.to_str().unwrap(), "--device", "cpu", "--out", "/proc/self"]);
    assert_contains(
        &stderr,
        "--out is where the confusion matrix goes: cannot write to /proc/self",
    );
    // A new --out is made only once there is something to write in it.
    let never_made = root.join("never-made");
    #[rustfmt::skip]
    let stderr = vit_fails(&["eval", "--checkpoint", lettered.to_str().unwrap(), "--data-dir", no_data.to_str().unwrap(), "--device", "cpu", "--out", never_made.join("deep").to_str().unwrap()]);
    assert!(
        stderr.contains("is missing: run `vit download") && !never_made.exists(),
        "{stderr}"
    );
    // A folder where the matrix's file goes, found only when it is written: the figures
    // are printed, and the exit status says the file is not; with --plot the picture is
    // drawn all the same.
    let blocked = root.join("lettered.confusion_matrix.csv");
    let matrix_png = root.join("lettered.confusion_matrix.png");
    let _ = std::fs::remove_file(&blocked);
    std::fs::create_dir(&blocked).unwrap();
    for plot in [None, Some("--plot")] {
        let _ = std::fs::remove_file(&matrix_png);
        #[rustfmt::skip]
        let args = ["eval", "--checkpoint", lettered.to_str().unwrap(), "--data-dir", data, "--device", "cpu", "--json"];
        let output = common::run_vit(&[&args[..], plot.as_slice()].concat());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("cannot write {}", blocked.display()))
                && stderr.contains("the evaluation's figures are printed all the same"),
            "{stderr}"
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(report["accuracy"].as_f64().is_some(), "{report}");
        assert!(report["confusion_matrix_csv"].is_null(), "{report}");
        assert_eq!(
            report["confusion_matrix_png"].as_str(),
            plot.map(|_| matrix_png.to_str().unwrap()),
            "{report}"
        );
        assert_eq!(matrix_png.exists(), plot.is_some());
    }
    std::fs::remove_dir(&blocked).unwrap();
    // A checkpoint in a folder that cannot take it (here /proc/PID/fd, of a file this test
    // holds open) is evaluated all the same, without the matrix's file; --plot, which asks
    // for a picture there, is refused.
    let held = std::fs::File::open(&lettered).unwrap();
    let in_read_only = format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&held)
    );
    #[rustfmt::skip]
    let output = vit(&["eval", "--checkpoint", &in_read_only, "--data-dir", data, "--device", "cpu", "--json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_contains(
        &stderr,
        "so the confusion matrix is not saved: pass --out DIR to save it",
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // Both keys are there, null: the report's shape does not change with what was written.
    for key in ["confusion_matrix_csv", "confusion_matrix_png"] {
        assert_eq!(report.get(key), Some(&serde_json::Value::Null), "{report}");
    }
    assert!(report["accuracy"].as_f64().is_some(), "{report}");
    #[rustfmt::skip]
    let stderr = vit_fails(&["eval", "--checkpoint", &in_read_only, "--data-dir", data, "--device", "cpu", "--plot"]);
    assert_contains(
        &stderr,
        "the confusion matrix (and its --plot picture) goes there: pass --out DIR",
    );

    // A file that cannot be read is named and skipped; the others are classified, and the
    // exit status says that one was not.
    let not_an_image = root.join("notes.png");
    std::fs::write(&not_an_image, "not a picture").unwrap();
    #[rustfmt::skip]
    let output = common::run_vit(&["predict", "--checkpoint", checkpoint.to_str().unwrap(), "--device", "cpu", "--batch-size", "2", picture, not_an_image.to_str().unwrap(), colour]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("skipped: cannot decode") && stderr.contains("notes.png"),
        "{stderr}"
    );
    assert_contains(&stderr, "1 of 3 files could not be read");
    assert_eq!(predicted_files(&output), [picture, colour]);
    // With --json each input gets its line: the file that could not be read its error.
    #[rustfmt::skip]
    let output = common::run_vit(&["predict", "--checkpoint", checkpoint.to_str().unwrap(), "--device", "cpu", "--batch-size", "2", "--json", picture, not_an_image.to_str().unwrap(), colour]);
    assert_eq!(output.status.code(), Some(1));
    let (lines, files) = json_lines_and_files(&output);
    assert_eq!(files, [picture, not_an_image.to_str().unwrap(), colour]);
    assert!(lines[0]["top"].is_array() && lines[2]["top"].is_array());
    let error = lines[1]["error"].as_str().unwrap();
    assert!(
        error.starts_with("cannot decode") && lines[1].get("top").is_none(),
        "{error}"
    );

    // A folder stands for the images in it and its subfolders, in path order, as a class
    // folder is read; a folder without any is an error naming it.
    let album = root.join("album");
    std::fs::create_dir_all(album.join("sub")).unwrap();
    for name in ["b.png", "sub/a.PNG", "._c.png"] {
        std::fs::copy(colour, album.join(name)).unwrap();
    }
    std::fs::write(album.join("d.webp"), "RIFF").unwrap();
    #[rustfmt::skip]
    let output = vit(&["predict", "--checkpoint", checkpoint.to_str().unwrap(), "--device", "cpu", album.to_str().unwrap(), picture]);
    let in_album = |name: &str| album.join(name).display().to_string();
    assert_eq!(
        predicted_files(&output),
        [&in_album("b.png"), &in_album("sub/a.PNG"), picture]
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_contains(&stderr, "skipped 1 image file in formats vit does not read");
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    #[rustfmt::skip]
    let stderr = vit_fails(&["predict", "--checkpoint", checkpoint.to_str().unwrap(), "--device", "cpu", empty.to_str().unwrap()]);
    assert_contains(&stderr, "empty: no .png, .jpg or .jpeg files");
    assert_contains(&stderr, "1 folder could not be read or held no images");
    // With --json, the folder's line comes where it was given, among the files.
    #[rustfmt::skip]
    let output = common::run_vit(&["predict", "--checkpoint", checkpoint.to_str().unwrap(), "--device", "cpu", "--json", picture, empty.to_str().unwrap(), colour]);
    assert_eq!(output.status.code(), Some(1));
    let (lines, files) = json_lines_and_files(&output);
    assert_eq!(files, [picture, empty.to_str().unwrap(), colour]);
    assert!(lines[1]["error"].is_string(), "{}", lines[1]);

    // A subfolder that cannot be read (here a link back up, which would loop) is named and
    // skipped; the images beside it are still classified, and the status says one was not.
    std::os::unix::fs::symlink("..", album.join("sub/up")).unwrap();
    #[rustfmt::skip]
    let output = common::run_vit(&["predict", "--checkpoint", checkpoint.to_str().unwrap(), "--device", "cpu", album.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        predicted_files(&output),
        [in_album("b.png"), in_album("sub/a.PNG")]
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("skipped: {} is", in_album("sub/up")))
            && stderr.contains("through a symbolic link")
            && stderr.contains("1 folder could not be read or held no images"),
        "{stderr}"
    );
}

/// CIFAR's 32x32 images for a model of another --image-size are resized batch by batch,
/// which training and evaluating each say once, at the start (picturing one test image
/// costs nothing to speak of, and says nothing); at the dataset's own size, nothing is
/// said.
#[test]
fn cifar_images_resized_to_another_image_size_are_noted() {
    let (root, data_dir) = colour_cifar10("image-size");
    let data = data_dir.to_str().unwrap();
    for (size, note) in [
        (
            "16",
            Some("note: cifar10's 32x32 images are resized to 16x16 (bilinear)"),
        ),
        ("32", None),
    ] {
        let run = root.join(format!("run-{size}"));
        let mut args = tiny_run_args(data, run.to_str().unwrap());
        #[rustfmt::skip]
        args.extend(["--image-size", size, "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "100", "--train-subset", "100"]);
        let model = run.join("best_model.safetensors");
        let picture = run.join("attention.png");
        let (model, picture) = (model.to_str().unwrap(), picture.to_str().unwrap());
        #[rustfmt::skip]
        let commands = [
            (args, note),
            (vec!["eval", "--checkpoint", model, "--data-dir", data, "--device", "cpu"], note),
            (vec!["attention", "--checkpoint", model, "--data-dir", data, "--index", "0", "-o", picture, "--device", "cpu"], None),
        ];
        for (command, note) in commands {
            let output = vit(&command);
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "{command:?}: {stderr}");
            let said = stderr.matches("images are resized").count();
            match note {
                Some(note) => assert!(
                    said == 1 && stderr.lines().any(|line| line.starts_with(note)),
                    "{command:?}: {stderr}"
                ),
                None => assert_eq!(said, 0, "{command:?}: {stderr}"),
            }
        }
    }
}

/// An unknown --config preset is refused as any other flag's bad value is, by the parser:
/// status 2, listing the presets, for every command that takes it.
#[test]
fn an_unknown_config_preset_is_refused_listing_the_presets() {
    for command in ["train", "info", "bench"] {
        let output = common::run_vit(&[command, "--config", "big"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("invalid value 'big' for '--config <PRESET>'")
                && stderr.contains("[possible values: notebook, small, tiny]"),
            "{command}: {stderr}"
        );
    }
}

/// `vit predict --json`'s lines, and the file each names, in the order of its output.
fn json_lines_and_files(output: &std::process::Output) -> (Vec<serde_json::Value>, Vec<String>) {
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let files = lines
        .iter()
        .map(|line| line["file"].as_str().unwrap().to_string())
        .collect();
    (lines, files)
}

/// The files `vit predict` classified, in the order of its output (each file's line is
/// followed by its indented classes).
fn predicted_files(output: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.starts_with(' '))
        .map(String::from)
        .collect()
}

#[test]
fn a_caught_libtorch_error_is_one_line() {
    let error =
        vit_tch::runtime::catch_panic(|| Tensor::zeros([1i64 << 50], (Kind::Float, Device::Cpu)))
            .unwrap_err();
    let error = format!("{error:#}");
    assert!(
        error.starts_with("libtorch: ") && error.contains("can't allocate memory"),
        "{error}"
    );
    assert!(!error.contains("frame #"), "{error}");
}

/// CIFAR's class counts are known from its name: `vit eval` refuses a checkpoint of another
/// count before reading the data, rather than first sending the user to download a dataset
/// the model cannot be evaluated on. Where the counts match, the missing data is said.
#[test]
fn a_class_count_cifar_cannot_match_is_refused_before_its_data_is_read() {
    let root = TempDir::new("class-count-first");
    let no_data = root.join("no-data");
    std::fs::create_dir(&no_data).unwrap();
    let ten_classes = root.join("ten.safetensors");
    save_fresh_model(
        &ViTConfig::tiny(),
        &[("dataset", "cifar10".into())],
        &ten_classes,
    );
    let twenty_classes = root.join("twenty.safetensors");
    let config = ViTConfig {
        num_classes: 20,
        ..ViTConfig::tiny()
    };
    save_fresh_model(
        &config,
        &[("dataset", "cifar100-coarse".into())],
        &twenty_classes,
    );
    let eval = |checkpoint: &Path, dataset: &[&str]| {
        let mut args = vec!["eval", "--checkpoint", checkpoint.to_str().unwrap()];
        args.extend(dataset);
        args.extend(["--data-dir", no_data.to_str().unwrap(), "--device", "cpu"]);
        vit_fails(&args)
    };
    for (dataset, expected) in [
        (&["--dataset", "cifar100"][..], "cifar100 has 100"),
        (
            &["--dataset", "cifar100", "--coarse-labels"],
            "cifar100-coarse has 20",
        ),
    ] {
        let stderr = eval(&ten_classes, dataset);
        let expected = format!("{} has 10 classes but {expected}", ten_classes.display());
        assert_contains(&stderr, &expected);
        assert!(!stderr.contains("vit download"), "{stderr}");
    }
    let stderr = eval(&twenty_classes, &[]);
    assert_contains(&stderr, "vit download --dataset cifar100");
    let stderr = eval(&twenty_classes, &["--dataset", "cifar10"]);
    assert_contains(&stderr, "has 20 classes but cifar10");
}

/// On the CPU, a model too big to train here is refused before the data is read (a folder
/// dataset may take minutes): here the data is not there at all, and the memory is said.
/// The head, sized by the folder's class count, is checked again once that is known.
#[test]
fn a_model_too_big_to_train_is_refused_before_the_data_is_read() {
    let memory = vit_tch::runtime::memory_bytes().expect("Linux tells its memory in /proc/meminfo");
    let root = TempDir::new("memory-first");
    let no_data = root.join("no-data");
    let no_data = no_data.to_str().unwrap();
    // The tiny model's head holds 33 weights a class: here they take half the memory.
    let classes = ((memory as f64 / 2.0 / 4.0 / 33.0) as i64).to_string();
    let memory_error = "Error: training the model would take at least";
    #[rustfmt::skip]
    let stderr = vit_fails(&["train", "--config", "tiny", "--num-classes", &classes, "--dataset", "folder", "--data-dir", no_data, "--device", "cpu"]);
    assert!(stderr.starts_with(memory_error), "{stderr}");
    // Without --num-classes, a folder may have one class: the tiny model fits, and the
    // missing folder is said.
    #[rustfmt::skip]
    let stderr = vit_fails(&["train", "--config", "tiny", "--dataset", "folder", "--data-dir", no_data, "--device", "cpu"]);
    assert!(
        !stderr.contains(memory_error) && stderr.contains(no_data),
        "{stderr}"
    );
}

/// A checkpoint that records no class names (only its config, as one converted from timm)
/// cannot number a folder's classes by name: a folder dataset with another number of
/// classes than the model's, fewer or more, is refused once read, by `vit eval` and by
/// `vit attention --index`, rather than evaluated with the model's numbers for its classes.
#[test]
fn a_folder_with_another_class_count_than_an_unnamed_checkpoints_is_refused() {
    let root = TempDir::new("class-count-folder");
    let photos = root.join("photos");
    let write_class = |class: &str, value: u8| {
        let folder = photos.join("test").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        image::RgbImage::from_pixel(32, 32, image::Rgb([value, 90, 20]))
            .save(folder.join("0.png"))
            .unwrap();
    };
    write_class("cat", 40);
    write_class("dog", 200);
    let config = ViTConfig {
        num_classes: 3,
        ..ViTConfig::tiny()
    };
    let model = root.join("model.safetensors");
    save_fresh_model(&config, &[], &model);
    let (model, photos_dir) = (model.to_str().unwrap(), photos.to_str().unwrap());
    let picture = root.join("attention.png");
    #[rustfmt::skip]
    let commands = [
        vec!["eval", "--checkpoint", model, "--dataset", "folder", "--data-dir", photos_dir, "--device", "cpu"],
        vec!["attention", "--checkpoint", model, "--dataset", "folder", "--data-dir", photos_dir, "--index", "0", "-o", picture.to_str().unwrap(), "--device", "cpu"],
    ];
    // Two folders, then four, for the model's three classes.
    for (class, count) in [(None, 2), (Some("emu"), 4)] {
        if let Some(class) = class {
            write_class(class, 120);
            write_class("fox", 160);
        }
        for args in &commands {
            let stderr = vit_fails(args);
            let expected = format!("{model} has 3 classes but ");
            let said = format!("({photos_dir}) has {count}: use the dataset it was trained on");
            assert!(
                stderr.contains(&expected) && stderr.contains(&said),
                "vit {}: {stderr}",
                args[0]
            );
        }
    }
    assert!(!picture.exists());
    assert!(!root.join("model.confusion_matrix.csv").exists());
}

/// `--coarse-labels` (CIFAR-100's 20 superclasses) with another dataset is refused, before
/// it is read, by every command that reads one: given with `--dataset`, or recorded by the
/// checkpoint that `vit eval` and `vit attention` evaluate, rather than silently ignored.
#[test]
fn coarse_labels_with_another_dataset_than_cifar100_are_refused() {
    let root = TempDir::new("coarse-elsewhere");
    let model = root.join("model.safetensors");
    // 7 classes, none of the datasets' counts: a class-count check made before this one
    // would be what the checkpoint's commands say.
    let config = ViTConfig {
        num_classes: 7,
        ..ViTConfig::tiny()
    };
    save_fresh_model(&config, &[("dataset", "folder".into())], &model);
    let (run, picture) = (root.join("run"), root.join("attention.png"));
    let missing = root.join("no data here");
    let (model, run) = (model.to_str().unwrap(), run.to_str().unwrap());
    let (picture_arg, missing) = (picture.to_str().unwrap(), missing.to_str().unwrap());
    #[rustfmt::skip]
    let commands = [
        vec!["train", "--config", "tiny", "--epochs", "1", "--out", run, "--device", "cpu"],
        vec!["data"],
        vec!["eval", "--checkpoint", model, "--device", "cpu"],
        vec!["attention", "--checkpoint", model, "--index", "0", "-o", picture_arg, "--device", "cpu"],
    ];
    // Each dataset given with --dataset, then (for the checkpoint's commands) none: the
    // folder dataset the checkpoint records.
    for dataset in [Some("cifar10"), Some("folder"), None] {
        for command in &commands {
            let mut args = command.clone();
            args.extend(["--coarse-labels", "--data-dir", missing]);
            match dataset {
                Some(dataset) => args.extend(["--dataset", dataset]),
                None if args.contains(&"--checkpoint") => {}
                None => continue,
            }
            let stderr = vit_fails(&args);
            let said = format!(
                "--coarse-labels applies to --dataset cifar100 only, not to {}: leave it out",
                dataset.unwrap_or("folder")
            );
            assert!(stderr.contains(&said), "{args:?}: {stderr}");
        }
    }
    assert!(!picture.exists() && !Path::new(run).exists());
}
