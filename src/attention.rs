//! `vit attention`: where the model looks. Attention rollout over all layers (Abnar and
//! Zuidema 2020) and each head of the last layer, from the class token to the patches,
//! upsampled to the image and overlaid as a heat map beside the image.

use crate::checkpoint::{self, LoadedModel};
use crate::cli::{AttentionArgs, DEFAULT_DATA_DIR};
use crate::data::{self, image_file};
use anyhow::{bail, ensure, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Attention rollout: for every layer, average the heads, add the identity (the residual
/// connection) and renormalise the rows; multiply the layers together, last on the left
/// (`R = Â_L ... Â_1`); return the class token's row over the patches.
///
/// `maps`: num_layers x [B, num_heads, num_patches + 1, num_patches + 1] (first layer
/// first, class token at index 0), as
/// [`VisionTransformer::forward_with_attention_maps`](crate::model::VisionTransformer::forward_with_attention_maps)
/// gives them. Returns [B, num_patches]; computed in the maps' kind and on their device.
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

/// Each head of the last layer, from the class token to the patches: `maps` as for
/// [`rollout`] -> [B, num_heads, num_patches].
pub fn last_layer_heads(maps: &[Tensor]) -> Tensor {
    let last = maps.last().expect("at least one layer");
    let tokens = last.size()[3];
    last.select(2, 0).narrow(-1, 1, tokens - 1)
}

/// The class token's view of one image, float on the CPU: rollout `[num_patches]` and
/// last-layer heads [num_heads, num_patches].
struct AttentionResult {
    rollout: Tensor,
    heads: Tensor,
    /// Softmax probabilities over the classes, `[num_classes]`.
    probabilities: Tensor,
}

/// `vit attention --checkpoint PATH (IMAGE | --index I [--dataset D]) [-o attention.png]`.
pub fn run(args: &AttentionArgs) -> Result<()> {
    crate::plot::ensure_png_output(&args.output)?;
    let device = args.device.set_up()?;
    let loaded = checkpoint::load(&args.checkpoint, device)?;
    let chosen = choose_image(args, &loaded)?;
    if let Some(file) = &chosen.file {
        ensure!(
            !crate::fsutil::same_file(file, &args.output),
            "-o {} is the input image, which the picture would replace: give another -o",
            args.output.display()
        );
    }
    let classes = chosen.classes.unwrap_or_else(|| loaded.class_names());
    let result = analyse(&loaded.model, &chosen.image, device)?;
    let title = figure_title(
        &chosen.source,
        chosen.label,
        &classes,
        &result.probabilities,
    );
    crate::plot::attention_figure(
        &chosen.image,
        &result.rollout,
        &result.heads,
        &title,
        &args.output,
    )?;
    println!("{title}\nwrote {}", args.output.display());
    Ok(())
}

/// "SOURCE: predicted CLASS (P%)", and ", true class CLASS" for a test image of class
/// `label`; `probabilities` is `[num_classes]`.
fn figure_title(
    source: &str,
    label: Option<i64>,
    classes: &[String],
    probabilities: &Tensor,
) -> String {
    let (probability, predicted) = probabilities.max_dim(0, false);
    let (probability, predicted) = (
        probability.double_value(&[]),
        predicted.int64_value(&[]) as usize,
    );
    // Both hold the model's num_classes names (the dataset's were checked to fit).
    let mut title = format!(
        "{source}: predicted {} ({:.0}%)",
        classes[predicted],
        100.0 * probability
    );
    if let Some(label) = label {
        title.push_str(&format!(", true class {}", classes[label as usize]));
    }
    title
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
    if let Some(path) = &args.image {
        return chosen_file(args, loaded, path);
    }
    if args.index.is_none() && args.data.dataset.is_none() {
        bail!(
            "give an IMAGE file, or --index I (a test image of the checkpoint's dataset, or \
             of --dataset D)"
        );
    }
    chosen_test_image(args, loaded)
}

/// The image file `path` at the model's image size, refusing the test image's flags
/// alongside it.
fn chosen_file(args: &AttentionArgs, loaded: &LoadedModel, path: &Path) -> Result<ChosenImage> {
    // Each would go unused with a file. (A --data-dir of the default's value cannot
    // be told from none.)
    let test_image_flags: Vec<&str> = [
        ("--index", args.index.is_some()),
        ("--dataset", args.data.dataset.is_some()),
        (
            "--data-dir",
            args.data.data_dir != Path::new(DEFAULT_DATA_DIR),
        ),
        ("--coarse-labels", args.data.coarse_labels),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect();
    ensure!(
        test_image_flags.is_empty(),
        "give either an IMAGE file or a test image (--index, --dataset, --data-dir, \
         --coarse-labels), not both: {} \
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
    let image_size = loaded.model.config.image_size;
    Ok(ChosenImage {
        image: image_file::decode_images(
            &[path],
            image_size as u32,
            image_file::ONE_CHECKPOINT_IMAGE,
        )?
        .get(0),
        source: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        file: Some(path.to_path_buf()),
        label: None,
        classes: None,
    })
}

/// Test image `--index` (0 by default) of `--dataset` or of the checkpoint's dataset.
fn chosen_test_image(args: &AttentionArgs, loaded: &LoadedModel) -> Result<ChosenImage> {
    let index = args.index.unwrap_or(0);
    let data = loaded.test_set(&args.checkpoint, &args.data, Some(index))?;
    let file = data.files.and_then(|files| files.into_iter().next());
    let shown = match &file {
        Some(file) => format!(" ({})", file.display()),
        None => String::new(),
    };
    Ok(ChosenImage {
        image: data.test.images.get(0),
        source: format!("{} test image {index}{shown}", data.name),
        file,
        label: Some(data.test.labels.int64_value(&[0])),
        classes: Some(data.classes),
    })
}

/// Runs the model once on one uint8 [3, H, W] image (test transform, on `device`) and
/// collects the class token's attention and the class probabilities, on the CPU.
fn analyse(
    model: &crate::model::VisionTransformer,
    image: &Tensor,
    device: Device,
) -> Result<AttentionResult> {
    let size = model.config.image_size;
    let batch = data::transforms::test_transform(&image.unsqueeze(0).to_device(device), size);
    model.check_input(&batch)?;
    tch::no_grad(|| {
        let (logits, maps) = model.forward_with_attention_maps(&batch);
        let to_cpu = |t: Tensor| t.to_device(Device::Cpu).to_kind(Kind::Float);
        Ok(AttentionResult {
            rollout: to_cpu(rollout(&maps).select(0, 0)),
            heads: to_cpu(last_layer_heads(&maps).select(0, 0)),
            probabilities: to_cpu(logits.softmax(-1, Kind::Float).select(0, 0)),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::figure_title;
    use tch::Tensor;

    /// The title names the predicted class (the most probable) with its probability, and
    /// a test image's true class by its label, not by the prediction.
    #[test]
    fn the_title_names_the_predicted_and_the_true_class() {
        let classes = ["cat", "dog", "bird"].map(String::from);
        let probabilities = Tensor::from_slice(&[0.1f32, 0.7, 0.2]);
        assert_eq!(
            figure_title("test image 4", Some(2), &classes, &probabilities),
            "test image 4: predicted dog (70%), true class bird"
        );
        assert_eq!(
            figure_title("photo.png", None, &classes, &probabilities),
            "photo.png: predicted dog (70%)"
        );
    }
}
