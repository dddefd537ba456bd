//! The notebook's hyperparameter cell as a value: the nine numbers that define a ViT.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

/// The nine hyperparameters of the notebook's `VisionTransformer(...)`, with its names.
///
/// This is what a checkpoint's `config` metadata holds (as JSON), so a checkpoint alone is
/// enough to rebuild its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViTConfig {
    #[serde(deserialize_with = "deserialize_whole_number")]
    pub image_size: i64,
    #[serde(deserialize_with = "deserialize_whole_number")]
    pub patch_size: i64,
    #[serde(deserialize_with = "deserialize_whole_number")]
    pub in_channels: i64,
    #[serde(deserialize_with = "deserialize_whole_number")]
    pub embed_dim: i64,
    #[serde(deserialize_with = "deserialize_whole_number")]
    pub num_heads: i64,
    #[serde(deserialize_with = "deserialize_whole_number")]
    pub mlp_dim: i64,
    #[serde(deserialize_with = "deserialize_whole_number")]
    pub num_layers: i64,
    #[serde(deserialize_with = "deserialize_whole_number")]
    pub num_classes: i64,
    pub dropout: f64,
}

/// A size as JSON gives it: `128`, or `128.0` as Python's `embed_dim * mlp_ratio` writes
/// it; not `127.5`.
fn deserialize_whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<i64, D::Error> {
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
            let shown = crate::listing::shown_number(value);
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

    /// Checks the size rules the modules rely on, and that building the model fits in
    /// memory, so a bad config fails here with a message rather than deep inside libtorch.
    /// The message names the config's fields (`embed_dim`), as a checkpoint's config
    /// spells them.
    pub fn validate(&self) -> Result<()> {
        self.check(|field| field.to_string())
    }

    /// [`Self::validate`], naming the command-line flags that set the fields
    /// (`--embed-dim`), for a config the user gave as flags.
    pub fn validate_flags(&self) -> Result<()> {
        self.check(crate::listing::flag_name)
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
            crate::listing::shown_number(self.dropout)
        );
        self.check_fits_in_memory(name, false)
    }

    /// The parameters `VisionTransformer::new` makes for this config (a test checks it
    /// against the built model). A float: absurd sizes must not overflow the check.
    pub fn parameter_count(&self) -> f64 {
        let parts = self.parameter_parts();
        parts.patch_embed + parts.positions + parts.blocks + parts.head
    }

    /// The tokens of an image: its patches and the class token (of a validated config,
    /// whose sizes cannot overflow).
    pub fn num_tokens(&self) -> i64 {
        (self.image_size / self.patch_size).pow(2) + 1
    }

    /// The sizes the counts multiply, as floats (absurd sizes must not overflow).
    pub(super) fn float_sizes(&self) -> FloatSizes {
        let float = |size: i64| size as f64;
        let patches = (float(self.image_size) / float(self.patch_size)).powi(2);
        FloatSizes {
            image: float(self.image_size),
            patch: float(self.patch_size),
            channels: float(self.in_channels),
            embed: float(self.embed_dim),
            mlp: float(self.mlp_dim),
            layers: float(self.num_layers),
            classes: float(self.num_classes),
            tokens: patches + 1.0,
        }
    }

    /// [`Self::parameter_count`] by part of the model.
    pub(super) fn parameter_parts(&self) -> ParameterParts {
        let FloatSizes {
            patch,
            channels,
            embed,
            mlp,
            layers,
            classes,
            tokens,
            ..
        } = self.float_sizes();
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
        let FloatSizes {
            patch,
            channels,
            embed,
            mlp,
            layers,
            classes,
            tokens,
            ..
        } = self.float_sizes();
        let patches = tokens - 1.0;
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

/// A config's sizes as floats, and its tokens (patches and the class token).
pub(super) struct FloatSizes {
    pub image: f64,
    pub patch: f64,
    pub channels: f64,
    pub embed: f64,
    pub mlp: f64,
    pub layers: f64,
    pub classes: f64,
    pub tokens: f64,
}

/// The parameters of each part of a model, as [`ViTConfig::parameter_count`] counts them.
pub(super) struct ParameterParts {
    /// The patch embedding's kernel and bias.
    pub patch_embed: f64,
    /// The class token and the position embedding (one per patch and the class token).
    pub positions: f64,
    /// Every transformer block.
    pub blocks: f64,
    /// The final norm and the classification head.
    pub head: f64,
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
