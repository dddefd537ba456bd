//! `vit predict`: the most probable classes (5, or `--top-k`) for image files (and the
//! images in folders).

use crate::checkpoint;
use crate::cli::PredictArgs;
use crate::data::{folder, transforms};
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

pub fn run(args: &PredictArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let loaded = checkpoint::load(&args.checkpoint, device)?;
    loaded.ensure_rgb(&args.checkpoint)?;
    let config = &loaded.model.config;
    let classes = checkpoint::class_names(&loaded.metadata, config.num_classes);
    let top_k = config.num_classes.min(args.top_k);
    // A folder stands for the images under it; one that cannot be listed (or a subfolder
    // of it) is named and skipped, as a file that cannot be read is.
    let mut images = Vec::new();
    let mut unlisted = 0;
    for path in &args.images {
        if !path.is_dir() {
            images.push(path.clone());
            continue;
        }
        let unreadable = match folder::image_files_under(path) {
            Ok((files, unreadable)) => {
                images.extend(files);
                unreadable
            }
            Err(error) => vec![(path.clone(), error)],
        };
        for (folder, error) in &unreadable {
            skip(folder, error, args.json)?;
        }
        unlisted += unreadable.len();
    }
    // A file that cannot be read is named and skipped; the others are still classified.
    let mut skipped = 0;
    for chunk in images.chunks(args.batch_size as usize) {
        let files: Vec<&Path> = chunk.iter().map(PathBuf::as_path).collect();
        let decoded = folder::decode_readable(&files, config.image_size as u32)?;
        skipped += decoded.failures.len();
        // Each file in the order given: its classes, or why it was skipped.
        let mut outcomes: Vec<Option<Result<Prediction, anyhow::Error>>> =
            files.iter().map(|_| None).collect();
        if !decoded.indices.is_empty() {
            let batch =
                transforms::test_transform(&decoded.images.to_device(device), config.image_size);
            let probs = tch::no_grad(|| loaded.model.f_forward_t(&batch, false))?
                .to_kind(Kind::Float)
                .softmax(-1, None::<Kind>);
            let (top_probs, top_index) = probs.topk(top_k, -1, true, true);
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
        for (path, outcome) in files.iter().zip(outcomes) {
            match outcome.expect("each file is classified or skipped") {
                Ok(prediction) => print(&prediction, args.json)?,
                Err(error) => skip(path, &error, args.json)?,
            }
        }
    }
    let mut problems = Vec::new();
    if skipped > 0 {
        problems.push(format!(
            "{skipped} of {} files could not be read",
            images.len()
        ));
    }
    if unlisted > 0 {
        problems.push(format!("{unlisted} folder(s) could not be read"));
    }
    ensure!(
        problems.is_empty(),
        "{} (each is named above)",
        problems.join(", and ")
    );
    Ok(())
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

/// One line of JSON, or the file name and its top classes as a list.
fn print(prediction: &Prediction, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(prediction)?);
    } else {
        println!("{}", prediction.file);
        for guess in &prediction.top {
            println!(
                "  {:6.2}%  {} ({})",
                100.0 * guess.prob,
                guess.class,
                guess.index
            );
        }
    }
    Ok(())
}
