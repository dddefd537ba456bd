//! `vit info`: the resolved config, where the parameters are, and the notebook's shape check.

use crate::cli::InfoArgs;
use crate::model::{ViTConfig, VisionTransformer};
use anyhow::Result;
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};

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
    let variables = vs.variables();
    order
        .into_iter()
        .map(|module| {
            let count = variables
                .iter()
                .filter(|(name, _)| module_of(name) == module)
                .map(|(_, t)| t.numel() as i64)
                .sum();
            (module, count)
        })
        .collect()
}

/// `vit info`: the config, its parameters module by module, the notebook's shape check and
/// whether CUDA is there.
pub fn run(args: &InfoArgs) -> Result<()> {
    let config = args.model.resolve()?;
    let preset = ViTConfig::preset(&args.model.preset)?;
    let changed = if config == preset {
        ""
    } else {
        " with the flags given"
    };
    println!("Config ({} preset{changed}):", args.model.preset);
    println!("{}", serde_json::to_string_pretty(&config)?);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = VisionTransformer::new(&vs.root(), &config)?;
    let table = parameter_table(&vs, config.num_layers);
    println!("\n{:<14} {:>12}", "module", "parameters");
    for (module, count) in &table {
        println!("{module:<14} {count:>12}");
    }
    // Over every variable, so that one the table's modules missed would still count.
    let total = crate::model::parameter_total(&vs);
    println!("{:<14} {:>12}", "total", total);
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
    println!(
        "CUDA available: {} ({} device(s))",
        tch::Cuda::is_available(),
        tch::Cuda::device_count()
    );
    Ok(())
}
