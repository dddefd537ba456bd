//! `vit attention`: where the model looks. Attention rollout over all layers (Abnar and
//! Zuidema 2020) and each head of the last layer, from the class token to the patches,
//! upsampled to the image and overlaid as a heat map beside the image.

use crate::checkpoint::{self, LoadedModel};
use crate::cli::AttentionArgs;
use crate::data::{self, folder};
use crate::plot::{draw_text, fit_text, inferno, render_rgb, text_style, write_rgb_png, Keep};
use anyhow::{bail, ensure, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::HPos;
use plotters::style::FontTransform;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Attention rollout: for every layer, average the heads, add the identity (the residual
/// connection) and renormalise the rows; multiply the layers together, last on the left
/// (`R = Â_L ... Â_1`); return the class token's row over the patches.
///
/// `maps`: num_layers x [B, num_heads, N + 1, N + 1] (first layer first, class token at
/// index 0), as [`VisionTransformer::attention_maps`](crate::model::VisionTransformer::attention_maps)
/// gives them. Returns [B, N]; computed in the maps' kind and on their device.
pub fn rollout(maps: &[Tensor]) -> Tensor {
    assert!(
        !maps.is_empty(),
        "attention rollout needs at least one layer"
    );
    let mut joint: Option<Tensor> = None;
    for map in maps {
        let kind = map.kind();
        let tokens = map.size()[map.dim() - 1];
        let mean = map.mean_dim(1, false, kind);
        let with_residual = mean + Tensor::eye(tokens, (kind, map.device()));
        let normalised = &with_residual / with_residual.sum_dim_intlist(-1, true, kind);
        joint = Some(match joint {
            None => normalised,
            Some(previous) => normalised.matmul(&previous),
        });
    }
    let joint = joint.expect("at least one layer");
    let tokens = joint.size()[1];
    joint.select(1, 0).narrow(-1, 1, tokens - 1)
}

/// Each head of the last layer, from the class token to the patches: [B, num_heads, N].
pub fn last_layer_heads(maps: &[Tensor]) -> Tensor {
    let last = maps.last().expect("at least one layer");
    let tokens = last.size()[3];
    last.select(2, 0).narrow(-1, 1, tokens - 1)
}

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
pub fn figure_size(num_heads: usize) -> (u32, u32) {
    let (cols, rows) = grid(2 + num_heads as u32);
    (
        cols * PANEL + (cols + 1) * PAD,
        HEADER + rows * (CAPTION + PANEL) + rows * PAD,
    )
}

/// The class token's view of one image: rollout [N] and last-layer heads [num_heads, N].
pub struct AttentionResult {
    pub rollout: Tensor,
    pub heads: Tensor,
    /// Softmax probabilities over the classes, [num_classes].
    pub probabilities: Tensor,
}

/// `vit attention --checkpoint PATH (IMAGE | --index I [--dataset D]) [-o attention.png]`.
pub fn run(args: &AttentionArgs) -> Result<()> {
    crate::plot::ensure_png_output(&args.output)?;
    let device = args.device.resolve()?;
    let loaded = checkpoint::load(&args.checkpoint, device)?;
    let config = &loaded.model.config;
    let chosen = choose_image(args, &loaded)?;
    if let Some(file) = &chosen.file {
        ensure!(
            !crate::fsutil::same_file(file, &args.output),
            "-o {} is the input image, which the picture would replace: give another -o",
            args.output.display()
        );
    }
    let classes = chosen
        .classes
        .unwrap_or_else(|| checkpoint::class_names(&loaded.metadata, config.num_classes));
    let result = analyse(&loaded.model, &chosen.image, device)?;
    let (probability, predicted) = result.probabilities.max_dim(0, false);
    let (probability, predicted) = (
        probability.double_value(&[]),
        predicted.int64_value(&[]) as usize,
    );
    let name = |i: usize| {
        classes
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("class {i}"))
    };
    let mut title = format!(
        "{}: predicted {} ({:.0}%)",
        chosen.source,
        name(predicted),
        100.0 * probability
    );
    if let Some(label) = chosen.label {
        title.push_str(&format!(", true class {}", name(label as usize)));
    }
    figure(
        &chosen.image,
        &result.rollout,
        &result.heads,
        &title,
        &args.output,
    )?;
    println!("{title}\nwrote {}", args.output.display());
    Ok(())
}

/// The image `vit attention` looks at: a file, or a test image of a dataset.
struct ChosenImage {
    /// uint8 [3, H, W]: the model's image size for a file, the dataset's for a test image
    /// (the test transform resizes it).
    image: Tensor,
    /// The file name, or "DATASET test image I", for the title.
    source: String,
    /// The file the image was read from (none for a CIFAR test image).
    file: Option<PathBuf>,
    /// The test image's class.
    label: Option<i64>,
    /// The dataset's class names (checked to fit the model), for a test image.
    classes: Option<Vec<String>>,
}

/// The IMAGE file of `args`, or test image `--index` (0 by default) of `--dataset` or of
/// the checkpoint's dataset (from its metadata).
fn choose_image(args: &AttentionArgs, loaded: &LoadedModel) -> Result<ChosenImage> {
    let image_size = loaded.model.config.image_size;
    if let Some(path) = &args.image {
        let test_image_flags: Vec<&str> = [
            ("--index", args.index.is_some()),
            ("--dataset", args.data.dataset.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect();
        ensure!(
            test_image_flags.is_empty(),
            "give either an IMAGE file or a test image (--index, --dataset), not both: {} \
             came with {}",
            test_image_flags.join(" and "),
            path.display()
        );
        ensure!(
            !path.is_dir(),
            "{} is a folder: give one image file (vit predict takes folders)",
            path.display()
        );
        loaded.ensure_rgb(&args.checkpoint)?;
        return Ok(ChosenImage {
            image: folder::decode_images(&[path.as_path()], image_size as u32)?.get(0),
            source: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            file: Some(path.clone()),
            label: None,
            classes: None,
        });
    }
    if args.index.is_none() && args.data.dataset.is_none() {
        bail!(
            "give an IMAGE file, or --index I (a test image of the checkpoint's dataset, or \
             of --dataset D)"
        );
    }
    let index = args.index.unwrap_or(0);
    let data = loaded.test_set(&args.checkpoint, &args.data)?;
    let count = data.test.len();
    ensure!(
        (0..count).contains(&index),
        "--index {index} is outside the test split, which holds {count} image(s){}",
        match count {
            0 => String::new(),
            _ => format!(", numbered 0 to {}", count - 1),
        }
    );
    let file = data.files.map(|files| files[index as usize].clone());
    let shown = match &file {
        Some(file) => format!(" ({})", file.display()),
        None => String::new(),
    };
    Ok(ChosenImage {
        image: data.test.images.get(index),
        source: format!("{} test image {index}{shown}", data.name),
        file,
        label: Some(data.test.labels.int64_value(&[index])),
        classes: Some(data.classes),
    })
}

/// Runs the model on one uint8 [3, H, W] image (test transform, on `device`) and collects
/// the class token's attention and the class probabilities, on the CPU.
fn analyse(
    model: &crate::model::VisionTransformer,
    image: &Tensor,
    device: Device,
) -> Result<AttentionResult> {
    let size = model.config.image_size;
    let batch = data::transforms::test_transform(&image.unsqueeze(0).to_device(device), size);
    model.check_input(&batch)?;
    tch::no_grad(|| {
        let maps = model.attention_maps(&batch);
        let logits = tch::nn::ModuleT::forward_t(model, &batch, false);
        let to_cpu = |t: Tensor| t.to_device(Device::Cpu).to_kind(Kind::Float);
        Ok(AttentionResult {
            rollout: to_cpu(rollout(&maps).select(0, 0)),
            heads: to_cpu(last_layer_heads(&maps).select(0, 0)),
            probabilities: to_cpu(logits.softmax(-1, Kind::Float).select(0, 0)),
        })
    })
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

/// A map over the patch grid [N] -> values in [0, 1] at `PANEL` x `PANEL` (bilinear,
/// then scaled so that its minimum is 0 and its maximum 1; a constant map is all 0).
fn upsample(map: &Tensor) -> Result<Vec<f32>> {
    let n = map.numel() as i64;
    let grid = (n as f64).sqrt().round() as i64;
    ensure!(grid * grid == n, "{n} patches do not form a square grid");
    let up = map
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .view([1, 1, grid, grid])
        .upsample_bilinear2d([PANEL as i64, PANEL as i64], false, None, None)
        .reshape([-1]);
    let values = Vec::<f32>::try_from(&up)?;
    let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let range = hi - lo;
    Ok(values
        .into_iter()
        .map(|v| if range > 1e-12 { (v - lo) / range } else { 0.0 })
        .collect())
}

/// The heat map of `map` over `base`, a little more heat than image.
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

/// Draws the figure: the image, the rollout over it, and each last-layer head over it,
/// with `title` on top. `image` is uint8 [3, H, W]; `rollout` is [N] and `heads`
/// [num_heads, N] over the N patches. Writes a PNG of [`figure_size`]`(num_heads)`.
fn figure(
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
    let base = panel_image(image)?;
    let layers_note = "rollout, all layers";
    let mut panels = vec![
        ("image".to_string(), base.rgb.clone()),
        (layers_note.to_string(), overlay(&base, rollout)?.rgb),
    ];
    for head in 0..num_heads {
        panels.push((
            format!("last layer, head {}", head + 1),
            overlay(&base, &heads.get(head))?.rgb,
        ));
    }

    let (width, height) = figure_size(num_heads as usize);
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
        let (x0, y0) = origin(i);
        for row in 0..PANEL {
            let src = (row * PANEL * 3) as usize;
            let dst = (((y0 + row) * width + x0) * 3) as usize;
            buffer[dst..dst + (PANEL * 3) as usize]
                .copy_from_slice(&rgb[src..src + (PANEL * 3) as usize]);
        }
    }
    write_rgb_png(output, width, height, &buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

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
