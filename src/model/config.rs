//! The notebook's hyperparameter cell as a value: the nine numbers that define a ViT.

use crate::listing::noun_for;
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

/// The nine hyperparameters of the notebook's `VisionTransformer(...)`, with its names.
///
/// This is what a checkpoint's `config` metadata holds (as JSON), so a checkpoint alone is
/// enough to rebuild its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViTConfig {
    #[serde(deserialize_with = "whole_number")]
    pub image_size: i64,
    #[serde(deserialize_with = "whole_number")]
    pub patch_size: i64,
    #[serde(deserialize_with = "whole_number")]
    pub in_channels: i64,
    #[serde(deserialize_with = "whole_number")]
    pub embed_dim: i64,
    #[serde(deserialize_with = "whole_number")]
    pub num_heads: i64,
    #[serde(deserialize_with = "whole_number")]
    pub mlp_dim: i64,
    #[serde(deserialize_with = "whole_number")]
    pub num_layers: i64,
    #[serde(deserialize_with = "whole_number")]
    pub num_classes: i64,
    pub dropout: f64,
}

/// A size as JSON gives it: `128`, or `128.0` as Python's `embed_dim * mlp_ratio` writes
/// it; not `127.5`.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct WholeNumber;
    impl serde::de::Visitor<'_> for WholeNumber {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<i64, E> {
            Ok(value)
        }
        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<i64, E> {
            i64::try_from(value).map_err(|_| E::custom(format!("{value} is too large")))
        }
        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<i64, E> {
            // Whole floats up to 2^53 are exact, far beyond any size `validate` allows;
            // past it floats skip whole numbers (and `as i64` would saturate).
            let shown = crate::cli::shown(value);
            if value.abs() >= 2f64.powi(53) {
                Err(E::custom(format!("{shown} is too large")))
            } else if value.fract() == 0.0 {
                Ok(value as i64)
            } else {
                Err(E::custom(format!("expected a whole number, got {shown}")))
            }
        }
    }
    deserializer.deserialize_any(WholeNumber)
}

/// A preset's name, and what builds its config.
type Preset = (&'static str, fn() -> ViTConfig);

/// The presets `--config` names, each name beside the config it builds.
const PRESETS: [Preset; 3] = [
    ("notebook", ViTConfig::notebook),
    ("small", ViTConfig::small),
    ("tiny", ViTConfig::tiny),
];

impl ViTConfig {
    /// The notebook's example cell: 3,218,276 parameters with 100 classes.
    pub fn notebook() -> Self {
        Self {
            image_size: 32,
            patch_size: 4,
            in_channels: 3,
            embed_dim: 256,
            num_heads: 8,
            mlp_dim: 512,
            num_layers: 6,
            num_classes: 100,
            dropout: 0.1,
        }
    }

    /// A CPU-friendly model for quick experiments (embed 128, 4 layers, 4 heads, no dropout).
    pub fn small() -> Self {
        Self {
            embed_dim: 128,
            num_heads: 4,
            mlp_dim: 256,
            num_layers: 4,
            num_classes: 10,
            dropout: 0.0,
            ..Self::notebook()
        }
    }

    /// A model small enough for tests and smoke runs.
    pub fn tiny() -> Self {
        Self {
            embed_dim: 32,
            num_heads: 2,
            mlp_dim: 64,
            num_layers: 2,
            num_classes: 10,
            dropout: 0.0,
            ..Self::notebook()
        }
    }

    /// The names `--config` takes, as [`Self::preset`] knows them.
    pub fn preset_names() -> [&'static str; PRESETS.len()] {
        PRESETS.map(|(name, _)| name)
    }

    /// The sizes of the `--config` preset `name`, or an error listing the names there
    /// are.
    pub fn preset(name: &str) -> Result<Self> {
        match PRESETS.iter().find(|(preset, _)| *preset == name) {
            Some((_, build)) => Ok(build()),
            None => bail!(
                "unknown config preset `{name}`; choose one of {:?}",
                Self::preset_names()
            ),
        }
    }

    /// Checks every constraint the modules rely on, so a bad config fails here with a
    /// message rather than deep inside libtorch. The message names the config's fields
    /// (`embed_dim`), as a checkpoint's config spells them.
    pub fn validate(&self) -> Result<()> {
        self.check(|field| field.to_string())
    }

    /// [`Self::validate`], naming the command-line flags that set the fields
    /// (`--embed-dim`), for a config the user gave as flags.
    pub fn validate_flags(&self) -> Result<()> {
        self.check(crate::cli::flag_name)
    }

    /// The eight whole-number hyperparameters (all but dropout), with their names.
    pub fn sizes(&self) -> [(&'static str, i64); 8] {
        [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("embed_dim", self.embed_dim),
            ("num_heads", self.num_heads),
            ("mlp_dim", self.mlp_dim),
            ("num_layers", self.num_layers),
            ("num_classes", self.num_classes),
        ]
    }

    /// Every check of [`Self::validate`], naming each field as `name` spells it.
    fn check(&self, name: impl Fn(&str) -> String) -> Result<()> {
        for (field, value) in self.sizes() {
            ensure!(value > 0, "{} must be positive, got {value}", name(field));
        }
        // The patches tile the image; the heads split the embedding.
        for ((whole, whole_size), (part, part_size)) in [
            (
                ("image_size", self.image_size),
                ("patch_size", self.patch_size),
            ),
            (("embed_dim", self.embed_dim), ("num_heads", self.num_heads)),
        ] {
            ensure!(
                whole_size % part_size == 0,
                "{} ({}) must be divisible by {} ({})",
                name(whole),
                whole_size,
                name(part),
                part_size
            );
        }
        ensure!(
            (0.0..1.0).contains(&self.dropout),
            "{} must be in [0, 1), got {}",
            name("dropout"),
            crate::cli::shown(self.dropout)
        );
        self.check_fits_in_memory(name, false)
    }

    /// Refuses, before training starts, a model whose training state (weights, gradients
    /// and AdamW's two moments) and libtorch's bookkeeping for it outgrow the memory this
    /// process may use, naming the flags that set the sizes. For the CPU, where the kernel
    /// kills a process that takes too much without a word; a GPU's allocator fails with a
    /// message instead.
    pub fn check_trains_in_memory(&self) -> Result<()> {
        self.check_fits_in_memory(crate::cli::flag_name, true)
    }

    /// [`Self::check_trains_in_memory`], and then with a training step on batches of
    /// `batch_size` images counted too: the activations it keeps for the backward pass, at
    /// the least (see `step_bytes_per_image`), beside the weights and AdamW's two moments
    /// (the gradients are none until the backward pass, which frees the activations as it
    /// goes). Where they outgrow the memory, the advice is the largest --batch-size that
    /// might fit, or the flags that size an image's activations where none fits.
    pub fn check_steps_fit_in_memory(&self, batch_size: i64) -> Result<()> {
        self.check_trains_in_memory()?;
        let Some(memory) = crate::runtime::memory_bytes() else {
            return Ok(());
        };
        let memory = memory as f64;
        // The training state less one float32 copy of the weights: their gradients.
        let held = self.memory_needed(true) - 4.0 * self.parameter_count();
        let per_image = self.step_bytes_per_image();
        let step = batch_size as f64 * per_image;
        if held + step <= memory {
            return Ok(());
        }
        let largest = ((memory - held) / per_image).floor();
        let advice = match largest >= 1.0 {
            true => format!(
                "use a smaller --batch-size (one over {largest} cannot fit: these are the least \
                 a step keeps)"
            ),
            false => "not even one image fits: use a smaller --image-size, --embed-dim or \
                      --num-layers, or a larger --patch-size"
                .to_string(),
        };
        bail!(
            "a training step on batches of {batch_size} {} would take at least {:.1} GB ({:.1} \
             GB of activations kept for the backward pass, {:.1} GB of weights and AdamW's \
             moments); this process may use {:.1} GB of memory: {advice}",
            noun_for(batch_size, "image"),
            (held + step) / 1e9,
            step / 1e9,
            held / 1e9,
            memory / 1e9
        )
    }

    /// The bytes a training step keeps for each image of its batch, at the least: the image
    /// in float32, and every block's input (the residual stream, float32 under autocast too),
    /// which its backward pass needs. The attention and MLP activations (several times
    /// more) are left out, so that only a batch that cannot fit is refused.
    fn step_bytes_per_image(&self) -> f64 {
        let [image, _, channels, embed, _, layers, _] = self.float_sizes();
        4.0 * (channels * image * image + layers * self.tokens() * embed)
    }

    /// Refused here rather than found by building it: a model of millions of small layers
    /// would fill the memory one layer at a time, for minutes, and a process that takes
    /// more than its cgroup allows is killed without a word. The advice names what sets
    /// the largest part of the model.
    fn check_fits_in_memory(&self, name: impl Fn(&str) -> String, training: bool) -> Result<()> {
        let Some(memory) = crate::runtime::memory_bytes() else {
            return Ok(());
        };
        let bytes = self.memory_needed(training);
        if bytes <= memory as f64 {
            return Ok(());
        }
        let smaller = self.largest_part_advice(&name, training);
        let count = self.parameter_count();
        let what = match training {
            true => "training the model would take",
            false => "the model would take",
        };
        bail!(
            "{what} at least {:.1} GB: {count:.3e} parameters ({:.1} GB in float32{}) and \
             libtorch's bookkeeping for {} {}; this process may use {:.1} GB of memory: use \
             {smaller}",
            bytes / 1e9,
            4.0 * count / 1e9,
            match training {
                true => ", held four times: weights, gradients and AdamW's two moments",
                false => ", its largest tensor twice while it is initialised",
            },
            self.num_layers,
            noun_for(self.num_layers as usize, "block"),
            memory as f64 / 1e9,
        )
    }

    /// What to make smaller, as `name` calls the flags or fields: the sizes of the model's
    /// largest part (its blocks' bookkeeping, for a build or for `training`, counted with
    /// their weights), as in `a smaller --embed-dim, --mlp-dim or --num-layers`.
    fn largest_part_advice(&self, name: impl Fn(&str) -> String, training: bool) -> String {
        let parts = self.parameter_parts();
        // The blocks' bookkeeping counts with their weights: in bytes per weight.
        let (copies, block_bytes) = Self::memory_per(training);
        let blocks = parts.blocks + block_bytes * self.num_layers as f64 / (4.0 * copies);
        let largest = [parts.patch_embed, parts.positions, blocks, parts.head]
            .into_iter()
            .fold(0.0, f64::max);
        if largest == parts.positions {
            format!(
                "a larger {} or a smaller {}",
                name("patch_size"),
                name("image_size")
            )
        } else if largest == parts.patch_embed {
            format!("a smaller {} or {}", name("patch_size"), name("embed_dim"))
        } else if largest == parts.head {
            format!("a smaller {} or {}", name("num_classes"), name("embed_dim"))
        } else {
            format!(
                "a smaller {}, {} or {}",
                name("embed_dim"),
                name("mlp_dim"),
                name("num_layers")
            )
        }
    }

    /// A lower bound on the memory the model takes, built or, `training`, trained (on top,
    /// activations grow with the batch): its float32 weights, held four times to train, and
    /// once to build plus the initial values of its largest tensor (which are copied into
    /// it; less than the three more copies training holds), and libtorch's bookkeeping for
    /// each block.
    fn memory_needed(&self, training: bool) -> f64 {
        let (copies, block_bytes) = Self::memory_per(training);
        let weights = match training {
            true => copies * self.parameter_count(),
            false => self.parameter_count() + self.largest_tensor(),
        };
        4.0 * weights + block_bytes * self.num_layers as f64
    }

    /// The elements of the model's largest tensor: the position embedding, the patch
    /// embedding's kernel, a block's qkv or MLP weight, or the head's.
    fn largest_tensor(&self) -> f64 {
        let [_, patch, channels, embed, mlp, _, classes] = self.float_sizes();
        [
            self.tokens() * embed,
            channels * patch * patch * embed,
            3.0 * embed * embed,
            embed * mlp,
            embed * classes,
        ]
        .into_iter()
        .fold(0.0, f64::max)
    }

    /// How many copies of the weights the model's memory holds, and the bytes of
    /// libtorch's bookkeeping per block (its tensors, and training's gradients, optimizer
    /// state and autograd graph). Measured with one-wide blocks (`--embed-dim 1 --num-heads
    /// 1 --mlp-dim 1`), from the maximum RSS at 500, 1,000 and 2,000 of them: 9 KiB a block
    /// for `vit info`, 68 KiB for `vit bench --batch-size 1` (2026-11-30); rounded up.
    fn memory_per(training: bool) -> (f64, f64) {
        match training {
            true => (4.0, 96.0 * 1024.0),
            false => (1.0, 16.0 * 1024.0),
        }
    }

    /// The parameters `VisionTransformer::new` makes for this config (a test checks it
    /// against the built model). A float: absurd sizes must not overflow the check.
    pub fn parameter_count(&self) -> f64 {
        let parts = self.parameter_parts();
        parts.patch_embed + parts.positions + parts.blocks + parts.head
    }

    /// The class token and the patches, as a float (see [`Self::float_sizes`]).
    fn tokens(&self) -> f64 {
        (self.image_size as f64 / self.patch_size as f64).powi(2) + 1.0
    }

    /// The sizes the counts below multiply, as floats (absurd sizes must not overflow):
    /// image, patch, channels, embed, mlp, layers, classes.
    fn float_sizes(&self) -> [f64; 7] {
        [
            self.image_size,
            self.patch_size,
            self.in_channels,
            self.embed_dim,
            self.mlp_dim,
            self.num_layers,
            self.num_classes,
        ]
        .map(|size| size as f64)
    }

    /// [`Self::parameter_count`] by part of the model.
    fn parameter_parts(&self) -> ParameterParts {
        let [_, patch, channels, embed, mlp, layers, classes] = self.float_sizes();
        let tokens = self.tokens();
        let block = 2.0 * embed // norm1
            + 3.0 * embed * embed + 3.0 * embed // qkv
            + embed * embed + embed // proj
            + 2.0 * embed // norm2
            + embed * mlp + mlp // fc1
            + mlp * embed + embed; // fc2
        ParameterParts {
            patch_embed: channels * patch * patch * embed + embed,
            positions: embed + tokens * embed, // class token, position embedding
            blocks: layers * block,
            head: 2.0 * embed + embed * classes + classes, // norm, head
        }
    }

    /// The floating-point operations of one image's forward pass, counted as PyTorch's
    /// `torch.utils.flop_counter` counts them: two for each multiply-add of the patch
    /// convolution and of every matrix product, attention's included. Norms, softmax and
    /// GELU are left out: a few percent here. A float, like [`Self::parameter_count`].
    pub fn forward_flops(&self) -> f64 {
        let [image, patch, channels, embed, mlp, layers, classes] = self.float_sizes();
        let patches = (image / patch).powi(2);
        let tokens = patches + 1.0;
        let patch_embed = patches * channels * patch * patch * embed;
        let block = tokens * (3.0 * embed * embed + embed * embed) // qkv, proj
            + 2.0 * tokens * tokens * embed // scores q k^T, then their weights times v
            + 2.0 * tokens * embed * mlp; // fc1, fc2
        let head = embed * classes;
        2.0 * (patch_embed + layers * block + head)
    }

    /// How this config came from the `--config` preset `preset`: "tiny preset", or "tiny
    /// preset with the flags given" where a flag changed one of its sizes.
    pub fn described_as(&self, preset: &str) -> String {
        let changed = match Self::preset(preset) {
            Ok(sizes) if sizes == *self => "",
            _ => " with the flags given",
        };
        format!("{preset} preset{changed}")
    }

    /// The config as a checkpoint's `config` metadata records it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ViTConfig serialises")
    }

    /// A config from a checkpoint's `config` metadata, validated (see [`Self::validate`]).
    pub fn from_json(json: &str) -> Result<Self> {
        let config = Self::parse_json(json)?;
        config.validate()?;
        Ok(config)
    }

    /// A config from a checkpoint's `config` metadata, not yet validated: a checkpoint
    /// compares it with its tensors first, which explain a wrong size better.
    pub fn parse_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| {
            anyhow::anyhow!(
                "invalid model config JSON ({e}): {json}. It holds {}, each once (README: \
                 Checkpoints)",
                Self::field_names().join(", ")
            )
        })
    }

    /// The fields of a config JSON: the sizes, then dropout.
    pub fn field_names() -> Vec<&'static str> {
        let sizes = Self::notebook().sizes().map(|(name, _)| name);
        [sizes.as_slice(), &["dropout"]].concat()
    }
}

/// The parameters of each part of a model, as [`ViTConfig::parameter_count`] counts them.
struct ParameterParts {
    /// The patch embedding's kernel and bias.
    patch_embed: f64,
    /// The class token and the position embedding (one per patch and the class token).
    positions: f64,
    /// Every transformer block.
    blocks: f64,
    /// The final norm and the classification head.
    head: f64,
}

#[cfg(test)]
mod tests {
    use super::ViTConfig;

    /// A config JSON that lacks a field says so, and lists the fields it holds: those
    /// a config writes.
    #[test]
    fn a_config_json_without_dropout_is_told_its_fields() {
        let written: serde_json::Value =
            serde_json::from_str(&ViTConfig::tiny().to_json()).unwrap();
        let mut fields: Vec<&str> = written
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = ViTConfig::field_names();
        fields.sort();
        expected.sort();
        assert_eq!(fields, expected);
        let json = ViTConfig::tiny().to_json().replace(",\"dropout\":0.0", "");
        let error = ViTConfig::parse_json(&json).unwrap_err().to_string();
        assert!(
            error.starts_with("invalid model config JSON (missing field `dropout`")
                && error.ends_with(
                    "It holds image_size, patch_size, in_channels, embed_dim, num_heads, \
                     mlp_dim, num_layers, num_classes, dropout, each once (README: \
                     Checkpoints)"
                ),
            "{error}"
        );
    }

    /// Training counts libtorch's bookkeeping of each block (96 KiB) on top of four copies
    /// of the weights: one-wide blocks whose bookkeeping outgrows the memory here are
    /// refused for training, though built they fit, and the advice names the blocks' flags
    /// though the head holds more weights than they do.
    #[test]
    fn thin_blocks_bookkeeping_is_counted_for_training() {
        let memory =
            crate::runtime::memory_bytes().expect("Linux tells its memory in /proc/meminfo");
        let memory = memory as f64;
        // Bookkeeping of 1.5 times the memory for training (a quarter of it built), and a
        // head of 2 weights a class whose four copies take half the memory.
        let num_layers = (memory / 65536.0) as i64;
        let config = ViTConfig {
            embed_dim: 1,
            num_heads: 1,
            mlp_dim: 1,
            num_layers,
            num_classes: (memory / 64.0) as i64,
            ..ViTConfig::tiny()
        };
        config.validate().unwrap();
        let error = format!("{:#}", config.check_trains_in_memory().unwrap_err());
        let needed = 16.0 * config.parameter_count() + 96.0 * 1024.0 * num_layers as f64;
        assert!(
            error.starts_with(&format!(
                "training the model would take at least {:.1} GB: ",
                needed / 1e9
            )) && error.ends_with("use a smaller --embed-dim, --mlp-dim or --num-layers"),
            "{error}"
        );
    }

    /// A training step's batch counts too: the notebook model's step on a batch whose
    /// float32 images and block inputs alone outgrow the memory is refused naming
    /// --batch-size, and one of 256 is not.
    #[test]
    fn a_batch_that_cannot_fit_is_refused_naming_batch_size() {
        let memory =
            crate::runtime::memory_bytes().expect("Linux tells its memory in /proc/meminfo");
        let config = ViTConfig::notebook();
        // 32x32 RGB images, and 6 blocks' inputs of 65 tokens of 256 floats.
        let per_image = 4 * (3 * 32 * 32 + 6 * 65 * 256);
        let batch = (memory / per_image + 1) as i64;
        let error = format!("{:#}", config.check_steps_fit_in_memory(batch).unwrap_err());
        assert!(
            error.starts_with(&format!("a training step on batches of {batch} images"))
                && error.contains("use a smaller --batch-size"),
            "{error}"
        );
        config.check_steps_fit_in_memory(256).unwrap();
        // Images whose float32 copy alone outgrows the memory: no batch fits.
        let mut image_size = 64;
        while 12 * image_size * image_size <= memory {
            image_size *= 2;
        }
        let config = ViTConfig {
            image_size: image_size as i64,
            patch_size: image_size as i64 / 64,
            embed_dim: 4,
            num_heads: 1,
            mlp_dim: 4,
            num_layers: 1,
            ..ViTConfig::tiny()
        };
        let error = format!("{:#}", config.check_steps_fit_in_memory(1).unwrap_err());
        assert!(
            error.starts_with("a training step on batches of 1 image would take")
                && error.contains("not even one image fits: use a smaller --image-size"),
            "{error}"
        );
    }

    /// Building counts the largest tensor twice (its initial values are copied into it): a
    /// position embedding of 0.6 times the memory here is refused, as building it would
    /// take 1.2 times (the kernel killed `vit info` where only one copy was counted).
    #[test]
    fn building_counts_the_largest_tensor_twice() {
        let memory =
            crate::runtime::memory_bytes().expect("Linux tells its memory in /proc/meminfo");
        let embed_dim = 64;
        // 4 bytes for each of (image_size^2 + 1) * embed_dim position weights.
        let image_size = (0.6 * memory as f64 / 4.0 / embed_dim as f64).sqrt() as i64;
        let config = ViTConfig {
            image_size,
            patch_size: 1,
            embed_dim,
            num_heads: 1,
            mlp_dim: 1,
            num_layers: 1,
            ..ViTConfig::tiny()
        };
        let positions = 4.0 * (image_size * image_size + 1) as f64 * embed_dim as f64;
        assert!(positions < memory as f64 && 2.0 * positions > memory as f64);
        let error = format!("{:#}", config.validate().unwrap_err());
        assert!(
            error.contains("its largest tensor twice while it is initialised")
                && error.ends_with("use a larger patch_size or a smaller image_size"),
            "{error}"
        );
    }

    /// `vit info` and `vit bench` say whether the flags changed the preset's sizes.
    #[test]
    fn a_config_says_whether_flags_changed_its_preset() {
        assert_eq!(ViTConfig::tiny().described_as("tiny"), "tiny preset");
        let wider = ViTConfig {
            embed_dim: 64,
            ..ViTConfig::tiny()
        };
        assert_eq!(
            wider.described_as("tiny"),
            "tiny preset with the flags given"
        );
        assert_eq!(
            ViTConfig::tiny().described_as("notebook"),
            "notebook preset with the flags given"
        );
    }
}
