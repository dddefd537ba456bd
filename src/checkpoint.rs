//! Checkpoints: safetensors files whose tensor names are timm's `state_dict` keys and
//! whose metadata holds the model config as JSON (`config`), so that a file written here
//! loads with `strict=True` into timm's `VisionTransformer`, and the other way round.

use crate::data::{Dataset, TestSet};
use crate::fsutil::write_atomic;
use crate::model::{ViTConfig, VisionTransformer};
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// Metadata key of the model config JSON.
pub const CONFIG_KEY: &str = "config";
/// Metadata keys of what the model was trained on (see [`dataset_metadata`]).
const DATASET_KEY: &str = "dataset";
const CLASSES_KEY: &str = "classes";
const MEAN_KEY: &str = "mean";
const STD_KEY: &str = "std";
/// Metadata key of a run's resume state (`resume.safetensors`), which is no checkpoint.
pub const PROGRESS_KEY: &str = "progress";

/// A tensor copied to host memory in the layout safetensors stores.
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl HostTensor {
    fn new(tensor: &Tensor) -> Result<Self> {
        let tensor = tensor.detach().to_device(Device::Cpu).contiguous();
        let dtype = match tensor.kind() {
            Kind::Float => Dtype::F32,
            Kind::Double => Dtype::F64,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Half => Dtype::F16,
            Kind::Int64 => Dtype::I64,
            Kind::Int => Dtype::I32,
            Kind::Uint8 => Dtype::U8,
            Kind::Bool => Dtype::BOOL,
            other => bail!("cannot store a tensor of kind {other:?}"),
        };
        let numel = tensor.numel();
        let mut bytes = vec![0u8; numel * tensor.kind().elt_size_in_bytes()];
        tensor.f_copy_data_u8(&mut bytes, numel)?;
        let shape = tensor.size().iter().map(|&d| d as usize).collect();
        Ok(Self {
            dtype,
            shape,
            bytes,
        })
    }
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// A safetensors file's bytes with the metadata in its header sorted by key. safetensors
/// writes it in a HashMap's order, which changes from process to process: without this,
/// two identical runs write checkpoints whose bytes (and hashes) differ.
fn with_sorted_header(mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header_end = 8 + header_len;
    let mut header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..header_end])?;
    if let Some(metadata) = header.get_mut("__metadata__") {
        let sorted: BTreeMap<String, String> = serde_json::from_value(metadata.take())?;
        *metadata = serde_json::to_value(sorted)?;
    }
    let mut json = serde_json::to_vec(&header)?;
    // The tensors' data stays aligned to 8 bytes, as safetensors pads its header.
    json.resize(json.len().next_multiple_of(8), b' ');
    let prefix = [(json.len() as u64).to_le_bytes().as_slice(), &json].concat();
    bytes.splice(..header_end, prefix);
    Ok(bytes)
}

fn kind_of(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        other => bail!(
            "its dtype is {other:?}, which vit does not read (it reads F32, F64, BF16, F16, \
             I64, I32, U8 and BOOL): convert the tensor, say to float32, in Python"
        ),
    })
}

/// What to say when a folder is given as a checkpoint: the checkpoints in it, if any.
fn folder_given(dir: &Path) -> String {
    let mut checkpoints: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".safetensors") && name != "resume.safetensors")
        .collect();
    checkpoints.sort();
    if checkpoints.is_empty() {
        format!(
            "{} is a folder, not a checkpoint, and holds none: give a .safetensors file",
            dir.display()
        )
    } else {
        // A run folder's usual choice, where there is one.
        let usual = "best_model.safetensors";
        let best = if checkpoints.iter().any(|c| c == usual) {
            usual
        } else {
            &checkpoints[0]
        };
        format!(
            "{} is a folder, not a checkpoint: give one of the checkpoints in it ({}), such \
             as {}",
            dir.display(),
            checkpoints.join(", "),
            dir.join(best).display()
        )
    }
}

/// Named tensors and string metadata, as one safetensors file holds them.
pub struct TensorFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<Self> {
        if path.is_dir() {
            bail!("{}", folder_given(path));
        }
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let parse = || -> Result<_> {
            let (_, header) = SafeTensors::read_metadata(&bytes)?;
            Ok((header, SafeTensors::deserialize(&bytes)?))
        };
        let (header, file) = parse().or_else(|e| {
            if let Some(kind) = PyTorchFile::recognise(&bytes) {
                bail!("{}", kind.conversion(path));
            }
            Err(e.context(format!(
                "{} is not a valid safetensors file (not one, or a damaged one)",
                path.display()
            )))
        })?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let mut tensors = BTreeMap::new();
        for (name, view) in file.tensors() {
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let kind = kind_of(view.dtype())
                .with_context(|| format!("{}: tensor {name}", path.display()))?;
            let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)?;
            tensors.insert(name, tensor);
        }
        Ok(Self { tensors, metadata })
    }

    /// The file's bytes: a copy, so the tensors may change the moment this returns.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let host: Vec<(&String, HostTensor)> = self
            .tensors
            .iter()
            .map(|(name, t)| Ok((name, HostTensor::new(t)?)))
            .collect::<Result<_>>()?;
        let bytes = safetensors::serialize(
            host.iter().map(|(name, t)| (name.as_str(), t)),
            Some(self.metadata.clone()),
        )?;
        with_sorted_header(bytes)
    }

    /// Writes atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// The tensor called `name`, or an error naming the file's contents.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).with_context(|| {
            format!(
                "no tensor `{name}` (has: {:?})",
                self.tensors.keys().collect::<Vec<_>>()
            )
        })
    }

    /// The tensors named `PREFIX.rest`, renamed `rest` (no metadata).
    pub fn with_prefix(&self, prefix: &str) -> TensorFile {
        let prefix = format!("{prefix}.");
        let tensors = self
            .tensors
            .iter()
            .filter_map(|(name, t)| {
                Some((name.strip_prefix(&prefix)?.to_string(), t.shallow_clone()))
            })
            .collect();
        TensorFile {
            tensors,
            metadata: HashMap::new(),
        }
    }

    /// The model config stored under `config`.
    pub fn config(&self) -> Result<ViTConfig> {
        let json = self
            .metadata
            .get(CONFIG_KEY)
            .with_context(|| self.missing_config_advice())?;
        ViTConfig::from_json(json)
    }

    /// What to do about a file without `config` metadata: what the tensors' shapes give,
    /// for the user to complete, where they can tell.
    fn missing_config_advice(&self) -> String {
        match self.config_from_shapes() {
            Some(shapes) => format!(
                "no `{CONFIG_KEY}` metadata. The tensors' shapes give {}, all but num_heads \
                 (a divisor of embed_dim, which shapes cannot tell, and a wrong one loads and \
                 gives wrong outputs: take it from the model that saved the file): save the \
                 checkpoint with metadata={{'{CONFIG_KEY}': that JSON with NUM_HEADS filled \
                 in}}",
                json_without_heads(&shapes)
            ),
            None => format!(
                "no `{CONFIG_KEY}` metadata: save the checkpoint with \
                 metadata={{'{CONFIG_KEY}': json.dumps({{image_size, patch_size, in_channels, \
                 embed_dim, num_heads, mlp_dim, num_layers, num_classes, dropout}})}}"
            ),
        }
    }

    /// Fails when the tensors' shapes give another model than `config` (as the file's
    /// metadata records it): the message names the sizes that differ, rather than listing
    /// every tensor of the wrong shape.
    pub fn check_config_matches_shapes(&self, config: &ViTConfig) -> Result<()> {
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
             tensors (their shapes give {}, all but num_heads)",
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

    /// Copies the tensors into `vs`, which must have exactly the same names and shapes.
    /// The error lists the missing, unexpected and mis-shaped tensors (the first few of
    /// each), and says which of timm's model options the names point to.
    pub fn load_into(&self, vs: &nn::VarStore) -> Result<()> {
        let variables = vs.variables();
        let mut problems = Vec::new();
        let mut missing: Vec<&String> = variables
            .keys()
            .filter(|k| !self.tensors.contains_key(*k))
            .collect();
        missing.sort();
        if !missing.is_empty() {
            problems.push(format!("missing keys: {}", first_few(&missing)));
        }
        let unexpected: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !variables.contains_key(*k))
            .collect();
        if !unexpected.is_empty() {
            problems.push(format!("unexpected keys: {}", first_few(&unexpected)));
        }
        let mis_shaped: Vec<String> = self
            .tensors
            .iter()
            .filter_map(|(name, tensor)| {
                let var = variables.get(name)?;
                (var.size() != tensor.size()).then(|| {
                    format!(
                        "`{name}` has shape {:?}, the model expects {:?}",
                        tensor.size(),
                        var.size()
                    )
                })
            })
            .collect();
        if !mis_shaped.is_empty() {
            let (shown, more) = shown_and_more(&mis_shaped);
            let others = match more {
                0 => String::new(),
                more => format!("; and {more} more tensors of another shape"),
            };
            problems.push(shown.join("; ") + &others);
        }
        if !problems.is_empty() {
            bail!(
                "checkpoint does not match the model: {}{}",
                problems.join("; "),
                self.layout_advice()
            );
        }
        tch::no_grad(|| {
            for (name, var) in &variables {
                var.shallow_clone().copy_(&self.tensors[name]);
            }
        });
        Ok(())
    }

    /// What the tensor names say of a model that is not vit's: a wrapper's prefix, or one
    /// of timm's `VisionTransformer` options that vit's model does not have. Empty when
    /// they say nothing.
    fn layout_advice(&self) -> String {
        let has = |part: &str| self.tensors.keys().any(|name| name.contains(part));
        let names = self.tensors.keys();
        if names.len() > 0 && names.clone().all(|name| name.starts_with("module.")) {
            return ". Every name starts with `module.`, as a DistributedDataParallel or \
                    DataParallel model's do: save model.module.state_dict() instead"
                .to_string();
        }
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
        ]
        .into_iter()
        .filter_map(|(found, option)| found.then_some(option))
        .collect();
        match options.is_empty() {
            true => String::new(),
            false => format!(
                ". Its names are those of a timm VisionTransformer made with {}, which vit's \
                 model does not have: vit's is timm's with class_token=True, \
                 global_pool='token', qkv_bias=True, and no LayerScale, QK norm, register or \
                 distillation tokens or pre-norm",
                options.join(", ")
            ),
        }
    }
}

/// `config` as JSON with `NUM_HEADS` where its head count goes, for the user to fill in.
fn json_without_heads(config: &ViTConfig) -> String {
    format!(
        "{{\"image_size\": {}, \"patch_size\": {}, \"in_channels\": {}, \"embed_dim\": {}, \
         \"num_heads\": NUM_HEADS, \"mlp_dim\": {}, \"num_layers\": {}, \"num_classes\": {}, \
         \"dropout\": 0.0}}",
        config.image_size,
        config.patch_size,
        config.in_channels,
        config.embed_dim,
        config.mlp_dim,
        config.num_layers,
        config.num_classes
    )
}

/// How many of each kind of problem a mismatched checkpoint's error lists: a wrapped
/// model's 44 names say no more than its first few.
const SHOWN: usize = 5;

/// The first [`SHOWN`] of `items` as a list, with how many more there are.
fn first_few<T: std::fmt::Debug>(items: &[T]) -> String {
    match shown_and_more(items) {
        (shown, 0) => format!("{shown:?}"),
        (shown, more) => format!("{shown:?} and {more} more"),
    }
}

/// The first [`SHOWN`] of `items`, and how many others there are.
fn shown_and_more<T>(items: &[T]) -> (&[T], usize) {
    let shown = items.len().min(SHOWN);
    (&items[..shown], items.len() - shown)
}

/// A file PyTorch writes, which vit does not read but can say how to convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PyTorchFile {
    /// `torch.save`: a zip archive with `data.pkl` (PyTorch 1.6 on), or a pickle that
    /// starts with PyTorch's magic number (before).
    Save,
    /// `torch.jit.save`: a zip archive with `constants.pkl` (and `data.pkl`) in it.
    TorchScript,
}

impl PyTorchFile {
    /// What `bytes` (not a safetensors file) are, if a PyTorch file. Archive entries are
    /// looked for by name among the bytes, as the zip's directory spells them.
    fn recognise(bytes: &[u8]) -> Option<Self> {
        // Protocol 2 pickle opcodes, then the LONG1 of torch.serialization's MAGIC_NUMBER.
        const LEGACY_START: [u8; 14] = [
            0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
        ];
        if bytes.starts_with(&LEGACY_START) {
            return Some(Self::Save);
        }
        if !bytes.starts_with(b"PK\x03\x04") {
            return None;
        }
        let holds = |name: &[u8]| bytes.windows(name.len()).any(|window| window == name);
        if holds(b"/constants.pkl") {
            Some(Self::TorchScript)
        } else if holds(b"/data.pkl") {
            Some(Self::Save)
        } else {
            None
        }
    }

    /// What to do with the file at `path`: the line of Python that writes its state dict as
    /// a safetensors file beside it.
    fn conversion(self, path: &Path) -> String {
        let mut converted = path.with_extension("safetensors");
        if converted == path {
            converted = path.with_extension("converted.safetensors");
        }
        let (what, load, state_dict) = match self {
            Self::Save => ("torch.save", "torch.load", ""),
            Self::TorchScript => ("torch.jit.save", "torch.jit.load", ".state_dict()"),
        };
        format!(
            "{} is a PyTorch file ({what}), not a safetensors file; vit reads safetensors \
             only. Convert its state dict (with timm's parameter names) in Python: `import \
             json, torch, safetensors.torch as st; st.save_file({load}({:?}, \
             map_location=\"cpu\"){state_dict}, {:?}, metadata={{\"config\": \
             json.dumps(cfg)}})`, where cfg is the dict of the nine hyperparameters \
             (image_size, patch_size, in_channels, embed_dim, num_heads, mlp_dim, num_layers, \
             num_classes, dropout); README.md, Checkpoints, shows the names{}",
            path.display(),
            path.display().to_string(),
            converted.display().to_string(),
            match self {
                Self::Save => {
                    ". Where torch.load gives a training checkpoint (a dict with the weights \
                     under a key such as \"state_dict\" or \"model\"), save that entry; \
                     where it gives a whole model (torch.save(model)), load it with \
                     weights_only=False and save its .state_dict()"
                }
                Self::TorchScript => "",
            }
        )
    }
}

/// A model rebuilt from a checkpoint: its parameters, the module, and the file's metadata.
pub struct LoadedModel {
    pub vs: nn::VarStore,
    pub model: VisionTransformer,
    pub metadata: HashMap<String, String>,
}

impl LoadedModel {
    /// Fails unless the model from `path` takes RGB images, as vit decodes image files.
    pub fn ensure_rgb(&self, path: &Path) -> Result<()> {
        let channels = self.model.config.in_channels;
        ensure!(
            channels == 3,
            "{} takes images of {channels} channel(s), but vit reads image files as RGB (3 \
             channels): it can only run RGB models on them",
            path.display()
        );
        Ok(())
    }

    /// The test split this model (from `path`) is evaluated on: the dataset `args` name, or
    /// the one the checkpoint records, fitted to the model (see [`Self::fit_dataset`]).
    pub fn test_set(
        &self,
        path: &Path,
        args: &crate::cli::CheckpointDatasetArgs,
    ) -> Result<TestSet> {
        let dataset_args = dataset_args(&self.metadata, args)
            .with_context(|| format!("choosing the test split for {}", path.display()))?;
        let mut dataset = crate::data::load_test(&dataset_args, self.model.config.image_size)?;
        self.fit_dataset(path, &mut dataset, &args.data_dir)?;
        Ok(dataset)
    }

    /// Fits `dataset` (read from `data_dir`) to the model from `path`, or fails: its
    /// channels and number of classes must match. A folder dataset's classes are numbered
    /// by name as the checkpoint records them (its folders may be some of the model's
    /// classes, and none other). Otherwise, a checkpoint that recorded other class names
    /// gets a warning, since the dataset's names then label the model's numbers.
    fn fit_dataset(&self, path: &Path, dataset: &mut TestSet, data_dir: &Path) -> Result<()> {
        let config = &self.model.config;
        dataset
            .test
            .check_channels(config.in_channels, &dataset.name, |_| {
                format!("{} was trained on other images", path.display())
            })?;
        let recorded = recorded_class_names(&self.metadata, config.num_classes);
        // A folder dataset (one with files) numbers its classes by folder name; names are
        // matched only when the checkpoint's are unique (ImageNet's repeat "crane").
        let numbered_by_name = dataset.files.is_some();
        let unique = |names: &&Vec<String>| {
            names.iter().collect::<std::collections::HashSet<_>>().len() == names.len()
        };
        if let Some(recorded) = recorded
            .as_ref()
            .filter(|names| numbered_by_name && unique(names))
        {
            dataset.relabel(recorded).with_context(|| {
                format!(
                    "{}: its test class folders must be classes of {}; rename or remove the \
                     others",
                    data_dir.display(),
                    path.display()
                )
            })?;
        }
        ensure!(
            dataset.classes.len() as i64 == config.num_classes,
            "{} has {} classes but {} ({}) has {}: use the dataset it was trained on",
            path.display(),
            config.num_classes,
            dataset.name,
            data_dir.display(),
            dataset.classes.len()
        );
        if let Some(recorded) = recorded.filter(|names| *names != dataset.classes) {
            eprintln!(
                "warning: {} was trained on the classes {:?}, but {} has {:?}: the dataset's \
                 names label the checkpoint's class numbers",
                path.display(),
                recorded,
                dataset.name,
                dataset.classes
            );
        }
        Ok(())
    }
}

/// Rebuilds the model a checkpoint describes (config from its metadata) on `device`.
pub fn load(path: &Path, device: Device) -> Result<LoadedModel> {
    let file = TensorFile::read(path)?;
    if file.metadata.contains_key(PROGRESS_KEY) {
        bail!(
            "{} is a run's resume state, not a checkpoint: use best_model.safetensors or \
             last_model.safetensors from the same folder",
            path.display()
        );
    }
    let config = file
        .config()
        .with_context(|| format!("in {}", path.display()))?;
    let vs = nn::VarStore::new(device);
    let model = VisionTransformer::new(&vs.root(), &config)?;
    if let Err(problems) = file.load_into(&vs) {
        // A config that the shapes contradict explains its mis-shaped tensors at once.
        let error = file.check_config_matches_shapes(&config).err();
        return Err(error
            .unwrap_or(problems)
            .context(format!("loading {}", path.display())));
    }
    // Every output would be NaN, and an accuracy of NaN logits a plausible-looking 1/C.
    // vit train never saves such weights: the file is damaged, or not vit's. Checked
    // once loaded, so on the model's own tensors only.
    let not_finite: Vec<&String> = file
        .tensors
        .iter()
        .filter(|(_, t)| t.is_floating_point() && t.isfinite().all().int64_value(&[]) == 0)
        .map(|(name, _)| name)
        .collect();
    ensure!(
        not_finite.is_empty(),
        "{} has NaN or infinite values in {}, so its every output would be NaN: the file is \
         damaged, or was saved from a training run that diverged. Use another checkpoint",
        path.display(),
        first_few(&not_finite)
    );
    warn_about_contents(path, &file, config.num_classes);
    Ok(LoadedModel {
        vs,
        model,
        metadata: file.metadata,
    })
}

/// Warnings for a checkpoint that loads but may not give what its user expects: inputs
/// normalised otherwise than vit does, or class names that cannot be the model's.
fn warn_about_contents(path: &Path, file: &TensorFile, num_classes: i64) {
    if file.metadata.contains_key(CLASSES_KEY)
        && recorded_class_names(&file.metadata, num_classes).is_none()
    {
        eprintln!(
            "warning: {} has `classes` metadata that is not a list of {num_classes} names; \
             it is ignored",
            path.display()
        );
    }
    for (key, used) in [
        (MEAN_KEY, crate::data::CIFAR_MEAN),
        (STD_KEY, crate::data::CIFAR_STD),
    ] {
        let recorded = file
            .metadata
            .get(key)
            .map(|json| serde_json::from_str::<[f64; 3]>(json));
        let matches =
            |values: &[f64; 3]| values.iter().zip(used).all(|(a, b)| (a - b).abs() < 1e-6);
        if recorded
            .as_ref()
            .is_some_and(|values| !values.as_ref().is_ok_and(matches))
        {
            eprintln!(
                "warning: {} records normalisation {key} {}, but vit normalises inputs with \
                 the notebook's {used:?}: its predictions may be off",
                path.display(),
                file.metadata[key]
            );
        }
    }
}

/// Metadata that makes a checkpoint self-describing for `vit eval` and `vit predict`
/// (`mean` and `std` record the normalisation for other tools; vit always uses the
/// notebook's constants).
pub fn dataset_metadata(dataset: &Dataset) -> Vec<(&'static str, String)> {
    vec![
        (DATASET_KEY, dataset.name.clone()),
        (
            CLASSES_KEY,
            serde_json::to_string(&dataset.classes).expect("strings serialise"),
        ),
        (
            MEAN_KEY,
            serde_json::to_string(&crate::data::CIFAR_MEAN).expect("floats serialise"),
        ),
        (
            STD_KEY,
            serde_json::to_string(&crate::data::CIFAR_STD).expect("floats serialise"),
        ),
    ]
}

/// Writes the model's parameters with `config` and `extra` metadata, atomically.
pub fn save(
    vs: &nn::VarStore,
    config: &ViTConfig,
    extra: &[(&str, String)],
    path: &Path,
) -> Result<()> {
    write_atomic(path, &to_bytes(vs, config, extra)?)
}

/// The checkpoint file `save` writes, as bytes.
pub fn to_bytes(
    vs: &nn::VarStore,
    config: &ViTConfig,
    extra: &[(&str, String)],
) -> Result<Vec<u8>> {
    let mut metadata: HashMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    metadata.insert(CONFIG_KEY.to_string(), config.to_json());
    TensorFile {
        tensors: vs.variables().into_iter().collect(),
        metadata,
    }
    .to_bytes()
}

/// The dataset a checkpoint is evaluated on: `--dataset` when given, else the one its
/// `dataset` metadata records, with coarse CIFAR-100 labels when asked for or when that
/// recorded dataset used them.
pub fn dataset_args(
    metadata: &HashMap<String, String>,
    args: &crate::cli::CheckpointDatasetArgs,
) -> Result<crate::cli::DatasetArgs> {
    use crate::cli::DatasetName;
    use crate::data::{CIFAR10, CIFAR100, CIFAR100_COARSE, FOLDER};
    let recorded = metadata.get(DATASET_KEY).map(String::as_str);
    let dataset = match (args.dataset, recorded) {
        (Some(name), _) => name,
        (None, Some(CIFAR10)) => DatasetName::Cifar10,
        (None, Some(CIFAR100 | CIFAR100_COARSE)) => DatasetName::Cifar100,
        (None, Some(FOLDER)) => DatasetName::Folder,
        (None, Some(other)) => {
            bail!(
                "the checkpoint records the dataset `{other}`, which vit cannot read (it reads \
                 `{CIFAR10}`, `{CIFAR100}`, `{CIFAR100_COARSE}` and `{FOLDER}`); pass --dataset \
                 cifar10, cifar100 (with --coarse-labels for its 20 superclasses) or folder"
            )
        }
        (None, None) => bail!("the checkpoint does not record its dataset; pass --dataset"),
    };
    let recorded_coarse = recorded == Some(CIFAR100_COARSE) && dataset == DatasetName::Cifar100;
    Ok(crate::cli::DatasetArgs {
        dataset,
        data_dir: args.data_dir.clone(),
        coarse_labels: args.coarse_labels || recorded_coarse,
    })
}

/// Class names from the `classes` metadata, or `class 0`, `class 1`, ... when it has none
/// (a checkpoint saved from timm, say) or a broken one.
pub fn class_names(metadata: &HashMap<String, String>, num_classes: i64) -> Vec<String> {
    recorded_class_names(metadata, num_classes)
        .unwrap_or_else(|| (0..num_classes).map(|i| format!("class {i}")).collect())
}

/// The `classes` metadata when it is a list of `num_classes` names (`load` warns about
/// one that is not).
pub fn recorded_class_names(
    metadata: &HashMap<String, String>,
    num_classes: i64,
) -> Option<Vec<String>> {
    serde_json::from_str::<Vec<String>>(metadata.get(CLASSES_KEY)?)
        .ok()
        .filter(|names| names.len() as i64 == num_classes)
}
