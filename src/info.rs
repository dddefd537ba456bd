//! `vit info`: the resolved config, where the parameters are, the forward FLOPs, and the
//! notebook's shape check.

use crate::cli::InfoArgs;
use crate::listing::noun_for;
use crate::model::VisionTransformer;
use anyhow::Result;
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};

/// The CPU speed `vit info` assumes to say how long a slow shape check takes: `--image-size
/// 256 --patch-size 2` (1.75 TFLOPs) took 18 s on this project's two-core machine.
const CPU_FLOPS_PER_SECOND: f64 = 1e11;

/// A note that the shape check will take longer than 10 s (at [`CPU_FLOPS_PER_SECOND`]),
/// and about how long: printed before it starts.
fn slow_shape_check_note(flops: f64) -> Option<String> {
    let seconds = flops / CPU_FLOPS_PER_SECOND;
    // The unit follows the rounded figure: 119.6 s is "2 minutes", not "120 s".
    let took = if seconds <= 10.0 {
        return None;
    } else if seconds.round() < 120.0 {
        format!("{seconds:.0} s")
    } else if (seconds / 60.0).round() < 120.0 {
        format!("{:.0} minutes", seconds / 60.0)
    } else {
        format!("{:.0} hours", seconds / 3600.0)
    };
    Some(format!(
        "The shape check below runs that forward pass on the CPU: about {took} on two cores \
         (Ctrl-C stops it; nothing above is lost)."
    ))
}

/// `flops` with the unit that keeps three significant digits in sight: a small model's
/// forward is 0.264 MFLOPs, not 0.000 GFLOPs.
fn flops_text(flops: f64) -> String {
    if flops >= 1e8 {
        format!("{:.3} GFLOPs", flops / 1e9)
    } else if flops >= 1e5 {
        format!("{:.3} MFLOPs", flops / 1e6)
    } else {
        format!("{flops:.0} FLOPs")
    }
}

/// Parameter counts per top-level module (`blocks.i` each its own row), in model order.
fn parameter_table(vs: &nn::VarStore, num_layers: i64) -> Vec<(String, i64)> {
    let module_of = |name: &str| -> String {
        let mut parts = name.split('.');
        match (parts.next(), parts.next()) {
            (Some("blocks"), Some(i)) => format!("blocks.{i}"),
            (Some(first), _) => first.to_string(),
            _ => name.to_string(),
        }
    };
    let order: Vec<String> = ["patch_embed", "cls_token", "pos_embed"]
        .into_iter()
        .map(String::from)
        .chain((0..num_layers).map(|i| format!("blocks.{i}")))
        .chain(["norm", "head"].into_iter().map(String::from))
        .collect();
    // Summed in one pass: thousands of blocks, each a row, must not rescan every tensor.
    let mut counts: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for (name, tensor) in vs.variables() {
        *counts.entry(module_of(&name)).or_default() += tensor.numel() as i64;
    }
    order
        .into_iter()
        .map(|module| {
            let count = counts.get(&module).copied().unwrap_or(0);
            (module, count)
        })
        .collect()
}

/// `vit info`: the config (the flags', or a checkpoint's with what it was trained on), its
/// parameters module by module, its forward FLOPs per image, the notebook's shape check and
/// whether CUDA is there.
pub fn run(args: &InfoArgs) -> Result<()> {
    let (vs, model) = match &args.checkpoint {
        Some(path) => {
            let loaded = crate::checkpoint::load(path, Device::Cpu)?;
            println!("Config (from {}):", path.display());
            println!("{}", serde_json::to_string_pretty(&loaded.model.config)?);
            println!("\n{}", trained_on(&loaded));
            (loaded.vs, loaded.model)
        }
        None => {
            let config = args.model.resolve()?;
            println!("Config ({}):", config.described_as(&args.model.preset));
            println!("{}", serde_json::to_string_pretty(&config)?);
            let vs = nn::VarStore::new(Device::Cpu);
            let model = VisionTransformer::new(&vs.root(), &config)?;
            (vs, model)
        }
    };
    let config = &model.config;
    let table = parameter_table(&vs, config.num_layers);
    println!("\n{:<14} {:>12}", "module", "parameters");
    for (module, count) in &table {
        println!("{module:<14} {count:>12}");
    }
    // Over every variable, so that one the table's modules missed would still count.
    let total = crate::model::parameter_total(&vs);
    println!("{:<14} {:>12}", "total", total);
    let flops = config.forward_flops();
    println!(
        "\nForward pass: {} per image (matrix products and the patch convolution, 2 per \
         multiply-add)",
        flops_text(flops)
    );
    if let Some(note) = slow_shape_check_note(flops) {
        println!("{note}");
    }
    let input = Tensor::randn(
        [1, config.in_channels, config.image_size, config.image_size],
        (Kind::Float, Device::Cpu),
    );
    let output = tch::no_grad(|| model.forward_t(&input, false));
    println!(
        "\nShape check: randn{:?} -> {:?}",
        input.size(),
        output.size()
    );
    let devices = tch::Cuda::device_count();
    println!("{}", cuda_line(tch::Cuda::is_available(), devices));
    Ok(())
}

/// What a checkpoint records of its training data: the dataset and the class names, each
/// or "not recorded" (a timm or PyTorch file without vit's metadata).
fn trained_on(loaded: &crate::checkpoint::LoadedModel) -> String {
    let num_classes = loaded.model.config.num_classes;
    let dataset = loaded.dataset().unwrap_or("not recorded");
    let classes = match loaded.recorded_classes() {
        Some(names) => names.join(", "),
        None => format!(
            "not recorded (vit predict says {} to {}; vit eval takes the names of the test \
             set it reads)",
            crate::checkpoint::unnamed_class(0),
            crate::checkpoint::unnamed_class(num_classes - 1)
        ),
    };
    format!("Trained on: {dataset}\nClasses ({num_classes}): {classes}")
}

/// `vit info`'s last line: whether libtorch can use CUDA, and on how many devices.
fn cuda_line(available: bool, devices: i64) -> String {
    format!(
        "CUDA available: {available} ({devices} {})",
        noun_for(devices, "device")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ViTConfig;

    /// The device count in words, as `vit info` prints it with 0, 1 or 2 GPUs.
    #[test]
    fn the_cuda_line_counts_devices_in_words() {
        assert_eq!(cuda_line(false, 0), "CUDA available: false (0 devices)");
        assert_eq!(cuda_line(true, 1), "CUDA available: true (1 device)");
        assert_eq!(cuda_line(true, 2), "CUDA available: true (2 devices)");
    }

    #[test]
    fn flops_keep_three_digits_in_sight() {
        assert_eq!(
            flops_text(ViTConfig::notebook().forward_flops()),
            "0.437 GFLOPs"
        );
        assert_eq!(flops_text(263_808.0 * 1e3), "0.264 GFLOPs");
        assert_eq!(flops_text(26_380_800.0), "26.381 MFLOPs");
        assert_eq!(flops_text(263_808.0), "0.264 MFLOPs");
        assert_eq!(flops_text(99_999.0), "99999 FLOPs");
    }

    #[test]
    fn only_a_shape_check_of_over_10_seconds_gets_a_note() {
        let notebook = ViTConfig::notebook();
        assert_eq!(slow_shape_check_note(notebook.forward_flops()), None);
        assert_eq!(slow_shape_check_note(1e12), None);
        let measured = ViTConfig {
            image_size: 256,
            patch_size: 2,
            ..notebook.clone()
        };
        let note = slow_shape_check_note(measured.forward_flops()).unwrap();
        assert!(note.contains("about 18 s on two cores"), "{note}");
        let millions_of_tokens = ViTConfig {
            image_size: 2048,
            patch_size: 2,
            ..notebook
        };
        let note = slow_shape_check_note(millions_of_tokens.forward_flops()).unwrap();
        assert!(note.contains("about 19 hours"), "{note}");
        let at = |seconds: f64| slow_shape_check_note(seconds * CPU_FLOPS_PER_SECOND).unwrap();
        assert!(at(300.0).contains("about 5 minutes"), "{}", at(300.0));
        assert!(at(119.4).contains("about 119 s"), "{}", at(119.4));
        assert!(at(119.6).contains("about 2 minutes"), "{}", at(119.6));
        assert!(at(7199.0).contains("about 2 hours"), "{}", at(7199.0));
    }
}
