//! Loss and accuracy curves from `metrics.csv` (`vit plot`, `vit train --plot`).

use super::{
    drawing, ensure_png_output, ensure_replaceable, fit_text, render_png, render_svg, text_width,
    Keep, FONT, OTHER_PNG,
};
use crate::cli::PlotArgs;
use crate::fsutil::same_file;
use crate::listing::noun_for;
use crate::train::line_at;
use anyhow::{bail, ensure, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Width and height of `curves.png` (and of its SVG), in pixels.
pub const CURVES_SIZE: (u32, u32) = (1200, 500);

/// The legend's font size, in points.
const LEGEND_FONT: f64 = 14.0;

/// The widest a legend entry's text may be, in pixels: what a panel (half of
/// [`CURVES_SIZE`]'s width) holds beside its y axis and the entry's line sample.
const LEGEND_TEXT_WIDTH: u32 = 400;

/// Ten distinguishable colours (Tableau 10), one per run: `vit plot` draws up to ten.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One row of `metrics.csv`; missing or empty cells are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    pub epoch: f64,
    pub train_loss: Option<f64>,
    pub train_acc: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_acc: Option<f64>,
    /// The EMA weights' test figures (empty without `--ema`).
    pub ema_test_loss: Option<f64>,
    pub ema_test_acc: Option<f64>,
}

/// A run's label (its folder name) and its epochs.
#[derive(Debug, Clone)]
pub struct RunMetrics {
    pub label: String,
    pub epochs: Vec<MetricsRow>,
}

/// `RUN_DIR/metrics.csv`, or the path itself when it is a file.
fn metrics_path(run: &Path) -> PathBuf {
    if run.is_file() {
        run.to_path_buf()
    } else {
        run.join(crate::train::METRICS_CSV)
    }
}

/// The columns of `metrics.csv` the curves are drawn from, in `MetricsRow`'s order.
const METRIC_COLUMNS: [&str; 6] = [
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "ema_test_loss",
    "ema_test_acc",
];

/// What `vit plot` takes, for its errors.
const GIVE_RUNS: &str = "give vit train's run folders, or their metrics.csv files";

/// Reads a `metrics.csv` written by `vit train` (columns are found by name; extra ones are
/// ignored; cells and names may have spaces around them), or saved again by a spreadsheet
/// with semicolons or tabs between its columns (see `delimiter_of`). A cell that is not a
/// number (edited in a spreadsheet, say) is left out of the curves with a note, an empty
/// row is skipped, a short row has empty cells, and a row without a finite epoch number is
/// an error.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    // A pipe's read would wait for a writer forever.
    if let Some(kind) = crate::fsutil::kind_if_not_a_file(path) {
        bail!(
            "{} is {kind}, not the metrics file vit train writes: {GIVE_RUNS}",
            path.display()
        );
    }
    // Read whole, so that a message can name a row's line as an editor numbers it.
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let delimiter = delimiter_of(&text);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.as_slice());
    let header = reader.byte_headers().cloned().unwrap_or_default();
    check_columns(path, &header)?;
    let mut not_numbers = Vec::new();
    let mut rows: Vec<MetricsRow> = Vec::new();
    for record in reader.byte_records() {
        let record = record.with_context(|| format!("cannot read {}", path.display()))?;
        if record.iter().all(|cell| cell.is_empty()) {
            continue;
        }
        let line = record
            .position()
            .map_or(0, |position| line_at(&text, position));
        let cells = Cells {
            header: &header,
            record: &record,
            decimal_comma: delimiter != b',',
        };
        let row = metrics_row(path, &cells, line, &mut not_numbers)?;
        check_epoch(path, row.epoch, rows.last().map(|row| row.epoch), line)?;
        rows.push(row);
    }
    note_not_numbers(path, &not_numbers);
    Ok(rows)
}

/// Refuses an `epoch` on `line` that is not one vit train would write after the `previous`
/// row's: a whole number from 1, each row's above the one before (a row repeated or moved
/// would draw the curve back over itself).
fn check_epoch(path: &Path, epoch: f64, previous: Option<f64>, line: usize) -> Result<()> {
    ensure!(
        epoch >= 1.0 && epoch.fract() == 0.0,
        "{}: line {line}'s epoch is {epoch}, but vit train numbers its epochs 1, 2, 3, ...; \
         correct or remove that line",
        path.display()
    );
    if let Some(previous) = previous.filter(|&previous| epoch <= previous) {
        bail!(
            "{}: line {line}'s epoch {epoch} comes after epoch {previous}, but vit train writes \
             each epoch once, in order; remove or correct that line",
            path.display()
        );
    }
    Ok(())
}

/// The byte between `text`'s columns: the comma vit writes, or the semicolon or tab that a
/// spreadsheet saves with (the semicolon in a locale whose decimal mark is a comma): the
/// first whose split of the header line has an `epoch` column.
fn delimiter_of(text: &[u8]) -> u8 {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    let header = text.split(|&byte| byte == b'\n' || byte == b'\r').next();
    let names_epoch = |delimiter: u8| {
        header
            .unwrap_or_default()
            .split(|&byte| byte == delimiter)
            .any(|name| {
                let name = name.trim_ascii();
                let unquoted = name.strip_prefix(b"\"").and_then(|n| n.strip_suffix(b"\""));
                unquoted.unwrap_or(name) == b"epoch"
            })
    };
    [b',', b';', b'\t']
        .into_iter()
        .find(|&delimiter| names_epoch(delimiter))
        .unwrap_or(b',')
}

/// One row's cells under the header's column names.
struct Cells<'a> {
    header: &'a csv::ByteRecord,
    record: &'a csv::ByteRecord,
    /// Numbers may be written with a decimal comma (0,25): the columns are not split by
    /// commas.
    decimal_comma: bool,
}

impl Cells<'_> {
    /// The text of column `name`; None where the header or the row lacks it.
    fn text(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        let cell = column(self.header, name).and_then(|c| self.record.get(c))?;
        Some(String::from_utf8_lossy(cell))
    }

    /// `text` as a number, with a decimal comma where the row may have one.
    fn number(&self, text: &str) -> Option<f64> {
        match self.decimal_comma && text.matches(',').count() == 1 {
            true => text.replace(',', ".").parse().ok(),
            false => text.parse().ok(),
        }
    }
}

/// Where the column `name` is in `header`.
fn column(header: &csv::ByteRecord, name: &str) -> Option<usize> {
    header.iter().position(|column| column == name.as_bytes())
}

/// Refuses a `header` without an epoch column. (One without any of the curves' columns
/// has nothing to draw, which `read_runs` says of all such runs at once.)
fn check_columns(path: &Path, header: &csv::ByteRecord) -> Result<()> {
    ensure!(
        column(header, "epoch").is_some(),
        "{} is not a metrics.csv of `vit train` (it has no epoch column): {GIVE_RUNS}",
        path.display()
    );
    Ok(())
}

/// The cells of one column that are not numbers: how many, and the first one's line and
/// text.
struct NotNumbers {
    column: &'static str,
    count: usize,
    line: usize,
    text: String,
}

impl NotNumbers {
    /// "test_acc (2 cells, the first on line 3: \"n/a\")", for [`note_not_numbers`].
    fn describe(&self) -> String {
        format!(
            "{} ({} {}, the first on line {}: {:?})",
            self.column,
            self.count,
            noun_for(self.count, "cell"),
            self.line,
            self.text
        )
    }
}

/// One non-empty row's `cells`, on `line` of the file at `path`, as a row, each cell that
/// is not a number counted in `not_numbers`.
fn metrics_row(
    path: &Path,
    cells: &Cells,
    line: usize,
    not_numbers: &mut Vec<NotNumbers>,
) -> Result<MetricsRow> {
    let mut cell = |name: &'static str| {
        let text = cells.text(name)?;
        // vit train writes finite numbers only (it stops at a loss that is not): "inf" and
        // "NaN" are edits, left out as the other cells that are no number.
        let value = cells.number(&text).filter(|value| value.is_finite());
        if value.is_none() && !text.is_empty() {
            match not_numbers.iter_mut().find(|cells| cells.column == name) {
                Some(cells) => cells.count += 1,
                None => not_numbers.push(NotNumbers {
                    column: name,
                    count: 1,
                    line,
                    text: text.into_owned(),
                }),
            }
        }
        value
    };
    let epoch = cell("epoch").with_context(|| {
        format!(
            "{}: line {line} has no finite epoch number: vit plot draws the rows vit \
                 train wrote; remove or correct that line",
            path.display()
        )
    })?;
    let [train_loss, train_acc, test_loss, test_acc, ema_test_loss, ema_test_acc] =
        METRIC_COLUMNS.map(&mut cell);
    for (name, accuracy) in [
        ("train_acc", train_acc),
        ("test_acc", test_acc),
        ("ema_test_acc", ema_test_acc),
    ] {
        let Some(accuracy) = accuracy.filter(|a| !(0.0..=1.0).contains(a)) else {
            continue;
        };
        // A percentage (typed in a spreadsheet, say) would be drawn 100 times too high.
        let percentage_hint = match accuracy > 1.0 {
            true => "; if the column holds percentages, divide it by 100",
            false => "; correct or remove that line",
        };
        bail!(
            "{}: {name} is {accuracy} on line {line}, but accuracies there are fractions \
             from 0 to 1 (vit train writes 0.25 for 25%){percentage_hint}",
            path.display()
        );
    }
    for (name, loss) in [
        ("train_loss", train_loss),
        ("test_loss", test_loss),
        ("ema_test_loss", ema_test_loss),
    ] {
        let Some(loss) = loss else { continue };
        // Cross-entropies are never negative.
        ensure!(
            loss >= 0.0,
            "{}: {name} is {loss} on line {line}, but losses there are cross-entropies, never \
             below 0; correct or remove that line",
            path.display()
        );
        // vit train's losses are float32: a larger one (an edit) would stretch the loss
        // axis past the largest float, which plotters cannot divide into ticks.
        ensure!(
            loss <= f64::from(f32::MAX),
            "{}: {name} is {loss:e} on line {line}, larger than any loss vit train writes \
             (float32, up to {:e}); correct or remove that line",
            path.display(),
            f32::MAX
        );
    }
    Ok(MetricsRow {
        epoch,
        train_loss,
        train_acc,
        test_loss,
        test_acc,
        ema_test_loss,
        ema_test_acc,
    })
}

/// Notes the columns with cells that are not finite numbers, which the curves leave out.
fn note_not_numbers(path: &Path, not_numbers: &[NotNumbers]) {
    if not_numbers.is_empty() {
        return;
    }
    let columns: Vec<String> = not_numbers.iter().map(NotNumbers::describe).collect();
    eprintln!(
        "note: {}: cells that are not finite numbers are left out of the curves: {}",
        path.display(),
        columns.join(", ")
    );
}

/// Reads every run's metrics; labels are folder names, or the paths as given when names
/// clash. A run given twice (in any spelling) is drawn once.
pub fn read_runs<P: AsRef<Path>>(runs: &[P]) -> Result<Vec<RunMetrics>> {
    ensure!(!runs.is_empty(), "no run folders given");
    let distinct = distinct_runs(runs);
    // Beyond them, runs would share a colour, and their legends would cover the curves.
    ensure!(
        distinct.len() <= PALETTE.len(),
        "vit plot draws up to {} runs, one colour each, and was given {}: plot them in groups \
         of at most {0}",
        PALETTE.len(),
        distinct.len()
    );
    let names: Vec<String> = distinct.iter().map(|run| folder_name(run)).collect();
    let (mut read, mut left_out, mut without_numbers) = (Vec::new(), Vec::new(), Vec::new());
    for (run, name) in distinct.iter().zip(&names) {
        // Only what is surely missing: another failure (a folder that cannot be searched)
        // is the read's to report.
        ensure!(
            !matches!(run.try_exists(), Ok(false)),
            "{} does not exist: {GIVE_RUNS}",
            run.display()
        );
        let path = metrics_path(run);
        ensure!(
            !matches!(path.try_exists(), Ok(false)),
            "{} has no metrics.csv, so it is not a run folder of vit train (or its run has \
             not started): {GIVE_RUNS}",
            run.display()
        );
        let epochs = read_metrics(&path)?;
        if epochs.is_empty() {
            // A run still in its first epoch: the others are drawn without it.
            left_out.push(path.display().to_string());
            continue;
        }
        if !epochs.iter().any(has_values) {
            without_numbers.push(path.display().to_string());
        }
        let unique = names.iter().filter(|n| *n == name).count() == 1;
        read.push(RunMetrics {
            label: if unique {
                name.clone()
            } else {
                where_given(run)
            },
            epochs,
        });
    }
    ensure_something_to_draw(read.len(), &left_out, &without_numbers)?;
    Ok(read)
}

/// `runs` with each run given again (in any spelling) left out, with a note.
fn distinct_runs<P: AsRef<Path>>(runs: &[P]) -> Vec<&Path> {
    let mut distinct: Vec<&Path> = Vec::new();
    for run in runs.iter().map(AsRef::as_ref) {
        match distinct
            .iter()
            .find(|first| same_file(&metrics_path(first), &metrics_path(run)))
        {
            Some(first) => eprintln!(
                "note: {} is {} again: drawn once",
                run.display(),
                first.display()
            ),
            None => distinct.push(run),
        }
    }
    distinct
}

/// Fails when none of the `read` runs with epochs has a value to draw: `left_out` are the
/// metrics files without epochs, `without_numbers` those whose epochs have none.
/// Otherwise notes what the picture leaves out.
fn ensure_something_to_draw(
    read: usize,
    left_out: &[String],
    without_numbers: &[String],
) -> Result<()> {
    ensure!(
        read > 0,
        "nothing to draw: no finished epochs yet in {}",
        left_out.join(", ")
    );
    let no_numbers = format!(
        "not one finite number in the columns {} of {}",
        METRIC_COLUMNS.join(", "),
        without_numbers.join(", ")
    );
    // Empty axes are no picture of a run: refused, as a run without epochs is.
    ensure!(
        without_numbers.len() < read,
        "nothing to draw: {no_numbers}{}; plot the folders of runs that `vit train` wrote",
        if left_out.is_empty() {
            String::new()
        } else {
            format!(", and no finished epochs yet in {}", left_out.join(", "))
        }
    );
    if !without_numbers.is_empty() {
        eprintln!("note: {no_numbers}; only the other runs have curves");
    }
    if !left_out.is_empty() {
        eprintln!(
            "note: left out, with no finished epochs yet: {}",
            left_out.join(", ")
        );
    }
    Ok(())
}

/// Whether `row` has a value either panel draws.
fn has_values(row: &MetricsRow) -> bool {
    [Panel::Loss, Panel::Accuracy]
        .into_iter()
        .any(|panel| panel.values(row).iter().any(Option::is_some))
}

/// The folder of a run given as a folder, or as a file in it.
fn run_folder(run: &Path) -> &Path {
    if run.is_file() {
        crate::fsutil::folder_of(run)
    } else {
        run
    }
}

/// The name of a run's folder, as it really is (`..` and links resolved).
fn folder_name(run: &Path) -> String {
    let dir = run_folder(run);
    let dir = std::fs::canonicalize(dir)
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// A run as given, where folder names clash: its folder, or the file where that is not
/// its folder's metrics.csv; a folder given as `.` or `..`, which would say nothing in
/// the legend, by its full path.
fn where_given(run: &Path) -> String {
    let given = match run.file_name() {
        Some(name) if name == crate::train::METRICS_CSV => run_folder(run),
        _ => run,
    };
    match given.file_name() {
        Some(_) => given.display().to_string(),
        None => std::fs::canonicalize(given)
            .unwrap_or_else(|_| given.to_path_buf())
            .display()
            .to_string(),
    }
}

/// `vit plot RUN_DIR... [-o curves.png]`: the curves as PNG, with an SVG beside it.
pub fn run(args: &PlotArgs) -> Result<()> {
    ensure_png_output(&args.output)?;
    let svg = svg_beside(&args.output);
    ensure_replaceable_svg(&svg, &args.output, OTHER_PNG)?;
    curves(&args.runs, &args.output)?;
    println!("wrote {} and {}", args.output.display(), svg.display());
    Ok(())
}

/// Refuses to draw the curves at `png` (and as SVG beside it) over a PNG or an SVG there
/// that vit did not draw; `instead` says how to go on without them.
pub(crate) fn ensure_curves_replaceable(png: &Path, instead: &str) -> Result<()> {
    super::ensure_replaceable_png(png, instead)?;
    ensure_replaceable_svg(&svg_beside(png), png, instead)
}

/// The SVG beside `-o NAME.png` is a file the user did not name: refuses to replace one
/// that is not curves vit drew (whose first line is plotters' header at [`CURVES_SIZE`]).
fn ensure_replaceable_svg(svg: &Path, png: &Path, instead: &str) -> Result<()> {
    // The header plotters writes, from plotters itself (an empty picture's first line).
    let mut empty = String::new();
    drop(SVGBackend::with_string(&mut empty, CURVES_SIZE));
    let header = empty.lines().next().unwrap_or_default().to_string();
    let replaced_by = format!("vit would replace it with the SVG beside {}", png.display());
    let first_line = format!("{header}\n");
    ensure_replaceable(svg, "curves vit drew", &replaced_by, instead, |file| {
        super::begins_with(file, first_line.as_bytes())
    })
}

/// Loss (left) and accuracy (right) against epoch for every run, train solid and test
/// dashed, one colour per run. Writes `output` (PNG, [`CURVES_SIZE`]) and the same picture
/// as SVG beside it (same stem, `.svg`).
pub fn curves<P: AsRef<Path>>(runs: &[P], output: &Path) -> Result<()> {
    let runs = read_runs(runs)?;
    render_png(output, CURVES_SIZE, |root| draw_curves(root, &runs))?;
    render_svg(&svg_beside(output), CURVES_SIZE, |root| {
        draw_curves(root, &runs)
    })
}

/// The SVG that [`curves`] writes beside its PNG `png`: the same name, ending `.svg`.
fn svg_beside(png: &Path) -> PathBuf {
    png.with_extension("svg")
}

/// Which metric a panel shows.
#[derive(Clone, Copy)]
enum Panel {
    Loss,
    Accuracy,
}

impl Panel {
    /// The values of [`CURVES`] in one epoch's row.
    fn values(self, row: &MetricsRow) -> [Option<f64>; 3] {
        let finite = |value: Option<f64>| value.filter(|value| value.is_finite());
        let percent = |value: Option<f64>| finite(value).map(|fraction| 100.0 * fraction);
        match self {
            Panel::Loss => [
                finite(row.train_loss),
                finite(row.test_loss),
                finite(row.ema_test_loss),
            ],
            Panel::Accuracy => [
                percent(row.train_acc),
                percent(row.test_acc),
                percent(row.ema_test_acc),
            ],
        }
    }
}

/// Each run's curves, by name and line: train solid, test dashed, the EMA weights' test
/// dotted (drawn only where the run has them).
const CURVES: [(&str, Line); 3] = [
    ("train", Line::Solid),
    ("test", Line::Dashed),
    ("EMA test", Line::Dotted),
];

#[derive(Clone, Copy)]
enum Line {
    Solid,
    Dashed,
    Dotted,
}

impl Line {
    /// The three strokes of its legend sample, 20 pixels wide, as (start, end): three, as
    /// the legend's element has one type (a dash is two, and an empty third).
    fn legend_strokes(self) -> [(i32, i32); 3] {
        match self {
            Line::Solid => [(0, 7), (7, 14), (14, 20)],
            Line::Dashed => [(0, 7), (12, 20), (20, 20)],
            Line::Dotted => [(0, 3), (8, 11), (16, 19)],
        }
    }
}

/// Draws the two panels of the curves picture on any plotters backend.
fn draw_curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RunMetrics],
) -> Result<()> {
    drawing(root.fill(&WHITE))?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    draw_panel(&left, runs, Panel::Loss)?;
    draw_panel(&right, runs, Panel::Accuracy)?;
    Ok(())
}

/// A panel's title, axis ranges and labelling.
struct PanelAxes {
    title: &'static str,
    y_desc: &'static str,
    x: (f64, f64),
    /// The lowest epoch labelled: none in the room left before the first.
    first_label: f64,
    y: (f64, f64),
    /// Decimals of the y tick labels.
    decimals: usize,
    legend_at: SeriesLabelPosition,
}

/// Axes that fit every run's epochs and values: losses with a small margin above 0,
/// accuracies on whole tens of percent.
fn panel_axes(runs: &[RunMetrics], panel: Panel) -> PanelAxes {
    let epochs = runs.iter().flat_map(|r| r.epochs.iter().map(|e| e.epoch));
    let (first, last) = epochs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), e| {
        (lo.min(e), hi.max(e))
    });
    let (x0, x1, first_label) = match (first.is_finite(), last - first < 1.0) {
        (false, _) => (0.5, 1.5, 1.0),
        // One epoch: in the middle, with no epoch 0 on the axis.
        (true, true) => (first - 0.5, last + 0.5, first),
        (true, false) => {
            // From epoch 1, with room at both ends for the first and last epochs' markers
            // and rings (6 pixels of a plot ~500 wide), which the plot's edge cut in half.
            let (x0, x1) = (first.min(1.0), last);
            let pad = (x1 - x0) * 0.02;
            (x0 - pad, x1 + pad, x0)
        }
    };
    let values: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.epochs.iter().flat_map(|e| panel.values(e)))
        .flatten()
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let share = legend_share(runs, panel);
    // The span to add to a range of `span` for the legend's band to be `share` of it.
    let room = |span: f64| span * share / (1.0 - share);
    let (title, y_desc, (y0, y1), legend_at) = match panel {
        Panel::Loss => (
            "Loss",
            // Train is the objective optimised (label-smoothed, on mixed targets with
            // MixUp/CutMix), so it can sit above test where the model does not overfit.
            "cross-entropy (train: the training objective)",
            loss_range(lo, hi, room),
            SeriesLabelPosition::UpperRight,
        ),
        Panel::Accuracy => {
            let (bottom, top, legend_at) = accuracy_range(lo, hi, room);
            ("Accuracy", "accuracy (%)", (bottom, top), legend_at)
        }
    };
    let decimals = match panel {
        Panel::Loss => loss_decimals(y1 - y0),
        Panel::Accuracy => 0,
    };
    PanelAxes {
        title,
        y_desc,
        x: (x0, x1),
        first_label,
        y: (y0, y1),
        decimals,
        legend_at,
    }
}

/// The share of a panel's height the legend gets as a band of its own (above the losses,
/// below the accuracies), so that it never hides a curve: its rows, over the plot's
/// ~400 px.
fn legend_share(runs: &[RunMetrics], panel: Panel) -> f64 {
    let legend_rows = runs
        .iter()
        .flat_map(|run| (0..CURVES.len()).map(move |curve| (run, curve)))
        .filter(|(run, curve)| {
            run.epochs
                .iter()
                .any(|row| panel.values(row)[*curve].is_some())
        })
        .count();
    ((legend_rows as f64 * 19.0 + 16.0) / 400.0).min(0.6)
}

/// The decimals the loss axis's labels need over a range of `span`: its ~10 ticks fall on
/// steps of a tenth of it rounded down to 1, 2 or 5 times a power of ten, whose smallest
/// is that power, and two ticks must not read the same (a loss near 0, spanning 0.05, has
/// ticks 0.005 apart).
fn loss_decimals(span: f64) -> usize {
    (-(span / 10.0).log10()).ceil().clamp(1.0, 6.0) as usize
}

/// The loss axis for values in `lo..=hi` (none: infinite), with `room` above them for the
/// legend.
fn loss_range(lo: f64, hi: f64, room: impl Fn(f64) -> f64) -> (f64, f64) {
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let margin = ((hi - lo) * 0.06).max(0.05);
    let (bottom, top) = ((lo - margin).max(0.0), hi + margin);
    (bottom, top + room(top - bottom))
}

/// The accuracy axis (%, on tens) for values in `lo..=hi` (none: infinite), with `room`
/// for the legend below the curves, or above them where they reach down to 0%; and where
/// the legend goes.
fn accuracy_range(lo: f64, hi: f64, room: impl Fn(f64) -> f64) -> (f64, f64, SeriesLabelPosition) {
    if !lo.is_finite() {
        return (0.0, 100.0, SeriesLabelPosition::LowerRight);
    }
    let tens = |value: f64, round: fn(f64) -> f64| round(value / 10.0) * 10.0;
    let top = tens(hi + 2.0, f64::ceil).min(100.0);
    let bottom = lo - 2.0 - room(top - (lo - 2.0));
    let floor = tens(lo - 2.0, f64::floor).max(0.0);
    let above = hi + 2.0 + room(hi + 2.0 - floor);
    let (bottom, top, legend_at) = if bottom < 0.0 && above <= 100.0 {
        // Curves that reach down to 0% (a short or failing run) leave no band below them:
        // the legend's goes above them.
        (
            floor,
            tens(above, f64::ceil).min(100.0),
            SeriesLabelPosition::UpperRight,
        )
    } else {
        (
            tens(bottom, f64::floor).max(0.0),
            top,
            SeriesLabelPosition::LowerRight,
        )
    };
    (bottom, top.max(bottom + 10.0), legend_at)
}

/// One panel: its axes, every run's curves, one colour per run, and the legend.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    runs: &[RunMetrics],
    panel: Panel,
) -> Result<()> {
    let axes = panel_axes(runs, panel);
    let mut chart = panel_chart(area, &axes)?;
    for (run_index, run) in runs.iter().enumerate() {
        let colour = PALETTE[run_index];
        for (curve, (name, line)) in CURVES.into_iter().enumerate() {
            let segments = curve_segments(run, panel, curve);
            let points = segments.concat();
            if points.is_empty() {
                continue;
            }
            // The test accuracies a best model is kept by (the model's and the EMA's): the
            // legend gives the best, and a ring marks it.
            let best = match (panel, curve) {
                (Panel::Accuracy, 1 | 2) => best_point(&points),
                _ => None,
            };
            let curve_name = match best {
                Some((epoch, accuracy)) => format!("{name} (best {accuracy:.2}%, epoch {epoch})"),
                None => name.to_string(),
            };
            let label = legend_label(&run.label, &curve_name);
            draw_curve(&mut chart, &segments, label, colour, line)?;
            if let Some(best) = best {
                let ring = Circle::new(best, 6, colour.stroke_width(2));
                drawing(chart.draw_series(std::iter::once(ring)))?;
            }
        }
    }
    drawing(
        chart
            .configure_series_labels()
            .position(axes.legend_at)
            .label_font((FONT, LEGEND_FONT))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw(),
    )?;
    Ok(())
}

/// The points (epoch, value) of a run's `curve` (of [`CURVES`]) in `panel`, as lines of
/// consecutive epochs: a row without the value (a cell not a number) breaks the line.
fn curve_segments(run: &RunMetrics, panel: Panel, curve: usize) -> Vec<Vec<(f64, f64)>> {
    let mut segments = vec![Vec::new()];
    for row in &run.epochs {
        match panel.values(row)[curve] {
            Some(value) => segments.last_mut().unwrap().push((row.epoch, value)),
            None => segments.push(Vec::new()),
        }
    }
    segments.retain(|segment| !segment.is_empty());
    segments
}

/// The legend entry "RUN CURVE" of a run's curve: a long run name cut at its start, so
/// that the entry stays within the panel with the figures `curve_name` gives.
fn legend_label(run_label: &str, curve_name: &str) -> String {
    let curve_name = format!(" {curve_name}");
    let room = LEGEND_TEXT_WIDTH.saturating_sub(text_width(&curve_name, LEGEND_FONT));
    format!(
        "{}{curve_name}",
        fit_text(run_label, LEGEND_FONT, room, Keep::End)
    )
}

/// The point (epoch, accuracy) of the epoch whose model `vit train` keeps as the best:
/// the first with the highest accuracy, by [`crate::train::is_new_best`].
fn best_point(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let mut best: Option<(f64, f64)> = None;
    for (index, &(epoch, accuracy)) in points.iter().enumerate() {
        let best_accuracy = best.map_or(0.0, |(_, best_accuracy)| best_accuracy);
        if crate::train::is_new_best(accuracy, best_accuracy, index) {
            best = Some((epoch, accuracy));
        }
    }
    best
}

/// A panel's chart: epochs across, the metric up.
type PanelChart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A panel's chart on `area`, titled, with its `axes` and grid drawn.
fn panel_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    axes: &PanelAxes,
) -> Result<PanelChart<'a, DB>> {
    let ((x0, x1), (y0, y1), decimals) = (axes.x, axes.y, axes.decimals);
    let first_label = axes.first_label;
    let mut chart = drawing(
        ChartBuilder::on(area)
            .caption(axes.title, (FONT, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(x0..x1, y0..y1),
    )?;
    drawing(
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_labels(((x1 - x0).round() + 1.0).clamp(2.0, 11.0) as usize)
            .y_desc(axes.y_desc)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .x_label_formatter(&|x| {
                if x.fract() == 0.0 && *x >= first_label {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.decimals$}"))
            .bold_line_style(RGBColor(225, 225, 225))
            .light_line_style(TRANSPARENT)
            .draw(),
    )?;
    Ok(chart)
}

/// One curve through the points (epoch, value) of its `segments` (each a line of its own)
/// in `colour` and `line`, with its legend entry `label`, and markers on its points when
/// there are few.
fn draw_curve<'a, DB: DrawingBackend + 'a>(
    chart: &mut PanelChart<'a, DB>,
    segments: &[Vec<(f64, f64)>],
    label: String,
    colour: RGBColor,
    line: Line,
) -> Result<()> {
    let style = colour.stroke_width(2);
    let mut label = Some(label);
    for segment in segments {
        let points = segment.iter().copied();
        let series = match line {
            Line::Solid => drawing(chart.draw_series(LineSeries::new(points, style)))?,
            Line::Dashed => drawing(chart.draw_series(DashedLineSeries::new(points, 8, 5, style)))?,
            Line::Dotted => drawing(chart.draw_series(DashedLineSeries::new(points, 3, 5, style)))?,
        };
        // One legend entry for the curve.
        if let Some(label) = label.take() {
            series.label(label).legend(move |(x, y)| {
                let style = colour.stroke_width(2);
                let [first, second, third] = line
                    .legend_strokes()
                    .map(|(start, end)| PathElement::new(vec![(start, 0), (end, 0)], style));
                EmptyElement::at((x, y)) + first + second + third
            });
        }
    }
    let points = segments.iter().flatten();
    // Markers, so that a short run (a single epoch, say) still shows.
    if points.clone().count() > 30 {
        return Ok(());
    }
    let marker = match line {
        Line::Solid => colour.filled(),
        Line::Dashed | Line::Dotted => colour.stroke_width(1),
    };
    drawing(chart.draw_series(points.map(|&p| Circle::new(p, 3, marker))))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss labels have the decimals of the axis's smallest tick step (at least one):
    /// a span of 0.055 (losses near 0) has ticks 0.005 apart, which two decimals would
    /// print as 0.04, 0.04, 0.04.
    #[test]
    fn loss_ticks_have_the_decimals_their_step_needs() {
        for (span, decimals) in [
            (3.0, 1),
            (1.0, 1),
            (0.9, 2),
            (0.1, 2),
            (0.055, 3),
            (2e-4, 5),
        ] {
            assert_eq!(loss_decimals(span), decimals, "span {span}");
        }
    }

    /// What `vit plot` draws is in the columns `vit train` writes: a field of
    /// `EpochMetrics` renamed without its name here would leave a curve out, silently.
    #[test]
    fn the_columns_drawn_are_columns_train_writes() {
        let written = crate::train::metrics_header();
        for name in std::iter::once(&"epoch").chain(&METRIC_COLUMNS) {
            assert!(
                written.iter().any(|column| column == name),
                "{name}: {written:?}"
            );
        }
    }

    /// The note on cells that are not numbers counts them per column: "1 cell", "2 cells".
    #[test]
    fn the_note_counts_a_columns_cells_that_are_not_numbers() {
        let cells = |count| NotNumbers {
            column: "test_acc",
            count,
            line: 3,
            text: "n/a".into(),
        };
        assert_eq!(
            cells(1).describe(),
            r#"test_acc (1 cell, the first on line 3: "n/a")"#
        );
        assert_eq!(
            cells(2).describe(),
            r#"test_acc (2 cells, the first on line 3: "n/a")"#
        );
    }

    /// The epoch axis leaves room beyond the first and last epochs, whose markers and rings
    /// the plot's edge cut in half, labelling no epoch before the first; a single epoch sits
    /// in the middle, with no epoch 0.
    #[test]
    fn the_epoch_axis_has_room_for_the_first_and_last_markers() {
        let five = [run(0.1, 0.5)];
        let axes = panel_axes(&five, Panel::Accuracy);
        let (x0, x1) = axes.x;
        assert!(x0 < 1.0 && x1 > 5.0 && x1 - 5.0 < 0.2, "{x0}..{x1}");
        assert_eq!(axes.first_label, 1.0);
        let mut one = run(0.1, 0.5);
        one.epochs.truncate(1);
        let axes = panel_axes(&[one], Panel::Loss);
        assert_eq!((axes.x, axes.first_label), ((0.5, 1.5), 1.0));
    }

    /// A row without a curve's value breaks the curve's line there, rather than joining
    /// its neighbours; each curve breaks at its own gaps.
    #[test]
    fn a_curve_breaks_where_a_row_has_no_value() {
        let mut run = run(0.1, 0.5);
        run.epochs[2].test_acc = None;
        run.epochs[3].test_acc = Some(f64::NAN);
        run.epochs[0].train_acc = None;
        let epochs = |segments: Vec<Vec<(f64, f64)>>| -> Vec<Vec<f64>> {
            let epoch_of = |segment: Vec<(f64, f64)>| segment.iter().map(|p| p.0).collect();
            segments.into_iter().map(epoch_of).collect()
        };
        let test = curve_segments(&run, Panel::Accuracy, 1);
        assert_eq!(epochs(test), [vec![1.0, 2.0], vec![5.0]]);
        let train = curve_segments(&run, Panel::Accuracy, 0);
        assert_eq!(epochs(train), [vec![2.0, 3.0, 4.0, 5.0]]);
        assert_eq!(curve_segments(&run, Panel::Loss, 1).len(), 1);
    }

    /// A legend entry keeps its curve's name and figures whole and within the panel,
    /// cutting a long run name at its start; a short one is left as it is.
    #[test]
    fn a_legend_entry_cuts_a_long_run_name_to_fit() {
        let figures = "test (best 58.90%, epoch 100)";
        assert_eq!(legend_label("seed0", figures), format!("seed0 {figures}"));
        let long = "runs/cifar100/a_really_quite_long_run_folder_name_for_the_strong_recipe_seed0";
        let label = legend_label(long, figures);
        assert!(
            text_width(&label, LEGEND_FONT) <= LEGEND_TEXT_WIDTH,
            "{label}"
        );
        assert!(label.starts_with('…') && label.ends_with(&format!("_seed0 {figures}")));
    }

    /// One run whose train, test and EMA accuracies (fractions) rise from `first` to
    /// `last` over five epochs.
    fn run(first: f64, last: f64) -> RunMetrics {
        let epochs = (0..5)
            .map(|i| {
                let acc = Some(first + (last - first) * i as f64 / 4.0);
                MetricsRow {
                    epoch: (i + 1) as f64,
                    train_loss: Some(1.0),
                    train_acc: acc,
                    test_loss: Some(1.0),
                    test_acc: acc,
                    ema_test_loss: Some(1.0),
                    ema_test_acc: acc,
                }
            })
            .collect();
        RunMetrics {
            label: "run".into(),
            epochs,
        }
    }

    #[test]
    fn the_accuracy_legend_has_a_band_of_its_own_below_or_above_the_curves() {
        // Rising to 90% from 30%: the band lies below the curves, the legend lower right.
        let axes = panel_axes(&[run(0.30, 0.90)], Panel::Accuracy);
        assert!(matches!(axes.legend_at, SeriesLabelPosition::LowerRight));
        assert!(axes.y.0 < 28.0 && axes.y.1 >= 92.0, "{:?}", axes.y);
        // A short run near 0% leaves no room below: the band goes above, and the legend
        // upper right, where it used to cover the curves' right end.
        let axes = panel_axes(&[run(0.0, 0.15)], Panel::Accuracy);
        assert!(matches!(axes.legend_at, SeriesLabelPosition::UpperRight));
        let (bottom, top) = axes.y;
        assert_eq!(bottom, 0.0);
        // The legend's three rows take (3 * 19 + 16) / 400 of the height, above 17%.
        let band = (top - bottom) * (3.0 * 19.0 + 16.0) / 400.0;
        assert!(top - band >= 17.0, "{:?}", axes.y);
        // Curves from 0% to near 100% have room for the band nowhere: as before.
        let axes = panel_axes(&[run(0.0, 0.97)], Panel::Accuracy);
        assert!(matches!(axes.legend_at, SeriesLabelPosition::LowerRight));
    }

    /// The loss axis stops at 0, below which no cross-entropy goes: losses near 0 get
    /// their margin above them only.
    #[test]
    fn the_loss_axis_does_not_reach_below_zero() {
        let mut near_zero = run(0.5, 0.99);
        for (i, row) in near_zero.epochs.iter_mut().enumerate() {
            let loss = 0.5 / (i + 1) as f64 - 0.09;
            (row.train_loss, row.test_loss, row.ema_test_loss) =
                (Some(loss), Some(loss + 0.01), None);
        }
        let axes = panel_axes(&[near_zero], Panel::Loss);
        assert_eq!(axes.y.0, 0.0, "{:?}", axes.y);
        assert!(axes.y.1 > 0.42, "{:?}", axes.y);
    }

    /// Each panel draws its own metrics in the order of the curves' names: train, test,
    /// EMA test (accuracies in percent). Every value of the row differs, so a column read
    /// for another shows.
    #[test]
    fn each_panel_draws_the_train_test_and_ema_test_values_of_its_metric() {
        let row = MetricsRow {
            epoch: 3.0,
            train_loss: Some(1.25),
            train_acc: Some(0.5),
            test_loss: Some(1.5),
            test_acc: Some(0.25),
            ema_test_loss: Some(1.75),
            ema_test_acc: Some(0.75),
        };
        assert_eq!(CURVES.map(|(name, _)| name), ["train", "test", "EMA test"]);
        assert_eq!(
            Panel::Loss.values(&row),
            [Some(1.25), Some(1.5), Some(1.75)]
        );
        assert_eq!(
            Panel::Accuracy.values(&row),
            [Some(50.0), Some(25.0), Some(75.0)]
        );
    }
}
