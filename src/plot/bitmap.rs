//! The backend vit's PNGs are drawn on: plotters' bitmap backend, but for text, which it
//! draws glyph by glyph where the font places each one. plotters' own text drawing (through
//! ab_glyph) puts every glyph's ink at its pen position, dropping the space the font leaves
//! before it (its left side bearing): small labels run their words together ("chat noir"
//! reads "chatnoir"; plotters-rs/plotters#576). Text is measured and anchored as plotters
//! measures it (advances and kerning), so labels stay where the layout put them.

use ab_glyph::{point, Font, FontRef, ScaleFont};
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

/// plotters' `BitMapBackend` (RGB8) with vit's text drawing.
pub(crate) struct Bitmap<'a> {
    pixels: BitMapBackend<'a>,
    font: FontRef<'static>,
}

impl<'a> Bitmap<'a> {
    /// Draws into `buffer`, RGB8 rows of `size` (width, height), text in `font` (a TrueType
    /// or OpenType file's bytes).
    pub(crate) fn with_buffer(buffer: &'a mut [u8], size: (u32, u32), font: &'static [u8]) -> Self {
        Self {
            pixels: BitMapBackend::with_buffer(buffer, size),
            font: FontRef::try_from_slice(font).expect("the bundled font is a valid font"),
        }
    }
}

type DrawResult =
    Result<(), DrawingErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

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

    /// `text` at `pos`, anchored and turned as `style` says (as plotters' default does),
    /// each glyph at its pen position plus its bearing, on a baseline a whole pixel down
    /// (where plotters puts it: half the font size below the text box's top).
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> DrawResult {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let ((min_x, min_y), (max_x, max_y)) = style
            .layout_box(text)
            .map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let (width, height) = (max_x - min_x, max_y - min_y);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let size = style.size() as f32;
        let font = self.font.as_scaled(size);
        let baseline = (size / 2.0).ceil();
        let mut ink = Vec::new();
        let (mut pen, mut previous) = (0.0, None);
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
            outline.draw(|x, y, coverage| ink.push((left + x as i32, top + y as i32, coverage)));
        }
        for (x, y, coverage) in ink {
            let (x, y) = transform.transform(x + dx - min_x, y + dy - min_y);
            let alpha = color.alpha * f64::from(coverage);
            let shade = BackendColor {
                alpha,
                rgb: color.rgb,
            };
            self.pixels.draw_pixel((pos.0 + x, pos.1 + y), shade)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{register_font, FONT, FONT_BYTES};
    use super::Bitmap;
    use ab_glyph::{Font, FontRef, ScaleFont};
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    const SIZE: (u32, u32) = (200, 80);
    /// Where the text starts: its left end, at mid-height.
    const AT: (i32, i32) = (10, 40);

    /// Which columns of a white picture hold visible ink once `text` is drawn in black at
    /// `font_size` from [`AT`].
    fn inked_columns(text: &str, font_size: f64) -> Vec<bool> {
        register_font();
        let mut buffer = vec![255u8; (SIZE.0 * SIZE.1 * 3) as usize];
        let style =
            TextStyle::from((FONT, font_size).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        Bitmap::with_buffer(&mut buffer, SIZE, FONT_BYTES)
            .into_drawing_area()
            .draw(&Text::new(text.to_string(), AT, style))
            .unwrap();
        let width = SIZE.0 as usize;
        (0..width)
            .map(|x| (0..SIZE.1 as usize).any(|y| buffer[(y * width + x) * 3] < 230))
            .collect()
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

    /// A glyph's ink starts where the font puts it, its left side bearing after the pen
    /// (plotters' own drawing starts it at the pen: here 3 to 5 columns early).
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
            let columns = inked_columns(&c.to_string(), 60.0);
            let first = columns.iter().position(|&ink| ink).unwrap() as f32;
            let expected = AT.0 as f32 + bearing;
            assert!(
                (first - expected).abs() <= 1.0,
                "{c}: ink from column {first}, the font puts it at {expected}"
            );
        }
    }

    /// At label sizes (the confusion matrix's ticks are 11 or 13 px), the space between two
    /// words is the one widest gap in the label, 2 columns wider than any between its
    /// letters (plotters' own drawing, at 13 px: gaps of 3, 2 and 3 columns after "chat").
    #[test]
    fn a_space_between_small_words_shows() {
        for font_size in [9.0, 10.0, 11.0, 12.0, 13.0] {
            let spaced = gaps(&inked_columns("chat noir", font_size));
            let letters = gaps(&inked_columns("chatnoir", font_size));
            let widest_letters = letters.iter().max().copied().unwrap_or(0);
            let space = spaced.iter().max().copied().unwrap_or(0);
            let others = spaced.iter().filter(|&&gap| gap == space).count();
            assert!(
                space >= widest_letters + 2 && others == 1,
                "at {font_size} px: gaps {spaced:?} in \"chat noir\", {letters:?} in \"chatnoir\""
            );
        }
    }
}
