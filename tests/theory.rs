//! The homework's theory questions, answered on the real Rust modules: self-attention is
//! permutation-equivariant, a sharp softmax "preserves" one token's value and a flat one
//! "diffuses" them into the mean; plus the notebook's shape and size checks and the
//! refusal of configs and inputs that do not fit.

mod common;

use common::{assert_close, assert_contains, cpu_store, randomize, seeded, vit};
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};
use vit_tch::model::{
    scaled_dot_product_attention, MultiHeadSelfAttention, TransformerBlock, ViTConfig,
    VisionTransformer,
};

const TOL: f64 = 1e-5;
const EMBED_DIM: i64 = 16;
const NUM_HEADS: i64 = 4;
const HEAD_DIM: i64 = EMBED_DIM / NUM_HEADS;
const NUM_TOKENS: i64 = 7;

fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

/// f(x[:, perm]) == f(x)[:, perm] for a permutation that moves every one of the tokens (a
/// random one could be the identity, which every function passes).
fn assert_permutation_equivariant(what: &str, f: impl Fn(&Tensor) -> Tensor) {
    let tokens = randn(&[2, NUM_TOKENS, EMBED_DIM]);
    let perm = Tensor::from_slice(&[3i64, 6, 0, 5, 1, 4, 2]);
    assert_eq!(perm.size(), [NUM_TOKENS]);
    let permuted_then_f = f(&tokens.index_select(1, &perm));
    let f_then_permuted = f(&tokens).index_select(1, &perm);
    assert_close(what, &permuted_then_f, &f_then_permuted, TOL);
}

#[test]
fn self_attention_is_permutation_equivariant() {
    let _rng = seeded(0);
    let vs = cpu_store();
    let mut attn = MultiHeadSelfAttention::new(vs.root(), EMBED_DIM, NUM_HEADS);
    randomize(&vs, 0.3);
    for fused in [true, false] {
        attn.fused = fused;
        assert_permutation_equivariant(&format!("attention (fused {fused})"), |x| {
            attn.forward_t(x, false)
        });
    }
}

#[test]
fn transformer_block_is_permutation_equivariant() {
    let _rng = seeded(1);
    let vs = cpu_store();
    let mut block = TransformerBlock::new(vs.root(), EMBED_DIM, NUM_HEADS, 32, 0.0);
    randomize(&vs, 0.3);
    for fused in [true, false] {
        block.attn.fused = fused;
        assert_permutation_equivariant(&format!("block (fused {fused})"), |x| {
            block.forward_t(x, false)
        });
    }
}

/// [1, 1, N, d] keys e_0..e_{N-1} (orthonormal), random values, and queries equal to the
/// keys in reverse order, so query i is aligned with key N-1-i only.
fn aligned_qkv() -> (Tensor, Tensor, Tensor) {
    let keys = Tensor::eye(HEAD_DIM, (Kind::Float, Device::Cpu)).view([1, 1, HEAD_DIM, HEAD_DIM]);
    let queries = keys.flip([2]);
    let values = randn(&[1, 1, HEAD_DIM, 8]);
    (queries, keys, values)
}

#[test]
fn sharp_attention_preserves_the_aligned_keys_value() {
    let _rng = seeded(2);
    let (q, k, v) = aligned_qkv();
    for fused in [true, false] {
        let out = scaled_dot_product_attention(&q, &k, &v, 1e4, 0.0, fused);
        let what = format!("scale 1e4 (fused {fused})");
        assert_close(&what, &out, &v.flip([2]), TOL);
    }
}

#[test]
fn flat_attention_diffuses_into_the_mean_value() {
    let _rng = seeded(3);
    let (q, k, v) = aligned_qkv();
    let mean = v.mean_dim(2, true, None::<Kind>).expand_as(&v);
    for fused in [true, false] {
        let out = scaled_dot_product_attention(&q, &k, &v, 0.0, 0.0, fused);
        assert_close(&format!("scale 0 (fused {fused})"), &out, &mean, TOL);
    }
}

/// An attention module whose query and key projections are the identity (no bias), and
/// HEAD_DIM tokens that are one-hot in every head: token i's query meets its own key with
/// 1 and every other key with 0. Returns the module, its store, the tokens, and each
/// token's own value passed through the output projection.
fn module_with_aligned_tokens() -> (nn::VarStore, MultiHeadSelfAttention, Tensor, Tensor) {
    let vs = cpu_store();
    let attn = MultiHeadSelfAttention::new(vs.root(), EMBED_DIM, NUM_HEADS);
    randomize(&vs, 0.3);
    let variables = vs.variables();
    let (qkv_w, qkv_b) = (&variables["qkv.weight"], &variables["qkv.bias"]);
    let identity = Tensor::eye(EMBED_DIM, (Kind::Float, Device::Cpu));
    tch::no_grad(|| {
        qkv_w
            .narrow(0, 0, 2 * EMBED_DIM)
            .copy_(&Tensor::cat(&[&identity, &identity], 0));
        let _ = qkv_b.narrow(0, 0, 2 * EMBED_DIM).zero_();
    });
    let one_hot = Tensor::eye(HEAD_DIM, (Kind::Float, Device::Cpu));
    let tokens = one_hot.repeat([1, NUM_HEADS]).unsqueeze(0); // [1, HEAD_DIM, EMBED_DIM]
    let own_values = tokens
        .linear(
            &qkv_w.narrow(0, 2 * EMBED_DIM, EMBED_DIM),
            Some(qkv_b.narrow(0, 2 * EMBED_DIM, EMBED_DIM)),
        )
        .linear(&variables["proj.weight"], Some(&variables["proj.bias"]));
    (vs, attn, tokens, own_values)
}

#[test]
fn sharp_attention_module_preserves_each_tokens_value() {
    let _rng = seeded(4);
    let (_vs, mut attn, tokens, own_values) = module_with_aligned_tokens();
    attn.scale = 1e4;
    for fused in [true, false] {
        attn.fused = fused;
        let out = tch::no_grad(|| attn.forward_t(&tokens, false));
        let what = format!("module, scale 1e4 (fused {fused})");
        assert_close(&what, &out, &own_values, TOL);
    }
}

#[test]
fn flat_attention_module_diffuses_into_the_mean_value() {
    let _rng = seeded(5);
    let (_vs, mut attn, tokens, own_values) = module_with_aligned_tokens();
    attn.scale = 0.0;
    // proj is affine, so proj(mean of values) = mean of proj(values).
    let mean = own_values
        .mean_dim(1, true, None::<Kind>)
        .expand_as(&own_values);
    for fused in [true, false] {
        attn.fused = fused;
        let out = tch::no_grad(|| attn.forward_t(&tokens, false));
        assert_close(
            &format!("module, scale 0 (fused {fused})"),
            &out,
            &mean,
            TOL,
        );
    }
}

#[test]
fn notebook_shape_check() {
    let vs = cpu_store();
    let model = VisionTransformer::new(&vs.root(), &ViTConfig::notebook()).unwrap();
    let logits = tch::no_grad(|| model.f_forward_t(&randn(&[1, 3, 32, 32]), false)).unwrap();
    assert_eq!(logits.size(), [1, 100]);
}

#[test]
fn notebook_config_has_3_218_276_parameters() {
    let vs = cpu_store();
    let _model = VisionTransformer::new(&vs.root(), &ViTConfig::notebook()).unwrap();
    let count: usize = vs.trainable_variables().iter().map(Tensor::numel).sum();
    assert_eq!(count, 3_218_276);
}

#[test]
fn parameter_count_is_the_built_models() {
    let odd = ViTConfig {
        image_size: 24,
        patch_size: 8,
        in_channels: 1,
        mlp_dim: 48,
        num_classes: 7,
        ..ViTConfig::tiny()
    };
    for config in [
        ViTConfig::notebook(),
        ViTConfig::small(),
        ViTConfig::tiny(),
        odd,
    ] {
        let vs = cpu_store();
        let _model = VisionTransformer::new(&vs.root(), &config).unwrap();
        let count: usize = vs.trainable_variables().iter().map(Tensor::numel).sum();
        assert_eq!(config.parameter_count(), count as f64, "{config:?}");
    }
}

const SIZES: [&str; 8] = [
    "image_size",
    "patch_size",
    "in_channels",
    "embed_dim",
    "num_heads",
    "mlp_dim",
    "num_layers",
    "num_classes",
];

/// The tiny config with the size called `name` set to 0.
fn zero_size(name: &str) -> ViTConfig {
    let mut config = ViTConfig::tiny();
    let size = match name {
        "image_size" => &mut config.image_size,
        "patch_size" => &mut config.patch_size,
        "in_channels" => &mut config.in_channels,
        "embed_dim" => &mut config.embed_dim,
        "num_heads" => &mut config.num_heads,
        "mlp_dim" => &mut config.mlp_dim,
        "num_layers" => &mut config.num_layers,
        "num_classes" => &mut config.num_classes,
        other => panic!("no size `{other}`"),
    };
    *size = 0;
    config
}

#[test]
fn a_config_json_may_write_sizes_as_whole_floats() {
    // Python's `embed_dim * mlp_ratio` is a float: 64.0 is the size 64; 64.5 is no size.
    let tiny = ViTConfig::tiny();
    let json = tiny.to_json().replace(
        &format!("\"mlp_dim\":{}", tiny.mlp_dim),
        &format!("\"mlp_dim\":{}.0", tiny.mlp_dim),
    );
    assert_contains(&json, ".0,");
    assert_eq!(ViTConfig::from_json(&json).unwrap(), tiny);
    let halved = json.replace(".0,", ".5,");
    let error = format!("{:#}", ViTConfig::from_json(&halved).unwrap_err());
    assert_contains(
        &error,
        &format!("expected a whole number, got {}.5", tiny.mlp_dim),
    );
    // A whole number is read exactly, however large (validate refuses it then), and a
    // string is not a size.
    let huge = json.replace(&format!("{}.0,", tiny.mlp_dim), "9007199254740993,");
    let read: ViTConfig = serde_json::from_str(&huge).unwrap();
    assert_eq!(read.mlp_dim, 9007199254740993);
    let quoted = json.replace(&format!("{}.0,", tiny.mlp_dim), "\"64\",");
    let error = format!("{:#}", ViTConfig::from_json(&quoted).unwrap_err());
    assert_contains(&error, "expected a whole number");
    // Past any size: a whole number above i64's, and a float from 2^53 up (where floats
    // skip whole numbers), are refused as they are read, not wrapped or saturated into
    // another number.
    for (size, expected) in [
        ("9223372036854775808", "9223372036854775808 is too large"),
        ("1e20", "(1e20 is too large"),
        ("-1e308", "(-1e308 is too large"),
    ] {
        let json = json.replace(&format!("{}.0,", tiny.mlp_dim), &format!("{size},"));
        let error = format!("{:#}", ViTConfig::parse_json(&json).unwrap_err());
        assert_contains(&error, expected);
    }
}

/// `ViTConfig::from_json` validates the config it reads; `parse_json` leaves that to its
/// caller (a checkpoint compares the config with its tensors first).
#[test]
fn a_config_from_json_is_validated() {
    let tiny = ViTConfig::tiny();
    let indivisible = tiny.to_json().replace(
        &format!("\"num_heads\":{}", tiny.num_heads),
        "\"num_heads\":3",
    );
    assert_eq!(ViTConfig::parse_json(&indivisible).unwrap().num_heads, 3);
    let error = format!("{:#}", ViTConfig::from_json(&indivisible).unwrap_err());
    assert!(
        error.contains(&format!(
            "embed_dim ({}) must be divisible by num_heads (3)",
            tiny.embed_dim
        )),
        "{error}"
    );
}

#[test]
fn invalid_configs_are_rejected_with_a_clear_error() {
    let base = ViTConfig::tiny();
    let mut cases: Vec<(ViTConfig, String)> = vec![
        (
            ViTConfig {
                embed_dim: 30,
                num_heads: 4,
                ..base.clone()
            },
            "embed_dim (30) must be divisible by num_heads (4)".into(),
        ),
        (
            ViTConfig {
                image_size: 30,
                ..base.clone()
            },
            "image_size (30) must be divisible by patch_size (4)".into(),
        ),
        (
            ViTConfig {
                dropout: 1.0,
                ..base.clone()
            },
            "dropout must be in [0, 1), got 1".into(),
        ),
        (
            ViTConfig {
                dropout: -0.1,
                ..base.clone()
            },
            "dropout must be in [0, 1), got -0.1".into(),
        ),
    ];
    cases.extend(
        SIZES
            .iter()
            .map(|name| (zero_size(name), format!("{name} must be positive, got 0"))),
    );
    if vit_tch::runtime::memory_bytes().is_some() {
        // 10 million blocks: 8.5e10 parameters, refused before any is made.
        let deep = ViTConfig {
            num_layers: 10_000_000,
            ..base.clone()
        };
        cases.push((
            deep.clone(),
            "the model would take at least 505.6 GB: 8.544e10 parameters (341.8 GB in \
             float32, its largest tensor twice while it is initialised) and libtorch's \
             bookkeeping for 10000000 blocks; this process may use"
                .into(),
        ));
        // The advice names what sets the largest part: the blocks, the patches' position
        // embedding (a pixel a patch), the patch embedding's kernel (one huge patch), or
        // the head.
        let too_big = |image_size, patch_size, num_layers, num_classes| ViTConfig {
            image_size,
            patch_size,
            num_layers,
            num_classes,
            ..base.clone()
        };
        for (config, advice) in [
            (deep, "use a smaller embed_dim, mlp_dim or num_layers"),
            (
                too_big(400_000, 1, 1, 10),
                "use a larger patch_size or a smaller image_size",
            ),
            (
                too_big(400_000, 400_000, 1, 10),
                "use a smaller patch_size or embed_dim",
            ),
            (
                too_big(32, 4, 1, 10_000_000_000),
                "use a smaller num_classes or embed_dim",
            ),
        ] {
            cases.push((config, advice.into()));
        }
    }
    for (config, expected) in cases {
        let vs = cpu_store();
        match VisionTransformer::new(&vs.root(), &config) {
            Ok(_) => panic!("accepted {config:?}"),
            Err(e) => {
                let error = format!("{e:#}");
                assert!(
                    error.contains(&expected),
                    "{config:?}: `{error}` lacks `{expected}`"
                );
            }
        }
    }
}

/// Training holds the weights four times (with their gradients and AdamW's two moments):
/// a model whose weights take half the memory here is built, but refused for training,
/// naming the flags.
#[test]
fn a_model_that_fits_but_cannot_train_is_refused_for_training() {
    let memory = vit_tch::runtime::memory_bytes().expect("Linux tells its memory in /proc/meminfo");
    let tiny = ViTConfig::tiny();
    // The head holds embed_dim + 1 weights a class.
    let classes = memory as f64 / 2.0 / 4.0 / (tiny.embed_dim as f64 + 1.0);
    let config = ViTConfig {
        num_classes: classes as i64,
        ..tiny
    };
    config.validate().unwrap();
    let error = format!("{:#}", config.check_trains_in_memory().unwrap_err());
    assert!(
        error.starts_with("training the model would take at least")
            && error.contains("held four times: weights, gradients and AdamW's two moments")
            && error.ends_with("use a smaller --num-classes or --embed-dim"),
        "{error}"
    );
    ViTConfig::tiny().check_trains_in_memory().unwrap();
}

#[test]
fn wrong_input_shape_is_an_error_not_a_panic() {
    let vs = cpu_store();
    let model = VisionTransformer::new(&vs.root(), &ViTConfig::tiny()).unwrap();
    for shape in [
        vec![1, 3, 16, 16],
        // Not square: each side is checked.
        vec![1, 3, 32, 16],
        vec![1, 3, 16, 32],
        vec![3, 32, 32],
        vec![1, 1, 32, 32],
        vec![1, 3, 32],
    ] {
        let error = model.f_forward_t(&randn(&shape), false).unwrap_err();
        let error = format!("{error:#}");
        assert!(
            error.contains("expects images of shape [batch, 3, 32, 32]"),
            "{shape:?}: {error}"
        );
    }
    let integers = Tensor::zeros([1, 3, 32, 32], (Kind::Int64, Device::Cpu));
    let error = model.f_forward_t(&integers, false).unwrap_err();
    assert!(format!("{error}").contains("float images"), "{error}");
}

/// `vit info` of the notebook's model for CIFAR-100: its module rows add up to the total,
/// the total is the notebook's 3,218,276 parameters (as above, the model's
/// own), one image's forward pass is 0.437 GFLOPs (436,527,104, as PyTorch's flop counter
/// counts it: `tests/parity.rs`), and the shape check, quick, gives one row of 100 logits.
#[test]
fn info_counts_the_notebook_model() {
    let output = vit(&["info", "--config", "notebook"]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let table: Vec<(&str, i64)> = stdout
        .lines()
        .skip_while(|line| !line.starts_with("module"))
        .skip(1)
        .take_while(|line| !line.is_empty())
        .map(|line| {
            let (module, count) = line.split_once(' ').unwrap();
            (module, count.trim().parse().unwrap())
        })
        .collect();
    let (total, modules) = table.split_last().expect("a parameter table");
    assert_eq!(*total, ("total", 3_218_276), "{stdout}");
    let names: Vec<&str> = modules.iter().map(|(name, _)| *name).collect();
    #[rustfmt::skip]
    let expected = ["patch_embed", "cls_token", "pos_embed", "blocks.0", "blocks.1", "blocks.2",
                    "blocks.3", "blocks.4", "blocks.5", "norm", "head"];
    assert_eq!(names, expected, "{stdout}");
    let sum: i64 = modules.iter().map(|(_, count)| count).sum();
    assert_eq!(sum, total.1, "{stdout}");
    assert!(
        stdout.contains("\nForward pass: 0.437 GFLOPs per image ("),
        "{stdout}"
    );
    assert_contains(&stdout, "\nShape check: randn[1, 3, 32, 32] -> [1, 100]\n");
    assert!(!stdout.contains("The shape check below"), "{stdout}");
}

/// `vit info` with every model flag given describes the model they give: the config it
/// prints is theirs (the preset's "with the flags given"), its table has a row per block,
/// the shape check runs an image of the model's size and channels into its classes, and
/// the last line says whether libtorch here sees CUDA.
#[test]
fn info_describes_the_model_the_flags_give() {
    #[rustfmt::skip]
    let output = vit(&[
        "info", "--config", "tiny", "--image-size", "16", "--patch-size", "8", "--in-channels", "1",
        "--embed-dim", "24", "--num-heads", "3", "--mlp-dim", "40", "--num-layers", "3",
        "--num-classes", "7", "--dropout", "0.25",
    ]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (header, rest) = stdout.split_once('\n').unwrap();
    assert_eq!(header, "Config (tiny preset with the flags given):");
    let json = rest.split("\n\n").next().unwrap();
    let config: ViTConfig = serde_json::from_str(json).unwrap();
    let given = ViTConfig {
        image_size: 16,
        patch_size: 8,
        in_channels: 1,
        embed_dim: 24,
        num_heads: 3,
        mlp_dim: 40,
        num_layers: 3,
        num_classes: 7,
        dropout: 0.25,
    };
    assert_eq!(config, given, "{stdout}");
    let blocks: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|module| module.starts_with("blocks."))
        .collect();
    assert_eq!(blocks, ["blocks.0", "blocks.1", "blocks.2"], "{stdout}");
    assert_contains(&stdout, "\nShape check: randn[1, 1, 16, 16] -> [1, 7]\n");
    let cuda = format!("CUDA available: {} (", tch::Cuda::is_available());
    assert!(
        stdout.lines().last().unwrap().starts_with(&cuda),
        "{stdout}"
    );
}

/// `vit info --checkpoint` describes the checkpoint's model, not a preset's: its config,
/// the dataset and class names it records ("not recorded" where a file has none, as a
/// timm file), its parameters as the file holds them, and the shape check on its weights.
/// Model flags beside it are refused: they would describe another model.
#[test]
fn info_describes_a_checkpoints_model_and_what_it_was_trained_on() {
    let dir = common::TempDir::new("info-checkpoint");
    let config = ViTConfig {
        num_classes: 3,
        num_layers: 1,
        ..ViTConfig::tiny()
    };
    let vs = cpu_store();
    VisionTransformer::new(&vs.root(), &config).unwrap();
    let classes = serde_json::to_string(&["cat", "dog", "fish"]).unwrap();
    let named = dir.join("named.safetensors");
    let metadata = [("dataset", "folder".to_string()), ("classes", classes)];
    vit_tch::checkpoint::save(&vs, &config, &metadata, &named).unwrap();
    let output = vit(&["info", "--checkpoint", named.to_str().unwrap()]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (header, rest) = stdout.split_once('\n').unwrap();
    assert_eq!(header, format!("Config (from {}):", named.display()));
    let described: ViTConfig = serde_json::from_str(rest.split("\n\n").next().unwrap()).unwrap();
    assert_eq!(described, config, "{stdout}");
    let total = vit_tch::model::parameter_total(&vs);
    for line in [
        "\nTrained on: folder\nClasses (3): cat, dog, fish\n".to_string(),
        format!("\n{:<14} {total:>12}\n", "total"),
        "\nShape check: randn[1, 3, 32, 32] -> [1, 3]\n".to_string(),
    ] {
        assert!(stdout.contains(&line), "{line:?}: {stdout}");
    }
    let bare = dir.join("bare.safetensors");
    vit_tch::checkpoint::save(&vs, &config, &[], &bare).unwrap();
    let output = vit(&["info", "--checkpoint", bare.to_str().unwrap()]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains(
            "\nTrained on: not recorded\nClasses (3): not recorded (vit predict says class 0 \
             to class 2; vit eval takes the names of the test set it reads)\n"
        ),
        "{stdout}"
    );
    let output = common::run_vit(&[
        "info",
        "--checkpoint",
        bare.to_str().unwrap(),
        "--num-layers",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_contains(
        &stderr,
        "the argument '--checkpoint <FILE>' cannot be used with '--num-layers",
    );
}

/// `vit info` of a config whose shape check is slow (the notebook's model on 256x256
/// images in 2x2 patches: 1.75 TFLOPs, measured at 18 s on two cores) says about how long
/// it will take before the check starts. The test stops `vit info` once that is printed.
#[test]
fn info_says_how_long_a_slow_shape_check_takes_before_it_starts() {
    use std::io::BufRead;
    #[rustfmt::skip]
    let args = ["info", "--config", "notebook", "--image-size", "256", "--patch-size", "2"];
    let mut child = std::process::Command::new(common::vit_binary())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut printed = String::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("The shape check below") || line.starts_with("Shape check:") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        printed.contains(
            "\nThe shape check below runs that forward pass on the CPU: about 18 s on two cores"
        ),
        "{printed}"
    );
}

/// The machine's memory is /proc/meminfo's `MemTotal`, whose "kB" are KiB (proc(5)): 1024
/// bytes each, as sysinfo(2) counts the same total.
#[test]
#[cfg(target_os = "linux")]
fn physical_memory_is_memtotal_in_bytes() {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(
        vit_tch::runtime::physical_memory_bytes(),
        Some(kib * 1024),
        "{line}"
    );
    // What the process may use is no more (less under a cgroup's limit).
    assert!(vit_tch::runtime::memory_bytes().is_some_and(|bytes| bytes <= kib * 1024));
}
