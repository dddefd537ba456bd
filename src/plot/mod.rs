//! Pictures: loss and accuracy curves from `metrics.csv` (`vit plot`, `vit train --plot`),
//! the confusion matrix as a heat map (`vit eval --plot`) and the attention maps over an
//! image (`vit attention`).
//!
//! Drawing goes through `plotters`; PNGs are rendered into an RGB buffer (on
//! `bitmap::Bitmap`, which draws their text itself) and encoded with the `png` crate
//! (marked as vit's, so that only vit's own pictures are ever replaced), SVGs are written
//! as text. Text uses DejaVu Sans, bundled in `assets/` and registered from bytes, so no
//! system font lookup is ever needed. Every file is written atomically, so a viewer
//! refreshing `curves.png` during training never sees half a picture.
//!
//! Each picture has its own file (`curves`, `confusion`, `attention`); this one holds what
//! they share: the font, rendering, the colour maps.

mod attention;
mod bitmap;
mod confusion;
mod curves;

pub use attention::{attention_figure, attention_figure_size};
pub use confusion::{confusion_matrix, ConfusionLayout};
pub(crate) use curves::ensure_curves_replaceable;
pub use curves::{curves, read_metrics, read_runs, run, MetricsRow, RunMetrics, CURVES_SIZE};

use crate::fsutil::{create_folder, write_atomic};
use anyhow::{anyhow, ensure, Context, Result};
use bitmap::Bitmap;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::sync::Once;

/// The font family every picture uses (DejaVu Sans, registered on first use).
const FONT: &str = "sans-serif";

static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Registers the bundled font with plotters (once per process).
fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_err() {
            panic!("the bundled assets/DejaVuSans.ttf is not a valid font");
        }
    });
}

/// Runs `draw` on a bitmap of `size` (width, height) and writes it as a PNG, atomically.
fn render_png<F>(path: &Path, size: (u32, u32), draw: F) -> Result<()>
where
    F: FnOnce(&DrawingArea<Bitmap<'_>, Shift>) -> Result<()>,
{
    let buffer = render_rgb(path, size, draw)?;
    write_rgb_png(path, size.0, size.1, &buffer)
}

/// Runs `draw` on a white `width` x `height` bitmap and returns its RGB8 pixels, row by
/// row (for pictures pasted in before `write_rgb_png`); `path` names it in errors.
pub(crate) fn render_rgb<F>(path: &Path, (width, height): (u32, u32), draw: F) -> Result<Vec<u8>>
where
    F: FnOnce(&DrawingArea<Bitmap<'_>, Shift>) -> Result<()>,
{
    register_font();
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let root = Bitmap::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        draw(&root).with_context(|| format!("drawing {}", path.display()))?;
        root.present()
            .map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    }
    Ok(buffer)
}

/// The `Software` text of every PNG vit draws: [`ensure_replaceable_png`] knows vit's own
/// pictures by it.
const PNG_SOFTWARE: &str = "vit-tch";

/// How `vit plot` and `vit attention` write a picture elsewhere than over a file in the way.
const OTHER_PNG: &str = "name another PNG with -o";

/// Encodes an RGB8 buffer as PNG, marked as vit's ([`PNG_SOFTWARE`]), and writes it
/// atomically.
pub(crate) fn write_rgb_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    let mut bytes = Vec::new();
    let encode = |bytes: &mut Vec<u8>| -> std::result::Result<(), png::EncodingError> {
        let mut encoder = png::Encoder::new(bytes, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::High);
        encoder.set_filter(png::Filter::Adaptive);
        encoder.add_text_chunk("Software".into(), PNG_SOFTWARE.into())?;
        let mut writer = encoder.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()
    };
    encode(&mut bytes).with_context(|| format!("encoding {}", path.display()))?;
    create_parent(path)?;
    write_atomic(path, &bytes)
}

/// A PNG at `png` is replaced only when it is not there or is a picture vit drew: refuses
/// to replace a PNG of the user's (or one vit drew before its pictures were marked).
/// `instead` says how to write the picture elsewhere ("name another PNG with -o").
pub(crate) fn ensure_replaceable_png(png: &Path, instead: &str) -> Result<()> {
    let what = "a picture vit drew (vit marks its PNGs; those of versions before 2026-11-30 \
                have no mark)";
    let replaced_by = "vit would replace it with its picture";
    ensure_replaceable(png, what, replaced_by, instead, drawn_by_vit)
}

/// Whether the file at `path` is a picture vit drew (it bears [`PNG_SOFTWARE`]'s mark).
pub(crate) fn is_drawn_by_vit(path: &Path) -> bool {
    std::fs::File::open(path).is_ok_and(|file| drawn_by_vit(file).unwrap_or(false))
}

/// Whether `file` is a PNG that bears [`PNG_SOFTWARE`]'s mark.
fn drawn_by_vit(file: std::fs::File) -> std::io::Result<bool> {
    match png::Decoder::new(std::io::BufReader::new(file)).read_info() {
        Ok(reader) => Ok((reader.info().uncompressed_latin1_text.iter())
            .any(|text| text.keyword == "Software" && text.text == PNG_SOFTWARE)),
        Err(png::DecodingError::IoError(e)) if e.kind() != ErrorKind::UnexpectedEof => Err(e),
        // Not a PNG, or one cut short: not a picture vit wrote (it writes atomically).
        Err(_) => Ok(false),
    }
}

/// Whether `file` begins with `prefix`: how vit knows a text file of its own (the first line
/// of the SVG curves it drew).
pub(crate) fn begins_with(file: std::fs::File, prefix: &[u8]) -> std::io::Result<bool> {
    let mut start = Vec::with_capacity(prefix.len());
    file.take(prefix.len() as u64).read_to_end(&mut start)?;
    Ok(start == prefix)
}

/// Refuses to replace `path` unless nothing is there or `written_by_vit` tells from the
/// file that vit wrote it: `what` names such a file ("curves vit drew"), `replaced_by` says
/// what would replace it, `instead` how to write it elsewhere ("name another PNG with -o").
pub(crate) fn ensure_replaceable(
    path: &Path,
    what: &str,
    replaced_by: &str,
    instead: &str,
    written_by_vit: impl FnOnce(std::fs::File) -> std::io::Result<bool>,
) -> Result<()> {
    let cannot_check = |e: std::io::Error| {
        anyhow!(
            "cannot check whether {} is {what} ({e}): {replaced_by}. Move it away, or \
             {instead}",
            path.display()
        )
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        // Nothing there (a file in the folder's place is named when the picture is written).
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return Ok(())
        }
        Err(e) => return Err(cannot_check(e)),
    };
    ensure!(
        written_by_vit(file).map_err(cannot_check)?,
        "{} is already there, and is not {what}: {replaced_by}. Move that file away, or \
         {instead}",
        path.display()
    );
    Ok(())
}

/// Runs `draw` on an SVG canvas of `size` (width, height) and writes the file atomically.
fn render_svg<F>(path: &Path, size: (u32, u32), draw: F) -> Result<()>
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
    create_folder(crate::fsutil::folder_of(path))
}

/// Turns a plotters error (whose type depends on the backend) into an `anyhow` error.
pub(crate) fn drawing<T, E: std::fmt::Display>(result: std::result::Result<T, E>) -> Result<T> {
    result.map_err(|e| anyhow!("drawing failed: {e}"))
}

/// The pictures' font at `size` pixels, turned by `transform`, its anchor at its vertical
/// centre and `h_anchor` (every label of the pictures is placed by its middle).
pub(crate) fn text_style(
    size: f64,
    transform: FontTransform,
    h_anchor: HPos,
) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font().transform(transform))
        .pos(Pos::new(h_anchor, VPos::Center))
}

/// Draws `text` at `at` in `style` (see [`text_style`]).
pub(crate) fn draw_text<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    text: &str,
    at: (i32, i32),
    style: TextStyle,
) -> Result<()> {
    drawing(root.draw(&Text::new(text, at, style)))
}

/// Refuses, before any work, an `-o` that is not a `.png` path (the pictures are PNG, and
/// the curves' SVG goes beside it, named after it), that is a folder, that is a file vit
/// did not draw, or whose folder cannot take a file.
pub fn ensure_png_output(output: &Path) -> Result<()> {
    let is_png = output
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("png"));
    ensure!(
        is_png,
        "-o {} does not end in .png: the picture is written as PNG; name it NAME.png",
        output.display()
    );
    ensure!(
        !output.is_dir(),
        "-o {} is a folder: name a file, such as {}",
        output.display(),
        output.join("picture.png").display()
    );
    ensure_replaceable_png(output, OTHER_PNG)?;
    crate::fsutil::ensure_can_create_in(crate::fsutil::folder_of(output))
        .with_context(|| format!("-o {} cannot be written", output.display()))
}

/// The width of `text` in the pictures' font at `size` points, in pixels.
pub(crate) fn text_width(text: &str, size: f64) -> u32 {
    (FONT, size)
        .into_font()
        .box_size(text)
        .map_or((text.len() as f64 * size * 0.6) as u32, |(width, _)| width)
}

/// Which end of a text [`fit_text`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    Start,
    End,
}

/// `text`, or as much of it as fits in `max_width` pixels at `font` points with "…" where
/// the rest was cut: at its end (keeping the start) or at its start (keeping the end).
pub(crate) fn fit_text(text: &str, font: f64, max_width: u32, keep: Keep) -> String {
    if text_width(text, font) <= max_width {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let shortened = |kept: usize| -> String {
        match keep {
            Keep::Start => chars[..kept].iter().chain(['…'].iter()).collect(),
            Keep::End => ['…'].iter().chain(&chars[chars.len() - kept..]).collect(),
        }
    };
    // The most characters that fit: the width grows with every character kept.
    let (mut fits, mut too_many) = (0, chars.len());
    while too_many - fits > 1 {
        let kept = (fits + too_many) / 2;
        if text_width(&shortened(kept), font) <= max_width {
            fits = kept;
        } else {
            too_many = kept;
        }
    }
    shortened(fits)
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
pub(crate) fn inferno(t: f64) -> RGBColor {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_text_keeps_the_end_it_is_told_to_and_as_much_as_fits() {
        let text = "folder test image 1 (my_datasets/holiday_photos_2024/test/dog/0.png): \
                    predicted cat (80%), true class dog";
        assert_eq!(fit_text(text, 18.0, 10_000, Keep::End), text);
        let chars: Vec<char> = text.chars().collect();
        let max = text_width(text, 18.0) / 2;
        for keep in [Keep::Start, Keep::End] {
            let fitted = fit_text(text, 18.0, max, keep);
            assert!(text_width(&fitted, 18.0) <= max, "{fitted}");
            let kept = fitted.chars().count() - 1;
            // The kept characters, and with one more the text would not fit.
            let (kept_part, one_more): (String, String) = match keep {
                Keep::Start => (
                    chars[..kept].iter().collect(),
                    chars[..=kept].iter().chain(['…'].iter()).collect(),
                ),
                Keep::End => (
                    chars[chars.len() - kept..].iter().collect(),
                    ['…']
                        .iter()
                        .chain(&chars[chars.len() - kept - 1..])
                        .collect(),
                ),
            };
            assert_eq!(fitted.replace('…', ""), kept_part, "{keep:?}");
            assert!(text_width(&one_more, 18.0) > max, "{keep:?}: {fitted}");
        }
        assert_eq!(fit_text(text, 18.0, 1, Keep::Start), "…");
    }
}
