use anyhow::{bail, Result};
use clap::Parser;
use vit_tch::cli::{Cli, Command};

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Download(args) => vit_tch::data::run_download(&args),
        Command::Data(args) => vit_tch::data::run_summary(&args),
        Command::Plot(args) => vit_tch::plot::run(&args),
        Command::Attention(args) => vit_tch::attention::run(&args),
        other => bail!("`{other:?}` is not implemented yet"),
    }
}
