//! The test split a checkpoint is evaluated on (`vit eval`, `vit attention --index`): the
//! dataset given or the one the checkpoint records, fitted to the model.

use super::{recorded_class_names, LoadedModel, DATASET_KEY};
use crate::data::TestSet;
use crate::listing::noun_for;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

impl LoadedModel {
    /// The test split this model (from `path`) is evaluated on: the dataset `args` name, or
    /// the one the checkpoint records, fitted to the model (see `fit_dataset`); with `only`,
    /// that test image alone (see [`crate::data::load_test`]).
    pub fn test_set(
        &self,
        path: &Path,
        args: &crate::cli::CheckpointDatasetArgs,
        only: Option<i64>,
    ) -> Result<TestSet> {
        self.ensure_rgb(path)?;
        let dataset_args = dataset_args(&self.metadata, args)
            .with_context(|| format!("choosing the test split for {}", path.display()))?;
        let trained_on_folder = self.dataset() == Some(crate::data::FOLDER);
        if trained_on_folder && dataset_args.dataset == crate::cli::DatasetName::Folder {
            ensure_folder_data_given(path, &dataset_args.data_dir)?;
        }
        // Refused before the data is read: a missing CIFAR-100 would otherwise send the
        // user to download it, for a model that cannot be evaluated on it anyway.
        if let Some(count) = crate::data::known_class_count(&dataset_args) {
            let name = crate::data::dataset_name(&dataset_args);
            self.ensure_class_count(path, count, name)?;
        }
        let image_size = self.model.config.image_size;
        let missing = !crate::data::has_test_folder(&dataset_args);
        let mut dataset = crate::data::load_test(&dataset_args, image_size, only).map_err(
            |error| match missing {
                true => naming_run_data_dir(error, path, &dataset_args.data_dir),
                false => error,
            },
        )?;
        self.fit_dataset(path, &mut dataset, &args.data_dir)?;
        Ok(dataset)
    }

    /// Fails unless the model from `path` has `count` classes, as the `dataset` (its name,
    /// and where it was read once it was) has.
    fn ensure_class_count(&self, path: &Path, count: usize, dataset: &str) -> Result<()> {
        let num_classes = self.model.config.num_classes;
        ensure!(
            count as i64 == num_classes,
            "{} has {num_classes} {} but {dataset} has {count}: use the dataset it was \
             trained on",
            path.display(),
            noun_for(num_classes, "class")
        );
        Ok(())
    }

    /// Fits `dataset` (read from `data_dir`) to the model from `path`, or fails: its
    /// number of classes must match. A folder dataset's classes are numbered
    /// by name as the checkpoint records them (its folders may be some of the model's
    /// classes, and none other). Otherwise, a checkpoint that recorded other class names
    /// gets a warning, since the dataset's names then label the model's numbers.
    fn fit_dataset(&self, path: &Path, dataset: &mut TestSet, data_dir: &Path) -> Result<()> {
        let config = &self.model.config;
        let recorded = recorded_class_names(&self.metadata, config.num_classes);
        // A folder dataset (one with files) numbers its classes by folder name; names are
        // matched only when the checkpoint's are unique (ImageNet's repeat "crane").
        let numbered_by_name = dataset.files.is_some();
        let unique = |names: &&Vec<String>| {
            names.iter().collect::<std::collections::HashSet<_>>().len() == names.len()
        };
        if let Some(recorded) = recorded
            .as_ref()
            .filter(|names| numbered_by_name && unique(names))
        {
            dataset.relabel(recorded).with_context(|| {
                format!(
                    "{}: its test class folders must be classes of {}; rename or remove the \
                     others",
                    data_dir.display(),
                    path.display()
                )
            })?;
        }
        let read_from = format!("{} ({})", dataset.name, data_dir.display());
        self.ensure_class_count(path, dataset.classes.len(), &read_from)?;
        if let Some(recorded) = recorded.filter(|names| *names != dataset.classes) {
            eprintln!(
                "warning: {} was trained on the classes {:?}, but {} has {:?}: the dataset's \
                 names label the checkpoint's class numbers",
                path.display(),
                recorded,
                dataset.name,
                dataset.classes
            );
        }
        Ok(())
    }
}

/// Refuses to evaluate the model at `path`, trained on a folder dataset (a user's own
/// images), on the default `data_dir`, which is CIFAR's, where it holds no test/ folder:
/// the folder to give is named, as the config.json of the run beside the checkpoint
/// records it where there is one.
fn ensure_folder_data_given(path: &Path, data_dir: &Path) -> Result<()> {
    use crate::cli::DEFAULT_DATA_DIR;
    if data_dir != Path::new(DEFAULT_DATA_DIR) || data_dir.join("test").is_dir() {
        return Ok(());
    }
    let give = match run_data_dir(path, data_dir, true) {
        Some(dir) => format!(
            "{}, the folder its run read (as the config.json beside it records)",
            dir.display()
        ),
        None => "FOLDER, the folder whose test/ holds those images in class folders".to_string(),
    };
    bail!(
        "{} was trained on a folder dataset (images of your own), and --data-dir is \
         {DEFAULT_DATA_DIR} (the default, for CIFAR): pass --data-dir {give}",
        path.display()
    )
}

/// `error`, of a test set missing from `data_dir`, followed by the CIFAR folder that the
/// run of the checkpoint at `path` read, where [`run_data_dir`] finds one.
fn naming_run_data_dir(error: anyhow::Error, path: &Path, data_dir: &Path) -> anyhow::Error {
    match run_data_dir(path, data_dir, false) {
        Some(dir) => anyhow!(
            "{error:#}; or pass --data-dir {}, the folder the checkpoint's run read (as the \
             config.json beside it records)",
            dir.display()
        ),
        None => error,
    }
}

/// The data folder that the run of the checkpoint at `path` read (a folder dataset's or
/// CIFAR's, as `folder` says), as the config.json beside the checkpoint records it, where
/// `data_dir` is the default --data-dir and that folder is another one, still there.
fn run_data_dir(path: &Path, data_dir: &Path, folder: bool) -> Option<PathBuf> {
    if data_dir != Path::new(crate::cli::DEFAULT_DATA_DIR) {
        return None;
    }
    let settings = crate::train::recorded_settings(crate::fsutil::folder_of(path))?;
    let recorded = settings.data_dir;
    let elsewhere = std::fs::canonicalize(data_dir).ok().as_ref() != Some(&recorded);
    let same_kind = (settings.dataset == crate::data::FOLDER) == folder;
    (same_kind && elsewhere && recorded.is_dir()).then_some(recorded)
}

/// The dataset a checkpoint is evaluated on: `--dataset` when given, else the one its
/// `dataset` metadata records, with coarse CIFAR-100 labels when asked for or when that
/// recorded dataset used them.
pub fn dataset_args(
    metadata: &HashMap<String, String>,
    args: &crate::cli::CheckpointDatasetArgs,
) -> Result<crate::cli::DatasetArgs> {
    use crate::cli::DatasetName;
    use crate::data::{CIFAR10, CIFAR100, CIFAR100_COARSE, FOLDER};
    let recorded = metadata.get(DATASET_KEY).map(String::as_str);
    let dataset = match (args.dataset, recorded) {
        (Some(name), _) => name,
        (None, Some(CIFAR10)) => DatasetName::Cifar10,
        (None, Some(CIFAR100 | CIFAR100_COARSE)) => DatasetName::Cifar100,
        (None, Some(FOLDER)) => DatasetName::Folder,
        (None, Some(other)) => {
            bail!(
                "the checkpoint records the dataset `{other}`, which vit cannot read (it reads \
                 `{CIFAR10}`, `{CIFAR100}`, `{CIFAR100_COARSE}` and `{FOLDER}`); pass --dataset \
                 cifar10, cifar100 (with --coarse-labels for its 20 superclasses) or folder"
            )
        }
        (None, None) => bail!("the checkpoint does not record its dataset; pass --dataset"),
    };
    let recorded_coarse = recorded == Some(CIFAR100_COARSE) && dataset == DatasetName::Cifar100;
    Ok(crate::cli::DatasetArgs {
        dataset,
        data_dir: args.data_dir.clone(),
        coarse_labels: args.coarse_labels || recorded_coarse,
    })
}
