fn main() -> anyhow::Result<()> {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model =
        vit_tch::model::VisionTransformer::new(&vs.root(), &vit_tch::model::ViTConfig::notebook())?;
    let n: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    let x = tch::Tensor::randn([1, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    println!(
        "{n} {:?} cuda={}",
        tch::nn::ModuleT::forward_t(&model, &x, false).size(),
        tch::Cuda::is_available()
    );
    Ok(())
}
