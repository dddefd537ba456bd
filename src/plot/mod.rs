//! Pictures: loss and accuracy curves from `metrics.csv` (`vit plot`, `vit train --plot`)
//! and the confusion matrix as a heat map (`vit eval --plot`).
//!
//! Drawing goes through `plotters`; PNGs are rendered into an RGB buffer and encoded with
//! the `image` crate, SVGs are written as text. Text uses DejaVu Sans, bundled in
//! `assets/` and registered from bytes, so no system font lookup is ever needed. Every
//! file is written atomically, so a viewer refreshing `curves.png` during training never
//! sees half a picture.

use crate::cli::PlotArgs;
use crate::fsutil::{same_file, write_atomic};
use anyhow::{anyhow, bail, ensure, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;
use std::path::{Path, PathBuf};
use std::sync::Once;
use tch::{Kind, Tensor};

/// The font family every picture uses (DejaVu Sans, registered on first use).
pub const FONT: &str = "sans-serif";

static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the bundled font with plotters (once per process).
pub fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_err() {
            panic!("the bundled assets/DejaVuSans.ttf is not a valid font");
        }
    });
}

/// Width and height of `curves.png` (and of its SVG), in pixels.
pub const CURVES_SIZE: (u32, u32) = (1200, 500);

/// Ten distinguishable colours (Tableau 10), cycled over runs.
pub const PALETTE: [RGBColor; 10] = [
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

/// Runs `draw` on a `width` x `height` bitmap and writes it as a PNG, atomically.
pub fn render_png<F>(path: &Path, size: (u32, u32), draw: F) -> Result<()>
where
    F: FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
{
    let buffer = render_rgb(path, size, draw)?;
    write_rgb_png(path, size.0, size.1, &buffer)
}

/// Runs `draw` on a white `width` x `height` bitmap and returns its RGB8 pixels, row by
/// row (for pictures pasted in before `write_rgb_png`); `path` names it in errors.
pub fn render_rgb<F>(path: &Path, (width, height): (u32, u32), draw: F) -> Result<Vec<u8>>
where
    F: FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
{
    register_font();
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        draw(&root)?;
        root.present()
            .map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    }
    Ok(buffer)
}

/// Encodes an RGB8 buffer as PNG and writes it atomically.
pub fn write_rgb_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut bytes,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Adaptive,
    )
    .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
    .with_context(|| format!("encoding {}", path.display()))?;
    create_parent(path)?;
    write_atomic(path, &bytes)
}

/// Runs `draw` on a `width` x `height` SVG canvas and writes the file atomically.
pub fn render_svg<F>(path: &Path, size: (u32, u32), draw: F) -> Result<()>
where
    F: FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
{
    register_font();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(&root)?;
        root.present()
            .map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    }
    create_parent(path)?;
    write_atomic(path, svg.as_bytes())
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Turns a plotters error (whose type depends on the backend) into an `anyhow` error.
fn drawing<T, E: std::fmt::Display>(result: std::result::Result<T, E>) -> Result<T> {
    result.map_err(|e| anyhow!("drawing failed: {e}"))
}

// ---------------------------------------------------------------------------------------
// Curves
// ---------------------------------------------------------------------------------------

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
pub fn metrics_path(run: &Path) -> PathBuf {
    if run.is_file() {
        run.to_path_buf()
    } else {
        run.join("metrics.csv")
    }
}

/// Reads a `metrics.csv` written by `vit train` (columns are found by name; extra ones are
/// ignored). A cell that is not a number (edited in a spreadsheet, say) is left out of the
/// curves with a note naming it; a row without a numeric epoch is an error.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header = reader.headers().cloned().unwrap_or_default();
    let column = |name: &str| header.iter().position(|column| column == name);
    ensure!(
        column("epoch").is_some(),
        "{} is not a metrics.csv of `vit train` (it has no epoch column); pass run folders",
        path.display()
    );
    let mut not_numbers = Vec::new();
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: row {}", path.display(), i + 1))?;
        let mut cell = |name: &str| {
            let text = column(name).and_then(|c| record.get(c))?.trim();
            let value = text.parse::<f64>().ok();
            if value.is_none() && !text.is_empty() {
                not_numbers.push(format!("row {} {name} {text:?}", i + 1));
            }
            value
        };
        let epoch = cell("epoch")
            .with_context(|| format!("{}: row {} has no epoch number", path.display(), i + 1))?;
        rows.push(MetricsRow {
            epoch,
            train_loss: cell("train_loss"),
            train_acc: cell("train_acc"),
            test_loss: cell("test_loss"),
            test_acc: cell("test_acc"),
            ema_test_loss: cell("ema_test_loss"),
            ema_test_acc: cell("ema_test_acc"),
        });
    }
    if !not_numbers.is_empty() {
        eprintln!(
            "note: {}: left out of the curves, not numbers: {}",
            path.display(),
            not_numbers.join(", ")
        );
    }
    Ok(rows)
}

/// Refuses an `-o` that is not a `.png` path: the pictures are PNG (and the curves' SVG
/// goes beside it, named after it).
pub fn ensure_png_output(output: &Path) -> Result<()> {
    let is_png = output
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("png"));
    ensure!(
        is_png,
        "-o {} does not end in .png: the picture is written as PNG; name it NAME.png",
        output.display()
    );
    Ok(())
}

/// Reads every run's metrics; labels are folder names, or the paths as given when names
/// clash. A run given twice (in any spelling) is drawn once.
pub fn read_runs<P: AsRef<Path>>(runs: &[P]) -> Result<Vec<RunMetrics>> {
    ensure!(!runs.is_empty(), "no run folders given");
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
    let names: Vec<String> = distinct.iter().map(|run| folder_name(run)).collect();
    let (mut read, mut left_out) = (Vec::new(), Vec::new());
    for (run, name) in distinct.iter().zip(&names) {
        let path = metrics_path(run);
        let epochs = read_metrics(&path)?;
        if epochs.is_empty() {
            // A run still in its first epoch: the others are drawn without it.
            left_out.push(path.display().to_string());
            continue;
        }
        let unique = names.iter().filter(|n| *n == name).count() == 1;
        read.push(RunMetrics {
            label: if unique {
                name.clone()
            } else {
                run.display().to_string()
            },
            epochs,
        });
    }
    ensure!(
        !read.is_empty(),
        "{} has no finished epochs yet: nothing to draw",
        left_out.join(", ")
    );
    if !left_out.is_empty() {
        eprintln!(
            "note: left out, with no finished epochs yet: {}",
            left_out.join(", ")
        );
    }
    Ok(read)
}

/// The name of a run's folder (of the file's folder, for a metrics file).
fn folder_name(run: &Path) -> String {
    let dir = if run.is_file() {
        run.parent().unwrap_or(run)
    } else {
        run
    };
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// `vit plot RUN_DIR... [-o curves.png]`: the curves as PNG, with an SVG beside it.
pub fn run(args: &PlotArgs) -> Result<()> {
    ensure_png_output(&args.output)?;
    curves(&args.runs, &args.output)?;
    println!(
        "wrote {} and {}",
        args.output.display(),
        args.output.with_extension("svg").display()
    );
    Ok(())
}

/// Loss (left) and accuracy (right) against epoch for every run, train solid and test
/// dashed, one colour per run. Writes `output` (PNG, [`CURVES_SIZE`]) and the same picture
/// as SVG beside it (same stem, `.svg`).
pub fn curves<P: AsRef<Path>>(runs: &[P], output: &Path) -> Result<()> {
    let runs = read_runs(runs)?;
    render_png(output, CURVES_SIZE, |root| draw_curves(root, &runs))?;
    render_svg(&output.with_extension("svg"), CURVES_SIZE, |root| {
        draw_curves(root, &runs)
    })
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
pub fn draw_curves<DB: DrawingBackend>(
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
    let (x0, x1) = if first.is_finite() {
        (first.min(1.0).min(last - 1.0), last)
    } else {
        (0.0, 1.0)
    };
    let values: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.epochs.iter().flat_map(|e| panel.values(e)))
        .flatten()
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // The legend gets a band of the panel's height to itself (above the losses, below the
    // accuracies), so that it never hides a curve: its rows, over the plot's ~400 px.
    let legend_rows = runs
        .iter()
        .flat_map(|run| (0..CURVES.len()).map(move |curve| (run, curve)))
        .filter(|(run, curve)| {
            run.epochs
                .iter()
                .any(|row| panel.values(row)[*curve].is_some())
        })
        .count();
    let legend_share = ((legend_rows as f64 * 19.0 + 16.0) / 400.0).min(0.6);
    let room = |span: f64| span * legend_share / (1.0 - legend_share);
    let (title, y_desc, (y0, y1), legend_at) = match panel {
        Panel::Loss => {
            let range = if lo.is_finite() {
                let margin = ((hi - lo) * 0.06).max(0.05);
                let (bottom, top) = ((lo - margin).max(0.0), hi + margin);
                (bottom, top + room(top - bottom))
            } else {
                (0.0, 1.0)
            };
            (
                "Loss",
                // Train is the objective optimised (label-smoothed, on mixed targets with
                // MixUp/CutMix), so it can sit above test where the model does not overfit.
                "cross-entropy (train: the training objective)",
                range,
                SeriesLabelPosition::UpperRight,
            )
        }
        Panel::Accuracy => {
            let (bottom, top) = if lo.is_finite() {
                let top = (((hi + 2.0) / 10.0).ceil() * 10.0).min(100.0);
                let bottom = lo - 2.0 - room(top - (lo - 2.0));
                (((bottom / 10.0).floor() * 10.0).max(0.0), top)
            } else {
                (0.0, 100.0)
            };
            (
                "Accuracy",
                "accuracy (%)",
                (bottom, top.max(bottom + 10.0)),
                SeriesLabelPosition::LowerRight,
            )
        }
    };

    let decimals = match panel {
        Panel::Loss if y1 - y0 < 1.0 => 2,
        Panel::Loss => 1,
        Panel::Accuracy => 0,
    };
    PanelAxes {
        title,
        y_desc,
        x: (x0, x1),
        y: (y0, y1),
        decimals,
        legend_at,
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    runs: &[RunMetrics],
    panel: Panel,
) -> Result<()> {
    let axes = panel_axes(runs, panel);
    let ((x0, x1), (y0, y1), decimals) = (axes.x, axes.y, axes.decimals);
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
            .x_labels(((x1 - x0).round() as usize + 1).clamp(2, 11))
            .y_desc(axes.y_desc)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .x_label_formatter(&|x| {
                if x.fract() == 0.0 {
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

    for (run_index, run) in runs.iter().enumerate() {
        let colour = PALETTE[run_index % PALETTE.len()];
        for (curve, (name, line)) in CURVES.into_iter().enumerate() {
            let points: Vec<(f64, f64)> = run
                .epochs
                .iter()
                .filter_map(|row| panel.values(row)[curve].map(|value| (row.epoch, value)))
                .collect();
            if points.is_empty() {
                continue;
            }
            let label = format!("{} {name}", run.label);
            let style = colour.stroke_width(2);
            let series = match line {
                Line::Solid => drawing(chart.draw_series(LineSeries::new(points.clone(), style)))?,
                Line::Dashed => {
                    drawing(chart.draw_series(DashedLineSeries::new(points.clone(), 8, 5, style)))?
                }
                Line::Dotted => {
                    drawing(chart.draw_series(DashedLineSeries::new(points.clone(), 3, 5, style)))?
                }
            };
            series.label(label).legend(move |(x, y)| {
                let style = colour.stroke_width(2);
                let [first, second, third] = line
                    .legend_strokes()
                    .map(|(start, end)| PathElement::new(vec![(start, 0), (end, 0)], style));
                EmptyElement::at((x, y)) + first + second + third
            });
            // Markers, so that a short run (a single epoch, say) still shows.
            if points.len() > 30 {
                continue;
            }
            let marker = match line {
                Line::Solid => colour.filled(),
                Line::Dashed | Line::Dotted => colour.stroke_width(1),
            };
            drawing(chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, marker))))?;
        }
    }
    drawing(
        chart
            .configure_series_labels()
            .position(axes.legend_at)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw(),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Confusion matrix
// ---------------------------------------------------------------------------------------

/// Where the confusion-matrix picture puts things, in pixels. The margins fit the longest
/// class name (a dataset of short names gets its axis titles close to the matrix), and
/// the picture is at least as wide as its title.
pub struct ConfusionLayout {
    /// Side of one cell: large for a few classes, 8 px for 100.
    cell: u32,
    /// Left and top edge of the matrix.
    left: u32,
    top: u32,
    /// The picture's width and height.
    pub size: (u32, u32),
    num_classes: usize,
    /// The classes named on the axes, with their names as drawn.
    ticks: Vec<(usize, String)>,
    tick_font: f64,
    /// The longest name's length in pixels (across, and down), at most [`MAX_TICK`].
    names_room: u32,
}

/// Room for an axis title (16 pt) and the gaps around it.
const AXIS_TITLE_ROOM: u32 = 40;
/// A class name longer than this, in pixels, is shortened with "…".
const MAX_TICK: u32 = 300;
/// Right of the matrix: the colour bar and its percentages.
const COLOUR_BAR_ROOM: u32 = 110;
const TITLE_FONT: f64 = 20.0;

impl ConfusionLayout {
    pub fn new(classes: &[String]) -> Self {
        register_font();
        let num_classes = classes.len().max(1);
        let cell = (720 / num_classes as u32).clamp(8, 72);
        // Every class up to 30 classes, else every `tick_step`-th, with its index.
        let tick_step = num_classes.div_ceil(30);
        let tick_font = if num_classes <= 30 { 13.0 } else { 11.0 };
        let ticks: Vec<(usize, String)> = (0..classes.len())
            .step_by(tick_step)
            .map(|class| {
                let name = match tick_step {
                    1 => classes[class].clone(),
                    _ => format!("{class} {}", classes[class]),
                };
                (class, shortened(name, tick_font))
            })
            .collect();
        let names_room = ticks
            .iter()
            .map(|(_, name)| text_width(name, tick_font))
            .max()
            .unwrap_or(0);
        let mut layout = Self {
            cell,
            left: 0,
            top: 60,
            size: (0, 0),
            num_classes,
            ticks,
            tick_font,
            names_room,
        };
        let side = layout.side();
        let matrix_width = AXIS_TITLE_ROOM + layout.names_room + side + COLOUR_BAR_ROOM;
        // The widest title up to 100,000 test images.
        let title = text_width(&confusion_title(99_999, 100_000), TITLE_FONT);
        let width = matrix_width.max(title + 40);
        // Centred under a title wider than itself.
        layout.left = (width - matrix_width) / 2 + AXIS_TITLE_ROOM + layout.names_room;
        // Below: the rotated names, then the axis title (and the colour bar's caption).
        let bottom = (AXIS_TITLE_ROOM + layout.names_room).max(60);
        layout.size = (width, layout.top + side + bottom);
        layout
    }

    /// The matrix's side.
    pub fn side(&self) -> u32 {
        self.cell * self.num_classes as u32
    }

    /// Top-left pixel of the cell of true class `row` predicted as `col`.
    pub fn cell_origin(&self, row: usize, col: usize) -> (u32, u32) {
        (
            self.left + col as u32 * self.cell,
            self.top + row as u32 * self.cell,
        )
    }
}

/// `name`, shortened with "…" to [`MAX_TICK`] pixels at `font` points.
fn shortened(mut name: String, font: f64) -> String {
    if text_width(&name, font) <= MAX_TICK {
        return name;
    }
    loop {
        name.pop();
        let shortened = format!("{name}…");
        if name.is_empty() || text_width(&shortened, font) <= MAX_TICK {
            return shortened;
        }
    }
}

fn confusion_title(correct: i64, total: i64) -> String {
    if total > 0 {
        format!(
            "Confusion matrix: {:.2}% of {total} test images correct",
            100.0 * correct as f64 / total as f64
        )
    } else {
        "Confusion matrix (no images)".to_string()
    }
}

/// The width of `text` in the pictures' font at `size` points, in pixels.
fn text_width(text: &str, size: f64) -> u32 {
    (FONT, size)
        .into_font()
        .box_size(text)
        .map_or((text.len() as f64 * size * 0.6) as u32, |(width, _)| width)
}

/// Matplotlib's "Blues" colour map at `t` in [0, 1].
pub fn blues(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (247, 251, 255),
        (222, 235, 247),
        (198, 219, 239),
        (158, 202, 225),
        (107, 174, 214),
        (66, 146, 198),
        (33, 113, 181),
        (8, 81, 156),
        (8, 48, 107),
    ];
    interpolate(&STOPS, t)
}

/// Matplotlib's "inferno" colour map at `t` in [0, 1].
pub fn inferno(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (0, 0, 4),
        (31, 12, 72),
        (85, 15, 109),
        (136, 34, 106),
        (186, 54, 85),
        (227, 89, 51),
        (249, 140, 10),
        (249, 201, 50),
        (252, 255, 164),
    ];
    interpolate(&STOPS, t)
}

fn interpolate(stops: &[(u8, u8, u8)], t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (stops.len() - 1) as f64;
    let i = (x.floor() as usize).min(stops.len() - 2);
    let f = x - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (stops[i], stops[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Draws the confusion matrix (int64 [K, K], rows = true class, columns = predicted) as a
/// heat map of row-normalised fractions (per-class recall on the diagonal), with class
/// names on both axes, counts in the cells when K <= 20, and a colour bar. Writes a PNG of
/// [`ConfusionLayout`]'s size.
pub fn confusion_matrix(confusion: &Tensor, classes: &[String], output: &Path) -> Result<()> {
    let size = confusion.size();
    ensure!(
        size.len() == 2 && size[0] == size[1],
        "the confusion matrix must be square [K, K], got {size:?}"
    );
    let num_classes = size[0] as usize;
    ensure!(num_classes > 0, "the confusion matrix is empty");
    ensure!(
        classes.len() == num_classes,
        "{} class names for a {num_classes}x{num_classes} confusion matrix",
        classes.len()
    );
    let counts: Vec<i64> = Vec::<i64>::try_from(
        confusion
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Int64)
            .reshape([-1]),
    )?;
    if counts.iter().any(|&n| n < 0) {
        bail!("the confusion matrix has negative counts");
    }
    let layout = ConfusionLayout::new(classes);
    render_png(output, layout.size, |root| {
        draw_confusion(root, &layout, &counts)
    })
}

fn draw_confusion<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    layout: &ConfusionLayout,
    counts: &[i64],
) -> Result<()> {
    let num_classes = layout.num_classes;
    let top = layout.top as i32;
    drawing(root.fill(&WHITE))?;

    let total: i64 = counts.iter().sum();
    let correct: i64 = (0..num_classes).map(|i| counts[i * num_classes + i]).sum();
    let title = confusion_title(correct, total);
    let (width, _) = root.dim_in_pixel();
    drawing(root.draw(&Text::new(
        title,
        (width as i32 / 2, top / 2),
        TextStyle::from((FONT, TITLE_FONT).into_font()).pos(Pos::new(HPos::Center, VPos::Center)),
    )))?;

    draw_cells(root, layout, counts)?;
    draw_class_labels(root, layout)?;
    draw_colour_bar(root, layout)
}

/// Cell side, matrix side, left and top edge of the matrix, as drawing coordinates.
fn geometry(layout: &ConfusionLayout) -> (i32, i32, i32, i32) {
    let pixels = |value: u32| value as i32;
    (
        pixels(layout.cell),
        pixels(layout.side()),
        pixels(layout.left),
        pixels(layout.top),
    )
}

fn draw_cells<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    layout: &ConfusionLayout,
    counts: &[i64],
) -> Result<()> {
    let num_classes = layout.num_classes;
    let (cell, side, left, top) = geometry(layout);
    // Cells, shaded by the fraction of the true class (row) predicted as each column.
    let show_counts = num_classes <= 20;
    let count_font = (cell as f64 / 3.2).clamp(8.0, 16.0);
    for i in 0..num_classes {
        let row = &counts[i * num_classes..(i + 1) * num_classes];
        let row_total: i64 = row.iter().sum();
        for (j, &n) in row.iter().enumerate() {
            let fraction = if row_total > 0 {
                n as f64 / row_total as f64
            } else {
                0.0
            };
            let (x, y) = layout.cell_origin(i, j);
            let (x, y) = (x as i32, y as i32);
            drawing(root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                blues(fraction).filled(),
            )))?;
            if show_counts && n > 0 {
                let colour = if fraction > 0.5 { WHITE } else { BLACK };
                drawing(
                    root.draw(&Text::new(
                        n.to_string(),
                        (x + cell / 2, y + cell / 2),
                        TextStyle::from((FONT, count_font).into_font())
                            .color(&colour)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    )),
                )?;
            }
        }
    }
    drawing(root.draw(&Rectangle::new(
        [(left, top), (left + side, top + side)],
        RGBColor(120, 120, 120).stroke_width(1),
    )))?;
    Ok(())
}

/// Class names left of the rows (true) and below the columns (predicted), and the axis
/// titles.
fn draw_class_labels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    layout: &ConfusionLayout,
) -> Result<()> {
    let (cell, side, left, top) = geometry(layout);
    let tick_font = layout.tick_font;
    for (class, tick) in &layout.ticks {
        let centre = *class as i32 * cell + cell / 2;
        // True class, left of the row.
        drawing(root.draw(&Text::new(
            tick.as_str(),
            (left - 6, top + centre),
            TextStyle::from((FONT, tick_font).into_font()).pos(Pos::new(HPos::Right, VPos::Center)),
        )))?;
        // Predicted class, below the column, reading downwards.
        drawing(
            root.draw(&Text::new(
                tick.as_str(),
                (left + centre, top + side + 6),
                TextStyle::from(
                    (FONT, tick_font)
                        .into_font()
                        .transform(FontTransform::Rotate90),
                )
                .pos(Pos::new(HPos::Left, VPos::Center)),
            )),
        )?;
    }
    // The axis titles, in the room kept for them beyond the longest name.
    let beyond_names = 6 + layout.names_room as i32 + (AXIS_TITLE_ROOM as i32 - 6) / 2;
    drawing(root.draw(&Text::new(
        "predicted class",
        (left + side / 2, top + side + beyond_names),
        TextStyle::from((FONT, 16).into_font()).pos(Pos::new(HPos::Center, VPos::Center)),
    )))?;
    drawing(
        root.draw(&Text::new(
            "true class",
            (left - beyond_names, top + side / 2),
            TextStyle::from((FONT, 16).into_font().transform(FontTransform::Rotate270))
                .pos(Pos::new(HPos::Center, VPos::Center)),
        )),
    )?;
    Ok(())
}

fn draw_colour_bar<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    layout: &ConfusionLayout,
) -> Result<()> {
    let (_, side, left, top) = geometry(layout);
    // Colour bar: fraction of the true class, 0 at the bottom to 1 at the top.
    let bar_x = left + side + 20;
    let bar_w = 18;
    for y in 0..side {
        let t = 1.0 - y as f64 / (side - 1).max(1) as f64;
        drawing(root.draw(&Rectangle::new(
            [(bar_x, top + y), (bar_x + bar_w, top + y + 1)],
            blues(t).filled(),
        )))?;
    }
    drawing(root.draw(&Rectangle::new(
        [(bar_x, top), (bar_x + bar_w, top + side)],
        RGBColor(120, 120, 120).stroke_width(1),
    )))?;
    for (t, label) in [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")] {
        let y = top + ((1.0 - t) * (side - 1) as f64).round() as i32;
        drawing(root.draw(&Text::new(
            label,
            (bar_x + bar_w + 5, y),
            TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        )))?;
    }
    drawing(root.draw(&Text::new(
        "of true class",
        (bar_x + bar_w / 2 + 30, top + side + 16),
        TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Center)),
    )))?;
    Ok(())
}
