//! `vit predict`: the most probable classes (5, or `--top-k`) for image files (and the
//! images in folders).

use crate::checkpoint;
use crate::cli::PredictArgs;
use crate::data::{folder, image_file, transforms};
use crate::listing::noun_for;
use anyhow::{ensure, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::Kind;

#[derive(Serialize)]
struct Guess {
    class: String,
    index: i64,
    prob: f64,
}

#[derive(Serialize)]
struct Prediction {
    file: String,
    top: Vec<Guess>,
}

/// One argument's share of the output, in the order given: an image file, or a folder
/// (or a subfolder of one) that could not be listed or held no images.
enum Entry {
    Image(PathBuf),
    Unlisted(PathBuf, anyhow::Error),
}

/// `vit predict`: each image's most probable classes, printed in the order the files and
/// folders were given (a folder stands for the images under it). What cannot be read is
/// named and skipped, and the others are still classified; the exit status says so.
pub fn run(args: &PredictArgs) -> Result<()> {
    // The usual spelling of standard input, which vit does not read (a file named "-" is).
    let stdin = Path::new("-");
    ensure!(
        !args.images.iter().any(|image| image == stdin) || stdin.exists(),
        "vit predict reads image files, not standard input ('-'): save the image to a file \
         and pass its path"
    );
    let device = args.device.set_up()?;
    let loaded = checkpoint::load(&args.checkpoint, device)?;
    loaded.ensure_rgb(&args.checkpoint)?;
    let classes = loaded.class_names();
    let entries = entries(&args.images);
    let images = entries
        .iter()
        .filter(|entry| matches!(entry, Entry::Image(_)))
        .count();
    let (mut skipped, mut unlisted) = (0, 0);
    for chunk in entries.chunks(args.batch_size as usize) {
        let files: Vec<&Path> = chunk
            .iter()
            .filter_map(|entry| match entry {
                Entry::Image(path) => Some(path.as_path()),
                Entry::Unlisted(..) => None,
            })
            .collect();
        let mut predictions = classify(&loaded, &classes, &files, args.top_k)?.into_iter();
        for entry in chunk {
            match entry {
                Entry::Image(path) => match predictions.next().expect("one a file") {
                    Ok(prediction) => print(&prediction, args.json)?,
                    Err(error) => {
                        skipped += 1;
                        skip(path, &error, args.json)?;
                    }
                },
                Entry::Unlisted(folder, error) => {
                    unlisted += 1;
                    skip(folder, error, args.json)?;
                }
            }
        }
    }
    let mut problems = Vec::new();
    if skipped > 0 {
        problems.push(format!(
            "{skipped} of {images} {} could not be read",
            noun_for(images, "file")
        ));
    }
    if unlisted > 0 {
        problems.push(format!(
            "{unlisted} {} could not be read or held no images",
            noun_for(unlisted, "folder")
        ));
    }
    ensure!(
        problems.is_empty(),
        "{} (each is named above)",
        problems.join(", and ")
    );
    Ok(())
}

/// The command line's files and folders as [`Entry`]s: a folder's images (then its
/// subfolders that could not be listed) where the folder was given.
fn entries(paths: &[PathBuf]) -> Vec<Entry> {
    let mut entries = Vec::new();
    for path in paths {
        if !path.is_dir() {
            entries.push(Entry::Image(path.clone()));
            continue;
        }
        match folder::image_files_under(path) {
            Ok((files, unreadable)) => {
                entries.extend(files.into_iter().map(Entry::Image));
                entries.extend(
                    unreadable
                        .into_iter()
                        .map(|(folder, error)| Entry::Unlisted(folder, error)),
                );
            }
            Err(error) => entries.push(Entry::Unlisted(path.clone(), error)),
        }
    }
    entries
}

/// The `top_k` most probable of `classes` for each of `files`, in their order, or why a
/// file could not be read.
fn classify(
    loaded: &checkpoint::LoadedModel,
    classes: &[String],
    files: &[&Path],
    top_k: i64,
) -> Result<Vec<Result<Prediction>>> {
    let config = &loaded.model.config;
    let remedy = match files.len() {
        1 => image_file::ONE_CHECKPOINT_IMAGE,
        _ => "pass a smaller --batch-size (the images are read a batch at a time)",
    };
    let decoded = image_file::decode_readable(files, config.image_size as u32, remedy)?;
    let mut outcomes: Vec<Option<Result<Prediction>>> = files.iter().map(|_| None).collect();
    if !decoded.indices.is_empty() {
        let device = loaded.vs.device();
        let batch =
            transforms::test_transform(&decoded.images.to_device(device), config.image_size);
        let probs = tch::no_grad(|| loaded.model.f_forward_t(&batch, false))?
            .to_kind(Kind::Float)
            .softmax(-1, None::<Kind>);
        let (top_probs, top_index) = probs.topk(config.num_classes.min(top_k), -1, true, true);
        let top_probs: Vec<Vec<f64>> = Vec::try_from(top_probs.to_kind(Kind::Double))?;
        let top_index: Vec<Vec<i64>> = Vec::try_from(top_index)?;
        for ((&file, probs), indices) in decoded.indices.iter().zip(top_probs).zip(top_index) {
            let top = indices
                .iter()
                .zip(probs)
                .map(|(&index, prob)| Guess {
                    class: classes[index as usize].clone(),
                    index,
                    prob,
                })
                .collect();
            let path = files[file].display().to_string();
            outcomes[file] = Some(Ok(Prediction { file: path, top }));
        }
    }
    for (file, error) in decoded.failures {
        outcomes[file] = Some(Err(error));
    }
    Ok(outcomes
        .into_iter()
        .map(|outcome| outcome.expect("each file is classified or skipped"))
        .collect())
}

/// A file or folder that could not be read: named on standard error, and with `json` in
/// the output too, as `{"file": ..., "error": ...}` where its classes would be.
fn skip(path: &Path, error: &anyhow::Error, json: bool) -> Result<()> {
    let error = format!("{error:#}");
    eprintln!("skipped: {error}");
    if json {
        let file = path.display().to_string();
        println!("{}", serde_json::to_string(&Skipped { file, error })?);
    }
    Ok(())
}

#[derive(Serialize)]
struct Skipped {
    file: String,
    error: String,
}

/// One line of JSON, or the file name and its top classes as a list: each a name and its
/// number, or only the number where the checkpoint names none ("class 4", not "class 4 (4)").
fn print(prediction: &Prediction, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(prediction)?);
    } else {
        println!("{}", prediction.file);
        for guess in &prediction.top {
            let percent = 100.0 * guess.prob;
            if guess.class == checkpoint::unnamed_class(guess.index) {
                println!("  {percent:6.2}%  {}", guess.class);
            } else {
                println!("  {percent:6.2}%  {} ({})", guess.class, guess.index);
            }
        }
    }
    Ok(())
}
