//! The confusion matrix as a heat map (`vit eval --plot`).

use super::{
    blues, draw_text, drawing, fit_text, register_font, render_png, text_style, text_width, Keep,
};
use crate::listing::noun_for;
use anyhow::{bail, ensure, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::HPos;
use plotters::style::FontTransform;
use std::path::Path;
use tch::{Kind, Tensor};

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
                (class, fit_text(&name, tick_font, MAX_TICK, Keep::Start))
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

fn confusion_title(correct: i64, total: i64) -> String {
    if total > 0 {
        format!(
            "Confusion matrix: {:.2}% of {total} test {} correct",
            100.0 * correct as f64 / total as f64,
            noun_for(total, "image")
        )
    } else {
        "Confusion matrix (no images)".to_string()
    }
}

/// Draws the confusion matrix (int64 [num_classes, num_classes], rows = true class,
/// columns = predicted) as a heat map of row-normalised fractions (per-class recall on the
/// diagonal), with class names on both axes, counts in the cells for up to 20 classes, and
/// a colour bar. Writes a PNG of [`ConfusionLayout`]'s size.
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
    draw_text(
        root,
        &title,
        (width as i32 / 2, top / 2),
        text_style(TITLE_FONT, FontTransform::None, HPos::Center),
    )?;

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
                draw_text(
                    root,
                    &n.to_string(),
                    (x + cell / 2, y + cell / 2),
                    text_style(count_font, FontTransform::None, HPos::Center).color(&colour),
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
        draw_text(
            root,
            tick,
            (left - 6, top + centre),
            text_style(tick_font, FontTransform::None, HPos::Right),
        )?;
        // Predicted class, below the column, reading downwards.
        draw_text(
            root,
            tick,
            (left + centre, top + side + 6),
            text_style(tick_font, FontTransform::Rotate90, HPos::Left),
        )?;
    }
    // The axis titles, in the room kept for them beyond the longest name.
    let beyond_names = 6 + layout.names_room as i32 + (AXIS_TITLE_ROOM as i32 - 6) / 2;
    draw_text(
        root,
        "predicted class",
        (left + side / 2, top + side + beyond_names),
        text_style(16.0, FontTransform::None, HPos::Center),
    )?;
    draw_text(
        root,
        "true class",
        (left - beyond_names, top + side / 2),
        text_style(16.0, FontTransform::Rotate270, HPos::Center),
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
        draw_text(
            root,
            label,
            (bar_x + bar_w + 5, y),
            text_style(13.0, FontTransform::None, HPos::Left),
        )?;
    }
    draw_text(
        root,
        "of true class",
        (bar_x + bar_w / 2 + 30, top + side + 16),
        text_style(12.0, FontTransform::None, HPos::Center),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temp_dir::TempDir;

    /// Three classes: 60 of class a's 100 images right (40 taken for c), all 100 of b's,
    /// 190 of c's 200 (10 taken for a). 350 of 400 right, 87.5%; the first row alone
    /// (what a slip in the diagonal's index would add up) holds 100.
    const COUNTS: [i64; 9] = [60, 0, 40, 0, 100, 0, 10, 0, 190];

    fn classes() -> Vec<String> {
        ["a", "b", "c"].map(String::from).to_vec()
    }

    /// The title gives the diagonal's share of all the images, in percent.
    #[test]
    fn the_title_gives_the_share_of_all_images_on_the_diagonal() {
        let layout = ConfusionLayout::new(&classes());
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, layout.size).into_drawing_area();
            draw_confusion(&root, &layout, &COUNTS).unwrap();
            root.present().unwrap();
        }
        assert!(
            svg.contains("Confusion matrix: 87.50% of 400 test images correct"),
            "{svg}"
        );
        assert_eq!(
            confusion_title(1, 1),
            "Confusion matrix: 100.00% of 1 test image correct"
        );
        assert_eq!(confusion_title(0, 0), "Confusion matrix (no images)");
    }

    /// The picture of [`COUNTS`], as `confusion_matrix` writes it.
    fn picture() -> (ConfusionLayout, image::RgbImage) {
        let dir = TempDir::new("confusion");
        let output = dir.join("confusion.png");
        let confusion = Tensor::from_slice(&COUNTS).view([3, 3]);
        confusion_matrix(&confusion, &classes(), &output).unwrap();
        let picture = image::open(&output).unwrap().into_rgb8();
        (ConfusionLayout::new(&classes()), picture)
    }

    /// The colour bar runs from 0% (white) at the bottom to 100% (dark blue) at the top,
    /// as its labels say: upside down, it would read every cell's share the wrong way.
    #[test]
    fn the_colour_bar_is_darkest_at_the_top() {
        let (layout, picture) = picture();
        let (_, side, left, top) = geometry(&layout);
        let x = (left + side + 20 + 9) as u32;
        let (t, u) = (1.0 - 1.0 / (side - 1) as f64, 1.0 / (side - 1) as f64);
        let colour = |c: RGBColor| [c.0, c.1, c.2];
        assert_eq!(picture.get_pixel(x, top as u32 + 1).0, colour(blues(t)));
        assert_eq!(
            picture.get_pixel(x, (top + side - 2) as u32).0,
            colour(blues(u))
        );
    }

    /// A count is written in white on a dark cell (over half its row) and in black on a
    /// light one, so that it can be read on either.
    #[test]
    fn counts_are_white_on_dark_cells_and_black_on_light_ones() {
        let (layout, picture) = picture();
        let cell_pixels = |row, col| {
            let (x, y) = layout.cell_origin(row, col);
            let cell = layout.cell;
            (y + 2..y + cell - 2)
                .flat_map(move |y| (x + 2..x + cell - 2).map(move |x| (x, y)))
                .map(|(x, y)| picture.get_pixel(x, y).0)
                .collect::<Vec<_>>()
        };
        let light = |p: &[u8; 3]| p.iter().all(|&c| c >= 230);
        let dark = |p: &[u8; 3]| p.iter().all(|&c| c <= 60);
        // b's 100 of 100, on the darkest blue: white digits.
        assert!(
            cell_pixels(1, 1).iter().any(light),
            "no white count on cell (1, 1)"
        );
        // a's 40 taken for c, 40% of the row, on a light blue: black digits.
        assert!(
            cell_pixels(0, 2).iter().any(dark),
            "no black count on cell (0, 2)"
        );
    }

    /// A matrix with a negative count is no count of images (a damaged file, or
    /// differences of two matrices): refused, and nothing is drawn.
    #[test]
    fn negative_counts_are_refused() {
        let dir = TempDir::new("negative-counts");
        let output = dir.join("confusion.png");
        let confusion = Tensor::from_slice(&[5i64, -1, 0, 3]).view([2, 2]);
        let classes = ["a", "b"].map(String::from);
        let error = confusion_matrix(&confusion, &classes, &output).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the confusion matrix has negative counts"
        );
        assert!(!output.exists());
    }
}
