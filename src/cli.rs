//! Every command and flag of `vit`. Model flags carry the notebook's hyperparameter names;
//! training flags carry PyTorch's.

use crate::listing::noun_for;
use crate::model::ViTConfig;
use anyhow::{bail, Result};
use clap::error::{ContextKind, ContextValue};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "vit",
    version,
    about = "The NYU DL HW4 Vision Transformer on tch-rs (libtorch)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `args` with each negative number that follows a long flag attached to it (`--lr -1e-3`
/// as `--lr=-1e-3`): clap takes a negative number for a value only in the forms it knows,
/// and `-1e-3` (an exponent with a sign) for a flag `-1`, so that vit's own check of the
/// value, which says what is wrong with it, would never see it.
fn negative_values_attached(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut attached: Vec<std::ffi::OsString> = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            // Only positional arguments follow.
            attached.push(arg);
            attached.extend(args.by_ref());
            break;
        }
        let negative_number = arg
            .to_str()
            .is_some_and(|text| text.starts_with('-') && text.parse::<f64>().is_ok());
        match attached.last_mut() {
            Some(flag)
                if negative_number
                    && flag
                        .to_str()
                        .is_some_and(|flag| flag.starts_with("--") && !flag.contains('=')) =>
            {
                flag.push("=");
                flag.push(&arg);
            }
            _ => attached.push(arg),
        }
    }
    attached
}

/// clap's `error` for the command line `args`, with a tip to write `--cuda-graph=SCOPE`
/// where the argument it did not expect is a scope given after a space (`vit train
/// --cuda-graph step`, which clap reads as a complete `--cuda-graph` and a stray `step`).
fn with_cuda_graph_scope_tip(mut error: clap::Error, args: &[std::ffi::OsString]) -> clap::Error {
    if let Some(ContextValue::String(stray)) = error.get(ContextKind::InvalidArg) {
        let scope_after_space = args.get(1).is_some_and(|command| command == "train")
            && CudaGraphScope::from_str(stray, false).is_ok()
            && args
                .windows(2)
                .any(|pair| pair[0] == "--cuda-graph" && pair[1] == stray.as_str());
        if scope_after_space {
            let tip = format!("a scope follows '=': write --cuda-graph={stray}");
            error.insert(
                ContextKind::Suggested,
                ContextValue::StyledStrs(vec![tip.into()]),
            );
        }
    }
    error
}

/// clap's `error` for the command line `args`, with a tip where the argument it did not
/// expect is a model flag (`--config`, `--embed-dim`, ...) given to a command that reads a
/// checkpoint, whose config sets the model: clap's own tip there (to pass it as a value, or
/// a similar flag such as `--threads` for `--num-heads`) leads astray.
fn with_checkpoint_model_tip(
    mut error: clap::Error,
    args: &[std::ffi::OsString],
    command: &mut clap::Command,
) -> clap::Error {
    let Some(ContextValue::String(invalid)) = error.get(ContextKind::InvalidArg) else {
        return error;
    };
    let flag = invalid.split('=').next().unwrap_or_default().to_string();
    let model_flags = <ModelArgs as clap::Args>::augment_args(clap::Command::new("model"));
    let is_model_flag = (model_flags.get_arguments()).any(|arg| {
        arg.get_long()
            .is_some_and(|long| flag == format!("--{long}"))
    });
    let subcommand = args
        .get(1)
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    let Some(reader) = command.find_subcommand_mut(subcommand) else {
        return error;
    };
    let reads_checkpoint = reader
        .get_arguments()
        .any(|arg| arg.get_long() == Some("checkpoint"));
    if is_model_flag && reads_checkpoint {
        let tip = format!(
            "the model's settings come from the checkpoint's config: leave out {flag} and its \
             value"
        );
        error.remove(ContextKind::SuggestedArg);
        error.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![tip.into()]),
        );
        // Without the similar flag clap put in the usage line.
        let usage = reader.render_usage();
        error.insert(ContextKind::Usage, ContextValue::StyledStr(usage));
    }
    error
}

impl Cli {
    /// The command line, parsed as `Cli::parse` does; exits with clap's message on an error.
    /// A flag's value may be a negative number (`--lr -1`, `--index -1`), which vit's own
    /// checks then explain, where clap would take it for a flag. Clap reads `vit train
    /// --cuda-graph step` as a complete `--cuda-graph` and a stray `step`, so that error
    /// gets a tip to write `--cuda-graph=step`.
    pub fn parse_args() -> Self {
        let args = negative_values_attached(std::env::args_os().collect());
        Self::try_parse_args(&args).unwrap_or_else(|error| error.exit())
    }

    /// `args` parsed as [`Self::parse_args`] does, or clap's error with vit's tips.
    fn try_parse_args(args: &[std::ffi::OsString]) -> Result<Self, clap::Error> {
        use clap::FromArgMatches;
        let mut command = Self::command_with_presets();
        command
            .try_get_matches_from_mut(args)
            .and_then(|mut matches| Self::from_arg_matches_mut(&mut matches))
            .map_err(|error| {
                let error = with_cuda_graph_scope_tip(error.format(&mut command), args);
                with_checkpoint_model_tip(error, args, &mut command)
            })
    }

    /// The command line as [`Self::parse_args`] reads it: clap's, with negative numbers
    /// taken as values, and each model flag's help ending with the presets' values
    /// (`[notebook: 256, small: 128, tiny: 32]`), read from the presets themselves.
    fn command_with_presets() -> clap::Command {
        use clap::CommandFactory;
        let presets: Vec<(&str, serde_json::Value)> = ViTConfig::preset_names()
            .into_iter()
            .map(|name| {
                let config = ViTConfig::preset(name).expect("a preset's name");
                let config = serde_json::to_value(config).expect("a config as JSON");
                (name, config)
            })
            .collect();
        let model_group = <ModelArgs as clap::Args>::group_id().expect("ModelArgs' group");
        Self::command().mut_subcommands(|subcommand| {
            let model_flags: Vec<clap::Id> = subcommand
                .get_groups()
                .filter(|group| group.get_id() == &model_group)
                .flat_map(|group| group.get_args().cloned())
                .collect();
            // vit train takes the dataset's class count, never a preset's.
            let train = subcommand.get_name() == "train";
            subcommand.mut_args(|arg| {
                let takes_values = arg.get_action().takes_values();
                let arg = arg.allow_negative_numbers(takes_values);
                let id = arg.get_id().as_str();
                if !model_flags.contains(arg.get_id()) || (train && id == "num_classes") {
                    return arg;
                }
                with_preset_values(arg, &presets)
            })
        })
    }
}

/// The model flag `arg` with its help ending in each of the `presets`' value (a preset's
/// name and its config as JSON): `[notebook: 256, small: 128, tiny: 32]`.
fn with_preset_values(arg: clap::Arg, presets: &[(&str, serde_json::Value)]) -> clap::Arg {
    let id = arg.get_id().as_str();
    let values: Vec<String> = presets
        .iter()
        .filter_map(|(name, config)| Some(format!("{name}: {}", config.get(id)?)))
        .collect();
    match values.is_empty() {
        // --config itself.
        true => arg,
        false => {
            let help = arg.get_help().map(|help| help.to_string());
            let help = format!("{} [{}]", help.unwrap_or_default(), values.join(", "));
            arg.help(help)
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the resolved model config (or a checkpoint's, with what it was trained on), a
    /// per-module parameter table and the forward FLOPs per image, and run the notebook's
    /// shape check.
    Info(InfoArgs),
    /// Fetch a CIFAR archive, verify its MD5, and unpack it into the data folder.
    Download(DownloadArgs),
    /// Summarise a dataset: counts per split and class, per-channel mean and std.
    Data(DataArgs),
    /// Train with the notebook's recipe (or a stronger one), writing a run folder.
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint on a dataset's test split.
    Eval(EvalArgs),
    /// Classify image files with a checkpoint (the top 5 classes, or --top-k).
    Predict(PredictArgs),
    /// Measure training and inference throughput and peak memory.
    Bench(BenchArgs),
    /// Draw loss and accuracy curves from one or more runs' metrics.csv.
    Plot(PlotArgs),
    /// Show where the model looks: attention rollout and last-layer heads over an image.
    Attention(AttentionArgs),
}

impl Command {
    /// Whether a closed pipe on stdout (`vit data | head`) may end the command at once: all
    /// but `train`, which must get to save its run.
    pub fn may_end_on_a_closed_pipe(&self) -> bool {
        !matches!(self, Command::Train(_))
    }
}

/// The nine hyperparameters of the notebook, starting from a named preset.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Starting point: notebook (the homework's cell), small or tiny.
    // Checked by the parser, as other flags' values are: an unknown name gets its message
    // listing the presets, and status 2.
    #[arg(
        long = "config",
        value_name = "PRESET",
        default_value = "notebook",
        value_parser = clap::builder::PossibleValuesParser::new(ViTConfig::preset_names())
    )]
    pub preset: String,
    /// Side of the square input images, in pixels.
    #[arg(long, value_parser = whole_number::<i64>(None))]
    pub image_size: Option<i64>,
    /// Side of the square patches (the patch embedding's kernel and stride).
    #[arg(long, value_parser = whole_number::<i64>(None))]
    pub patch_size: Option<i64>,
    /// Colour channels of the input images (3 to train, evaluate or predict: vit reads CIFAR
    /// and image files as RGB, greyscale ones too).
    #[arg(long, value_parser = whole_number::<i64>(None))]
    pub in_channels: Option<i64>,
    /// Width of each token: the patch embedding's output channels.
    #[arg(long, value_parser = whole_number::<i64>(None))]
    pub embed_dim: Option<i64>,
    /// Attention heads per block; they split --embed-dim evenly.
    #[arg(long, value_parser = whole_number::<i64>(None))]
    pub num_heads: Option<i64>,
    /// Hidden width of each block's MLP.
    #[arg(long, value_parser = whole_number::<i64>(None))]
    pub mlp_dim: Option<i64>,
    /// Transformer blocks.
    #[arg(long, value_parser = whole_number::<i64>(None))]
    pub num_layers: Option<i64>,
    /// Outputs of the classification head (in vit train, the dataset's class count; leave
    /// it out there).
    #[arg(long, value_parser = whole_number::<i64>(None))]
    pub num_classes: Option<i64>,
    /// Dropout probability after the positional embedding, the attention's projection and
    /// in the MLP (vit train --recipe strong: 0 unless given).
    #[arg(long, value_parser = number)]
    pub dropout: Option<f64>,
}

impl ModelArgs {
    /// The preset with every given flag applied, validated.
    pub fn resolve(&self) -> Result<ViTConfig> {
        let mut config = ViTConfig::preset(&self.preset)?;
        let overrides = [
            (&mut config.image_size, self.image_size),
            (&mut config.patch_size, self.patch_size),
            (&mut config.in_channels, self.in_channels),
            (&mut config.embed_dim, self.embed_dim),
            (&mut config.num_heads, self.num_heads),
            (&mut config.mlp_dim, self.mlp_dim),
            (&mut config.num_layers, self.num_layers),
            (&mut config.num_classes, self.num_classes),
        ];
        for (field, value) in overrides {
            if let Some(value) = value {
                *field = value;
            }
        }
        if let Some(dropout) = self.dropout {
            config.dropout = dropout;
        }
        config.validate_flags()?;
        Ok(config)
    }
}

// `<class>` is `--help` text, which clap shows as written.
#[allow(rustdoc::invalid_html_tags)]
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetName {
    Cifar10,
    Cifar100,
    /// An ImageFolder tree: DIR/train/<class>/*.png|jpg|jpeg and DIR/test/<class>/*.png|jpg|jpeg
    /// (any case).
    Folder,
}

/// The datasets `vit download` fetches (a folder dataset is the user's own).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadableDataset {
    Cifar10,
    Cifar100,
}

impl From<DownloadableDataset> for DatasetName {
    fn from(dataset: DownloadableDataset) -> Self {
        match dataset {
            DownloadableDataset::Cifar10 => DatasetName::Cifar10,
            DownloadableDataset::Cifar100 => DatasetName::Cifar100,
        }
    }
}

/// A whole-number flag's parser, which refuses a value in words (clap's own parser says
/// "invalid digit found in string" of `9.5`): any whole number with `least` None (vit's
/// checks then say which numbers the flag takes), else `least` or more (a count from 0, a
/// size from 1).
fn whole_number<T: WholeNumber>(least: Option<u8>) -> impl Fn(&str) -> Result<T, String> + Clone {
    move |value| {
        let expected = match least {
            None => "expected a whole number".to_string(),
            Some(least) => format!("expected a whole number of {least} or more"),
        };
        match value.parse::<T>() {
            Ok(number) if least.is_none_or(|least| number >= T::from(least)) => Ok(number),
            Ok(_) => Err(expected),
            // Digits all the same (not below 0, which a count's type also refuses): a
            // whole number too large for the type.
            Err(_) if is_digits(value.strip_prefix('+').unwrap_or(value)) => Err(format!(
                "{value} is more than vit can count (at most {})",
                T::MAX
            )),
            Err(_) => Err(expected),
        }
    }
}

/// A fractional flag's parser, whose error says what it takes (Rust's own says "invalid
/// float literal"); vit's checks then say which numbers the flag allows.
fn number(value: &str) -> Result<f64, String> {
    value
        .parse()
        .map_err(|_| "expected a number, such as 0.1 or 1e-3".to_string())
}

/// `--threads`' parser: a whole number from 1 to [`MAX_THREADS`].
fn thread_count(value: &str) -> Result<i32, String> {
    match value.parse() {
        Ok(threads) if (1..=MAX_THREADS).contains(&threads) => Ok(threads),
        _ => Err(format!("expected a whole number from 1 to {MAX_THREADS}")),
    }
}

/// The most CPU threads `--threads` takes.
const MAX_THREADS: i32 = 1024;

/// The integer types of whole-number flags, with the largest value each holds.
trait WholeNumber: std::str::FromStr + PartialOrd + From<u8> + std::fmt::Display {
    const MAX: Self;
}

impl WholeNumber for i64 {
    const MAX: Self = i64::MAX;
}

impl WholeNumber for u64 {
    const MAX: Self = u64::MAX;
}

impl WholeNumber for usize {
    const MAX: Self = usize::MAX;
}

/// Whether `text` is one or more of the digits 0 to 9.
fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// `--dataset` when not given: the notebook's CIFAR-100 (its value name is the name the
/// dataset records).
pub const DEFAULT_DATASET: &str = crate::data::CIFAR100;

/// `--data-dir` when not given: where `vit download` puts the datasets and every other
/// command reads them.
pub const DEFAULT_DATA_DIR: &str = "data";

/// `--data-dir`'s help where a command reads a dataset.
const DATA_DIR_HELP: &str =
    "Where the datasets are (as `vit download` puts them), or a folder dataset's DIR";

/// `--checkpoint`'s help, for every command that loads one.
const CHECKPOINT_HELP: &str =
    "A .safetensors file vit saved, or a timm state_dict with `config` metadata (README: \
     Checkpoints)";

/// `vit train`'s optimiser defaults, which `vit bench` times too.
pub const DEFAULT_LR: f64 = 1e-3;
pub const DEFAULT_WEIGHT_DECAY: f64 = 0.05;
pub const DEFAULT_LABEL_SMOOTHING: f64 = 0.1;
pub const DEFAULT_CLIP_GRAD: f64 = 1.0;

/// Which dataset and where it lives.
#[derive(Args, Debug, Clone)]
pub struct DatasetArgs {
    /// The dataset to read.
    #[arg(long, value_enum, default_value = DEFAULT_DATASET)]
    pub dataset: DatasetName,
    #[arg(long, default_value = DEFAULT_DATA_DIR, help = DATA_DIR_HELP)]
    pub data_dir: PathBuf,
    /// CIFAR-100 only: the 20 coarse superclasses instead of the 100 fine labels.
    #[arg(long)]
    pub coarse_labels: bool,
}

/// The dataset to evaluate a checkpoint on; by default the one it records.
#[derive(Args, Debug, Clone)]
pub struct CheckpointDatasetArgs {
    /// Dataset; by default the one recorded in the checkpoint.
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetName>,
    #[arg(long, default_value = DEFAULT_DATA_DIR, help = DATA_DIR_HELP)]
    pub data_dir: PathBuf,
    /// CIFAR-100 only: the 20 coarse superclasses (by default as the checkpoint records).
    #[arg(long)]
    pub coarse_labels: bool,
}

/// Where a command runs: `cpu`, `cuda`, `cuda:N` (by default CUDA when available), and
/// with how many CPU threads.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// cpu, cuda or cuda:N (default: cuda when libtorch sees a GPU, else cpu).
    #[arg(long)]
    pub device: Option<String>,
    #[command(flatten)]
    pub threads: ThreadsArgs,
}

impl DeviceArgs {
    /// Sets libtorch's CPU thread count as `--threads` asks, and gives the device
    /// `--device` names (refused where there is no such device).
    pub fn set_up(&self) -> Result<tch::Device> {
        self.threads.set_up();
        parse_device(self.device.as_deref())
    }
}

/// `--threads`: how many CPU threads libtorch's kernels and vit's image decoding use.
#[derive(Args, Debug, Clone)]
pub struct ThreadsArgs {
    /// CPU threads for libtorch, and for decoding image files where the command reads them
    /// (default: libtorch's choice).
    #[arg(long, value_parser = thread_count)]
    pub threads: Option<i32>,
}

impl ThreadsArgs {
    /// Sets libtorch's CPU thread count as `--threads` asks (see
    /// [`crate::runtime::apply_threads`]).
    pub fn set_up(&self) {
        crate::runtime::apply_threads(self.threads);
    }
}

/// The name a flag takes for `value` (`strong` for `Recipe::Strong`), as `--help` lists it.
pub fn value_name(value: &impl ValueEnum) -> String {
    let possible = value.to_possible_value().expect("every value has a name");
    possible.get_name().to_string()
}

/// The name `--device` takes for `device`: `cpu`, `cuda:N`.
pub fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "cpu".to_string(),
        tch::Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn parse_device(name: Option<&str>) -> Result<tch::Device> {
    let cuda_count = tch::Cuda::device_count() as usize;
    match name {
        None => Ok(tch::Device::cuda_if_available()),
        Some(name) => named_device(name, cuda_count),
    }
}

/// The device `--device NAME` names, refused where it is not among the `cuda_count` CUDA
/// devices libtorch sees (passed in, so that tests can give any count).
fn named_device(name: &str, cuda_count: usize) -> Result<tch::Device> {
    let device = match name {
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => tch::Device::Cuda(index),
            _ => bail!("unknown device `{other}`: use cpu, cuda or cuda:N"),
        },
    };
    if let tch::Device::Cuda(index) = device {
        if index >= cuda_count {
            bail!(
                "--device {name} asked for, but this machine has {cuda_count} CUDA {} visible \
                 to libtorch; use --device cpu",
                noun_for(cuda_count, "device")
            );
        }
    }
    Ok(device)
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Describe this checkpoint's model instead (vit's, or a timm/PyTorch one vit loads):
    /// its config, what it was trained on, its parameters and the shape check on its weights.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "preset", "image_size", "patch_size", "in_channels", "embed_dim", "num_heads",
            "mlp_dim", "num_layers", "num_classes", "dropout",
        ]
    )]
    pub checkpoint: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// The dataset to fetch.
    #[arg(long, value_enum, default_value = DEFAULT_DATASET)]
    pub dataset: DownloadableDataset,
    /// The folder to unpack it into (created if missing).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The archive, as a file or URL, or a local folder or URL ending in / that holds it.
    #[arg(long, env = "VIT_DATA_MIRROR", hide_env_values = true)]
    pub from: Option<String>,
}

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(flatten)]
    pub data: DatasetArgs,
    /// The size a folder dataset's images are resized to (as vit train's --image-size);
    /// CIFAR's statistics are of its 32x32 images.
    #[arg(long, value_parser = whole_number::<i64>(Some(1)), default_value_t = 32)]
    pub image_size: i64,
    #[command(flatten)]
    pub threads: ThreadsArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recipe {
    /// The notebook's augmentation (crop + flip) with the training flags as given.
    Notebook,
    /// AutoAugment, MixUp/CutMix, random erasing, stochastic depth, EMA, no dropout:
    /// see the README.
    Strong,
}

// `<timestamp>` is `--help` text, which clap shows as written.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DatasetArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Passes over the training set; the test set is evaluated after each.
    #[arg(long, value_parser = whole_number::<usize>(Some(1)), default_value_t = 100)]
    pub epochs: usize,
    /// Images per training step.
    #[arg(long, value_parser = whole_number::<i64>(Some(1)), default_value_t = 256)]
    pub batch_size: i64,
    /// AdamW's peak learning rate, reached after the warm-up, then cosine-decayed to 0.
    #[arg(long, value_parser = number, default_value_t = DEFAULT_LR)]
    pub lr: f64,
    /// AdamW's decoupled weight decay (not on biases, norms, class token or positions).
    #[arg(long, value_parser = number, default_value_t = DEFAULT_WEIGHT_DECAY)]
    pub weight_decay: f64,
    /// Epochs over which the learning rate rises linearly to --lr (its first step at --lr
    /// divided by the warm-up's steps).
    #[arg(long, value_parser = whole_number::<usize>(Some(0)), default_value_t = 5)]
    pub warmup_epochs: usize,
    /// Label smoothing of the cross-entropy loss (0 = off).
    #[arg(long, value_parser = number, default_value_t = DEFAULT_LABEL_SMOOTHING)]
    pub label_smoothing: f64,
    /// Clip the global gradient norm to this value (0 = off).
    #[arg(long, value_parser = number, default_value_t = DEFAULT_CLIP_GRAD)]
    pub clip_grad: f64,
    /// Seeds the weights, shuffles, augmentations and dropout (on the CPU, the same seed,
    /// flags and thread count train the same run). libtorch's generator takes 32 bits: a
    /// seed above 4294967295 is hashed to 32 bits.
    #[arg(long, value_parser = whole_number::<u64>(Some(0)), default_value_t = 0)]
    pub seed: u64,
    /// Train on the first N training images only (in CIFAR's random order, or a folder
    /// dataset's interleaved classes, so any but a small N covers every class).
    #[arg(long, value_parser = whole_number::<i64>(Some(1)))]
    pub train_subset: Option<i64>,
    /// Run folder; default runs/<timestamp>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out exactly where it stopped (pass the same flags).
    #[arg(long)]
    pub resume: bool,
    /// Augmentation and regularisation presets, whose parts the flags --augment-policy to
    /// --ema-warmup, and --dropout, change.
    #[arg(long, value_enum, default_value = "notebook")]
    pub recipe: Recipe,
    /// Automatic augmentation (strong recipe: autoaugment, the CIFAR-10 policy).
    #[arg(long, value_enum)]
    pub augment_policy: Option<AugmentPolicy>,
    /// RandAugment: ops per image (N; default 2). Needs --augment-policy randaugment.
    #[arg(long, value_parser = whole_number::<i64>(None))]
    pub randaugment_ops: Option<i64>,
    /// RandAugment: magnitude bin (M) of 0..=30 (default 9). Needs --augment-policy
    /// randaugment.
    #[arg(long, value_parser = whole_number::<i64>(None))]
    pub randaugment_magnitude: Option<i64>,
    /// Random erasing probability (strong: 0.25).
    #[arg(long, value_parser = number)]
    pub random_erasing: Option<f64>,
    /// MixUp Beta(alpha, alpha); 0 = off (strong: 0.8).
    #[arg(long, value_parser = number)]
    pub mixup: Option<f64>,
    /// CutMix Beta(alpha, alpha); 0 = off (strong: 1.0).
    #[arg(long, value_parser = number)]
    pub cutmix: Option<f64>,
    /// Probability of mixing a batch (strong: 1.0).
    #[arg(long, value_parser = number)]
    pub mix_prob: Option<f64>,
    /// Probability of CutMix rather than MixUp when both are on (default 0.5).
    #[arg(long, value_parser = number)]
    pub switch_prob: Option<f64>,
    /// Mix only the first EPOCHS epochs; the later ones train on single images, with the
    /// same loss (timm's mixup_off_epoch; default: every epoch mixes).
    #[arg(long, value_parser = whole_number::<usize>(Some(0)), value_name = "EPOCHS")]
    pub mix_off_epoch: Option<usize>,
    /// Stochastic depth of the last block, rising linearly from 0 (strong: 0.1).
    #[arg(long, value_parser = number)]
    pub drop_path: Option<f64>,
    /// Dropout on the attention probabilities (strong: 0).
    #[arg(long, value_parser = number)]
    pub attn_dropout: Option<f64>,
    /// Keep an exponential moving average of the weights with this decay, evaluated and
    /// saved as its own checkpoint; 0 = off (strong: 0.999).
    #[arg(long, value_parser = number)]
    pub ema: Option<f64>,
    /// Warm the EMA's decay up from 0 as timm's ModelEmaV3 does, min(DECAY, 1 - (1 +
    /// step)^(-2/3)), so that the average of a short run is not mostly its first weights.
    #[arg(long)]
    pub ema_warmup: bool,
    /// Redraw curves.png (and curves.svg) in the run folder after every epoch.
    #[arg(long)]
    pub plot: bool,
    /// Precision of the training steps' forward and backward passes (weights stay fp32).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    /// Precision of the per-epoch test passes: fp32 measures what `vit eval` measures;
    /// bf16 (autocast, as timm validates under --amp) should be faster on a GPU, and its
    /// accuracies can differ from fp32's by rounding.
    #[arg(long, value_enum, default_value = "fp32")]
    pub eval_precision: Precision,
    /// Replay each training step, its batch's augmentation included, as a CUDA graph after
    /// a few eager ones (CUDA only): one launch per step instead of hundreds.
    /// `--cuda-graph=step` leaves the augmentation out of the graph.
    #[arg(long, value_enum, value_name = "SCOPE", num_args = 0..=1, require_equals = true,
          default_missing_value = "batch")]
    pub cuda_graph: Option<CudaGraphScope>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AugmentPolicy {
    None,
    /// RandAugment with --randaugment-ops and --randaugment-magnitude.
    Randaugment,
    /// AutoAugment with the CIFAR-10 policy.
    Autoaugment,
}

#[derive(
    ValueEnum, Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// bf16 autocast (fast on CUDA; on the CPU only where it has bf16 instructions).
    Bf16,
}

/// What `vit train --cuda-graph` records as a CUDA graph.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaGraphScope {
    /// The batch's augmentation (crop, flip, the strong recipe's policy, erasing,
    /// MixUp/CutMix) and the training step.
    Batch,
    /// The training step alone; the augmentation runs eagerly before each replay.
    Step,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdamWKernel {
    /// `torch.optim.AdamW(fused=True)`.
    Fused,
    /// `torch.optim.AdamW(foreach=False)`.
    Loop,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long, help = CHECKPOINT_HELP)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: CheckpointDatasetArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Test images per forward pass.
    #[arg(long, value_parser = whole_number::<i64>(Some(1)), default_value_t = 500)]
    pub batch_size: i64,
    /// bf16: the pass under bf16 autocast, as `vit train --eval-precision bf16` tests (its
    /// figures exactly with its batch: --batch-size 256, or the training batch if larger).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    /// Folder for the confusion matrix (default: beside the checkpoint, as
    /// CHECKPOINT.confusion_matrix.csv; in another folder, FOLDER.CHECKPOINT.confusion_matrix.csv,
    /// FOLDER being the checkpoint's).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Also draw the confusion matrix, as a .png beside the .csv.
    #[arg(long)]
    pub plot: bool,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[arg(long, help = CHECKPOINT_HELP)]
    pub checkpoint: PathBuf,
    /// PNG or JPEG files, or folders of them (their subfolders too; one file that cannot be
    /// read is named and skipped, and the exit status is then 1).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Images decoded and classified at a time (any number of files can be given).
    #[arg(long, value_parser = whole_number::<i64>(Some(1)), default_value_t = 500)]
    pub batch_size: i64,
    /// The most probable classes shown for each image (all of them, when K is at least the
    /// model's class count).
    #[arg(long, value_name = "K", value_parser = whole_number::<i64>(Some(1)), default_value_t = 5)]
    pub top_k: i64,
    /// Print one JSON object per file, in the order given: its top classes, or its error
    /// (a folder that could not be read, or held no images, gets one too).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Images per timed step (random images of the model's size).
    #[arg(long, value_parser = whole_number::<i64>(Some(1)), default_value_t = 128)]
    pub batch_size: i64,
    /// Timed steps (after warm-up).
    #[arg(long, value_parser = whole_number::<usize>(Some(1)), default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps first, which let libtorch pick its kernels and allocate.
    #[arg(long, value_parser = whole_number::<usize>(Some(0)), default_value_t = 3)]
    pub warmup: usize,
    /// Precision of the timed passes, as vit train's --precision.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    /// Use the explicit softmax attention instead of the fused kernel.
    #[arg(long)]
    pub explicit_attention: bool,
    /// AdamW as libtorch's fused kernel, or as PyTorch's single-tensor loop of small ops.
    #[arg(long, value_enum, default_value = "fused")]
    pub adamw: AdamWKernel,
    /// Draw CPU dropout masks with libtorch's Bernoulli sampler, as `torch.nn.Dropout`
    /// does, instead of vit's faster one (CUDA uses libtorch's fused dropout either way).
    #[arg(long)]
    pub libtorch_dropout: bool,
    /// Run CPU linear layers through libtorch's `linear` (MKL's GEMM), as PyTorch does,
    /// instead of oneDNN (CUDA uses libtorch's either way). Without this flag or
    /// --onednn-linear, the CPU's default: oneDNN on AMD CPUs, libtorch's elsewhere.
    #[arg(long)]
    pub libtorch_linear: bool,
    /// Run CPU linear layers in oneDNN (the forward product and the input's gradient; the
    /// weights' gradient stays MKL's), also on a CPU where vit train would not (see
    /// --libtorch-linear).
    #[arg(long, conflicts_with = "libtorch_linear")]
    pub onednn_linear: bool,
    /// Time training steps replayed as a CUDA graph, as `vit train --cuda-graph=step` runs
    /// them (bench's batch is not augmented; the warm-up is raised to the eager steps and
    /// the capture that come first).
    #[arg(long)]
    pub cuda_graph: bool,
    /// Also time the phases of a training step (forward + loss, backward, gradient
    /// clipping, AdamW) in separate, synchronised steps after the timed ones.
    #[arg(long)]
    pub phases: bool,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run folders (each with metrics.csv).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output PNG; an SVG is written beside it (NAME.svg: one there that is not curves vit
    /// drew is kept, and the plot refused).
    #[arg(short, long, default_value = "curves.png")]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct AttentionArgs {
    #[arg(long, help = CHECKPOINT_HELP)]
    pub checkpoint: PathBuf,
    /// A PNG or JPEG file (or use --index, with --dataset or the checkpoint's dataset).
    pub image: Option<PathBuf>,
    #[command(flatten)]
    pub data: CheckpointDatasetArgs,
    /// A test image of the dataset, by its position from 0 (of a folder dataset: the
    /// classes' files taken in turn, as the README's "Your own images" says).
    #[arg(long, value_parser = whole_number::<i64>(None))]
    pub index: Option<i64>,
    /// Output PNG: the image, its rollout and the last block's heads.
    #[arg(short, long, default_value = "attention.png")]
    pub output: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `vit WORDS` parsed, for the unit tests of what takes its flags.
#[cfg(test)]
pub(crate) fn parsed(words: &[&str]) -> Command {
    let line = ["vit"].iter().chain(words);
    Cli::try_parse_from(line)
        .unwrap_or_else(|e| panic!("vit {words:?}: {e}"))
        .command
}

/// `vit train ARGS` parsed.
#[cfg(test)]
pub(crate) fn train_args(args: &[&str]) -> TrainArgs {
    match parsed(&[&["train"], args].concat()) {
        Command::Train(args) => *args,
        other => panic!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{named_device, negative_values_attached, whole_number, Cli};
    use clap::CommandFactory;

    /// The help of `vit SUBCOMMAND`'s argument `id`, as `vit SUBCOMMAND --help` shows it.
    fn help_of(command: &clap::Command, subcommand: &str, id: &str) -> String {
        let subcommand = command.find_subcommand(subcommand).expect(subcommand);
        let arg = subcommand.get_arguments().find(|arg| arg.get_id() == id);
        let help = arg.expect(id).get_help().map(|help| help.to_string());
        help.unwrap_or_default()
    }

    /// Every flag and argument of every command says in `--help` what it is (the preset
    /// values added to the model flags' help do not count).
    #[test]
    fn every_argument_has_help_of_its_own() {
        let command = Cli::command();
        let missing: Vec<String> = command
            .get_subcommands()
            .flat_map(|subcommand| {
                subcommand.get_arguments().filter_map(|arg| {
                    let help = arg.get_help().map(|help| help.to_string());
                    help.unwrap_or_default()
                        .trim()
                        .is_empty()
                        .then(|| format!("vit {} {}", subcommand.get_name(), arg.get_id()))
                })
            })
            .collect();
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    /// The model flags of `vit info`, `vit train` and `vit bench` end their help with every
    /// preset's value, all but `vit train --num-classes` (the dataset's there); `--config`
    /// and a flag of the same name outside the model's (`vit data --image-size`) are left as
    /// written.
    #[test]
    fn model_flags_show_the_presets_values() {
        let (written, shown) = (Cli::command(), Cli::command_with_presets());
        let config = serde_json::to_value(crate::model::ViTConfig::notebook()).unwrap();
        let fields = config.as_object().unwrap();
        assert_eq!(fields.len(), 9, "the notebook's nine hyperparameters");
        for subcommand in ["info", "train", "bench"] {
            for field in fields.keys() {
                let help = help_of(&shown, subcommand, field);
                let own = help_of(&written, subcommand, field);
                match (subcommand, field.as_str()) {
                    ("train", "num_classes") => assert_eq!(help, own),
                    _ => assert!(
                        help.starts_with(&own) && help.contains(" [notebook: "),
                        "{subcommand} --{field}: {help}"
                    ),
                }
            }
            assert!(
                help_of(&shown, subcommand, "embed_dim")
                    .ends_with(" [notebook: 256, small: 128, tiny: 32]"),
                "{subcommand}"
            );
            assert!(
                help_of(&shown, subcommand, "dropout")
                    .ends_with(" [notebook: 0.1, small: 0.0, tiny: 0.0]"),
                "{subcommand}"
            );
            let preset = help_of(&shown, subcommand, "preset");
            assert_eq!(preset, help_of(&written, subcommand, "preset"));
        }
        let data_image_size = help_of(&shown, "data", "image_size");
        assert_eq!(data_image_size, help_of(&written, "data", "image_size"));
    }

    /// A whole number too large for its flag's type is said to be that, with or without the
    /// leading `+` Rust's parsers take (`--batch-size +9223372036854775808`), rather than
    /// "expected a whole number"; a `+` before a number in range is taken, and what is no
    /// whole number (a fraction, a sign alone or twice, one below the least) is not.
    #[test]
    fn a_whole_number_too_large_is_said_to_be_so_with_or_without_its_plus() {
        let size = whole_number::<i64>(Some(1));
        let seed = whole_number::<u64>(Some(0));
        let too_large = |value: &str, most: &str| {
            format!("{value} is more than vit can count (at most {most})")
        };
        for value in [
            "9223372036854775808",
            "+9223372036854775808",
            "+99999999999999999999",
        ] {
            let expected = too_large(value, "9223372036854775807");
            assert_eq!(size(value).unwrap_err(), expected, "{value}");
        }
        for value in ["18446744073709551616", "+18446744073709551616"] {
            let expected = too_large(value, "18446744073709551615");
            assert_eq!(seed(value).unwrap_err(), expected, "{value}");
        }
        assert_eq!(size("+32"), Ok(32));
        assert_eq!(seed("+7"), Ok(7));
        let not_one = "expected a whole number of 1 or more";
        for value in [
            "9.5",
            "+9.5",
            "",
            "+",
            "++9",
            "+-9",
            "0",
            "-9223372036854775809",
        ] {
            assert_eq!(size(value).unwrap_err(), not_one, "{value:?}");
        }
        assert_eq!(
            seed("-1").unwrap_err(),
            "expected a whole number of 0 or more"
        );
    }

    /// A negative number after a long flag is its value, in every form Rust reads as a
    /// number (clap alone takes `-1e-3` for a flag), unless the flag has its value already
    /// (`--index=-3 -4`); other words, positive numbers among them, are left as they are.
    #[test]
    fn negative_numbers_are_attached_to_the_flag_before_them() {
        let words =
            |words: &[&str]| -> Vec<std::ffi::OsString> { words.iter().map(Into::into).collect() };
        assert_eq!(
            negative_values_attached(words(&[
                "vit",
                "train",
                "--lr",
                "-1e-3",
                "--weight-decay",
                "-2.5E+1",
                "--seed",
                "-1",
                "--index=-3",
                "-4",
                "--epochs",
                "3",
                "--plot",
                "--out",
                "-run",
                "-o",
                "-x.png",
                "--dropout",
                "-inf",
                "--",
                "--a",
                "-4",
            ])),
            words(&[
                "vit",
                "train",
                "--lr=-1e-3",
                "--weight-decay=-2.5E+1",
                "--seed=-1",
                "--index=-3",
                "-4",
                "--epochs",
                "3",
                "--plot",
                "--out",
                "-run",
                "-o",
                "-x.png",
                "--dropout=-inf",
                "--",
                "--a",
                "-4",
            ])
        );
        // Through the parser: the value reaches vit's check.
        let error =
            Cli::command_with_presets().try_get_matches_from(negative_values_attached(words(&[
                "vit", "train", "--lr", "-1e-3",
            ])));
        assert!(error.is_ok(), "{error:?}");
    }

    /// The message of the error that the command line `line` (words apart by single spaces)
    /// gets from vit's parser.
    fn parse_error(line: &str) -> String {
        let args: Vec<std::ffi::OsString> = line.split(' ').map(Into::into).collect();
        match Cli::try_parse_args(&args) {
            Ok(_) => panic!("{line} parsed"),
            Err(error) => error.to_string(),
        }
    }

    /// A model flag given to a command that reads a checkpoint gets the tip that the
    /// checkpoint sets the model, in place of clap's (a similar flag, `--threads` for
    /// `--num-heads`, or to pass the flag as a value), which is kept for other flags.
    #[test]
    fn a_model_flag_for_a_checkpoint_is_told_the_checkpoint_sets_the_model() {
        for (line, flag) in [
            (
                "vit predict --config tiny --checkpoint m.safetensors a.png",
                "--config",
            ),
            (
                "vit eval --checkpoint m.safetensors --embed-dim 32",
                "--embed-dim",
            ),
            (
                "vit attention --checkpoint m.safetensors --num-heads=2",
                "--num-heads",
            ),
        ] {
            let message = parse_error(line);
            let tip = format!(
                "tip: the model's settings come from the checkpoint's config: leave out {flag} and \
                 its value"
            );
            assert!(message.contains(&tip), "{message}");
            assert!(
                !message.contains("--threads") && !message.contains("as a value"),
                "{message}"
            );
        }
        let other = parse_error("vit attention --checkpoint m.safetensors --thread 2");
        assert!(
            other.contains("a similar argument exists: '--threads'"),
            "{other}"
        );
    }

    /// The tip to write `--cuda-graph=SCOPE` comes where `vit train` was given a scope after
    /// a space, and not for another word there, a scope elsewhere, or another command's
    /// `--cuda-graph` (`vit bench`'s is a switch).
    #[test]
    fn the_cuda_graph_tip_is_for_a_scope_after_a_space() {
        let tip_for = |line: &str| parse_error(line).contains("tip: a scope follows '='");
        for scope in ["step", "batch"] {
            assert!(
                tip_for(&format!("vit train --cuda-graph {scope}")),
                "{scope}"
            );
        }
        for line in [
            "vit bench --cuda-graph step",
            "vit train --cuda-graph other",
            "vit train --cuda-graph=batch step",
            "vit train step --cuda-graph",
        ] {
            assert!(!tip_for(line), "{line}");
        }
    }

    /// A CUDA device past the ones libtorch sees is refused, counting them in words: "0 CUDA
    /// devices", "1 CUDA device", "2 CUDA devices". `cuda` is the first of them.
    #[test]
    fn a_missing_cuda_device_is_refused_with_the_count_in_words() {
        for (name, cuda_count, devices) in [
            ("cuda", 0, "0 CUDA devices"),
            ("cuda:1", 1, "1 CUDA device"),
            ("cuda:2", 2, "2 CUDA devices"),
        ] {
            assert_eq!(
                named_device(name, cuda_count).unwrap_err().to_string(),
                format!(
                    "--device {name} asked for, but this machine has {devices} visible to \
                     libtorch; use --device cpu"
                )
            );
        }
        assert_eq!(named_device("cuda:1", 2).unwrap(), tch::Device::Cuda(1));
        assert_eq!(
            named_device("cuda", 2).unwrap(),
            tch::Device::Cuda(0),
            "the first"
        );
        assert_eq!(named_device("cpu", 0).unwrap(), tch::Device::Cpu);
    }
}
