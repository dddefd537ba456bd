//! The backend vit's PNGs are drawn on: plotters' bitmap backend, but for the glyphs of
//! text, which it places itself. plotters' own text drawing (through ab_glyph) rounds each
//! glyph's pen position down to a whole pixel and drops the whole pixels of the space the
//! font leaves before the glyph (its left side bearing), so that from 13 px down labels
//! space their letters unevenly and run words together ("chat noir" reads "chatn oir";
//! plotters-rs/plotters#576). Here each glyph is rasterised where the font puts it; the
//! text is measured, anchored, turned and clipped by plotters as before.

use super::FONT_BYTES;
use ab_glyph::{point, Font, FontRef, ScaleFont};
use plotters::prelude::*;
use plotters::style::text_anchor::Pos;
use plotters::style::{FontFamily, FontStyle, FontTransform};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

/// plotters' `BitMapBackend` (RGB8), its text in the bundled font with each glyph placed
/// where the font puts it.
pub(crate) struct Bitmap<'a> {
    pixels: BitMapBackend<'a>,
    /// The font plotters measures the text in (registered as [`super::FONT`]).
    font: FontRef<'static>,
}

impl<'a> Bitmap<'a> {
    /// Draws into `buffer`, RGB8 rows of `size` (width, height).
    pub(crate) fn with_buffer(buffer: &'a mut [u8], size: (u32, u32)) -> Self {
        Self {
            pixels: BitMapBackend::with_buffer(buffer, size),
            font: FontRef::try_from_slice(FONT_BYTES).expect("the bundled font is valid"),
        }
    }
}

type DrawResult =
    Result<(), DrawingErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

/// Everything but `draw_text` is the bitmap backend's own.
impl DrawingBackend for Bitmap<'_> {
    type ErrorType = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.pixels.get_size()
    }

    fn ensure_prepared(&mut self) -> DrawResult {
        self.pixels.ensure_prepared()
    }

    fn present(&mut self) -> DrawResult {
        self.pixels.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> DrawResult {
        self.pixels.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> DrawResult {
        self.pixels.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> DrawResult {
        self.pixels.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> DrawResult {
        self.pixels.blit_bitmap(pos, size, src)
    }

    /// plotters' own text drawing (it anchors, turns and clips the text), with
    /// [`PlacedGlyphs`] rasterising it.
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> DrawResult {
        let font = self.font.clone();
        let style = PlacedGlyphs { style, font };
        self.pixels.draw_text(text, &style, pos)
    }
}

/// A text style as plotters gave it, but for `draw`, which places each glyph at its pen
/// position (kerning included) plus its bearing.
struct PlacedGlyphs<'s, S> {
    style: &'s S,
    font: FontRef<'static>,
}

impl<S: BackendTextStyle> BackendTextStyle for PlacedGlyphs<'_, S> {
    type FontError = S::FontError;

    fn color(&self) -> BackendColor {
        self.style.color()
    }

    fn size(&self) -> f64 {
        self.style.size()
    }

    fn transform(&self) -> FontTransform {
        self.style.transform()
    }

    fn style(&self) -> FontStyle {
        self.style.style()
    }

    fn anchor(&self) -> Pos {
        self.style.anchor()
    }

    fn family(&self) -> FontFamily<'_> {
        self.style.family()
    }

    fn layout_box(&self, text: &str) -> Result<((i32, i32), (i32, i32)), Self::FontError> {
        self.style.layout_box(text)
    }

    /// Calls `draw` with each pixel of `text`'s glyphs (in the style's colour, as opaque
    /// as the glyph covers the pixel), the first pen position at `pos`. The baseline is
    /// half the font size below `pos`, rounded down the picture to a whole row (as plotters
    /// has it for all but the shortest glyphs), so that the horizontal strokes of all
    /// glyphs stay sharp and level.
    fn draw<E, DrawFunc: FnMut(i32, i32, BackendColor) -> Result<(), E>>(
        &self,
        text: &str,
        pos: BackendCoord,
        mut draw: DrawFunc,
    ) -> Result<Result<(), E>, Self::FontError> {
        let color = self.style.color();
        let size = self.style.size() as f32;
        let font = self.font.as_scaled(size);
        let baseline = pos.1 as f32 + (size / 2.0).ceil();
        let (mut pen, mut previous) = (pos.0 as f32, None);
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(previous) = previous {
                pen += font.kern(previous, id);
            }
            previous = Some(id);
            let glyph = id.with_scale_and_position(size, point(pen, baseline));
            pen += font.h_advance(id);
            // None for a glyph without ink (a space): its advance is all it adds.
            let Some(outline) = font.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outline.px_bounds();
            let (left, top) = (bounds.min.x as i32, bounds.min.y as i32);
            // Gathered first: the rasteriser's callback cannot return `draw`'s error.
            let mut ink = Vec::new();
            outline.draw(|x, y, coverage| ink.push((left + x as i32, top + y as i32, coverage)));
            for (x, y, coverage) in ink {
                let alpha = color.alpha * f64::from(coverage);
                if let Err(error) = draw(x, y, BackendColor { alpha, ..color }) {
                    return Ok(Err(error));
                }
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{register_font, text_style, FONT_BYTES};
    use super::Bitmap;
    use ab_glyph::{Font, FontRef, ScaleFont};
    use plotters::prelude::*;
    use plotters::style::text_anchor::HPos;
    use plotters::style::FontTransform;

    const SIZE: (u32, u32) = (240, 240);
    /// Where the text is anchored: the picture's middle.
    const AT: (i32, i32) = (120, 120);

    /// The RGB8 picture of `text` drawn in `colour` at `font_size`, anchored at [`AT`] by its
    /// middle's height and `h_anchor`, turned by `transform`: on vit's backend, or with
    /// `plotters_own` on plotters' bitmap backend.
    fn drawn(
        text: &str,
        font_size: f64,
        (h_anchor, transform): (HPos, FontTransform),
        colour: RGBColor,
        plotters_own: bool,
    ) -> Vec<u8> {
        register_font();
        let mut buffer = vec![255u8; (SIZE.0 * SIZE.1 * 3) as usize];
        let label = Text::new(
            text.to_string(),
            AT,
            text_style(font_size, transform, h_anchor).color(&colour),
        );
        if plotters_own {
            let area = BitMapBackend::with_buffer(&mut buffer, SIZE).into_drawing_area();
            area.draw(&label).unwrap();
        } else {
            let area = Bitmap::with_buffer(&mut buffer, SIZE).into_drawing_area();
            area.draw(&label).unwrap();
        }
        buffer
    }

    /// The pixels of an RGB8 picture that hold visible ink: darker than 230 in some channel.
    fn ink(picture: &[u8]) -> Vec<bool> {
        picture
            .chunks(3)
            .map(|pixel| pixel.iter().any(|&value| value < 230))
            .collect()
    }

    /// Which columns of `ink` (rows of [`SIZE`]'s width) hold some.
    fn inked_columns(ink: &[bool]) -> Vec<bool> {
        let width = SIZE.0 as usize;
        (0..width)
            .map(|x| ink.chunks(width).any(|row| row[x]))
            .collect()
    }

    /// The first and last inked column and row: ((left, top), (right, bottom)).
    fn ink_box(ink: &[bool]) -> ((usize, usize), (usize, usize)) {
        let width = SIZE.0 as usize;
        let rows: Vec<bool> = ink.chunks(width).map(|row| row.contains(&true)).collect();
        let columns = inked_columns(ink);
        let first = |lines: &[bool]| lines.iter().position(|&ink| ink).expect("some ink");
        let last = |lines: &[bool]| lines.iter().rposition(|&ink| ink).expect("some ink");
        (
            (first(&columns), first(&rows)),
            (last(&columns), last(&rows)),
        )
    }

    /// The widths of the runs of blank columns between the first and last inked ones.
    fn gaps(columns: &[bool]) -> Vec<usize> {
        let first = columns.iter().position(|&ink| ink).expect("some ink");
        let last = columns.iter().rposition(|&ink| ink).expect("some ink");
        columns[first..=last]
            .split(|&ink| ink)
            .map(<[bool]>::len)
            .filter(|&gap| gap > 0)
            .collect()
    }

    const LEFT: (HPos, FontTransform) = (HPos::Left, FontTransform::None);

    /// A glyph's ink starts where the font puts it, its left side bearing after the pen
    /// (plotters' own drawing starts it 3 to 5 columns early here, having dropped the
    /// bearing's whole pixels).
    #[test]
    fn a_glyphs_ink_starts_after_its_bearing() {
        let font = FontRef::try_from_slice(FONT_BYTES).unwrap();
        let font = font.as_scaled(60.0);
        for c in ['n', 'o', 'l'] {
            let bearing = font.h_side_bearing(font.glyph_id(c));
            assert!(
                bearing > 2.0,
                "{c}: a bearing of {bearing} px tells too little"
            );
            let picture = drawn(&c.to_string(), 60.0, LEFT, BLACK, false);
            let ((first, _), _) = ink_box(&ink(&picture));
            let expected = AT.0 as f32 + bearing;
            assert!(
                (first as f32 - expected).abs() <= 1.0,
                "{c}: ink from column {first}, the font puts it at {expected}"
            );
        }
    }

    /// At the confusion matrix's tick size (13 px) and below, the space between two words
    /// is the one widest gap in the label, 2 columns wider than any between its letters
    /// (plotters' own drawing, at 13 px: gaps of 3, 2 and 3 columns after "chat").
    #[test]
    fn a_space_between_small_words_shows() {
        for font_size in [9.0, 11.0, 13.0] {
            let columns = |text| inked_columns(&ink(&drawn(text, font_size, LEFT, BLACK, false)));
            let spaced = gaps(&columns("chat noir"));
            let letters = gaps(&columns("chatnoir"));
            let widest_letters = letters.iter().max().copied().unwrap_or(0);
            let space = spaced.iter().max().copied().unwrap_or(0);
            let widest_count = spaced.iter().filter(|&&gap| gap == space).count();
            assert!(
                space >= widest_letters + 2 && widest_count == 1,
                "at {font_size} px: gaps {spaced:?} in \"chat noir\", {letters:?} in \"chatnoir\""
            );
        }
    }

    /// Text lies where plotters' own drawing puts it, for every anchor and turn the
    /// pictures use: the same rows (the same columns, turned) at the baseline's side, and
    /// within the dropped bearings and rounded pens (2 pixels) along the text. Its ink is
    /// the style's colour.
    #[test]
    fn text_is_anchored_and_turned_as_plotters_does() {
        let red = RGBColor(200, 0, 0);
        let anchors = [
            ("left", HPos::Left),
            ("centre", HPos::Center),
            ("right", HPos::Right),
        ];
        let turns = [
            ("unturned", FontTransform::None),
            ("turned 90", FontTransform::Rotate90),
            ("turned 270", FontTransform::Rotate270),
        ];
        for (anchor_name, h_anchor) in anchors {
            for (turn_name, transform) in turns.clone() {
                let case = format!("{anchor_name}, {turn_name}");
                let ours = drawn(
                    "Zèbre noir",
                    13.0,
                    (h_anchor, transform.clone()),
                    red,
                    false,
                );
                let theirs = drawn("Zèbre noir", 13.0, (h_anchor, transform.clone()), red, true);
                let (ours_box, theirs_box) = (ink_box(&ink(&ours)), ink_box(&ink(&theirs)));
                let along_rows = matches!(transform, FontTransform::None);
                let [(ours_across, ours_along), (theirs_across, theirs_along)] =
                    [ours_box, theirs_box].map(|((left, top), (right, bottom))| match along_rows {
                        true => ((top, bottom), (left, right)),
                        false => ((left, right), (top, bottom)),
                    });
                let near = |a: usize, b: usize| a.abs_diff(b) <= 2;
                assert!(
                    ours_across == theirs_across
                        && near(ours_along.0, theirs_along.0)
                        && near(ours_along.1, theirs_along.1),
                    "{case}: ink in {ours_box:?}, plotters' in {theirs_box:?}"
                );
                // A stem covers its pixels all but fully.
                let darkest = ours
                    .chunks(3)
                    .min_by_key(|pixel| pixel.iter().map(|&value| u32::from(value)).sum::<u32>())
                    .unwrap();
                let off = darkest
                    .iter()
                    .zip([200u8, 0, 0])
                    .map(|(&a, b)| a.abs_diff(b));
                assert!(
                    off.max() <= Some(4),
                    "{case}: the darkest pixel is {darkest:?}"
                );
            }
        }
    }
}
