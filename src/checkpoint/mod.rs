//! Checkpoints: safetensors files whose tensor names are timm's `state_dict` keys and
//! whose metadata holds the model config as JSON (`config`), so that a file written here
//! loads with `strict=True` into timm's `VisionTransformer`, and the other way round.

mod advice;
mod test_set;

pub use test_set::dataset_args;

use crate::data::Dataset;
use crate::fsutil::write_atomic;
use crate::listing::{first_and_more, noun_for};
use crate::model::{ViTConfig, VisionTransformer};
pub(crate) use advice::first_few;
use advice::{PyTorchFile, SHOWN};
use anyhow::{anyhow, bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, Metadata, View};
use safetensors::SafeTensorError;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// Metadata key of the model config JSON.
const CONFIG_KEY: &str = "config";
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
        let kind = tensor.kind();
        let Some(dtype) = dtype_of(kind) else {
            bail!("cannot store a tensor of kind {kind:?}");
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

/// The tensor kinds a checkpoint may hold, with their safetensors dtypes.
const KINDS: [(Kind, Dtype); 8] = [
    (Kind::Float, Dtype::F32),
    (Kind::Double, Dtype::F64),
    (Kind::BFloat16, Dtype::BF16),
    (Kind::Half, Dtype::F16),
    (Kind::Int64, Dtype::I64),
    (Kind::Int, Dtype::I32),
    (Kind::Uint8, Dtype::U8),
    (Kind::Bool, Dtype::BOOL),
];

/// The safetensors dtype a tensor of `kind` is stored as; None for a kind it does not take.
fn dtype_of(kind: Kind) -> Option<Dtype> {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|&(_, dtype)| dtype)
}

fn kind_of(dtype: Dtype) -> Result<Kind> {
    match KINDS.iter().find(|(_, d)| *d == dtype) {
        Some(&(kind, _)) => Ok(kind),
        None => {
            let readable: Vec<String> = KINDS.iter().map(|(_, d)| format!("{d:?}")).collect();
            bail!(
                "its dtype is {dtype:?}, which vit does not read (it reads {}): convert the \
                 tensor, say to float32, in Python, or leave it out of the file if it is not \
                 one of the model's parameters (a step counter, say)",
                readable.join(", ")
            )
        }
    }
}

/// A header's shape as libtorch takes it, or an error where libtorch may not make the
/// tensor: safetensors accepts any sizes whose product is 0 (a tensor with no elements),
/// however large the others, and libtorch refuses sizes past i64's range and those whose
/// product without the zeros overflows 64 bits. vit refuses a product past i64's range,
/// which no real tensor comes near.
fn tensor_shape(shape: &[usize]) -> Result<Vec<i64>> {
    let too_large = || {
        anyhow!(
            "its shape {shape:?} is larger than a tensor may be (at most 2^63 - 1 in all, \
             not counting sizes of 0): the file is damaged"
        )
    };
    let sizes: Vec<i64> = shape
        .iter()
        .map(|&size| i64::try_from(size))
        .collect::<Result<_, _>>()
        .map_err(|_| too_large())?;
    sizes
        .iter()
        .try_fold(1i64, |product, &size| product.checked_mul(size.max(1)))
        .ok_or_else(too_large)?;
    Ok(sizes)
}

/// What to say when a folder is given as a checkpoint: the checkpoints in it, if any.
fn folder_given(dir: &Path) -> String {
    let mut checkpoints: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".safetensors") && name != crate::train::RESUME_STATE)
        .collect();
    checkpoints.sort();
    if checkpoints.is_empty() {
        format!(
            "{} is a folder, not a checkpoint, and holds none: give a .safetensors file",
            dir.display()
        )
    } else {
        // A run folder's usual choice, where there is one.
        let usual = crate::train::MODEL_FILES.best;
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

/// The file at `path`, opened for reading, and its size; where it cannot be opened, the
/// error names the checkpoint vit saved beside it, if any (`best_model.pth`, the
/// notebook's name, where vit saved best_model.safetensors).
fn open(path: &Path) -> Result<(File, u64)> {
    let opened = File::open(path).and_then(|file| Ok((file.metadata()?.len(), file)));
    let (size, file) = opened.with_context(|| {
        let saved = path.with_extension("safetensors");
        match saved != path && saved.is_file() {
            true => format!(
                "cannot read {}; did you mean {}?",
                path.display(),
                saved.display()
            ),
            false => format!("cannot read {}", path.display()),
        }
    })?;
    Ok((file, size))
}

/// safetensors' limit on its JSON header's length, beyond which it refuses a file.
const MAX_HEADER_LENGTH: u64 = 100_000_000;

/// The header of the safetensors file `file` (of `size` bytes) and its length, read alone:
/// the tensor data after it is not. Ok(Err) with safetensors' own error for a file it
/// would refuse: no safetensors header, or one that describes other data than the file
/// holds after it. An Err is the file's reading failing.
fn read_header(
    file: &mut File,
    size: u64,
) -> std::io::Result<Result<(u64, Metadata), SafeTensorError>> {
    if size < 8 {
        return Ok(Err(SafeTensorError::HeaderTooSmall));
    }
    let mut length = [0u8; 8];
    file.read_exact(&mut length)?;
    let length = u64::from_le_bytes(length);
    if length > MAX_HEADER_LENGTH {
        return Ok(Err(SafeTensorError::HeaderTooLarge));
    }
    if 8 + length > size {
        return Ok(Err(SafeTensorError::InvalidHeaderLength));
    }
    let mut header = vec![0; length as usize];
    file.read_exact(&mut header)?;
    let parse = || {
        let header = std::str::from_utf8(&header).map_err(SafeTensorError::InvalidHeader)?;
        // Checks that the tensors' offsets follow each other and fit their shapes.
        let metadata: Metadata =
            serde_json::from_str(header).map_err(SafeTensorError::InvalidHeaderDeserialization)?;
        let data_length = metadata
            .tensors()
            .values()
            .map(|info| info.data_offsets.1 as u64)
            .max()
            .unwrap_or(0);
        match data_length.checked_add(8 + length) == Some(size) {
            true => Ok((length, metadata)),
            false => Err(SafeTensorError::MetadataIncompleteBuffer),
        }
    };
    Ok(parse())
}

/// The first and last bytes of `file` (of `size` bytes), as many as tell what a file that
/// is no safetensors file is (see [`not_safetensors`]): PyTorch's and images' magic
/// numbers open a file, and a zip names its entries (some 100 bytes each) in the directory
/// at its end, where TorchScript's `constants.pkl`, written after the model's tensors, is
/// found.
fn read_ends(file: &mut File, size: u64) -> std::io::Result<Vec<u8>> {
    const START: u64 = 4096;
    const END: u64 = 1 << 20;
    let mut bytes = Vec::new();
    file.rewind()?;
    file.by_ref().take(START).read_to_end(&mut bytes)?;
    file.seek(SeekFrom::Start(size.saturating_sub(END).max(START)))?;
    file.take(END).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The error for the file at `path` that safetensors would refuse (`bytes`, its first and
/// last ones): what it is instead (a PyTorch file, an image) and what to give, or else
/// `error` under the file's name.
fn not_safetensors(path: &Path, bytes: &[u8], error: anyhow::Error) -> anyhow::Error {
    if let Some(kind) = PyTorchFile::recognise(bytes) {
        return anyhow!("{}", kind.conversion(path));
    }
    // PNG and JPEG only, what vit predict reads: other formats' magic numbers are two
    // bytes, which a safetensors header length can begin with.
    let image = image::guess_format(bytes)
        .ok()
        .filter(|format| matches!(format, image::ImageFormat::Png | image::ImageFormat::Jpeg));
    if let Some(format) = image {
        return anyhow!(
            "{} is an image ({format:?}), not a checkpoint: --checkpoint takes a \
             .safetensors file that vit train saved (vit predict takes the images \
             after it)",
            path.display()
        );
    }
    // A zip's first 8 bytes (its magic number, then the version that extracts it) read as
    // a header length of tens of GB, which safetensors calls too large.
    if let Some(refusal) = advice::other_zip(path, bytes) {
        return anyhow!("{refusal}");
    }
    if is_text(bytes) {
        // Beside a run's config.json or metrics.csv, its best model.
        let best = crate::fsutil::folder_of(path).join(crate::train::MODEL_FILES.best);
        let instead = match best.is_file() {
            true => format!(", such as {}", best.display()),
            false => String::new(),
        };
        return anyhow!(
            "{} is a text file, not a checkpoint: --checkpoint takes a .safetensors file \
             that vit train saved{instead}",
            path.display()
        );
    }
    error.context(format!(
        "{} is not a valid safetensors file (not one, or a damaged one)",
        path.display()
    ))
}

/// Whether `start`, a file's first bytes, is text: UTF-8 (but for a character cut at the
/// end) without NUL bytes. A safetensors file is never that: its first 8 bytes are its
/// header's length, whose top bytes are 0.
fn is_text(start: &[u8]) -> bool {
    let start = &start[..start.len().min(4096)];
    let valid = match std::str::from_utf8(start) {
        Ok(_) => true,
        // A character cut at the end is no sign of binary data.
        Err(error) => error.error_len().is_none(),
    };
    !start.is_empty() && valid && !start.contains(&0)
}

/// Named tensors and string metadata, as one safetensors file holds them.
pub struct TensorFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// The metadata of the safetensors file at `path`, read from its header alone (without its
/// tensors); None where there is none to read (no such file, not a file, a damaged one).
pub fn read_metadata(path: &Path) -> Option<HashMap<String, String>> {
    // A pipe's open would wait for a writer.
    if !path.is_file() {
        return None;
    }
    let (mut file, size) = open(path).ok()?;
    let (_, header) = read_header(&mut file, size).ok()?.ok()?;
    header.metadata().clone()
}

impl TensorFile {
    /// Reads a safetensors file, or says what `path` is instead (a folder, a pipe, a PyTorch
    /// pickle, an image, ...) and what to give. Its header is checked before its tensors
    /// are read: a large file of something else is refused at once.
    pub fn read(path: &Path) -> Result<Self> {
        if path.is_dir() {
            bail!("{}", folder_given(path));
        }
        if let Some(kind) = crate::fsutil::kind_if_not_a_file(path) {
            bail!(
                "{} is {kind}, not a checkpoint file: --checkpoint takes a .safetensors file \
                 that vit train saved",
                path.display()
            );
        }
        let (mut file, size) = open(path)?;
        let cannot_read = || format!("cannot read {}", path.display());
        let (header_length, header) =
            match read_header(&mut file, size).with_context(cannot_read)? {
                Ok(header) => header,
                Err(error) => {
                    let ends = read_ends(&mut file, size).with_context(cannot_read)?;
                    return Err(not_safetensors(path, &ends, error.into()));
                }
            };
        let mut data = vec![0; (size - 8 - header_length) as usize];
        file.read_exact(&mut data).with_context(cannot_read)?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let mut tensors = BTreeMap::new();
        for (name, info) in header.tensors() {
            let in_tensor = || format!("{}: tensor {name}", path.display());
            let shape = tensor_shape(&info.shape).with_context(in_tensor)?;
            let kind = kind_of(info.dtype).with_context(in_tensor)?;
            let (start, end) = info.data_offsets;
            let tensor = Tensor::f_from_data_size(&data[start..end], &shape, kind)?;
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
            let names: Vec<&String> = self.tensors.keys().collect();
            format!("no tensor `{name}` (has: {})", first_few(&names))
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

    /// The names of the tensors that hold NaN or infinite values, which vit train never
    /// saves (a loss, or at a Ctrl-C weights, that are not finite stop a run before its
    /// weights are written).
    /// Judged in float32, the kind vit computes in: a float64 value beyond float32's
    /// range (1e300, say) loads as infinity.
    pub fn not_finite(&self) -> Vec<&String> {
        self.tensors
            .iter()
            .filter(|(_, t)| {
                t.is_floating_point()
                    && t.to_kind(Kind::Float).isfinite().all().int64_value(&[]) == 0
            })
            .map(|(name, _)| name)
            .collect()
    }

    /// The model config stored under `config`, validated, and refused where its tensors'
    /// shapes contradict it (before its own checks, which would name the wrong sizes).
    pub fn config(&self) -> Result<ViTConfig> {
        let json = self
            .metadata
            .get(CONFIG_KEY)
            .with_context(|| self.missing_config_advice())?;
        let config = ViTConfig::parse_json(json)?;
        self.check_config_matches_shapes(&config)?;
        config.validate()?;
        Ok(config)
    }

    /// Copies the tensors into `vs`, which must have exactly the same names and shapes.
    /// The error lists the missing, unexpected and mis-shaped tensors (the first few of
    /// each), and says which of timm's model options the names point to.
    pub fn load_into(&self, vs: &nn::VarStore) -> Result<()> {
        let variables = vs.variables();
        let problems = self.mismatches(&variables);
        if !problems.is_empty() {
            // Another model's names (a torchvision ViT's, say): vit's are timm's.
            let none_is_vits = !self.tensors.is_empty()
                && self
                    .tensors
                    .keys()
                    .all(|name| !variables.contains_key(name));
            let names = match none_is_vits {
                true => {
                    ". None of its tensor names is vit's: vit reads a timm VisionTransformer's \
                     state dict, by timm's names (patch_embed.proj.weight, cls_token, \
                     pos_embed, blocks.0.attn.qkv.weight, ..., head.weight; README: \
                     Checkpoints)"
                }
                false => "",
            };
            bail!(
                "checkpoint does not match the model: {}{}{names}",
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

    /// How the tensors differ from `variables` (a model's, by name): the missing keys, the
    /// unexpected ones and the mis-shaped tensors, each a part of the message where there
    /// are any. Empty when they match.
    fn mismatches(&self, variables: &HashMap<String, Tensor>) -> Vec<String> {
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
            let (shown, more) = first_and_more(&mis_shaped, SHOWN);
            let others = match more {
                0 => String::new(),
                more => format!(
                    "; and {more} more {} of another shape",
                    noun_for(more, "tensor")
                ),
            };
            problems.push(shown.join("; ") + &others);
        }
        // Integer or boolean tensors are no model's trained weights (copied into the model,
        // they would be taken as such without a word).
        // By name, as the map keeps them.
        let not_floats: Vec<String> = self
            .tensors
            .iter()
            .filter(|(name, tensor)| variables.contains_key(*name) && !tensor.is_floating_point())
            .map(|(name, tensor)| {
                let dtype = dtype_of(tensor.kind());
                format!(
                    "{name} ({})",
                    dtype.map_or("?".into(), |d| format!("{d:?}"))
                )
            })
            .collect();
        if !not_floats.is_empty() {
            problems.push(format!(
                "tensors that are not floating-point where the model's weights are (F32, \
                 F64, F16 and BF16 load): {}",
                first_few(&not_floats)
            ));
        }
        problems
    }
}

/// A model rebuilt from a checkpoint: its parameters, the module, and the file's metadata.
pub struct LoadedModel {
    pub vs: nn::VarStore,
    pub model: VisionTransformer,
    pub metadata: HashMap<String, String>,
}

impl LoadedModel {
    /// The dataset the checkpoint records it was trained on, if any.
    pub fn dataset(&self) -> Option<&str> {
        self.metadata.get(DATASET_KEY).map(String::as_str)
    }

    /// The class names the checkpoint records, when they are the model's (see
    /// [`Self::class_names`] for names in every case).
    pub fn recorded_classes(&self) -> Option<Vec<String>> {
        recorded_class_names(&self.metadata, self.model.config.num_classes)
    }

    /// The recorded class names, or `class 0`, `class 1`, ... when the checkpoint has none
    /// (one saved from timm, say) or a broken one.
    pub fn class_names(&self) -> Vec<String> {
        let num_classes = self.model.config.num_classes;
        self.recorded_classes()
            .unwrap_or_else(|| (0..num_classes).map(unnamed_class).collect())
    }

    /// Fails unless the model from `path` takes RGB images, the only ones vit reads.
    pub fn ensure_rgb(&self, path: &Path) -> Result<()> {
        let channels = self.model.config.in_channels;
        ensure!(
            channels == 3,
            "{} takes images of {channels} {}, but {}: it can only run RGB models",
            path.display(),
            noun_for(channels, "channel"),
            crate::data::READ_AS_RGB
        );
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
    file.check_no_wrapper_prefix(path)?;
    let config = file
        .config()
        .with_context(|| format!("in {}", path.display()))?;
    let vs = nn::VarStore::new(device);
    let model = VisionTransformer::new(&vs.root(), &config)?;
    file.load_into(&vs)
        .with_context(|| format!("loading {}", path.display()))?;
    // Every output would be NaN, and an accuracy of NaN logits a plausible-looking 1/C.
    // vit train never saves such weights: the file is damaged, or not vit's. Checked
    // once loaded, so on the model's own tensors only.
    let not_finite = file.not_finite();
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
            "warning: {} has `classes` metadata that is not a list of {num_classes} names (each \
             a line of text, not empty); it is ignored",
            path.display()
        );
    }
    for (key, used) in [
        (MEAN_KEY, crate::data::CIFAR_MEAN),
        (STD_KEY, crate::data::CIFAR_STD),
    ] {
        let Some(recorded) = file.metadata.get(key) else {
            continue;
        };
        // Unreadable values are as far from vit's as other ones.
        let same = serde_json::from_str::<[f64; 3]>(recorded)
            .is_ok_and(|values| values.iter().zip(used).all(|(a, b)| (a - b).abs() < 1e-6));
        if !same {
            eprintln!(
                "warning: {} records normalisation {key} {}, but vit normalises inputs with \
                 the notebook's {used:?}: its predictions may be off",
                path.display(),
                recorded
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

/// What class `index` is called where a checkpoint records no class names.
pub fn unnamed_class(index: i64) -> String {
    format!("class {index}")
}

/// The `classes` metadata when it is a list of `num_classes` names, each a line of text
/// (`load` warns about one that is not): a name with a line break or another control
/// character, or none at all, would garble the reports that print one class a line.
fn recorded_class_names(
    metadata: &HashMap<String, String>,
    num_classes: i64,
) -> Option<Vec<String>> {
    let is_a_name = |name: &String| !name.is_empty() && !name.chars().any(char::is_control);
    serde_json::from_str::<Vec<String>>(metadata.get(CLASSES_KEY)?)
        .ok()
        .filter(|names| names.len() as i64 == num_classes && names.iter().all(is_a_name))
}
