use vit_tch::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let command = Cli::parse_args().command;
    let end_on_a_closed_pipe = command.may_end_on_a_closed_pipe();
    vit_tch::runtime::run_command(end_on_a_closed_pipe, || match command {
        Command::Info(args) => vit_tch::info::run(&args),
        Command::Download(args) => vit_tch::data::run_download(&args),
        Command::Data(args) => vit_tch::data::run_summary(&args),
        Command::Train(args) => vit_tch::train::run(&args),
        Command::Eval(args) => vit_tch::eval::run(&args),
        Command::Predict(args) => vit_tch::predict::run(&args),
        Command::Bench(args) => vit_tch::bench::run(&args),
        Command::Plot(args) => vit_tch::plot::run(&args),
        Command::Attention(args) => vit_tch::attention::run(&args),
    })
}
