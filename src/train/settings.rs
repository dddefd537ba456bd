//! `vit train`'s flags as a run's settings (what it computes, compared on `--resume`),
//! checked before the data is read, and the dataset they choose; and the warnings, once
//! the training set's size is known, for settings that would not do what they say.

use super::recipe::{self, Regularization};
use crate::cli::{Precision, Recipe, TrainArgs};
use crate::data::mix::MixConfig;
use crate::data::{self, Dataset};
use crate::listing::{noun_for, shown_number};
use crate::model::ViTConfig;
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything that decides what a run computes: compared on `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub model: ViTConfig,
    pub dataset: String,
    pub data_dir: PathBuf,
    pub epochs: usize,
    pub batch_size: i64,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_epochs: usize,
    pub label_smoothing: f64,
    pub clip_grad: f64,
    pub seed: u64,
    pub train_subset: Option<i64>,
    pub recipe: Recipe,
    pub regularization: Regularization,
    pub precision: Precision,
    /// Of the test passes after each epoch (runs saved before the flag tested in fp32).
    #[serde(default)]
    pub eval_precision: Precision,
}

/// The run's settings from the flags, checked, and the dataset it trains on (which gives
/// the class count when `--num-classes` is not given). `resumed_data_dir`: where the run
/// to resume read its data, named (where it is still there) when this command's cannot be
/// read. `check_memory`: whether training the model has to fit in this machine's memory
/// (on the CPU).
pub(super) fn settings_and_dataset(
    args: &TrainArgs,
    resumed_data_dir: Option<&Path>,
    check_memory: bool,
) -> Result<(TrainSettings, Dataset)> {
    let mut config = recipe::model_config(args)?;
    ensure!(
        config.in_channels == 3,
        "--in-channels {}: {}; leave --in-channels out",
        config.in_channels,
        data::READ_AS_RGB
    );
    check_optimizer_flags(args)?;
    let regularization = Regularization::from_args(args)?;
    if check_memory {
        // Before the data is read (a folder dataset may take minutes), with the fewest
        // classes the data may have: the head's size is known only after.
        ViTConfig {
            num_classes: args
                .model
                .num_classes
                .or(data::known_class_count(&args.data).map(|count| count as i64))
                .unwrap_or(1),
            ..config.clone()
        }
        .check_trains_in_memory()?;
    }
    let data_dir = recorded_data_dir(&args.data.data_dir)?;
    let dataset = load_dataset(args, config.image_size, &data_dir, resumed_data_dir)?;
    config.num_classes = class_count(args, &dataset)?;
    let settings = TrainSettings::from_args(args, config, regularization, &dataset.name, data_dir);
    if check_memory {
        let batch_size = settings
            .batch_size
            .min(training_images(&settings, &dataset)?);
        settings.model.check_steps_fit_in_memory(batch_size)?;
    }
    Ok((settings, dataset))
}

/// The dataset `args` name, its images at `image_size`, read from `data_dir`; where a
/// resumed run read its data from another folder still there (`resumed_data_dir`), an
/// error reading it names that folder.
fn load_dataset(
    args: &TrainArgs,
    image_size: i64,
    data_dir: &Path,
    resumed_data_dir: Option<&Path>,
) -> Result<Dataset> {
    data::load(&args.data, image_size).map_err(|error| {
        match resumed_data_dir.filter(|&saved| saved != data_dir && saved.is_dir()) {
            // Most likely a --data-dir left out: the advice to download would be wrong.
            Some(saved) => error.context(format!(
                "the run read its images from {}, not {}: pass --data-dir {} to resume it",
                saved.display(),
                args.data.data_dir.display(),
                saved.display()
            )),
            None => error,
        }
    })
}

/// The model's class count: the dataset's, which `--num-classes` may repeat but not
/// change. A dataset of one class is trained on, with a warning.
fn class_count(args: &TrainArgs, dataset: &Dataset) -> Result<i64> {
    let num_classes = dataset.num_classes();
    if num_classes == 1 {
        eprintln!(
            "warning: {} has one class ({}): the model learns to give that answer to every \
             image, which is always right and teaches nothing; add a folder for each other \
             class",
            args.data.data_dir.display(),
            dataset.classes[0]
        );
    }
    if let Some(n) = args.model.num_classes {
        ensure!(
            n == num_classes,
            "--num-classes {n} does not match {}, which has {num_classes} {}: leave out \
             --num-classes (vit train takes the dataset's count)",
            dataset.name,
            noun_for(num_classes, "class")
        );
    }
    Ok(num_classes)
}

/// The data folder as config.json records it: absolute, so that `--resume` from another
/// folder or as `./data` still matches, and text, which JSON is (refused before anything is
/// written where it cannot be). Links are resolved, unless that gives a name that is not
/// text and the link's own is.
fn recorded_data_dir(given: &Path) -> Result<PathBuf> {
    let resolved = std::fs::canonicalize(given).unwrap_or_else(|_| given.to_path_buf());
    if resolved.to_str().is_some() {
        return Ok(resolved);
    }
    match std::path::absolute(given) {
        Ok(absolute) if absolute.to_str().is_some() => Ok(absolute),
        _ => bail!(
            "the data folder {} is not named in UTF-8, and a run records it in config.json, \
             as text: give --data-dir as an absolute path in UTF-8 (a link to the folder, \
             named in UTF-8 in a folder that is, will do)",
            resolved.display()
        ),
    }
}

impl TrainSettings {
    /// The settings `args` give, with the checked `model` and `regularization` they give,
    /// for the dataset `dataset` read from `data_dir`.
    pub(crate) fn from_args(
        args: &TrainArgs,
        model: ViTConfig,
        regularization: Regularization,
        dataset: &str,
        data_dir: PathBuf,
    ) -> Self {
        Self {
            model,
            dataset: dataset.to_string(),
            data_dir,
            epochs: args.epochs,
            batch_size: args.batch_size,
            lr: args.lr,
            weight_decay: args.weight_decay,
            warmup_epochs: args.warmup_epochs,
            label_smoothing: args.label_smoothing,
            clip_grad: args.clip_grad,
            seed: args.seed,
            train_subset: args.train_subset,
            recipe: args.recipe,
            regularization,
            precision: args.precision,
            eval_precision: args.eval_precision,
        }
    }
}

/// The optimiser's flags, checked before any data is read. Each is written as given to
/// config.json, which has no infinity: a run must resume.
fn check_optimizer_flags(args: &TrainArgs) -> Result<()> {
    ensure!(
        args.lr > 0.0 && args.lr.is_finite(),
        "--lr must be a positive finite number, got {}",
        shown_number(args.lr)
    );
    for (flag, value) in [
        ("--weight-decay", args.weight_decay),
        ("--clip-grad", args.clip_grad),
    ] {
        ensure!(
            value >= 0.0 && value.is_finite(),
            "{flag} must be a finite number >= 0 (0 turns it off), got {}",
            shown_number(value)
        );
    }
    ensure!(
        (0.0..1.0).contains(&args.label_smoothing),
        "--label-smoothing must be in [0, 1), got {}",
        shown_number(args.label_smoothing)
    );
    Ok(())
}

/// How many images an epoch trains on: all of the training split, or `--train-subset`'s.
pub(super) fn training_images(settings: &TrainSettings, dataset: &Dataset) -> Result<i64> {
    let available = dataset.train.len();
    ensure!(available > 0, "the training split is empty");
    // The flag's parser takes 1 and up.
    if let Some(n) = settings.train_subset {
        ensure!(
            n <= available,
            "--train-subset {n} is more than the {available} training {} there are; give \
             1 to {available}, or leave it out to train on all of them",
            noun_for(available, "image")
        );
    }
    Ok(settings.train_subset.unwrap_or(available))
}

/// The steps of an epoch of `train_images` images; refused where the run's steps (or its
/// warm-up's) would be more than a `usize` counts.
pub(super) fn epoch_steps(settings: &TrainSettings, train_images: i64) -> Result<usize> {
    let steps_per_epoch = (train_images as u64).div_ceil(settings.batch_size as u64) as usize;
    ensure!(
        steps_per_epoch
            .checked_mul(settings.epochs.max(settings.warmup_epochs))
            .is_some(),
        "--epochs {} (or --warmup-epochs {}) of {steps_per_epoch} steps each are more \
         steps than vit counts: give at most {} epochs",
        settings.epochs,
        settings.warmup_epochs,
        usize::MAX / steps_per_epoch
    );
    Ok(steps_per_epoch)
}

/// Warnings (and a note) for settings that are allowed, for a smoke test, but do not do what
/// they say on a run of `train_images` images: each a common slip.
pub(super) fn warn_about_settings_without_effect(settings: &TrainSettings, train_images: i64) {
    if settings.warmup_epochs >= settings.epochs {
        eprintln!(
            "warning: --warmup-epochs {} is not below --epochs {}: the learning rate rises \
             for the whole run, reaching --lr only at its end if at all, and never decays; \
             pass a smaller --warmup-epochs for a short run",
            settings.warmup_epochs, settings.epochs
        );
    }
    // AdamW scales each decayed weight by 1 - lr * weight_decay a step.
    let decay = settings.lr * settings.weight_decay;
    if decay >= 1.0 {
        eprintln!(
            "warning: --lr {} times --weight-decay {} is {}: AdamW multiplies the weights \
             by 1 - lr x weight decay each step, which from 1 on zeroes them or flips their \
             sign, so the run learns nothing or diverges; give a product below 1 (the \
             defaults: {} x {})",
            shown_number(settings.lr),
            shown_number(settings.weight_decay),
            shown_number(decay),
            crate::cli::DEFAULT_LR,
            crate::cli::DEFAULT_WEIGHT_DECAY
        );
    }
    if settings.batch_size > train_images {
        eprintln!(
            "note: --batch-size {} is more than the {train_images} training {}: each epoch \
             is one batch of {train_images}",
            settings.batch_size,
            noun_for(train_images, "image")
        );
    }
    let regularization = &settings.regularization;
    let mixes = regularization
        .mix
        .as_ref()
        .is_some_and(MixConfig::is_active);
    if mixes && settings.batch_size.min(train_images) == 1 {
        eprintln!(
            "warning: MixUp and CutMix mix each image with another of its batch: in batches \
             of one image each is mixed with itself, which changes nothing; use a \
             --batch-size of 2 or more"
        );
    }
    if let Some(mix) = &regularization.mix {
        // With both on, each mix is CutMix with probability --switch-prob.
        let idle = match mix.switch_prob {
            0.0 => Some(("never", "--cutmix", mix.cutmix_alpha, "above 0")),
            1.0 => Some(("always", "--mixup", mix.mixup_alpha, "below 1")),
            _ => None,
        };
        if let Some((when, flag, alpha, instead)) =
            idle.filter(|_| mix.mixup_alpha > 0.0 && mix.cutmix_alpha > 0.0)
        {
            eprintln!(
                "warning: --switch-prob {} {when} picks CutMix over MixUp: {flag} {} \
                 does nothing; give a --switch-prob {instead}, or {flag} 0",
                mix.switch_prob,
                shown_number(alpha)
            );
        }
    }
    if regularization.drop_path > 0.0 && settings.model.num_layers == 1 {
        eprintln!(
            "warning: --drop-path {} drops nothing in a model of one block: its rate rises \
             from 0 at the first block to --drop-path at the last (as timm's)",
            shown_number(regularization.drop_path)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{epoch_steps, training_images, TrainSettings};
    use crate::cli::train_args;
    use crate::data::{Dataset, Split};
    use crate::train::recipe::Regularization;
    use tch::{Kind, Tensor};

    /// The settings of `vit train ARGS` with the tiny model.
    fn settings(args: &[&str]) -> TrainSettings {
        let args = train_args(args);
        let model = crate::train::recipe::model_config(&args).unwrap();
        let data_dir = std::path::PathBuf::from("/data");
        TrainSettings::from_args(&args, model, Regularization::default(), "cifar10", data_dir)
    }

    /// A dataset of `n` training images (and one test image), of one class.
    fn dataset(n: i64) -> Dataset {
        let split = |n: i64| Split {
            images: Tensor::zeros([n, 3, 2, 2], (Kind::Uint8, tch::Device::Cpu)),
            labels: Tensor::zeros([n], (Kind::Int64, tch::Device::Cpu)),
        };
        Dataset {
            name: "cifar10".into(),
            train: split(n),
            test: split(1),
            classes: vec!["a".into()],
        }
    }

    /// `--train-subset` may be every training image there is (1..=N, both ends
    /// included), and no more.
    #[test]
    fn the_train_subset_may_be_the_whole_split() {
        let ds = dataset(10);
        for n in ["1", "10"] {
            let given = settings(&["--train-subset", n]);
            assert_eq!(training_images(&given, &ds).unwrap().to_string(), n);
        }
        assert_eq!(training_images(&settings(&[]), &ds).unwrap(), 10);
        let error = training_images(&settings(&["--train-subset", "11"]), &ds).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--train-subset 11 is more than the 10 training images there are; give 1 to 10, \
             or leave it out to train on all of them"
        );
    }

    /// The warm-up's steps are counted too: `--warmup-epochs` past `--epochs`, of more
    /// steps than a `usize` counts, is refused (its schedule would wrap around), as such
    /// `--epochs` is.
    #[test]
    fn warm_up_steps_past_what_vit_counts_are_refused() {
        let huge = (usize::MAX / 2 + 1).to_string();
        let args = [
            "--epochs",
            "1",
            "--batch-size",
            "1",
            "--warmup-epochs",
            &huge,
        ];
        let error = epoch_steps(&settings(&args), 2).unwrap_err();
        assert!(
            error.to_string().contains("more steps than vit counts"),
            "{error}"
        );
        let args = ["--epochs", "1", "--batch-size", "1", "--warmup-epochs", "0"];
        assert_eq!(epoch_steps(&settings(&args), 2).unwrap(), 2);
    }
}
