//! Whether a folder may take a run: a fresh run's (nothing of a user's overwritten, no
//! finished run started over) and a resumed one's (the same settings, images and rows).

use super::{RunConfig, RUN_FILES};
use crate::data::DataIdentity;
use crate::listing::noun_for;
use crate::train::TrainSettings;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// Before `--resume` reads its data: refuses a `dir` that holds no run, or a run that
/// trained on another dataset than `dataset` (reading that one would fail first, or
/// advise downloading it). Gives the folder the run read its data from.
pub(in crate::train) fn check_resumed_dataset(dir: &Path, dataset: &str) -> Result<PathBuf> {
    let saved = saved_config(dir)?;
    let (trained, default) = (&saved.settings.dataset, crate::cli::DEFAULT_DATASET);
    ensure!(
        trained == dataset,
        "cannot resume {}: it trained on {trained}, and this command reads {dataset}{}. \
         Resume with the flags the run started with (its config.json records them)",
        dir.display(),
        match dataset == default {
            true => " (the default without --dataset)".to_string(),
            false => String::new(),
        }
    );
    Ok(saved.settings.data_dir)
}

/// The config.json of the run in `dir`, for `--resume`; an error says why there is none.
pub(super) fn saved_config(dir: &Path) -> Result<RunConfig> {
    ensure!(
        dir.is_dir(),
        "cannot resume: {} does not exist; check --out, or leave out --resume to start a new \
         run there",
        dir.display()
    );
    let config_path = dir.join("config.json");
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

/// Fails unless `settings` and `data` are those of the run saved in `dir`, naming what
/// differs. Where the run recorded its images, they are compared and the folder they are
/// read from may have moved (with a note).
pub(super) fn check_same_run(
    dir: &Path,
    saved: &RunConfig,
    settings: &TrainSettings,
    data: &DataIdentity,
) -> Result<()> {
    let differences = |path: &str, saved: serde_json::Value, given: serde_json::Value| {
        let mut out = Vec::new();
        differing_settings(path, &saved, &given, &mut out);
        out.join("\n  ")
    };
    let mut given = settings.clone();
    if saved.data.is_some() {
        given.data_dir = saved.settings.data_dir.clone();
    }
    if saved.settings != given {
        bail!(
            "cannot resume {}: the settings differ from the saved run's:\n  {}\n\
             Resume with the same flags (the learning-rate schedule, the shuffles, \
             the augmentations and the metrics all follow from them; --epochs included), \
             or start a new run with another --out",
            dir.display(),
            differences(
                "",
                serde_json::to_value(&saved.settings)?,
                serde_json::to_value(&given)?
            )
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
            differences(
                "data",
                serde_json::to_value(saved_data)?,
                serde_json::to_value(data)?
            )
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

/// Appends to `out` a line `name: saved X, given Y` for each setting that differs, with
/// nested settings named by their path and, where `vit train` has one, the flag that sets
/// them (`model.embed_dim (--embed-dim)`).
fn differing_settings(
    path: &str,
    saved: &serde_json::Value,
    given: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (saved, given) {
        (Value::Object(saved), Value::Object(given)) => {
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
                differing_settings(&name, a, b, out);
            }
        }
        _ if saved != given => {
            let field = path.rsplit('.').next().unwrap_or(path).replace('_', "-");
            let name = match train_flags().contains(&field) {
                true => format!("{path} (--{field})"),
                false => path.to_string(),
            };
            out.push(format!("{name}: saved {saved}, given {given}"))
        }
        _ => {}
    }
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

/// The epochs `dir/metrics.csv` holds (rows after its header; 0 without the file).
pub(super) fn metrics_rows(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .map_or(0, |text| text.lines().count().saturating_sub(1))
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
            "{} holds {} that a new run would overwrite, and is not a vit run folder; \
             choose another --out",
            dir.display(),
            present.join(", ")
        );
    };
    let (epochs, rows) = (saved.settings.epochs, metrics_rows(dir));
    ensure!(
        rows < epochs,
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
