//! Whether a folder may take a run: a fresh run's (nothing of a user's overwritten, no
//! finished run started over) and a resumed one's (the same settings, images and rows;
//! another device or thread count only noted).

use super::metrics::metrics_rows;
use super::{Progress, RunConfig, RUN_FILES};
use crate::checkpoint::PROGRESS_KEY;
use crate::cli::device_name;
use crate::data::DataIdentity;
use crate::fsutil::kind_if_not_a_file;
use crate::listing::noun_for;
use crate::train::TrainSettings;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use tch::Device;

/// Before `--resume` reads its data: refuses a `dir` that holds no run, or a run that
/// trained on another dataset than `dataset` (reading that one would fail first, or
/// advise downloading it). Gives the folder the run read its data from.
pub(in crate::train) fn check_resumed_dataset(dir: &Path, dataset: &str) -> Result<PathBuf> {
    let saved = saved_config(dir)?;
    let trained = saved.settings.dataset.as_str();
    let flag = flag_behind(trained, dataset);
    ensure!(
        trained == dataset,
        "cannot resume {}: it trained on {trained}, and this command reads {dataset}{flag}. \
         Resume with the flags the run started with{}",
        dir.display(),
        match &saved.command {
            Some(command) => format!(": {}", command.resume_command(dir)),
            None => " (its config.json records them)".to_string(),
        }
    );
    Ok(saved.settings.data_dir)
}

/// The flag that makes a command read `given` where a run `trained` on another dataset,
/// in parentheses, where one tells them apart: CIFAR-100's coarse labels, or the default.
fn flag_behind(trained: &str, given: &str) -> String {
    use crate::cli::DEFAULT_DATASET;
    use crate::data::{CIFAR100, CIFAR100_COARSE};
    match (trained, given) {
        (CIFAR100_COARSE, CIFAR100) => " (without --coarse-labels)".to_string(),
        (_, CIFAR100_COARSE) => " (with --coarse-labels)".to_string(),
        (_, DEFAULT_DATASET) => format!(" (--dataset {DEFAULT_DATASET}, the default)"),
        _ => String::new(),
    }
}

/// Refuses a `--resume --plot` of the run in `dir` where its curves.png or curves.svg is a
/// picture of the user's, which the curves drawn after each epoch would replace (a fresh
/// run is refused in a folder holding them).
pub(in crate::train) fn check_curves_replaceable(dir: &Path) -> Result<()> {
    let instead = "leave out --plot (vit plot RUN_DIR -o NAME.png draws the curves elsewhere)";
    crate::plot::ensure_curves_replaceable(&dir.join(super::CURVES_PNG), instead)
}

/// The config.json of the run in `dir`, for `--resume`; an error says why there is none.
pub(super) fn saved_config(dir: &Path) -> Result<RunConfig> {
    ensure!(
        dir.is_dir(),
        "cannot resume: {} does not exist; check --out, or leave out --resume to start a new \
         run there",
        dir.display()
    );
    let config_path = dir.join(super::CONFIG_JSON);
    ensure_run_file_is_a_file(&config_path)?;
    let saved = match std::fs::read_to_string(&config_path) {
        Ok(saved) => saved,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A run's checkpoints or resume state tell a run's folder; a metrics.csv or a
            // picture may be anyone's.
            let present = saved_results(dir, 0);
            match present.is_empty() {
                true => bail!(
                    "cannot resume: {} has no config.json, so it holds no vit run; check --out",
                    dir.display()
                ),
                false => bail!(
                    "cannot resume: {} holds a run's {} but not its config.json, which \
                     records the settings to resume with; put it back, or start a new run \
                     with another --out",
                    dir.display(),
                    present.join(", ")
                ),
            }
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot resume: cannot read {}", config_path.display()))
        }
    };
    serde_json::from_str(&saved).with_context(|| {
        format!(
            "cannot resume: {} is not a vit run config; put back the one the run wrote, or \
             start a new run with another --out",
            config_path.display()
        )
    })
}

/// Refuses to resume from the run file at `path` (config.json, metrics.csv, the resume
/// state) where it is there but no file, before anything opens it: the run wrote a file,
/// and a pipe's read would wait for a writer forever.
pub(super) fn ensure_run_file_is_a_file(path: &Path) -> Result<()> {
    match kind_if_not_a_file(path) {
        Some(kind) => bail!(
            "cannot resume: {} is {kind}, not the file the run wrote; put back the run's own, \
             or start a new run with another --out",
            path.display()
        ),
        None => Ok(()),
    }
}

/// Fails unless `settings` and `data` are those of the run saved in `dir`, naming what
/// differs. Where the run recorded its images, they are compared and the folder they are
/// read from may have moved (with a note).
pub(super) fn check_same_run(
    dir: &Path,
    saved: &RunConfig,
    settings: &TrainSettings,
    data: &DataIdentity,
) -> Result<()> {
    let mut given = settings.clone();
    if saved.data.is_some() {
        given.data_dir = saved.settings.data_dir.clone();
    }
    if saved.settings != given {
        bail!(
            "cannot resume {}: the settings differ from the saved run's:\n  {}\n\
             Resume with the same flags (the learning-rate schedule, the shuffles, \
             the augmentations and the metrics all follow from them; --epochs included), \
             or start a new run with another --out{}",
            dir.display(),
            differences("", &saved.settings, &given)?,
            match &saved.command {
                Some(command) => format!(
                    ".\nTo resume it with its own flags: {}",
                    command.resume_command(dir)
                ),
                None => String::new(),
            }
        );
    }
    let Some(saved_data) = &saved.data else {
        return Ok(());
    };
    let (was, is) = (&saved.settings.data_dir, &settings.data_dir);
    if saved_data != data {
        let started = match was == is {
            true => String::new(),
            false => format!(" (it started with {})", was.display()),
        };
        bail!(
            "cannot resume {}: the images in {} are not the ones the run trained on{started}:\
             \n  {}\nGive --data-dir the run's data, or start a new run with another --out",
            dir.display(),
            is.display(),
            differences("data", saved_data, data)?
        );
    }
    if was != is {
        eprintln!(
            "note: {} started with the data in {}; it goes on with the same images from {}",
            dir.display(),
            was.display(),
            is.display()
        );
    }
    Ok(())
}

/// Notes (a resume is allowed to move) that the run saved in `dir` (`saved`) resumes on
/// another device than its own, or on the CPU with another thread count: it continues,
/// but does not replay exactly.
pub(super) fn note_another_machine(dir: &Path, saved: &RunConfig, device: Device) {
    // Runs of earlier versions recorded the debug form, `Cpu` or `Cuda(0)`.
    let same_device = [device_name(device), format!("{device:?}")].contains(&saved.device);
    if !same_device {
        let device = device_name(device);
        // Allowed (a run may move to a GPU or off one), but kernels differ between
        // devices, so the continuation is not the run it would have been.
        eprintln!(
            "note: {} was trained on {} and resumes on {device}: it continues, but \
             replays exactly only on the device it started on",
            dir.display(),
            saved.device
        );
    }
    // Allowed (another machine has another core count), as a device change is.
    let threads = tch::get_num_threads();
    let cpu_run = device == Device::Cpu && same_device;
    if let Some(saved_threads) = saved
        .cpu_threads
        .filter(|&saved| cpu_run && saved != threads)
    {
        eprintln!(
            "note: {} was trained with {saved_threads} CPU {} and resumes with \
             {threads}: it continues, but replays exactly only with the same count \
             (--threads {saved_threads})",
            dir.display(),
            noun_for(saved_threads, "thread")
        );
    }
}

/// The lines of [`differing_settings`] between `saved` and `given` (settings, or the
/// part of them at `path`), one a line for a message, indented as a list.
pub(super) fn differences(
    path: &str,
    saved: &impl serde::Serialize,
    given: &impl serde::Serialize,
) -> Result<String> {
    let (saved, given) = (serde_json::to_value(saved)?, serde_json::to_value(given)?);
    Ok(differing_settings(path, &saved, &given).join("\n  "))
}

/// A line `name: saved X, given Y` for each setting that differs, with nested settings
/// named by their path and, where `vit train` has one, the flag that sets them
/// (`model.embed_dim (--embed-dim)`, see [`flag_for`]). A part switched on or off
/// (`regularization.mix`) is compared setting by setting, the missing side's settings
/// `off`, leaving out the [`FIXED_SETTINGS`] no flag changes and the
/// [`QUALIFYING_SETTINGS`]; one with a flag of its own (`--augment-policy`,
/// `--random-erasing`) is summarised as [`setting_shown`] says.
fn differing_settings(
    path: &str,
    saved: &serde_json::Value,
    given: &serde_json::Value,
) -> Vec<String> {
    let mut out = Vec::new();
    compare_settings(path, saved, given, false, &mut out);
    out
}

/// [`differing_settings`], appended to `out`; `switched`: within a part that one side does
/// not have.
fn compare_settings(
    path: &str,
    saved: &serde_json::Value,
    given: &serde_json::Value,
    switched: bool,
    out: &mut Vec<String>,
) {
    use serde_json::{Map, Value};
    let empty = Map::new();
    let parts = match (saved, given) {
        (Value::Object(saved), Value::Object(given)) => Some((saved, given, switched)),
        (Value::Object(saved), Value::Null) if flag_for(path).is_none() => {
            Some((saved, &empty, true))
        }
        (Value::Null, Value::Object(given)) if flag_for(path).is_none() => {
            Some((&empty, given, true))
        }
        _ => None,
    };
    match parts {
        Some((saved, given, switched)) => {
            let keys: std::collections::BTreeSet<&String> =
                saved.keys().chain(given.keys()).collect();
            for key in keys {
                let null = Value::Null;
                let name = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let (a, b) = (
                    saved.get(key).unwrap_or(&null),
                    given.get(key).unwrap_or(&null),
                );
                compare_settings(&name, a, b, switched, out);
            }
        }
        None if saved != given => {
            if switched && (FIXED_SETTINGS.contains(&path) || QUALIFYING_SETTINGS.contains(&path)) {
                return;
            }
            let name = match flag_for(path) {
                Some(flag) => format!("{path} ({flag})"),
                None => path.to_string(),
            };
            let (saved, given) = (setting_shown(path, saved), setting_shown(path, given));
            // `--cutmix 0` is CutMix off, as a run without mixing has it.
            if saved != given {
                out.push(format!("{name}: saved {saved}, given {given}"))
            }
        }
        None => {}
    }
}

/// The settings of config.json whose flag is not named after them (the others are: the
/// last part of `model.embed_dim` is `--embed-dim`'s), with that flag.
const NESTED_FLAGS: [(&str, &str); 8] = [
    ("regularization.augment.policy", "--augment-policy"),
    (
        "regularization.augment.policy.RandAugment.num_ops",
        "--randaugment-ops",
    ),
    (
        "regularization.augment.policy.RandAugment.magnitude",
        "--randaugment-magnitude",
    ),
    ("regularization.augment.erasing", "--random-erasing"),
    ("regularization.augment.erasing.p", "--random-erasing"),
    ("regularization.mix.mixup_alpha", "--mixup"),
    ("regularization.mix.cutmix_alpha", "--cutmix"),
    ("regularization.mix.prob", "--mix-prob"),
];

/// The settings of config.json no flag sets: the recipe's, fixed (a run saved with other
/// values still names them where they differ, without a flag).
const FIXED_SETTINGS: [&str; 9] = [
    "regularization.augment.crop_padding",
    "regularization.augment.flip_prob",
    "regularization.augment.interpolation",
    "regularization.augment.policy.RandAugment.num_magnitude_bins",
    "regularization.augment.policy.RandAugment.ops",
    "regularization.augment.erasing.scale",
    "regularization.augment.erasing.ratio",
    "regularization.augment.erasing.value",
    "regularization.mix.mode",
];

/// Settings that only qualify a part that the settings switching it on (`--mixup`,
/// `--cutmix`) switch on: where one side lacks the part, those name the difference, and
/// these (how often it mixes, which of the two) say nothing more.
const QUALIFYING_SETTINGS: [&str; 2] =
    ["regularization.mix.prob", "regularization.mix.switch_prob"];

/// The flag of `vit train` that sets the setting at `path` of config.json: from
/// [`NESTED_FLAGS`], else the one named after its last part, if any.
fn flag_for(path: &str) -> Option<String> {
    if let Some((_, flag)) = NESTED_FLAGS.iter().find(|(nested, _)| *nested == path) {
        return Some(flag.to_string());
    }
    let flag = crate::listing::flag_name(path.rsplit('.').next().unwrap_or(path));
    train_flags().contains(&flag[2..]).then_some(flag)
}

/// A setting's value for a message: as config.json has it, except an augmentation
/// policy (by its `--augment-policy` name), random erasing (its probability), the whole
/// training set (`all`), and any other setting a flag turns off (`off`).
fn setting_shown(path: &str, value: &serde_json::Value) -> String {
    use crate::cli::AugmentPolicy;
    use crate::data::augment::{Policy, RandomErasing};
    use serde_json::{from_value, Value};
    match path {
        "regularization.augment.policy" => {
            if let Ok(policy) = from_value::<Option<Policy>>(value.clone()) {
                // The --augment-policy value that gives it, as the parser names it.
                let (choice, details) = match policy {
                    None => (AugmentPolicy::None, String::new()),
                    Some(Policy::AutoAugmentCifar10) => (AugmentPolicy::Autoaugment, String::new()),
                    Some(Policy::RandAugment(randaugment)) => (
                        AugmentPolicy::Randaugment,
                        format!(
                            " ({} ops, magnitude {})",
                            randaugment.num_ops, randaugment.magnitude
                        ),
                    ),
                };
                return format!("{}{details}", crate::cli::value_name(&choice));
            }
        }
        "regularization.augment.erasing" => {
            if let Ok(erasing) = from_value::<Option<RandomErasing>>(value.clone()) {
                return erasing.map_or("off".to_string(), |erasing| {
                    Value::from(erasing.p).to_string()
                });
            }
        }
        "train_subset" if value.is_null() => return "all".to_string(),
        // An alpha of 0 turns its kind of mixing off.
        "regularization.mix.mixup_alpha" | "regularization.mix.cutmix_alpha"
            if value.as_f64() == Some(0.0) =>
        {
            return "off".to_string()
        }
        _ if value.is_null() && flag_for(path).is_some() => return "off".to_string(),
        _ => {}
    }
    value.to_string()
}

/// What a run in `dir` has saved: its metrics `rows` (as [`metrics_rows`] counts them)
/// and checkpoints, described for a message (empty when nothing).
pub(super) fn saved_results(dir: &Path, rows: usize) -> Vec<String> {
    let mut results: Vec<String> = RUN_FILES
        .into_iter()
        .filter(|name| name.ends_with(".safetensors") && dir.join(name).exists())
        .map(String::from)
        .collect();
    if rows > 0 {
        let epochs = noun_for(rows, "epoch");
        results.insert(0, format!("{rows} {epochs} in metrics.csv"));
    }
    results
}

/// Whether the run in `dir` saved anything (see [`saved_results`]): a fresh run there
/// would be refused.
pub(super) fn holds_results(dir: &Path) -> bool {
    !saved_results(dir, metrics_rows(dir)).is_empty()
}

/// The progress `dir/resume.safetensors` records (from its header alone: the state is
/// tens of megabytes); None where there is none to read.
pub(super) fn saved_progress(dir: &Path) -> Option<Progress> {
    let metadata = crate::checkpoint::read_metadata(&dir.join(super::RESUME_STATE))?;
    serde_json::from_str(metadata.get(PROGRESS_KEY)?).ok()
}

/// Refuses an existing folder for a fresh run when it holds anything of `RUN_FILES`,
/// except a vit run that stopped before saving anything (say, out of memory): there is
/// nothing to lose, and its settings need not be repeated to start again.
pub(super) fn check_fresh(dir: &Path) -> Result<()> {
    let present: Vec<&str> = RUN_FILES
        .into_iter()
        .filter(|name| dir.join(name).exists())
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let Ok(saved) = saved_config(dir) else {
        bail!(
            "{} holds {} and is not a vit run folder: a run there could write over {}; \
             choose another --out",
            dir.display(),
            present.join(", "),
            if present.len() == 1 { "it" } else { "them" }
        );
    };
    // The resume state says how far the run got: metrics.csv may have a row it does not
    // (a crash between the two writes), which a resume trains again.
    let epochs = saved.settings.epochs;
    let done = saved_progress(dir).map_or_else(|| metrics_rows(dir), |saved| saved.epochs_done);
    ensure!(
        done < epochs,
        "{} already holds a run that finished its {epochs} {}; choose another --out",
        dir.display(),
        noun_for(epochs, "epoch")
    );
    ensure!(
        !holds_results(dir),
        "{} already holds a run; pass --resume to continue it or choose another --out",
        dir.display()
    );
    eprintln!(
        "note: {} holds a run that stopped before saving anything; starting it over",
        dir.display()
    );
    Ok(())
}

/// The long flags of `vit train`, without their dashes.
fn train_flags() -> std::collections::BTreeSet<String> {
    use clap::Args;
    let command = crate::cli::TrainArgs::augment_args(clap::Command::new("train"));
    (command.get_arguments())
        .filter_map(|arg| arg.get_long().map(String::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{
        differing_settings, flag_behind, flag_for, train_flags, FIXED_SETTINGS, NESTED_FLAGS,
    };
    use crate::cli::train_args;
    use crate::train::{recipe, Regularization, TrainSettings};
    use serde_json::Value;

    /// The settings `vit train` takes from `flags` (as `settings_and_dataset`, without
    /// reading a dataset).
    fn settings(flags: &[&str]) -> TrainSettings {
        let args = train_args(flags);
        TrainSettings::from_args(
            &args,
            recipe::model_config(&args).unwrap(),
            Regularization::from_args(&args).unwrap(),
            "cifar10",
            args.data.data_dir.clone(),
        )
    }

    /// The lines a resume with `given` flags is refused with, after a run with `saved`.
    fn differences(saved: &[&str], given: &[&str]) -> Vec<String> {
        let json = |flags| serde_json::to_value(settings(flags)).unwrap();
        differing_settings("", &json(saved), &json(given))
    }

    /// Appends the path of each setting (not an object) in `value` to `out`.
    fn leaves(path: &str, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(fields) => {
                for (key, value) in fields {
                    let name = match path.is_empty() {
                        true => key.clone(),
                        false => format!("{path}.{key}"),
                    };
                    leaves(&name, value, out);
                }
            }
            _ => out.push(path.to_string()),
        }
    }

    /// Each setting of a run with every part of the strong recipe on is set by a flag, or
    /// listed as fixed: a new setting without either fails here.
    #[test]
    fn every_setting_has_a_flag_or_is_fixed() {
        let strong = [
            "--recipe",
            "strong",
            "--augment-policy",
            "randaugment",
            "--mix-off-epoch",
            "5",
            "--train-subset",
            "300",
            "--ema-warmup",
        ];
        let mut paths = Vec::new();
        leaves(
            "",
            &serde_json::to_value(settings(&strong)).unwrap(),
            &mut paths,
        );
        let unnamed: Vec<&String> = (paths.iter())
            .filter(|path| flag_for(path).is_none() && !FIXED_SETTINGS.contains(&path.as_str()))
            .collect();
        assert!(unnamed.is_empty(), "settings without a flag: {unnamed:?}");
        for fixed in FIXED_SETTINGS {
            assert!(
                paths.iter().any(|path| path == fixed),
                "{fixed} is no setting"
            );
        }
        let flags = train_flags();
        for (_, flag) in NESTED_FLAGS {
            assert!(flags.contains(&flag[2..]), "{flag} is no flag of vit train");
        }
    }

    /// The strong recipe's settings by their flags, and a part switched on or off (or
    /// another policy) in a word or a number, by the settings that switch it.
    #[test]
    fn the_strong_recipe_names_each_flag_that_differs() {
        let strong = ["--recipe", "strong"];
        assert_eq!(
            differences(
                &strong,
                &[
                    "--recipe",
                    "strong",
                    "--mixup",
                    "0.5",
                    "--cutmix",
                    "0.7",
                    "--mix-prob",
                    "0.9",
                    "--switch-prob",
                    "0.4",
                    "--random-erasing",
                    "0.3",
                    "--augment-policy",
                    "randaugment",
                    "--ema",
                    "0"
                ]
            ),
            [
                "regularization.augment.erasing.p (--random-erasing): saved 0.25, given 0.3",
                "regularization.augment.policy (--augment-policy): saved autoaugment, \
                 given randaugment (2 ops, magnitude 9)",
                "regularization.ema (--ema): saved 0.999, given off",
                "regularization.mix.cutmix_alpha (--cutmix): saved 1.0, given 0.7",
                "regularization.mix.mixup_alpha (--mixup): saved 0.8, given 0.5",
                "regularization.mix.prob (--mix-prob): saved 1.0, given 0.9",
                "regularization.mix.switch_prob (--switch-prob): saved 0.5, given 0.4",
            ]
        );
        let randaugment = ["--recipe", "strong", "--augment-policy", "randaugment"];
        assert_eq!(
            differences(
                &randaugment,
                &[
                    "--recipe",
                    "strong",
                    "--augment-policy",
                    "randaugment",
                    "--randaugment-ops",
                    "3",
                    "--randaugment-magnitude",
                    "5",
                    "--random-erasing",
                    "0",
                    "--mixup",
                    "0",
                    "--cutmix",
                    "0"
                ]
            ),
            [
                "regularization.augment.erasing (--random-erasing): saved 0.25, given off",
                "regularization.augment.policy.RandAugment.magnitude (--randaugment-magnitude): \
                 saved 9, given 5",
                "regularization.augment.policy.RandAugment.num_ops (--randaugment-ops): saved 2, \
                 given 3",
                "regularization.mix.cutmix_alpha (--cutmix): saved 1.0, given off",
                "regularization.mix.mixup_alpha (--mixup): saved 0.8, given off",
            ]
        );
        // Mixing switched on is named by the alphas that switch it on: an alpha of 0 is
        // off, as no mixing is, and how often and which to mix say nothing more.
        assert_eq!(
            differences(&[], &["--mixup", "0.2"]),
            ["regularization.mix.mixup_alpha (--mixup): saved off, given 0.2"]
        );
        // The notebook's recipe has no augmentation part: its settings are off, and the
        // recipe's fixed ones are left out.
        assert_eq!(
            differences(
                &[],
                &["--augment-policy", "autoaugment", "--train-subset", "300"]
            ),
            [
                "regularization.augment.policy (--augment-policy): saved none, given autoaugment",
                "train_subset (--train-subset): saved all, given 300",
            ]
        );
    }

    /// A resume refused for its dataset names the flag behind the difference: the coarse
    /// labels where they are read or were trained on, `--dataset`'s default otherwise; and
    /// none where `--dataset` was given another value.
    #[test]
    fn a_refused_dataset_names_the_flag_behind_it() {
        let cases = [
            ("cifar100-coarse", "cifar100", " (without --coarse-labels)"),
            ("cifar100", "cifar100-coarse", " (with --coarse-labels)"),
            ("cifar10", "cifar100-coarse", " (with --coarse-labels)"),
            ("cifar10", "cifar100", " (--dataset cifar100, the default)"),
            ("folder", "cifar100", " (--dataset cifar100, the default)"),
            ("cifar100", "cifar10", ""),
            ("cifar10", "folder", ""),
        ];
        for (trained, given, said) in cases {
            assert_eq!(flag_behind(trained, given), said, "{trained} -> {given}");
        }
    }
}
