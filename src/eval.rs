//! Test-set evaluation (the notebook's "Validation Accuracy"), and `vit eval`.

use crate::checkpoint;
use crate::cli::{EvalArgs, Precision};
use crate::data::{transforms, Split, TestSet};
use crate::ffi::autocast;
use crate::listing::noun_for;
use crate::model::VisionTransformer;
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{nn::ModuleT, Kind, Reduction, Tensor};

/// What one pass over a split measured.
pub struct Evaluation {
    /// Mean cross-entropy (no label smoothing).
    pub loss: f64,
    /// Fraction correct, in [0, 1].
    pub accuracy: f64,
    /// Fraction whose class is among the model's [`TOP_K`] highest logits; none for a
    /// model of [`TOP_K`] classes or fewer, where it would always be 1.
    pub top5_accuracy: Option<f64>,
    /// How many images the pass covered.
    pub images: i64,
    /// `counts[true][predicted]`, int64 [num_classes, num_classes] on the CPU.
    pub confusion: Tensor,
}

/// The k of the top-k accuracy `vit eval` reports beside the top-1, as timm's validation
/// reports Acc@5.
pub const TOP_K: i64 = 5;

/// Runs the model over `split` (uint8 images as the dataset holds them, test-transformed
/// here a batch at a time) in eval mode, its forward at `precision`. Sums stay on the
/// device until the end: the pass waits for the device only when it reads them.
pub fn evaluate(
    model: &VisionTransformer,
    split: &Split,
    batch_size: i64,
    precision: Precision,
) -> Evaluation {
    let num_classes = model.config.num_classes;
    let device = split.images.device();
    let image_count = split.len();
    let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
    let mut confusion = Tensor::zeros([num_classes * num_classes], (Kind::Int64, device));
    let mut top_k_correct = Tensor::zeros([], (Kind::Int64, device));
    // One autocast region for the pass: bf16 copies of the weights are made once, not
    // per batch (autocast's cache lives as long as its region).
    autocast(precision, device, || {
        tch::no_grad(|| {
            for start in (0..image_count).step_by(batch_size as usize) {
                let len = batch_size.min(image_count - start);
                let images = transforms::test_transform(
                    &split.images.narrow(0, start, len),
                    model.config.image_size,
                );
                let labels = split.labels.narrow(0, start, len);
                let logits = model.forward_t(&images, false).to_kind(Kind::Float);
                loss_sum +=
                    logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Sum, -100, 0.0);
                let cells = &labels * num_classes + logits.argmax(-1, false);
                // index_add_, not bincount, which reads the maximum back to the host on CUDA.
                let _ = confusion.index_add_(0, &cells, &cells.ones_like());
                if num_classes > TOP_K {
                    let (_, top_k) = logits.topk(TOP_K, -1, true, false);
                    top_k_correct += top_k.eq_tensor(&labels.unsqueeze(1)).sum(Kind::Int64);
                }
            }
        })
    });
    let confusion = confusion
        .view([num_classes, num_classes])
        .to_device(tch::Device::Cpu);
    let correct = confusion
        .diagonal(0, 0, 1)
        .sum(Kind::Int64)
        .int64_value(&[]);
    // An empty split's loss and accuracy are 0, not NaN.
    let divisor = image_count.max(1) as f64;
    Evaluation {
        loss: loss_sum.double_value(&[]) / divisor,
        accuracy: correct as f64 / divisor,
        top5_accuracy: (num_classes > TOP_K)
            .then(|| top_k_correct.int64_value(&[]) as f64 / divisor),
        images: image_count,
        confusion,
    }
}

impl Evaluation {
    /// Accuracy of each true class (None for a class with no test images).
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        let rows: Vec<Vec<i64>> = Vec::try_from(&self.confusion).expect("confusion is 2-D int64");
        rows.iter()
            .enumerate()
            .map(|(class, row)| {
                let images = row.iter().sum::<i64>();
                (images > 0).then(|| row[class] as f64 / images as f64)
            })
            .collect()
    }

    /// Writes the matrix with class names as the header row and first column, atomically.
    fn write_confusion_csv(&self, classes: &[String], path: &Path) -> Result<()> {
        let rows: Vec<Vec<i64>> = Vec::try_from(&self.confusion)?;
        crate::fsutil::write_atomic(path, &confusion_csv(classes, &rows)?)
    }
}

/// The confusion matrix `rows` (`rows[true][predicted]`) of `classes` as a CSV: the
/// [`CSV_CORNER`] and the class names, then each class's name and counts.
fn confusion_csv(classes: &[String], rows: &[Vec<i64>]) -> Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let header: Vec<&str> = std::iter::once(CSV_CORNER)
        .chain(classes.iter().map(String::as_str))
        .collect();
    writer.write_record(&header)?;
    for (class, row) in classes.iter().zip(rows) {
        let cells = std::iter::once(class.clone()).chain(row.iter().map(i64::to_string));
        writer.write_record(cells)?;
    }
    Ok(writer.into_inner().map_err(|e| e.into_error())?)
}

#[derive(Serialize)]
struct EvalReport<'a> {
    accuracy: f64,
    /// null for a model of 5 classes or fewer.
    top5_accuracy: Option<f64>,
    loss: f64,
    images: i64,
    /// The forward pass's: "fp32", or "bf16" (autocast).
    precision: String,
    dataset: &'a str,
    checkpoint: String,
    /// null for a class without test images.
    per_class_accuracy: Vec<(&'a str, Option<f64>)>,
    /// null when it was not written: the checkpoint's folder could not take it (and no
    /// --out was given), or writing it failed.
    confusion_matrix_csv: Option<String>,
    /// null without --plot, or when it was not written.
    confusion_matrix_png: Option<String>,
}

/// The name the confusion matrix files of `checkpoint` start with: the checkpoint's (so
/// evaluating best_model and then last_model keeps both), and in an `--out` folder other
/// than the checkpoint's, its folder's before it (so the reports of runs/a and runs/b
/// evaluated into one folder keep apart).
fn report_name(checkpoint: &Path, out: Option<&Path>) -> String {
    let stem = checkpoint
        .file_stem()
        .map_or("model".into(), |stem| stem.to_string_lossy());
    // The folder the checkpoint is given in (a link is named where it lies).
    let folder = crate::fsutil::folder_of(checkpoint);
    match (std::fs::canonicalize(folder).ok(), out) {
        (Some(folder), Some(out)) if !crate::fsutil::same_file(&folder, out) => {
            match folder.file_name() {
                Some(name) => format!("{}.{stem}", name.to_string_lossy()),
                None => stem.into_owned(),
            }
        }
        _ => stem.into_owned(),
    }
}

/// Where the confusion matrix goes, checked before the test set is read (which may take a
/// while) but not made: the evaluation may still fail before it writes (see
/// `write_files`). A folder the user named with --out must take it, as must the
/// checkpoint's when --plot asks for its picture; otherwise a checkpoint's read-only folder
/// (a shared models folder) only means that the figures are reported without the matrix:
/// `None`.
fn report_folder(args: &EvalArgs) -> Result<Option<PathBuf>> {
    // A bare file name's folder is "" (shown as such in the files' names), not "./".
    let folder = args
        .checkpoint
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let out = args.out.as_ref().unwrap_or(&folder);
    let takes_files = crate::fsutil::ensure_out_is_a_folder(out)
        .and_then(|()| crate::fsutil::ensure_can_create_in(out));
    match takes_files {
        Ok(()) => Ok(Some(out.clone())),
        // The error already says what to do about the folder.
        Err(e) if args.out.is_some() => {
            Err(anyhow!("--out is where the confusion matrix goes: {e:#}"))
        }
        Err(e) if args.plot => Err(anyhow!(
            "{e:#}; the confusion matrix (and its --plot picture) goes there: pass --out DIR \
             to write it elsewhere"
        )),
        // Only the cause: the error's own remedy (another folder) is --out here.
        Err(e) => {
            eprintln!(
                "warning: cannot write in {} ({}), so the confusion matrix is not saved: pass \
                 --out DIR to save it elsewhere",
                crate::fsutil::shown_folder(out).display(),
                e.root_cause()
            );
            Ok(None)
        }
    }
}

/// `vit eval`: the config, the dataset name and the class names come from the checkpoint.
pub fn run(args: &EvalArgs) -> Result<()> {
    let device = args.device.set_up()?;
    let loaded = checkpoint::load(&args.checkpoint, device)?;
    // Before the test set is read (a folder dataset is decoded, which takes a while): a
    // refused --out or file is said at once.
    let out_dir = report_folder(args)?;
    let name = report_name(&args.checkpoint, args.out.as_deref());
    let paths = out_dir.map(|dir| ReportPaths::new(&dir, &name));
    if let Some(paths) = &paths {
        paths.ensure_replaceable(args.plot, args.out.is_some())?;
    }
    let dataset = loaded.test_set(&args.checkpoint, &args.data, None)?;
    let image_size = loaded.model.config.image_size;
    dataset.test.note_resizing(&dataset.name, image_size);
    let test = dataset.test.to_device(device);
    crate::runtime::warn_if_bf16_is_slow(device, &[("--precision", args.precision)], false);
    let evaluation = evaluate(&loaded.model, &test, args.batch_size, args.precision);
    let files = match paths {
        Some(paths) => write_files(&evaluation, &dataset.classes, paths, args.plot),
        None => ReportFiles::default(),
    };
    print_report(args, &dataset, &evaluation, &files)?;
    // A file that cannot be written after all (a folder in its place) fails the command
    // once its figures are printed: they are not lost.
    if files.errors.is_empty() {
        return Ok(());
    }
    let errors: Vec<String> = files.errors.iter().map(|e| format!("{e:#}")).collect();
    bail!(
        "{}; the evaluation's figures are printed all the same",
        errors.join("; ")
    )
}

/// The first cell of every confusion matrix CSV vit writes: it knows its own files by it.
const CSV_CORNER: &str = "true\\predicted";

/// Larger than any confusion matrix CSV vit writes (1,000 classes of 7-digit counts: 8 MB).
const MAX_CSV_BYTES: u64 = 64 << 20;

/// Whether `file` is a confusion matrix vit wrote (see [`is_confusion_csv`]).
fn is_vits_confusion_csv(file: std::fs::File) -> std::io::Result<bool> {
    let mut text = Vec::new();
    file.take(MAX_CSV_BYTES).read_to_end(&mut text)?;
    Ok(is_confusion_csv(&text))
}

/// Whether `text` is a confusion matrix as vit writes it (its numbers may have been
/// edited): [`CSV_CORNER`] and the class names, then a row of whole-number counts for each
/// class, in the header's order, and nothing else. A file with anything more (notes, say)
/// is the user's.
fn is_confusion_csv(text: &[u8]) -> bool {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text);
    let Ok(records) = reader.records().collect::<Result<Vec<_>, _>>() else {
        return false;
    };
    let Some((header, rows)) = records.split_first() else {
        return false;
    };
    let classes: Vec<&str> = header.iter().skip(1).collect();
    header.get(0) == Some(CSV_CORNER)
        && !classes.is_empty()
        && rows.len() == classes.len()
        && rows.iter().zip(&classes).all(|(row, class)| {
            row.len() == classes.len() + 1
                && row.get(0) == Some(*class)
                && row.iter().skip(1).all(|count| count.parse::<u64>().is_ok())
        })
}

/// Where an evaluation's confusion matrix goes: `NAME.confusion_matrix.csv` in a folder,
/// and with `--plot` its picture `NAME.confusion_matrix.png` beside it.
pub(crate) struct ReportPaths {
    csv: PathBuf,
    png: PathBuf,
}

impl ReportPaths {
    fn new(dir: &Path, name: &str) -> Self {
        Self {
            csv: dir.join(format!("{name}.confusion_matrix.csv")),
            png: dir.join(format!("{name}.confusion_matrix.png")),
        }
    }

    /// The files `vit eval` of `checkpoint` writes beside it, without --out.
    pub(crate) fn beside(checkpoint: &Path) -> Self {
        let folder = crate::fsutil::folder_of(checkpoint);
        Self::new(folder, &report_name(checkpoint, None))
    }

    /// Those of the two files that are there and vit's: a matrix it wrote, a picture it
    /// drew.
    pub(crate) fn written_by_vit(self) -> Vec<PathBuf> {
        let csv = std::fs::File::open(&self.csv)
            .and_then(is_vits_confusion_csv)
            .unwrap_or(false);
        let png = crate::plot::is_drawn_by_vit(&self.png);
        [(self.csv, csv), (self.png, png)]
            .into_iter()
            .filter_map(|(path, vits)| vits.then_some(path))
            .collect()
    }

    /// Refuses, before the test pass, to replace a file of the user's there: a CSV vit did
    /// not write, or with `plot` a PNG it did not draw. `out_given`: the folder is --out's.
    fn ensure_replaceable(&self, plot: bool, out_given: bool) -> Result<()> {
        let instead = match out_given {
            true => "choose another --out",
            false => "pass --out DIR to write the evaluation's files elsewhere",
        };
        let what = "a confusion matrix vit wrote";
        let replaced_by = "vit eval would replace it with the confusion matrix";
        // A folder in a file's place is no file of the user's to keep: it is named when the
        // file is written, after the figures are printed.
        if !self.csv.is_dir() {
            crate::plot::ensure_replaceable(
                &self.csv,
                what,
                replaced_by,
                instead,
                is_vits_confusion_csv,
            )?;
        }
        if plot && !self.png.is_dir() {
            crate::plot::ensure_replaceable_png(&self.png, instead)?;
        }
        Ok(())
    }
}

/// The confusion matrix files an evaluation wrote, and why those it could not write were
/// not.
#[derive(Default)]
struct ReportFiles {
    csv: Option<PathBuf>,
    png: Option<PathBuf>,
    errors: Vec<anyhow::Error>,
}

/// Writes the confusion matrix CSV, and with `plot` its picture (without, an older one vit
/// drew there is pointed out); each is written, or fails, on its own.
fn write_files(
    evaluation: &Evaluation,
    classes: &[String],
    paths: ReportPaths,
    plot: bool,
) -> ReportFiles {
    let ReportPaths { csv, png } = paths;
    let mut files = ReportFiles::default();
    // Made only now that there is something to write in it (see `report_folder`).
    if let Err(error) = crate::fsutil::create_folder(crate::fsutil::folder_of(&csv)) {
        files.errors.push(error);
        return files;
    }
    let replaced = csv.exists();
    match evaluation.write_confusion_csv(classes, &csv) {
        Ok(()) if replaced => {
            // Said, as it may be another checkpoint's: runs/a/seed1 and runs/b/seed1 share it.
            eprintln!(
                "note: {} was there, from an earlier evaluation, and is replaced (to keep both, \
                 give each evaluation its own --out)",
                csv.display()
            );
            files.csv = Some(csv);
        }
        Ok(()) => files.csv = Some(csv),
        Err(error) => files.errors.push(error),
    }
    if !plot {
        // A picture of the user's at that name is theirs: nothing to say of it.
        if let Some(csv) = files
            .csv
            .as_ref()
            .filter(|_| crate::plot::is_drawn_by_vit(&png))
        {
            eprintln!(
                "note: {} is from an earlier evaluation and may not match {} (pass --plot to \
                 redraw it)",
                png.display(),
                csv.display()
            );
        }
        return files;
    }
    match crate::plot::confusion_matrix(&evaluation.confusion, classes, &png) {
        Ok(()) => files.png = Some(png),
        Err(error) => files.errors.push(error),
    }
    files
}

/// The evaluation's figures on standard output: as text, or one JSON object with `--json`.
fn print_report(
    args: &EvalArgs,
    dataset: &TestSet,
    evaluation: &Evaluation,
    files: &ReportFiles,
) -> Result<()> {
    let per_class = evaluation.per_class_accuracy();
    let shown = |path: &Option<PathBuf>| path.as_ref().map(|path| path.display().to_string());
    if args.json {
        let report = EvalReport {
            accuracy: evaluation.accuracy,
            top5_accuracy: evaluation.top5_accuracy,
            loss: evaluation.loss,
            images: evaluation.images,
            precision: crate::cli::value_name(&args.precision),
            dataset: &dataset.name,
            checkpoint: args.checkpoint.display().to_string(),
            per_class_accuracy: dataset
                .classes
                .iter()
                .map(String::as_str)
                .zip(per_class)
                .collect(),
            confusion_matrix_csv: shown(&files.csv),
            confusion_matrix_png: shown(&files.png),
        };
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("Checkpoint: {}", args.checkpoint.display());
    println!(
        "Dataset: {} test split, {} {}",
        dataset.name,
        evaluation.images,
        noun_for(evaluation.images, "image")
    );
    if args.precision == Precision::Bf16 {
        println!("Precision: bf16 autocast (figures may differ a little from fp32's)");
    }
    println!("Validation Accuracy: {:.2}%", 100.0 * evaluation.accuracy);
    if let Some(top5) = evaluation.top5_accuracy {
        println!("Top-{TOP_K} accuracy: {:.2}%", 100.0 * top5);
    }
    println!("Loss: {:.4}", evaluation.loss);
    println!("Per-class accuracy:");
    for (class, accuracy) in dataset.classes.iter().zip(per_class) {
        match accuracy {
            Some(accuracy) => println!("  {class:<20} {:6.2}%", 100.0 * accuracy),
            None => println!("  {class:<20} (no test images)"),
        }
    }
    if let Some(csv) = &files.csv {
        println!("Confusion matrix: {}", csv.display());
    }
    if let Some(png) = &files.png {
        println!("Confusion matrix picture: {}", png.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vit's own matrix is known as such, with its counts edited too; one with anything
    /// more or less than vit writes is the user's.
    #[test]
    fn a_confusion_csv_is_vits_only_as_vit_writes_it() {
        let classes = ["cat".to_string(), "a, b".to_string()];
        let written = confusion_csv(&classes, &[vec![3, 1], vec![0, 4]]).unwrap();
        let vits = String::from_utf8(written).unwrap();
        assert_eq!(
            vits,
            "true\\predicted,cat,\"a, b\"\ncat,3,1\n\"a, b\",0,4\n"
        );
        assert!(is_confusion_csv(vits.as_bytes()));
        assert!(is_confusion_csv(vits.replace(",3,", ",30,").as_bytes()));
        for users in [
            format!("{vits}my,notes\n"),
            "true\\predicted,a,b\nmine,1,2\n".to_string(),
            "true\\predicted,cat\n".to_string(),
            vits.replace(",3,", ",three,"),
            vits.replace("cat,3,1", "cat,3,1,2"),
            vits.replace("\ncat,", "\ndog,"),
            "my notes\n".to_string(),
            String::new(),
        ] {
            assert!(!is_confusion_csv(users.as_bytes()), "{users:?}");
        }
    }
}
