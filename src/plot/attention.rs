//! `vit attention`'s figure: the image, then the attention rollout and each head of the last
//! layer as heat maps over it (the maps themselves come from `crate::attention`).

use super::{draw_text, fit_text, inferno, render_rgb, text_style, write_rgb_png, Keep};
use anyhow::{ensure, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::HPos;
use plotters::style::FontTransform;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Side of one picture in the attention figure, in pixels.
const PANEL: u32 = 192;
const PAD: u32 = 12;
const HEADER: u32 = 44;
const CAPTION: u32 = 26;

/// Columns and rows of the figure's grid for `panels` pictures (at most 5 per row).
fn grid(panels: u32) -> (u32, u32) {
    let rows = panels.div_ceil(5).max(1);
    (panels.div_ceil(rows), rows)
}

/// Width and height of the attention figure for a model with `num_heads` heads: the
/// image, the rollout and one picture per head of the last layer.
pub fn attention_figure_size(num_heads: usize) -> (u32, u32) {
    let (cols, rows) = grid(2 + num_heads as u32);
    (
        cols * PANEL + (cols + 1) * PAD,
        HEADER + rows * (CAPTION + PANEL) + rows * PAD,
    )
}

/// An RGB8 picture, row-major.
struct Picture {
    side: u32,
    rgb: Vec<u8>,
}

/// uint8 [3, H, W] -> a `PANEL` x `PANEL` picture (nearest neighbour when enlarging, so
/// CIFAR's 32x32 pixels stay visible as pixels).
fn panel_image(image: &Tensor) -> Result<Picture> {
    let (c, h, w) = image.size3()?;
    ensure!(
        c == 3,
        "expected an RGB image [3, H, W], got {:?}",
        image.size()
    );
    let hwc = Vec::<u8>::try_from(
        image
            .to_device(Device::Cpu)
            .to_kind(Kind::Uint8)
            .permute([1, 2, 0])
            .contiguous()
            .reshape([-1]),
    )?;
    let source = image::RgbImage::from_raw(w as u32, h as u32, hwc)
        .context("image buffer has the wrong size")?;
    let filter = if (w as u32) < PANEL {
        image::imageops::FilterType::Nearest
    } else {
        image::imageops::FilterType::Triangle
    };
    let resized = image::imageops::resize(&source, PANEL, PANEL, filter);
    Ok(Picture {
        side: PANEL,
        rgb: resized.into_raw(),
    })
}

/// A map over the patch grid, `[num_patches]` -> values in [0, 1] at `PANEL` x `PANEL`
/// (bilinear, then scaled so that its minimum is 0 and its maximum 1; a map constant to
/// within [`FLAT`] of its values is all 0).
fn upsample(map: &Tensor) -> Result<Vec<f32>> {
    let patches = map.numel() as i64;
    let side = (patches as f64).sqrt().round() as i64;
    ensure!(
        side * side == patches,
        "{patches} patches do not form a square grid"
    );
    let upsampled = map
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .view([1, 1, side, side])
        .upsample_bilinear2d([PANEL as i64, PANEL as i64], false, None, None)
        .reshape([-1]);
    let values = Vec::<f32>::try_from(&upsampled)?;
    let lowest = values.iter().copied().fold(f32::INFINITY, f32::min);
    let highest = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let range = highest - lowest;
    let flat = range <= FLAT * highest.abs().max(lowest.abs());
    Ok(values
        .into_iter()
        .map(|v| if flat { 0.0 } else { (v - lowest) / range })
        .collect())
}

/// How far apart, relative to its values, a map's extremes may be and the map still be
/// drawn flat: float rounding in uniform attention and its interpolation (about 1e-6 of
/// the values) must not be stretched over the whole colour map as if it were a peak.
const FLAT: f32 = 1e-4;

/// How uneven a map of attention weights (`[num_patches]`) is: its largest value over its
/// smallest (infinite where some patch gets none).
fn max_over_min(map: &Tensor) -> f64 {
    let map = map.to_kind(Kind::Double);
    map.max().double_value(&[]) / map.min().double_value(&[])
}

/// A max/min ratio for a caption: two decimals, or in scientific notation from 10,000 on
/// (an untrained model's maps reach 1e30, whose digits would run across the next caption).
fn ratio_text(ratio: f64) -> String {
    match ratio < 1e4 {
        true => format!("{ratio:.2}"),
        false => format!("{ratio:.1e}"),
    }
}

/// The heat map of `map` (`[num_patches]`) over `base`, a little more heat than image.
fn overlay(base: &Picture, map: &Tensor) -> Result<Picture> {
    const HEAT_WEIGHT: f64 = 0.55;
    let heat = upsample(map)?;
    let mut rgb = Vec::with_capacity(base.rgb.len());
    for (pixel, &t) in base.rgb.chunks_exact(3).zip(&heat) {
        let RGBColor(r, g, b) = inferno(t as f64);
        for (channel, colour) in pixel.iter().zip([r, g, b]) {
            let mixed = (1.0 - HEAT_WEIGHT) * *channel as f64 + HEAT_WEIGHT * colour as f64;
            rgb.push(mixed.round() as u8);
        }
    }
    Ok(Picture {
        side: base.side,
        rgb,
    })
}

/// Draws `vit attention`'s figure: the image, the rollout over it, and each last-layer
/// head over it, with `title` on top. `image` is uint8 [3, H, W]; `rollout` is
/// `[num_patches]` and `heads` [num_heads, num_patches]. Writes a PNG of
/// [`attention_figure_size`]`(num_heads)`.
pub fn attention_figure(
    image: &Tensor,
    rollout: &Tensor,
    heads: &Tensor,
    title: &str,
    output: &Path,
) -> Result<()> {
    let (num_heads, patches) = heads.size2()?;
    ensure!(
        rollout.size() == [patches],
        "rollout has shape {:?}, the heads cover {patches} patches",
        rollout.size()
    );
    let panels = captioned_panels(&panel_image(image)?, rollout, heads)?;
    let (width, height) = attention_figure_size(num_heads as usize);
    let (cols, _) = grid(panels.len() as u32);
    let origin = |i: usize| {
        let (col, row) = (i as u32 % cols, i as u32 / cols);
        (
            PAD + col * (PANEL + PAD),
            HEADER + row * (CAPTION + PANEL + PAD) + CAPTION,
        )
    };
    // Text with plotters into a buffer, then the pictures copied into their places.
    let mut buffer = render_rgb(output, (width, height), |root| {
        let text = |s: &str, at: (i32, i32), size: f64| {
            draw_text(
                root,
                s,
                at,
                text_style(size, FontTransform::None, HPos::Center),
            )
        };
        // The end says what the model predicted; a long path before it gives way.
        let title = fit_text(title, 18.0, width - 2 * PAD, Keep::End);
        text(&title, (width as i32 / 2, HEADER as i32 / 2), 18.0)?;
        for (i, (caption, _)) in panels.iter().enumerate() {
            let (x, y) = origin(i);
            text(
                caption,
                ((x + PANEL / 2) as i32, (y - CAPTION / 2) as i32),
                15.0,
            )?;
        }
        Ok(())
    })?;
    for (i, (_, rgb)) in panels.iter().enumerate() {
        paste_panel(&mut buffer, width, origin(i), rgb);
    }
    write_rgb_png(output, width, height, &buffer)
}

/// The figure's pictures in order, each with its caption: the image `base`, then the
/// rollout (`[num_patches]`) and each head (`heads`, [num_heads, num_patches]) over it.
fn captioned_panels(
    base: &Picture,
    rollout: &Tensor,
    heads: &Tensor,
) -> Result<Vec<(String, Vec<u8>)>> {
    // Each map is stretched to the full colour scale, so its caption says how uneven it
    // really is: near-uniform attention (max/min 1.00) would look as sharp as a peak.
    let map_panel = |name: String, map: &Tensor| -> Result<(String, Vec<u8>)> {
        let caption = format!("{name}, max/min {}", ratio_text(max_over_min(map)));
        Ok((caption, overlay(base, map)?.rgb))
    };
    let mut panels = vec![
        ("image (heads: last layer)".to_string(), base.rgb.clone()),
        map_panel("rollout".to_string(), rollout)?,
    ];
    for head in 0..heads.size()[0] {
        panels.push(map_panel(format!("head {}", head + 1), &heads.get(head))?);
    }
    Ok(panels)
}

/// Copies the RGB8 `PANEL` x `PANEL` picture `rgb` into `buffer` (RGB8, `width` pixels a
/// row) with its top-left corner at `(x0, y0)`.
fn paste_panel(buffer: &mut [u8], width: u32, (x0, y0): (u32, u32), rgb: &[u8]) {
    for row in 0..PANEL {
        let src = (row * PANEL * 3) as usize;
        let dst = (((y0 + row) * width + x0) * 3) as usize;
        buffer[dst..dst + (PANEL * 3) as usize]
            .copy_from_slice(&rgb[src..src + (PANEL * 3) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temp_dir::TempDir;

    /// The captions' measure of unevenness: 1 for uniform attention.
    #[test]
    fn max_over_min_is_one_for_a_uniform_map() {
        let uniform = Tensor::full([64], 1.0 / 64.0, (Kind::Float, Device::Cpu));
        assert!((max_over_min(&uniform) - 1.0).abs() < 1e-12);
        let peaked = Tensor::from_slice(&[0.1f32, 0.2, 0.4, 0.3]);
        assert!((max_over_min(&peaked) - 4.0).abs() < 1e-6);
    }

    /// Ratios up to 10,000 read with two decimals; larger ones (and a map with a zero,
    /// infinite) stay short.
    #[test]
    fn large_ratios_are_captioned_in_scientific_notation() {
        assert_eq!(ratio_text(1.0), "1.00");
        assert_eq!(ratio_text(2362.404), "2362.40");
        assert_eq!(ratio_text(9999.994), "9999.99");
        assert_eq!(ratio_text(7.6426e31), "7.6e31");
        assert_eq!(ratio_text(f64::INFINITY), "inf");
    }

    /// The heat map keeps the patch grid's orientation (row by row, as the tokens are laid
    /// out) and spans the whole colour map: a map hot at one patch is hottest over that
    /// patch, a constant map is all cold.
    #[test]
    fn a_heat_map_is_hottest_over_its_hottest_patch() {
        // A 4x4 grid, hot at row 0, column 3: the top right corner.
        let mut map = vec![0.0f32; 16];
        map[3] = 1.0;
        let heat = upsample(&Tensor::from_slice(&map)).unwrap();
        let side = PANEL as usize;
        assert_eq!(heat.len(), side * side);
        let hottest = (0..heat.len())
            .max_by(|&a, &b| heat[a].total_cmp(&heat[b]))
            .unwrap();
        let (row, column) = (hottest / side, hottest % side);
        assert!(
            row < side / 4 && column >= 3 * side / 4,
            "hottest at ({row}, {column})"
        );
        let lowest = heat.iter().copied().fold(f32::INFINITY, f32::min);
        assert_eq!((lowest, heat[hottest]), (0.0, 1.0));

        let constant = upsample(&Tensor::from_slice(&[0.5f32; 16])).unwrap();
        assert!(constant.iter().all(|&t| t == 0.0));
        // Uniform up to rounding (1/65, as 65 tokens attend uniformly, a few ulps apart) is
        // as flat; a hundredth apart is not.
        let mut rounded = [1.0f32 / 65.0; 16];
        rounded[5] = f32::from_bits(rounded[5].to_bits() + 4);
        let flat = upsample(&Tensor::from_slice(&rounded)).unwrap();
        assert!(flat.iter().all(|&t| t == 0.0));
        rounded[5] *= 1.01;
        let peak = upsample(&Tensor::from_slice(&rounded)).unwrap();
        assert_eq!(peak.iter().copied().fold(0.0, f32::max), 1.0);
        // Its smallest value is 0 too: a near-uniform map that is not flat is stretched
        // over the whole colour map, not drawn nearly all at its hottest.
        assert_eq!(peak.iter().copied().fold(1.0, f32::min), 0.0);
    }

    /// The figure's pictures, in order: the image, the rollout over it, then each head over
    /// it, each captioned with its own map's name and unevenness. A head drawn for another
    /// (or a head for the rollout) would show the wrong attention under the right name.
    #[test]
    fn each_picture_shows_its_own_map_under_its_caption() {
        let base = Picture {
            side: PANEL,
            rgb: (0..PANEL * PANEL * 3).map(|i| (i % 251) as u8).collect(),
        };
        let rollout = Tensor::from_slice(&[0.1f32, 0.2, 0.3, 0.4]);
        let heads = Tensor::from_slice(&[
            0.5f32, 0.1, 0.2, 0.2, // head 1: max/min 5
            0.1, 0.1, 0.1, 0.7, // head 2: 7
            0.3, 0.2, 0.3, 0.2, // head 3: 1.5
        ])
        .view([3, 4]);
        let panels = captioned_panels(&base, &rollout, &heads).unwrap();
        let captions: Vec<&str> = panels.iter().map(|(caption, _)| caption.as_str()).collect();
        assert_eq!(
            captions,
            [
                "image (heads: last layer)",
                "rollout, max/min 4.00",
                "head 1, max/min 5.00",
                "head 2, max/min 7.00",
                "head 3, max/min 1.50",
            ]
        );
        assert!(
            panels[0].1 == base.rgb,
            "the first picture is not the image"
        );
        let maps = [rollout, heads.get(0), heads.get(1), heads.get(2)];
        for (i, map) in maps.iter().enumerate() {
            let expected = overlay(&base, map).unwrap().rgb;
            assert!(panels[i + 1].1 == expected, "{}", captions[i + 1]);
        }
    }

    /// Each picture lies below its caption, in its own square: the image (one colour here)
    /// fills the first square from its top-left corner at (PAD, HEADER + CAPTION), leaving
    /// the caption's band above it to the caption. (A picture pasted over its caption, or
    /// into another's place, fails.)
    #[test]
    fn the_image_fills_its_square_below_its_caption() {
        let colour = [200u8, 30, 10];
        let image = Tensor::from_slice(&colour)
            .view([3, 1, 1])
            .expand([3, 8, 8], false)
            .contiguous();
        let rollout = Tensor::full([4], 0.25, (Kind::Float, Device::Cpu));
        let heads = Tensor::full([2, 4], 0.25, (Kind::Float, Device::Cpu));
        let dir = TempDir::new("attention-figure");
        let output = dir.join("attention.png");
        attention_figure(&image, &rollout, &heads, "a title", &output).unwrap();
        let picture = image::open(&output).unwrap().into_rgb8();
        assert_eq!(picture.dimensions(), attention_figure_size(2));
        let (x0, y0) = (PAD, HEADER + CAPTION);
        for y in y0..y0 + PANEL {
            for x in x0..x0 + PANEL {
                assert_eq!(picture.get_pixel(x, y).0, colour, "at ({x}, {y})");
            }
        }
        // The caption's band: the caption's text, and no picture.
        let band: Vec<[u8; 3]> = (HEADER..y0)
            .flat_map(|y| (x0..x0 + PANEL).map(move |x| (x, y)))
            .map(|(x, y)| picture.get_pixel(x, y).0)
            .collect();
        assert!(
            band.iter().all(|&pixel| pixel != colour),
            "the image covers its caption"
        );
        assert!(
            band.iter().any(|&pixel| pixel != [255, 255, 255]),
            "no caption"
        );
    }

    /// A rollout over another number of patches than the heads' is refused: the figure
    /// would put maps of two different models (or images) side by side.
    #[test]
    fn a_rollout_over_other_patches_than_the_heads_is_refused() {
        let image = Tensor::zeros([3, 8, 8], (Kind::Uint8, Device::Cpu));
        let rollout = Tensor::full([9], 1.0 / 9.0, (Kind::Float, Device::Cpu));
        let heads = Tensor::full([2, 4], 0.25, (Kind::Float, Device::Cpu));
        let dir = TempDir::new("attention-refused");
        let output = dir.join("attention.png");
        let error = attention_figure(&image, &rollout, &heads, "t", &output).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("rollout has shape [9], the heads cover 4 patches"),
            "{error}"
        );
        assert!(!output.exists());
    }

    /// Over a constant map the picture is the image dimmed to 45% plus 55% of the colour
    /// map's coldest colour.
    #[test]
    fn an_overlay_mixes_the_image_with_the_heat() {
        let base = Picture {
            side: PANEL,
            rgb: (0..PANEL * PANEL * 3).map(|i| (i % 251) as u8).collect(),
        };
        let picture = overlay(&base, &Tensor::from_slice(&[0.5f32; 16])).unwrap();
        let RGBColor(r, g, b) = inferno(0.0);
        for (i, (&mixed, &image)) in picture.rgb.iter().zip(&base.rgb).enumerate() {
            let cold = [r, g, b][i % 3] as f64;
            // 1 - 0.55 as the code writes it (not 0.45): the halves round alike.
            let expected = ((1.0 - 0.55) * image as f64 + 0.55 * cold).round() as u8;
            assert_eq!(mixed, expected, "value {i}");
        }
    }
}
