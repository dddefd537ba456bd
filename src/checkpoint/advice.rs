//! What vit says of a safetensors file it cannot load as a checkpoint, and of a PyTorch
//! file: which of timm's model options or which config the tensors show, and what to do.

use super::{TensorFile, CONFIG_KEY};
use crate::listing::{and_more, first_and_more};
use crate::model::{ViTConfig, VisionTransformer};
use anyhow::{bail, ensure, Result};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

impl TensorFile {
    /// What to do about a file without `config` metadata: what the tensors' shapes give,
    /// for the user to complete, where they can tell. Names of a model vit's cannot load
    /// are told first, as are tensors that the model of that config would not take (a
    /// timm option's that the names do not tell): a config added to them would only be
    /// refused next.
    pub(super) fn missing_config_advice(&self) -> String {
        let layout = self.layout_advice();
        if !layout.is_empty() {
            return format!(
                "no `{CONFIG_KEY}` metadata, and adding one would not make it load{layout}"
            );
        }
        let shapes = self.config_from_shapes();
        let problems = shapes.as_ref().map(|shapes| self.mismatches_of(shapes));
        if let Some(problems) = problems.filter(|problems| !problems.is_empty()) {
            return format!(
                "no `{CONFIG_KEY}` metadata, and adding one would not make it load: its \
                 tensors are not those of vit's model of the size their shapes give: {}",
                problems.join("; ")
            );
        }
        match shapes {
            Some(shapes) => format!(
                "no `{CONFIG_KEY}` metadata. The tensors' shapes give {}, all but num_heads. \
                 Fill in NUM_HEADS from the model that saved the file (a divisor of \
                 embed_dim that shapes cannot tell; a wrong one loads and gives wrong \
                 outputs). dropout is 0.0 there, as no tensor records it: evaluation ignores \
                 it, but to train on, put the model's own. Then save the checkpoint with \
                 metadata={{'{CONFIG_KEY}': that JSON}}",
                json_without_heads(&shapes)
            ),
            None => format!(
                "no `{CONFIG_KEY}` metadata: save the checkpoint with \
                 metadata={{'{CONFIG_KEY}': json.dumps({{{}}})}}",
                ViTConfig::field_names().join(", ")
            ),
        }
    }

    /// How the tensors differ from those of vit's model of the sizes `shapes` gives (see
    /// [`Self::config_from_shapes`]; any head count builds the same tensors). Empty when
    /// they match, or when no such model can be built.
    fn mismatches_of(&self, shapes: &ViTConfig) -> Vec<String> {
        let config = ViTConfig {
            num_heads: 1,
            ..shapes.clone()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        match VisionTransformer::new(&vs.root(), &config) {
            Ok(_) => self.mismatches(&vs.variables()),
            Err(_) => Vec::new(),
        }
    }

    /// Fails when the tensors' shapes give another model than `config` (as the file's
    /// metadata records it): the message names the sizes that differ, rather than listing
    /// every tensor of the wrong shape.
    pub(super) fn check_config_matches_shapes(&self, config: &ViTConfig) -> Result<()> {
        let Some(shapes) = self.config_from_shapes() else {
            return Ok(());
        };
        // Shapes cannot tell num_heads: `shapes` has 0 there.
        let (recorded, shaped): (Vec<String>, Vec<String>) = config
            .sizes()
            .into_iter()
            .zip(shapes.sizes())
            .filter(|((name, recorded), (_, shaped))| *name != "num_heads" && recorded != shaped)
            .map(|((name, recorded), (_, shaped))| {
                (format!("{name} {recorded}"), format!("{name} {shaped}"))
            })
            .unzip();
        ensure!(
            recorded.is_empty(),
            "its `{CONFIG_KEY}` metadata does not describe its tensors: it says {}, the \
             tensors' shapes {}. Save it again with the config of the model that made the \
             tensors (their shapes give {}, all but num_heads and dropout)",
            recorded.join(", "),
            shaped.join(", "),
            json_without_heads(&shapes)
        );
        Ok(())
    }

    /// The config that timm's tensor names and shapes give, with `num_heads` 0 (the qkv
    /// weights are the same shape for any head count) and dropout 0 (it has no weights).
    /// `None` when the tensors are not the notebook's ViT in timm's layout (a class token,
    /// square patches in a square grid, a head).
    fn config_from_shapes(&self) -> Option<ViTConfig> {
        let size = |name: &str| self.tensors.get(name).map(Tensor::size);
        let [embed_dim, in_channels, patch_size, patch_width] =
            size("patch_embed.proj.weight")?[..]
        else {
            return None;
        };
        let [1, 1, _] = size("cls_token")?[..] else {
            return None;
        };
        let [_, tokens, _] = size("pos_embed")?[..] else {
            return None;
        };
        // The tokens are the class token and a square grid of square patches.
        let side = ((tokens - 1) as f64).sqrt().round() as i64;
        if patch_width != patch_size || side < 1 || side * side != tokens - 1 {
            return None;
        }
        let [mlp_dim, _] = size("blocks.0.mlp.fc1.weight")?[..] else {
            return None;
        };
        let [num_classes, _] = size("head.weight")?[..] else {
            return None;
        };
        // The blocks 0, 1, ... that have any tensor (a block that lacks one is still a
        // block); a gap in their numbers says nothing of the model's depth.
        let blocks: std::collections::BTreeSet<u32> = self
            .tensors
            .keys()
            .filter_map(|name| {
                let number = name.strip_prefix("blocks.")?.split('.').next()?;
                number
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| number.parse().ok())?
            })
            .collect();
        let num_layers = blocks.len() as i64;
        if blocks
            .last()
            .is_some_and(|&last| i64::from(last) + 1 != num_layers)
        {
            return None;
        }
        Some(ViTConfig {
            image_size: side * patch_size,
            patch_size,
            in_channels,
            embed_dim,
            num_heads: 0,
            mlp_dim,
            num_layers,
            num_classes,
            dropout: 0.0,
        })
    }

    /// The prefix of a timm ViT's tensor names in the file, where a wrapper put one: such as
    /// DistributedDataParallel's, timm's ModelEma's and torch's AveragedModel's `module.`,
    /// torch.compile's `_orig_mod.`, or both. A wrapper's own tensors (AveragedModel's
    /// `n_averaged`) may sit beside the model's, but no model's tensor without the prefix.
    fn wrapper_prefix(&self) -> Option<&str> {
        let prefix =
            (self.tensors.keys()).find_map(|name| name.strip_suffix("patch_embed.proj.weight"))?;
        let wraps = prefix.ends_with('.')
            && (self.wrapper_tensors(prefix))
                .all(|name| !name.contains("patch_embed.") && !name.contains("blocks."));
        wraps.then_some(prefix)
    }

    /// The names of the tensors in the file without `prefix`.
    fn wrapper_tensors<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a String> {
        (self.tensors.keys()).filter(move |name| !name.starts_with(prefix))
    }

    /// Fails where the model's tensor names in the file at `path` have a wrapper's prefix
    /// (see [`Self::wrapper_prefix`]), with the line of Python that writes the model's
    /// tensors without it. A user with the file alone has no wrapped model to save again.
    pub(super) fn check_no_wrapper_prefix(&self, path: &Path) -> Result<()> {
        let Some(prefix) = self.wrapper_prefix() else {
            return Ok(());
        };
        let others: Vec<&String> = self.wrapper_tensors(prefix).collect();
        let left_out = match others.is_empty() {
            true => String::new(),
            false => format!(" (the wrapper's own {}, are left out)", first_few(&others)),
        };
        let stripped = free_name_beside(path);
        let [path, stripped] = [path, &stripped].map(|p| p.display().to_string());
        bail!(
            "the model's tensor names in {path} start with `{prefix}`, as those of a wrapped \
             model do (`module.`: DistributedDataParallel, DataParallel, timm's ModelEma, \
             torch's AveragedModel; `_orig_mod.`: torch.compile). Strip it in Python: `import \
             safetensors.torch as st; from safetensors import safe_open; \
             st.save_file({{k.removeprefix({prefix:?}): v for k, v in \
             st.load_file({path:?}).items() if k.startswith({prefix:?})}}, {stripped:?}, \
             metadata=safe_open({path:?}, \"pt\").metadata())`, then give {stripped}\
             {left_out}"
        )
    }

    /// Whether the position embedding has a square grid's tokens alone, beside a class token:
    /// timm's `no_embed_class=True`. vit's has the grid's and the class token's, s² + 1 of
    /// them, never a square. (A single token is left alone: a grid of one patch without the
    /// class token's, or the class token's without a grid, which no model is.)
    fn position_embedding_lacks_class_token(&self) -> bool {
        let tokens = match self.tensors.get("pos_embed").map(Tensor::size).as_deref() {
            Some(&[1, tokens, _]) => tokens,
            _ => return false,
        };
        let side = (tokens as f64).sqrt().round() as i64;
        self.tensors.contains_key("cls_token") && tokens > 1 && side * side == tokens
    }

    /// What the tensor names (and the position embedding's shape) say of a model that is
    /// not vit's: one of timm's `VisionTransformer` options that vit's model does not
    /// have. Empty when they say nothing.
    pub(super) fn layout_advice(&self) -> String {
        let has = |part: &str| self.tensors.keys().any(|name| name.contains(part));
        // Only a timm ViT's names say which of its options made them.
        if !has("patch_embed.proj.") || !has("blocks.0.") {
            return String::new();
        }
        let options: Vec<&str> = [
            (has("fc_norm."), "global_pool='avg' (fc_norm)"),
            (!has("cls_token"), "class_token=False"),
            (
                has("dist_token"),
                "a distillation token (DeiT's distilled models)",
            ),
            (has("reg_token"), "reg_tokens"),
            (
                has("blocks.0.attn.qkv.weight") && !has("blocks.0.attn.qkv.bias"),
                "qkv_bias=False",
            ),
            (has(".q_norm.") || has(".k_norm."), "qk_norm=True"),
            (has(".ls1.") || has(".ls2."), "init_values (LayerScale)"),
            (has("norm_pre."), "pre_norm=True"),
            (!has("head."), "num_classes=0 (no classification head)"),
            (
                self.position_embedding_lacks_class_token(),
                "no_embed_class=True (no position embedding for the class token)",
            ),
        ]
        .into_iter()
        .filter_map(|(found, option)| found.then_some(option))
        .collect();
        match options.is_empty() {
            true => String::new(),
            false => format!(
                ". Its tensors are those of a timm VisionTransformer made with {}, which vit's \
                 model does not have: vit's is timm's with class_token=True, \
                 global_pool='token', qkv_bias=True, a classification head, and no LayerScale, \
                 QK norm, register or distillation tokens, pre-norm or no_embed_class",
                options.join(", ")
            ),
        }
    }
}

/// The file a pasted conversion of the file at `path` writes: PATH.safetensors, or else
/// PATH.converted.safetensors, PATH.converted-2.safetensors, ... Never a file that is
/// there: pasted, the command would write over it.
fn free_name_beside(path: &Path) -> PathBuf {
    let numbered = (2..).map(|n| format!("converted-{n}.safetensors"));
    [
        "safetensors".to_string(),
        "converted.safetensors".to_string(),
    ]
    .into_iter()
    .chain(numbered)
    .map(|extension| path.with_extension(extension))
    .find(|converted| converted != path && !converted.exists())
    .expect("a free name")
}

/// `config` as JSON with `NUM_HEADS` where its head count goes, for the user to fill in.
fn json_without_heads(config: &ViTConfig) -> String {
    let fields: Vec<String> = config
        .sizes()
        .iter()
        .map(|&(name, value)| match name {
            "num_heads" => format!("\"{name}\": NUM_HEADS"),
            _ => format!("\"{name}\": {value}"),
        })
        .chain(["\"dropout\": 0.0".to_string()])
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// How many of each kind of problem a mismatched checkpoint's error lists: a wrapped
/// model's 44 names say no more than its first few.
pub(super) const SHOWN: usize = 5;

/// The first [`SHOWN`] of `items` as a list, with how many more there are.
pub(crate) fn first_few<T: std::fmt::Debug>(items: &[T]) -> String {
    let (shown, more) = first_and_more(items, SHOWN);
    format!("{shown:?}{}", and_more(more))
}

/// How a zip archive begins (a local file header): torch.save's files, numpy's .npz.
const ZIP_START: &[u8] = b"PK\x03\x04";

/// Whether `bytes` hold `name` anywhere: how an archive's entries are found, by the names
/// its directory spells.
fn holds(bytes: &[u8], name: &[u8]) -> bool {
    after(bytes, name).is_some()
}

/// What follows the first `part` in `bytes`.
fn after<'a>(bytes: &'a [u8], part: &[u8]) -> Option<&'a [u8]> {
    let at = bytes
        .windows(part.len())
        .position(|window| window == part)?;
    Some(&bytes[at + part.len()..])
}

/// Why the file at `path`, whose first and last `bytes` these are, is no checkpoint, where
/// it is a zip archive that PyTorch did not write (see [`PyTorchFile::recognise`]): a
/// numpy archive (Google's JAX ViT checkpoints are such, which timm converts), or another.
pub(super) fn other_zip(path: &Path, bytes: &[u8]) -> Option<String> {
    // An empty zip is its directory's end record alone.
    if !bytes.starts_with(ZIP_START) && !bytes.starts_with(b"PK\x05\x06") {
        return None;
    }
    let (what, instead) = if holds(bytes, b"embedding/kernel.npy") {
        (
            "a JAX ViT checkpoint (numpy arrays with Flax's names)",
            "timm converts it: build timm's VisionTransformer with its sizes, call \
             `model.load_pretrained(PATH)`, then save `model.state_dict()` with the config as \
             README.md, Checkpoints, shows",
        )
    } else if holds(bytes, b".npy") {
        (
            "a numpy archive (numpy.savez)",
            "a model's weights with timm's names can be saved as one (README.md, Checkpoints)",
        )
    } else {
        (
            "a zip archive that PyTorch did not save",
            "a model's weights with timm's names can be saved as one (README.md, Checkpoints)",
        )
    };
    Some(format!(
        "{} is {what}, not a checkpoint: --checkpoint takes a .safetensors file that vit train \
         saved; {instead}",
        path.display()
    ))
}

/// A file PyTorch writes, which vit does not read but can say how to convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PyTorchFile {
    /// `torch.save`: a zip archive with `data.pkl` (PyTorch 1.6 on), or a pickle that
    /// starts with PyTorch's magic number (before).
    Save(Saved),
    /// `torch.jit.save`: a zip archive with `constants.pkl` (and `data.pkl`) in it.
    TorchScript,
    /// `torch.export.save`: a zip archive with `archive_format` in it (and the sample
    /// inputs as a `torch.save` file, whose `data.pkl` is no model's).
    Export,
}

/// What a `torch.save` file holds, as far as its pickle's first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Saved {
    /// A whole model (`torch.save(model)`): its modules' `_modules` attribute is pickled.
    Model,
    /// A training checkpoint, a dict holding this key ("state_dict" in timm's train.py,
    /// "model" in DeiT's), the weights under it as far as the bytes tell.
    Checkpoint(&'static str),
    /// A state dict, as far as the bytes tell.
    Weights,
}

impl Saved {
    /// What the pickle of a zip's `data.pkl` among `bytes` holds, from its first object and
    /// the strings in it (a legacy file's pickle, after three others, is not looked into).
    /// torch.save pickles with protocol 2, which writes a string as `X`, its length in 4
    /// bytes, then the string: a key is found whole, not as part of a longer name.
    fn recognise(bytes: &[u8]) -> Self {
        let string = |text: &str| {
            [
                b"X",
                &(text.len() as u32).to_le_bytes()[..],
                text.as_bytes(),
            ]
            .concat()
        };
        let Some(pickle) = after(bytes, b"data.pkl").and_then(|rest| after(rest, b"\x80\x02"))
        else {
            return Self::Weights;
        };
        // A dict: a state dict is an OrderedDict, a training checkpoint a plain one.
        if pickle.starts_with(b"}") {
            return ["state_dict", "model"]
                .into_iter()
                .find(|key| holds(pickle, &string(key)))
                .map_or(Self::Weights, Self::Checkpoint);
        }
        // An object of a class other than the state dict's, with modules.
        let class = pickle.starts_with(b"c") && !pickle.starts_with(b"ccollections\nOrderedDict\n");
        match class && holds(pickle, &string("_modules")) {
            true => Self::Model,
            false => Self::Weights,
        }
    }
}

impl PyTorchFile {
    /// What `bytes` (not a safetensors file) are, if a PyTorch file. Archive entries are
    /// looked for by name among the bytes, as the zip's directory spells them.
    pub(super) fn recognise(bytes: &[u8]) -> Option<Self> {
        // Protocol 2 pickle opcodes, then the LONG1 of torch.serialization's MAGIC_NUMBER.
        const LEGACY_START: [u8; 14] = [
            0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
        ];
        if bytes.starts_with(&LEGACY_START) {
            return Some(Self::Save(Saved::recognise(bytes)));
        }
        if !bytes.starts_with(ZIP_START) {
            return None;
        }
        if holds(bytes, b"/archive_format") {
            Some(Self::Export)
        } else if holds(bytes, b"/constants.pkl") {
            Some(Self::TorchScript)
        } else if holds(bytes, b"/data.pkl") {
            Some(Self::Save(Saved::recognise(bytes)))
        } else {
            None
        }
    }

    /// What to do with the file at `path`: the line of Python that writes its state dict as
    /// a safetensors file beside it.
    pub(super) fn conversion(self, path: &Path) -> String {
        let converted = free_name_beside(path);
        let quoted = format!("{:?}", path.display().to_string());
        // torch.load's weights-only default (PyTorch 2.6 on) refuses a pickle that holds
        // other objects than tensors and containers: a whole model, or a training
        // checkpoint with its arguments (timm's train.py saves an argparse.Namespace).
        let trusted = format!("torch.load({quoted}, map_location=\"cpu\", weights_only=False)");
        let trust = "; weights_only=False runs the code its pickle names: use it on a file you \
                     trust";
        let (what, state_dict, other_contents) = match self {
            Self::Save(Saved::Model) => (
                "torch.save of a whole model".to_string(),
                format!("{trusted}.state_dict()"),
                format!("{trust} (the model's classes must be importable)"),
            ),
            Self::Save(Saved::Checkpoint(key)) => (
                format!("torch.save of a training checkpoint, the weights under {key:?}"),
                format!("{trusted}[{key:?}]"),
                trust.to_string(),
            ),
            Self::Save(Saved::Weights) => (
                "torch.save".to_string(),
                format!("torch.load({quoted}, map_location=\"cpu\")"),
                format!(
                    ". Where the file is a training checkpoint (a dict with the weights under a \
                     key such as \"state_dict\", as timm's train.py saves them, or \"model\") \
                     or a whole model (torch.save(model)), which torch.load refuses as not \
                     weights only or gives as no state dict, put in its place `{trusted}[\
                     \"state_dict\"]` (with the dict's key) or `{trusted}.state_dict()`, for a \
                     file you trust: weights_only=False runs the code its pickle names"
                ),
            ),
            Self::TorchScript => (
                "torch.jit.save".to_string(),
                format!("torch.jit.load({quoted}, map_location=\"cpu\").state_dict()"),
                String::new(),
            ),
            Self::Export => (
                "torch.export.save".to_string(),
                format!("torch.export.load({quoted}).state_dict"),
                String::new(),
            ),
        };
        format!(
            "{} is a PyTorch file ({what}), not a safetensors file; vit reads safetensors \
             only. Convert its state dict (with timm's parameter names) in Python: `import \
             json, torch, safetensors.torch as st; st.save_file({state_dict}, {:?}, \
             metadata={{\"config\": json.dumps(cfg)}})`, where cfg is the dict of the nine hyperparameters \
             ({}); README.md, Checkpoints, shows the names{other_contents}",
            path.display(),
            converted.display().to_string(),
            ViTConfig::field_names().join(", "),
        )
    }
}
