//! Checkpoints move between vit-tch and timm in both directions (`tests/reference/
//! roundtrip.py` is the Python half), and malformed checkpoints are refused by name.

mod common;

use common::{assert_close, assert_contains, perturb, python, run_python, seeded, TempDir};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};
use vit_tch::checkpoint::{self, TensorFile};
use vit_tch::model::{ViTConfig, VisionTransformer};

const TOLERANCE: f64 = 1e-5;

fn tiny_config() -> ViTConfig {
    ViTConfig {
        image_size: 8,
        patch_size: 4,
        in_channels: 3,
        embed_dim: 16,
        num_heads: 4,
        mlp_dim: 32,
        num_layers: 2,
        num_classes: 5,
        dropout: 0.0,
    }
}

/// A tiny model with timm's initialisation plus noise, so that every LayerNorm and bias
/// differs and a parameter stored under the wrong name changes the logits.
fn tiny_model() -> (nn::VarStore, VisionTransformer) {
    let _rng = seeded(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = VisionTransformer::new(&vs.root(), &tiny_config()).unwrap();
    perturb(&vs, 0.1);
    (vs, model)
}

fn tensors(entries: &[(&str, &Tensor)]) -> TensorFile {
    TensorFile {
        tensors: entries
            .iter()
            .map(|(name, t)| (name.to_string(), t.shallow_clone()))
            .collect(),
        metadata: HashMap::new(),
    }
}

#[test]
fn checkpoints_round_trip_through_timm() {
    let dir = TempDir::new("roundtrip");
    let (vs, model) = tiny_model();
    let config = tiny_config();
    checkpoint::save(&vs, &config, &[], &dir.join("rust.safetensors")).unwrap();
    let input = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let logits = tch::no_grad(|| model.forward_t(&input, false));
    tensors(&[("input", &input), ("logits", &logits)])
        .write(&dir.join("rust_io.safetensors"))
        .unwrap();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/roundtrip.py");
    let output = Command::new(python())
        .arg(script)
        .args(
            ["rust", "rust_io", "timm", "timm_io"]
                .map(|name| dir.join(format!("{name}.safetensors"))),
        )
        .output()
        .expect("run tests/reference/roundtrip.py");
    assert!(
        output.status.success(),
        "roundtrip.py failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let loaded = checkpoint::load(&dir.join("timm.safetensors"), Device::Cpu).unwrap();
    assert_eq!(loaded.model.config, config);
    let io = TensorFile::read(&dir.join("timm_io.safetensors")).unwrap();
    let logits =
        tch::no_grad(|| loaded.model.f_forward_t(io.get("input").unwrap(), false)).unwrap();
    assert_close(
        "timm checkpoint in Rust",
        &logits,
        io.get("logits").unwrap(),
        TOLERANCE,
    );
}

/// A model of timm's own registry, not one built to a vit config: `vit_tiny_patch16_224`
/// (224x224 images in 16x16 patches, 12 blocks 192 wide with 3 heads, 1000 classes; its
/// weights moved off their initial values), saved with its config, loads in vit and gives
/// timm's logits.
#[test]
fn a_model_of_timms_registry_loads_with_timms_logits() {
    let dir = TempDir::new("timm-registry");
    run_python(
        &dir,
        "import json, torch, timm\n\
         from safetensors.torch import save_file\n\
         torch.manual_seed(0)\n\
         model = timm.create_model('vit_tiny_patch16_224', pretrained=False).eval()\n\
         with torch.no_grad():\n\
         \x20   for p in model.parameters():\n\
         \x20       p.add_(torch.randn_like(p) * 0.05)\n\
         \x20   images = torch.randn(2, 3, 224, 224)\n\
         \x20   logits = model(images)\n\
         config = dict(image_size=224, patch_size=16, in_channels=3, embed_dim=192,\n\
         \x20   num_heads=3, mlp_dim=768, num_layers=12, num_classes=1000, dropout=0.0)\n\
         weights = {name: t.contiguous() for name, t in model.state_dict().items()}\n\
         save_file(weights, 'model.safetensors', metadata={'config': json.dumps(config)})\n\
         save_file({'images': images, 'logits': logits}, 'io.safetensors')",
    );
    let loaded = checkpoint::load(&dir.join("model.safetensors"), Device::Cpu).unwrap();
    assert_eq!(loaded.model.config.parameter_count(), 5_717_416.0);
    let io = TensorFile::read(&dir.join("io.safetensors")).unwrap();
    let logits =
        tch::no_grad(|| loaded.model.f_forward_t(io.get("images").unwrap(), false)).unwrap();
    let expected = io.get("logits").unwrap();
    assert!(
        expected.std(false).double_value(&[]) > 0.1,
        "logits too alike to tell a misplaced weight"
    );
    // Looser than TOLERANCE for 12 blocks at 224x224 (2.6e-6 measured); LayerNorm's eps
    // 1e-5 instead of timm's 1e-6 would be 8.7e-4 off, tanh GELU 1.1e-3.
    assert_close(
        "timm's vit_tiny_patch16_224 in vit",
        &logits,
        expected,
        1e-4,
    );
}

/// The timm model the tests and benchmarks compare with (and README.md's loading snippet)
/// has vit's MLP width for any sizes: timm builds int(embed_dim * mlp_ratio) hidden units,
/// and 61 / 14 * 14 is 60.99999999999999.
#[test]
fn the_timm_model_has_the_mlp_width_asked_for() {
    let config = ViTConfig {
        embed_dim: 14,
        num_heads: 2,
        mlp_dim: 61,
        ..tiny_config()
    };
    let dir = TempDir::new("timm-mlp-width");
    let reference = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference");
    let parameters = run_python(
        &dir,
        &format!(
            "import json, sys\n\
             sys.path.insert(0, {reference:?})\n\
             from vit_reference import timm_model\n\
             model = timm_model(json.loads({:?}))\n\
             print(sum(p.numel() for p in model.parameters()))",
            config.to_json()
        ),
    );
    assert_eq!(parameters.trim(), config.parameter_count().to_string());
}

/// Files of `torch.save` (how PyTorch users save a state dict: the zip format, the legacy
/// pickle, and one misnamed .safetensors), of `torch.jit.save` and of `torch.export.save`
/// (once taken for a torch.save file, by the one of its sample inputs inside, and told a
/// torch.load that fails) are refused with the line of Python that converts them, and the
/// file each line writes loads with the same weights; so too a whole model and timm's and
/// DeiT's training checkpoints, known by their pickles (which torch.load's default refuses),
/// and a training checkpoint under another key, with the expression told for one and the key
/// put in. A zip of something else (numpy's .npz) is not taken for one: it is named as an
/// archive.
#[test]
fn a_pytorch_file_is_refused_with_the_conversion_that_works() {
    let dir = TempDir::new("pytorch-file");
    let (vs, _model) = tiny_model();
    let config = tiny_config();
    checkpoint::save(&vs, &config, &[], &dir.join("vit.safetensors")).unwrap();
    let reference = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference");
    run_python(
        &dir,
        &format!(
            "import collections, json, sys, numpy, torch, safetensors.torch as st\n\
             sys.path.insert(0, {reference:?})\n\
             from vit_reference import timm_model\n\
             state = collections.OrderedDict(st.load_file('vit.safetensors'))\n\
             torch.save(state, 'model.pth')\n\
             torch.save(state, 'legacy.pth', _use_new_zipfile_serialization=False)\n\
             torch.save(state, 'renamed.safetensors')\n\
             model = timm_model(json.loads({:?})).eval()\n\
             model.load_state_dict(state, strict=True)\n\
             torch.jit.trace(model, torch.randn(1, 3, 8, 8)).save('traced.pt')\n\
             torch.save(model, 'whole.pth')\n\
             example = (torch.randn(1, 3, 8, 8),)\n\
             torch.export.save(torch.export.export(model, example), 'exported.pt2')\n\
             import argparse\n\
             torch.save({{'epoch': 1, 'state_dict': state, 'args': argparse.Namespace(lr=0.1)}}, \
             'model_best.pth.tar')\n\
             torch.save({{'model': state, 'epoch': 3}}, 'deit.pth')\n\
             torch.save({{'net': state, 'args': argparse.Namespace(lr=0.1)}}, 'net.pth')\n\
             wrapped = collections.OrderedDict(state)\n\
             wrapped._metadata = {{'': {{}}, 'model': {{}}, 'state_dict': {{}}}}\n\
             torch.save(wrapped, 'wrapped.pth')\n\
             numpy.savez('arrays.npz', x=numpy.zeros(3))\n\
             numpy.savez('jax.npz', **{{'embedding/kernel': numpy.zeros((4, 4, 3, 8)), 'cls': numpy.zeros((1, 1, 8))}})\n\
             import zipfile\n\
             zipfile.ZipFile('notes.zip', 'w').writestr('notes.txt', 'notes')\n\
             state['head.bias'] = state['head.bias'].to(torch.int8)\n\
             st.save_file(state, 'int8.safetensors')",
            config.to_json()
        ),
    );
    let load_error = |name: &str| match checkpoint::load(&dir.join(name), Device::Cpu) {
        Ok(_) => panic!("{name} loaded as a safetensors file"),
        Err(e) => format!("{e:#}"),
    };
    for (name, kind, converted) in [
        ("model.pth", "torch.save", "model.safetensors"),
        ("legacy.pth", "torch.save", "legacy.safetensors"),
        // A state dict whose submodules' names (kept in its _metadata) are a training
        // checkpoint's keys is still one.
        ("wrapped.pth", "torch.save", "wrapped.safetensors"),
        (
            "renamed.safetensors",
            "torch.save",
            "renamed.converted.safetensors",
        ),
        ("traced.pt", "torch.jit.save", "traced.safetensors"),
        ("exported.pt2", "torch.export.save", "exported.safetensors"),
        // Which torch.load refuses by default: a whole model, and training checkpoints
        // (timm's train.py's, the weights under "state_dict" beside its argparse
        // arguments; DeiT's, under "model").
        (
            "whole.pth",
            "torch.save of a whole model",
            "whole.safetensors",
        ),
        (
            "model_best.pth.tar",
            "torch.save of a training checkpoint, the weights under \"state_dict\"",
            "model_best.pth.safetensors",
        ),
        (
            "deit.pth",
            "torch.save of a training checkpoint, the weights under \"model\"",
            "deit.safetensors",
        ),
    ] {
        let error = load_error(name);
        assert_contains(&error, &format!("is a PyTorch file ({kind})"));
        // The advice, as a user would paste it, with their config as `cfg`.
        let conversion = error.split('`').nth(1).expect("a command in backticks");
        run_python(&dir, &format!("cfg = {}\n{conversion}", config.to_json()));
        let converted = checkpoint::load(&dir.join(converted), Device::Cpu).unwrap();
        assert_eq!(converted.model.config, config);
        for (name, original) in vs.variables() {
            assert_close(&name, &converted.vs.variables()[&name], &original, 0.0);
        }
    }
    // A training checkpoint under a key vit does not know is told of as weights, with how
    // to load a training checkpoint: that expression, with the dict's key put in and in
    // place of the state dict, converts it.
    let error = load_error("net.pth");
    let parts: Vec<&str> = error.split('`').collect();
    let loaded = format!(
        "torch.load({:?}, map_location=\"cpu\")",
        dir.join("net.pth").display().to_string()
    );
    let expression = parts.get(3).unwrap_or_else(|| panic!("{error}"));
    assert!(expression.ends_with("[\"state_dict\"]"), "{error}");
    let expression = expression.replace("\"state_dict\"", "\"net\"");
    let conversion = parts[1].replace(&loaded, &expression);
    run_python(&dir, &format!("cfg = {}\n{conversion}", config.to_json()));
    let converted = checkpoint::load(&dir.join("net.safetensors"), Device::Cpu).unwrap();
    for (name, original) in vs.variables() {
        assert_close(&name, &converted.vs.variables()[&name], &original, 0.0);
    }
    let error = load_error("model.pth");
    // model.safetensors is there now (converted above): pasted again, the command would
    // write over it, so it names a free file.
    let free = format!(
        "{:?}",
        dir.join("model.converted.safetensors")
            .display()
            .to_string()
    );
    assert_contains(&error, &free);
    // A zip that no PyTorch function wrote is named as an archive, not as a damaged
    // safetensors file (whose header length its magic number would be).
    let error = load_error("arrays.npz");
    assert!(
        error.ends_with(&format!(
            "{} is a numpy archive (numpy.savez), not a checkpoint: --checkpoint takes a \
             .safetensors file that vit train saved; a model's weights with timm's names can \
             be saved as one (README.md, Checkpoints)",
            dir.join("arrays.npz").display()
        )),
        "{error}"
    );
    // Google's JAX ViT checkpoints are numpy archives too, with Flax's names: timm reads
    // them.
    let error = load_error("jax.npz");
    assert!(
        error.contains("jax.npz is a JAX ViT checkpoint (numpy arrays with Flax's names)")
            && error.contains("`model.load_pretrained(PATH)`"),
        "{error}"
    );
    let error = load_error("notes.zip");
    assert_contains(
        &error,
        "notes.zip is a zip archive that PyTorch did not save, not a checkpoint",
    );
    // Nor is a tar of the folder that torch.save's zip unpacks to: outside a zip, the
    // names it holds tell nothing.
    let mut folder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    folder
        .append_data(&mut header, "model/data.pkl", &b"pkl"[..])
        .unwrap();
    std::fs::write(dir.join("model.tar"), folder.into_inner().unwrap()).unwrap();
    let error = load_error("model.tar");
    assert!(
        error.contains("is not a valid safetensors file") && !error.contains("PyTorch file"),
        "{error}"
    );
    // An image given as the checkpoint (vit predict's arguments swapped) is named as one...
    image::RgbImage::new(8, 8)
        .save(dir.join("photo.png"))
        .unwrap();
    let error = load_error("photo.png");
    assert_contains(
        &error,
        "photo.png is an image (Png), not a checkpoint: --checkpoint takes",
    );
    // A safetensors file cut short whose header length (13,648) begins with PNM's magic
    // number, `P5`, is not.
    std::fs::write(dir.join("cut.safetensors"), b"P5\0\0\0\0\0\0{\"a\":").unwrap();
    let error = load_error("cut.safetensors");
    assert!(
        error.contains("is not a valid safetensors file") && !error.contains("is an image"),
        "{error}"
    );
    std::fs::remove_file(dir.join("cut.safetensors")).unwrap();
    // A text file (a run's metrics.csv given by mistake) is named as one; beside a run's
    // best model, that is offered instead.
    std::fs::write(dir.join("metrics.csv"), "epoch,lr\n1,0.001\n").unwrap();
    let refused = format!(
        "{} is a text file, not a checkpoint: --checkpoint takes a .safetensors file that vit \
         train saved",
        dir.join("metrics.csv").display()
    );
    let error = load_error("metrics.csv");
    assert!(error.ends_with(&refused), "{error}");
    let best = dir.join("best_model.safetensors");
    std::fs::copy(dir.join("vit.safetensors"), &best).unwrap();
    let error = load_error("metrics.csv");
    assert!(
        error.ends_with(&format!("{refused}, such as {}", best.display())),
        "{error}"
    );
    std::fs::remove_file(&best).unwrap();
    // ...and a missing `.pth` (the notebook's name) points at the checkpoint beside it.
    let error = load_error("vit.pth");
    let beside = dir.join("vit.safetensors");
    assert_contains(&error, &format!("did you mean {}?", beside.display()));
    // A missing `.pth` with no checkpoint beside it is only said to be unreadable: a file
    // that is not there either is no suggestion.
    let error = load_error("other.pth");
    assert!(
        error.contains("cannot read") && !error.contains("did you mean"),
        "{error}"
    );
    // A valid file with a dtype vit does not take names the tensor and the dtype.
    let error = load_error("int8.safetensors");
    assert!(
        error.contains(
            "tensor head.bias: its dtype is I8, which vit does not read (it reads F32, F64, \
             BF16, F16, I64, I32, U8, BOOL)"
        ),
        "{error}"
    );
    // A folder names the checkpoints in it.
    let error = load_error(".");
    assert!(
        error.contains("is a folder, not a checkpoint: give one of the checkpoints in it")
            && error.contains("(deit.safetensors, exported.safetensors, int8.safetensors")
            && error.contains("such as"),
        "{error}"
    );
}

/// What is no file is refused as a checkpoint before it is opened, naming what it is (a
/// named pipe's open would wait for a writer forever, and /dev/zero's read never ends); a
/// large file that is no checkpoint, after its header alone (it was read whole into
/// memory first); and a header that declares more data than the file holds, before that
/// data is read. Each under `run_vit_bounded`, so that a regression fails the test rather
/// than hang it or take the machine's memory.
#[test]
fn a_checkpoint_is_refused_from_its_header_and_a_special_file_unopened() {
    let dir = TempDir::new("checkpoint-header");
    let eval_fails = |checkpoint: &Path| {
        let checkpoint = checkpoint.to_str().unwrap();
        let output =
            common::run_vit_bounded(&["eval", "--device", "cpu", "--checkpoint", checkpoint]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{checkpoint}: {stderr}");
        stderr
    };
    let pipe = dir.join("pipe.safetensors");
    let made = Command::new("mkfifo").arg(&pipe).status().unwrap();
    assert!(made.success());
    for (special, kind) in [
        (Path::new("/dev/zero"), "a character device"),
        (&pipe, "a named pipe (FIFO)"),
    ] {
        let stderr = eval_fails(special);
        assert!(
            stderr.contains(&format!(
                "{} is {kind}, not a checkpoint file: --checkpoint takes a .safetensors file \
                 that vit train saved",
                special.display()
            )),
            "{stderr}"
        );
    }
    // 4 GiB of zeros (a sparse file, which takes no disk): twice the memory vit is given.
    let large = dir.join("large.safetensors");
    std::fs::File::create(&large)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let stderr = eval_fails(&large);
    assert!(
        stderr.contains(&format!(
            "{} is not a valid safetensors file",
            large.display()
        )),
        "{stderr}"
    );
    std::fs::remove_file(&large).unwrap();
    // A header that declares a 4 GiB tensor, in a file of a few bytes.
    let json = r#"{"w":{"dtype":"F32","shape":[1073741824],"data_offsets":[0,4294967296]}}"#;
    let declared = dir.join("declared.safetensors");
    let bytes = [
        &(json.len() as u64).to_le_bytes()[..],
        json.as_bytes(),
        &[0; 16],
    ]
    .concat();
    std::fs::write(&declared, bytes).unwrap();
    let error = match checkpoint::load(&declared, Device::Cpu) {
        Ok(_) => panic!("a header of more data than the file holds loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("is not a valid safetensors file")
            && error.contains("incomplete metadata, file not fully covered"),
        "{error}"
    );
    // Shapes libtorch cannot make, of tensors with no elements (which safetensors
    // accepts): refused naming the tensor, not passed to libtorch (as a negative size, or
    // to its overflowing storage size and a C++ backtrace).
    for shape in ["[9223372036854775808,0]", "[0,4294967296,4294967296]"] {
        let json = format!(r#"{{"w":{{"dtype":"F32","shape":{shape},"data_offsets":[0,0]}}}}"#);
        let huge = dir.join("huge-shape.safetensors");
        let bytes = [&(json.len() as u64).to_le_bytes()[..], json.as_bytes()].concat();
        std::fs::write(&huge, bytes).unwrap();
        let error = match TensorFile::read(&huge) {
            Ok(_) => panic!("a tensor of shape {shape} was read"),
            Err(e) => format!("{e:#}"),
        };
        let shape = shape.replace(',', ", ");
        assert!(
            error.contains(&format!(
                "{}: tensor w: its shape {shape} is larger than a tensor may be (at most \
                 2^63 - 1 in all, not counting sizes of 0): the file is damaged",
                huge.display()
            )),
            "{error}"
        );
    }
    // A TorchScript file larger than the bytes read from its ends to tell what it is: its
    // zip names constants.pkl only in its directory, at its end.
    run_python(
        &dir,
        "import torch\n\
         torch.jit.script(torch.nn.Linear(1024, 1024)).save('large.pt')",
    );
    let error = match checkpoint::load(&dir.join("large.pt"), Device::Cpu) {
        Ok(_) => panic!("a TorchScript file loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert_contains(&error, "is a PyTorch file (torch.jit.save)");
}

/// The same weights and metadata give the same bytes, whatever order the metadata's
/// HashMap holds its keys in (it changes from process to process, so a run's checkpoints
/// would otherwise hash differently each time it is repeated).
#[test]
fn a_checkpoint_has_the_same_bytes_each_time() {
    let (vs, _model) = tiny_model();
    #[rustfmt::skip]
    let metadata = [
        ("dataset", "cifar10".to_string()), ("classes", "[\"a\"]".into()),
        ("mean", "[0.5]".into()), ("std", "[0.2]".into()), ("zz", "last".into()),
    ];
    let bytes = |metadata: &[(&str, String)]| checkpoint::to_bytes(&vs, &tiny_config(), metadata);
    let first = bytes(&metadata).unwrap();
    let mut reversed = metadata.clone();
    reversed.reverse();
    for _ in 0..5 {
        assert!(bytes(&reversed).unwrap() == first, "the bytes differ");
    }
    let dir = TempDir::new("same-bytes");
    let path = dir.join("model.safetensors");
    std::fs::write(&path, &first).unwrap();
    let read = TensorFile::read(&path).unwrap();
    assert_eq!(read.metadata["zz"], "last");
    assert_eq!(read.tensors.len(), vs.variables().len());
}

/// The tiny model's parameters with `config` metadata, for the malformed variants below.
fn checkpoint_tensors() -> (BTreeMap<String, Tensor>, HashMap<String, String>) {
    let (vs, _model) = tiny_model();
    let metadata = HashMap::from([("config".to_string(), tiny_config().to_json())]);
    (vs.variables().into_iter().collect(), metadata)
}

fn load_error(name: &str, file: TensorFile) -> String {
    let dir = TempDir::new(name);
    let path = dir.join("checkpoint.safetensors");
    file.write(&path).unwrap();
    match checkpoint::load(&path, Device::Cpu) {
        Ok(_) => panic!("a {name} checkpoint was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn mismatched_checkpoint_is_refused_naming_each_problem() {
    let (mut tensors, metadata) = checkpoint_tensors();
    assert!(tensors.remove("blocks.1.mlp.fc2.bias").is_some());
    tensors.insert(
        "blocks.0.extra.weight".into(),
        Tensor::ones([16], (Kind::Float, Device::Cpu)),
    );
    tensors.insert(
        "blocks.1.norm2.weight".into(),
        Tensor::zeros([7], (Kind::Float, Device::Cpu)),
    );
    let error = load_error("mismatched", TensorFile { tensors, metadata });
    for expected in [
        "missing keys: [\"blocks.1.mlp.fc2.bias\"]",
        "unexpected keys: [\"blocks.0.extra.weight\"]",
        "`blocks.1.norm2.weight` has shape [7], the model expects [16]",
    ] {
        assert!(
            error.contains(expected),
            "`{expected}` not in the error: {error}"
        );
    }
    assert!(
        !error.contains("timm VisionTransformer made with"),
        "{error}"
    );

    // Weights of integers (copied in, they were taken as weights without a word); those of
    // every floating-point dtype load.
    let (mut tensors, metadata) = checkpoint_tensors();
    let bias = tensors.get_mut("head.bias").unwrap();
    *bias = bias.to_kind(Kind::Int64);
    let error = load_error("int-weights", TensorFile { tensors, metadata });
    assert!(
        error.ends_with(
            "tensors that are not floating-point where the model's weights are (F32, F64, F16 \
             and BF16 load): [\"head.bias (I64)\"]"
        ),
        "{error}"
    );
    let (mut tensors, metadata) = checkpoint_tensors();
    for (name, kind) in [
        ("head.bias", Kind::Half),
        ("head.weight", Kind::BFloat16),
        ("cls_token", Kind::Double),
    ] {
        let tensor = tensors.get_mut(name).unwrap();
        *tensor = tensor.to_kind(kind);
    }
    let dir = TempDir::new("float-weights");
    let path = dir.join("checkpoint.safetensors");
    TensorFile { tensors, metadata }.write(&path).unwrap();
    checkpoint::load(&path, Device::Cpu).unwrap();

    // Many of a kind: the first five are listed, and the count of the others.
    let (mut tensors, metadata) = checkpoint_tensors();
    let mut biases = 0;
    for (_, tensor) in tensors
        .iter_mut()
        .filter(|(name, _)| name.ends_with(".bias"))
    {
        *tensor = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        biases += 1;
    }
    let error = load_error("many", TensorFile { tensors, metadata });
    let listed = error.matches("has shape [3], the model expects").count();
    assert_eq!(listed, 5, "{error}");
    assert!(
        error.contains(&format!(
            "; and {} more tensors of another shape",
            biases - 5
        )),
        "{error}"
    );
}

/// Many unexpected keys: the error lists the first five (in name order) and counts the
/// others, as it does for tensors of another shape.
#[test]
fn many_unexpected_keys_are_the_first_five_and_a_count() {
    let (mut tensors, metadata) = checkpoint_tensors();
    for i in 0..8 {
        tensors.insert(
            format!("extra.{i}"),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        );
    }
    let error = load_error("unexpected", TensorFile { tensors, metadata });
    assert!(
        error.contains(
            "unexpected keys: [\"extra.0\", \"extra.1\", \"extra.2\", \"extra.3\", \
             \"extra.4\"] and 3 more"
        ),
        "{error}"
    );
}

#[test]
fn a_checkpoint_of_another_timm_layout_is_told_what_differs() {
    let (tensors, metadata) = checkpoint_tensors();
    let renamed = |rename: &dyn Fn(&str) -> Option<String>| {
        let tensors = tensors
            .iter()
            .filter_map(|(name, t)| Some((rename(name)?, t.shallow_clone())))
            .collect();
        TensorFile {
            tensors,
            metadata: metadata.clone(),
        }
    };
    for (name, file, expected) in [
        (
            "avg-pool",
            renamed(&|name| match name.starts_with("norm.") {
                true => Some(format!("fc_{name}")),
                false => Some(name.to_string()),
            }),
            "made with global_pool='avg' (fc_norm), which vit's model does not have",
        ),
        (
            "no-qkv-bias",
            renamed(&|name| (!name.ends_with("qkv.bias")).then(|| name.to_string())),
            "made with qkv_bias=False, which vit's model does not have",
        ),
    ] {
        // Without a config the names are told too, rather than how to add a config that
        // would then be refused for them.
        let without_config = TensorFile {
            tensors: (file.tensors.iter())
                .map(|(name, t)| (name.clone(), t.shallow_clone()))
                .collect(),
            metadata: HashMap::new(),
        };
        let error = load_error(name, file);
        assert!(error.contains(expected), "{name}: {error}");
        let error = load_error(name, without_config);
        assert!(
            error.contains("no `config` metadata, and adding one would not make it load")
                && error.contains(expected)
                && !error.contains("NUM_HEADS"),
            "{name} without config: {error}"
        );
    }

    // A stray tensor numbered past the blocks, or with NaN in it, is one unexpected key:
    // it neither makes the config's depth wrong nor the weights NaN.
    for (name, value) in [("blocks.10.extra", 0.0), ("extra", f64::NAN)] {
        let (mut tensors, metadata) = checkpoint_tensors();
        tensors.insert(
            name.into(),
            Tensor::full([1], value, (Kind::Float, Device::Cpu)),
        );
        let error = load_error("stray", TensorFile { tensors, metadata });
        assert!(
            error.contains(&format!("unexpected keys: [\"{name}\"]")) && !error.contains("NaN"),
            "{error}"
        );
    }

    // A config that is not the tensors': the sizes that differ, not each tensor.
    let (tensors, _) = checkpoint_tensors();
    let wrong = ViTConfig {
        embed_dim: 32,
        mlp_dim: 64,
        ..tiny_config()
    };
    let metadata = HashMap::from([("config".to_string(), wrong.to_json())]);
    let error = load_error("wrong-config", TensorFile { tensors, metadata });
    assert!(
        error.contains(&format!(
            "it says embed_dim 32, mlp_dim 64, the tensors' shapes embed_dim {}, mlp_dim {}",
            tiny_config().embed_dim,
            tiny_config().mlp_dim
        )),
        "{error}"
    );
    assert!(!error.contains("has shape"), "{error}");
    // So too where the config fails its own checks, which would name other sizes: a width
    // the heads do not divide, a width too large to build.
    for embed_dim in [tiny_config().num_heads * 5 + 1, 3_000_000] {
        let (tensors, _) = checkpoint_tensors();
        let wrong = ViTConfig {
            embed_dim,
            ..tiny_config()
        };
        let metadata = HashMap::from([("config".to_string(), wrong.to_json())]);
        let error = load_error("invalid-config", TensorFile { tensors, metadata });
        let expected = format!(
            "it says embed_dim {embed_dim}, the tensors' shapes embed_dim {}",
            tiny_config().embed_dim
        );
        assert_contains(&error, &expected);
    }
}

#[test]
fn checkpoint_without_config_names_what_is_missing() {
    let (tensors, _) = checkpoint_tensors();
    let error = load_error(
        "no-config",
        TensorFile {
            tensors,
            metadata: HashMap::new(),
        },
    );
    assert_contains(&error, "no `config` metadata");
    // What the shapes give, which with the head count filled in is the model's config.
    let json = error
        .split("shapes give ")
        .nth(1)
        .and_then(|rest| rest.split(", all but num_heads").next())
        .unwrap_or_else(|| panic!("no config from the shapes in: {error}"));
    let completed = json.replace("NUM_HEADS", &tiny_config().num_heads.to_string());
    assert_eq!(ViTConfig::from_json(&completed).unwrap(), tiny_config());

    // Shapes that are not the notebook's ViT in timm's layout get no config that would
    // not load: a grid that is not square gets the general advice, a model without a class
    // token is told that vit's has one.
    let (mut oblong, _) = checkpoint_tensors();
    oblong.insert(
        "pos_embed".into(),
        Tensor::zeros([1, 7, 16], (Kind::Float, Device::Cpu)),
    );
    // So do patches that are not square, and a grid of no patches.
    let (mut oblong_patches, _) = checkpoint_tensors();
    oblong_patches.insert(
        "patch_embed.proj.weight".into(),
        Tensor::zeros([16, 3, 4, 2], (Kind::Float, Device::Cpu)),
    );
    let (mut no_patches, _) = checkpoint_tensors();
    no_patches.insert(
        "pos_embed".into(),
        Tensor::zeros([1, 1, 16], (Kind::Float, Device::Cpu)),
    );
    let (mut no_class_token, _) = checkpoint_tensors();
    no_class_token.remove("cls_token");
    for (name, tensors, expected) in [
        ("oblong", oblong, "json.dumps({image_size,"),
        ("oblong-patches", oblong_patches, "json.dumps({image_size,"),
        ("no-patches", no_patches, "json.dumps({image_size,"),
        (
            "no-class-token",
            no_class_token,
            "made with class_token=False",
        ),
    ] {
        let metadata = HashMap::new();
        let error = load_error(name, TensorFile { tensors, metadata });
        assert!(!error.contains("shapes give"), "{name}: {error}");
        assert!(error.contains(expected), "{name}: {error}");
    }
}

/// A file without `config` metadata whose tensors tell no config (here none at all, as
/// the state dict of the wrong object would be) is told every field a config needs, so
/// that with the model's values they make its config; and it is no wrapped model's.
#[test]
fn a_checkpoint_whose_shapes_tell_no_config_is_told_every_field_it_needs() {
    let dir = TempDir::new("no-tensors");
    let path = dir.join("empty.safetensors");
    // A header of no tensors, padded to 8 bytes as safetensors pads it.
    std::fs::write(&path, [&8u64.to_le_bytes()[..], b"{}      "].concat()).unwrap();
    let error = match checkpoint::load(&path, Device::Cpu) {
        Ok(_) => panic!("a checkpoint of no tensors was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(!error.contains("module."), "{error}");
    let names = error
        .split("json.dumps({")
        .nth(1)
        .and_then(|rest| rest.split("})").next())
        .unwrap_or_else(|| panic!("no config fields in: {error}"));
    let values: serde_json::Value = serde_json::from_str(&tiny_config().to_json()).unwrap();
    let config: serde_json::Map<String, serde_json::Value> = names
        .split(", ")
        .map(|name| (name.to_string(), values[name].clone()))
        .collect();
    let config = serde_json::Value::Object(config).to_string();
    assert_eq!(ViTConfig::from_json(&config).unwrap(), tiny_config());
}

/// Names that are not those of a timm ViT made with other options, nor of a wrapped model,
/// are not told as such: a timm EfficientNet's (its blocks are numbered too), a ViT's that
/// lacks block 0's attention weights, and one stray `module.` name among vit's own. The
/// EfficientNet's, none of them vit's, are told which names vit reads.
#[test]
fn names_of_no_timm_vit_option_are_not_told_as_one() {
    let efficientnet = [
        "conv_stem.weight",
        "blocks.0.0.conv_dw.weight",
        "classifier.weight",
    ]
    .map(|name| {
        (
            name.to_string(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        )
    })
    .into();
    let (mut no_attention, metadata) = checkpoint_tensors();
    no_attention.remove("blocks.0.attn.qkv.weight");
    no_attention.remove("blocks.0.attn.qkv.bias");
    let (mut stray, _) = checkpoint_tensors();
    stray.insert(
        "module.extra".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    );
    for (name, tensors) in [
        ("efficientnet", efficientnet),
        ("no-attention", no_attention),
        ("stray-module", stray),
    ] {
        let metadata = metadata.clone();
        let error = load_error(name, TensorFile { tensors, metadata });
        assert!(
            error.contains("checkpoint does not match the model")
                && !error.contains("timm VisionTransformer made with")
                && !error.contains("DistributedDataParallel"),
            "{name}: {error}"
        );
        // Only names that are none of vit's are told vit's are timm's.
        let told = error.ends_with(
            ". None of its tensor names is vit's: vit reads a timm VisionTransformer's state \
             dict, by timm's names (patch_embed.proj.weight, cls_token, pos_embed, \
             blocks.0.attn.qkv.weight, ..., head.weight; README: Checkpoints)",
        );
        assert_eq!(told, name == "efficientnet", "{name}: {error}");
    }
}

#[test]
fn the_dataset_to_evaluate_on_defaults_to_the_recorded_one() {
    use vit_tch::cli::{CheckpointDatasetArgs, DatasetName};
    let metadata: HashMap<String, String> =
        [("dataset".to_string(), "cifar100-coarse".to_string())].into();
    let given = |dataset| CheckpointDatasetArgs {
        dataset,
        data_dir: PathBuf::from("data"),
        coarse_labels: false,
    };
    let resolved = checkpoint::dataset_args(&metadata, &given(None)).unwrap();
    assert_eq!(resolved.dataset, DatasetName::Cifar100);
    assert!(resolved.coarse_labels, "recorded coarse labels");
    // Another dataset asked for: the recorded coarse labels do not apply to it.
    let resolved = checkpoint::dataset_args(&metadata, &given(Some(DatasetName::Cifar10))).unwrap();
    assert_eq!(resolved.dataset, DatasetName::Cifar10);
    assert!(!resolved.coarse_labels);
    let error = checkpoint::dataset_args(&HashMap::new(), &given(None)).unwrap_err();
    assert!(format!("{error}").contains("pass --dataset"), "{error}");
}

/// Each tensor kind a checkpoint may hold moves both ways with Python's safetensors under
/// its own dtype: torch reads what Rust wrote with the same dtype and values, and Rust reads
/// what torch wrote.
#[test]
fn every_dtype_moves_between_rust_and_python() {
    let dir = TempDir::new("dtypes");
    let floats = [0.5, -1.25, 3.0, 1.0];
    let whole = [0.0, 1.0, 200.0, 3.0];
    let truth = [0.0, 1.0, 1.0, 1.0];
    #[rustfmt::skip]
    let cases = [
        ("f32", Kind::Float, "torch.float32", floats), ("f64", Kind::Double, "torch.float64", floats),
        ("bf16", Kind::BFloat16, "torch.bfloat16", floats), ("f16", Kind::Half, "torch.float16", floats),
        ("i64", Kind::Int64, "torch.int64", whole), ("i32", Kind::Int, "torch.int32", whole),
        ("u8", Kind::Uint8, "torch.uint8", whole), ("bool", Kind::Bool, "torch.bool", truth),
    ];
    let file = TensorFile {
        tensors: cases
            .iter()
            .map(|(name, kind, _, values)| {
                (name.to_string(), Tensor::from_slice(values).to_kind(*kind))
            })
            .collect(),
        metadata: HashMap::new(),
    };
    file.write(&dir.join("rust.safetensors")).unwrap();
    let read_by_torch = run_python(
        &dir,
        "import json, torch, safetensors.torch as st\n\
         print(json.dumps({k: [str(t.dtype), t.double().tolist()] \
         for k, t in st.load_file('rust.safetensors').items()}))\n\
         floats, whole = [0.5, -1.25, 3.0, 1.0], [0, 1, 200, 3]\n\
         st.save_file({'f32': torch.tensor(floats, dtype=torch.float32), \
         'f64': torch.tensor(floats, dtype=torch.float64), \
         'bf16': torch.tensor(floats, dtype=torch.bfloat16), \
         'f16': torch.tensor(floats, dtype=torch.float16), \
         'i64': torch.tensor(whole, dtype=torch.int64), \
         'i32': torch.tensor(whole, dtype=torch.int32), \
         'u8': torch.tensor(whole, dtype=torch.uint8), \
         'bool': torch.tensor([False, True, True, True])}, 'torch.safetensors')",
    );
    let read_by_torch: HashMap<String, (String, Vec<f64>)> =
        serde_json::from_str(&read_by_torch).unwrap();
    let read_by_rust = TensorFile::read(&dir.join("torch.safetensors")).unwrap();
    for (name, kind, dtype, values) in cases {
        assert_eq!(
            read_by_torch[name],
            (dtype.to_string(), values.to_vec()),
            "{name} read by torch"
        );
        let tensor = read_by_rust.get(name).unwrap();
        assert_eq!(tensor.kind(), kind, "{name} read by Rust");
        let read = Vec::<f64>::try_from(tensor.to_kind(Kind::Double)).unwrap();
        assert_eq!(read, values, "{name} read by Rust");
    }
}

/// The tensors' data starts 8-byte aligned, as safetensors lays out a file (it pads its
/// header with spaces), whatever the lengths of the metadata that `with_sorted_header`
/// rewrites.
#[test]
fn a_checkpoints_tensor_data_is_aligned_to_8_bytes() {
    let (vs, _model) = tiny_model();
    for length in 0..8 {
        let extra = [("note", "x".repeat(length))];
        let bytes = checkpoint::to_bytes(&vs, &tiny_config(), &extra).unwrap();
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + header) % 8, 0, "metadata value of {length} characters");
        let json: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header]).unwrap();
        assert_eq!(json["__metadata__"]["note"], "x".repeat(length));
    }
}

/// A checkpoint written with `dataset_metadata` records the notebook's normalisation (the
/// numbers written out here) and loads without a warning; one that records another std is
/// warned about, as one with another mean is.
#[test]
fn the_recorded_normalisation_is_the_notebooks_and_loads_without_a_warning() {
    let dir = TempDir::new("normalisation");
    let (vs, _model) = tiny_model();
    let split = || vit_tch::data::Split {
        images: Tensor::zeros([1, 3, 8, 8], (Kind::Uint8, Device::Cpu)),
        labels: Tensor::zeros([1], (Kind::Int64, Device::Cpu)),
    };
    let dataset = vit_tch::data::Dataset {
        name: "folder".into(),
        train: split(),
        test: split(),
        classes: ["a", "b", "c", "d", "e"].map(String::from).to_vec(),
    };
    let metadata = checkpoint::dataset_metadata(&dataset);
    let recorded = |key: &str| -> Vec<f64> {
        let (_, json) = metadata.iter().find(|(k, _)| *k == key).unwrap();
        serde_json::from_str(json).unwrap()
    };
    assert_eq!(recorded("mean"), [0.4914, 0.4822, 0.4465]);
    assert_eq!(recorded("std"), [0.2023, 0.1994, 0.2010]);
    let stderr_of = |name: &str, metadata: &[(&str, String)]| {
        let (output, _) = predict_one_image(&dir, &vs, name, metadata);
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = stderr_of("vit.safetensors", &metadata);
    assert!(!stderr.contains("warning"), "{stderr}");
    let mut other_std = metadata.clone();
    other_std.retain(|(key, _)| *key != "std");
    other_std.push(("std", "[0.5, 0.5, 0.5]".into()));
    let stderr = stderr_of("other-std.safetensors", &other_std);
    assert!(
        stderr.contains("records normalisation std [0.5, 0.5, 0.5]")
            && !stderr.contains("normalisation mean"),
        "{stderr}"
    );
}

/// `vit predict` of one image (`dir/image.png`, returned with the output) by `vs` saved
/// with `metadata` as the checkpoint `dir/name`.
fn predict_one_image(
    dir: &Path,
    vs: &nn::VarStore,
    name: &str,
    metadata: &[(&str, String)],
) -> (std::process::Output, PathBuf) {
    let image = dir.join("image.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([100, 150, 200]))
        .save(&image)
        .unwrap();
    let path = dir.join(name);
    checkpoint::save(vs, &tiny_config(), metadata, &path).unwrap();
    #[rustfmt::skip]
    let output = common::vit(&["predict", "--checkpoint", path.to_str().unwrap(), image.to_str().unwrap(), "--device", "cpu"]);
    (output, image)
}

/// Metadata is warned about only where it is there and cannot be the model's: a checkpoint
/// saved from timm, which records neither class names nor normalisation, loads without a
/// warning, while a `mean` that is not three numbers is warned about, as another mean is
/// (vit cannot tell that it is the notebook's).
#[test]
fn only_metadata_that_is_there_and_wrong_is_warned_about() {
    let dir = TempDir::new("metadata-warnings");
    let (vs, _model) = tiny_model();
    let stderr_of = |name: &str, metadata: &[(&str, String)]| {
        let (output, _) = predict_one_image(&dir, &vs, name, metadata);
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = stderr_of("timm.safetensors", &[]);
    assert!(!stderr.contains("warning"), "{stderr}");
    let stderr = stderr_of("broken-mean.safetensors", &[("mean", "[0.5]".into())]);
    assert_contains(
        &stderr,
        "records normalisation mean [0.5], but vit normalises inputs",
    );
}

/// A checkpoint with an infinite weight (and no NaN) is refused as one with a NaN is: its
/// outputs would be NaN or infinite all the same, and its accuracy a meaningless figure.
#[test]
fn a_checkpoint_with_infinite_weights_is_refused() {
    let (tensors, metadata) = checkpoint_tensors();
    for value in [f64::INFINITY, f64::NEG_INFINITY] {
        let _ = tensors["head.bias"].detach().narrow(0, 0, 1).fill_(value);
        let file = TensorFile {
            tensors: tensors
                .iter()
                .map(|(name, t)| (name.clone(), t.shallow_clone()))
                .collect(),
            metadata: metadata.clone(),
        };
        let error = load_error("infinite", file);
        assert!(
            error.contains("has NaN or infinite values in [\"head.bias\"]"),
            "{value}: {error}"
        );
    }
}

/// A float64 checkpoint (a timm model saved in double precision) whose value is finite in
/// float64 but beyond float32's range loads as infinity, so it is refused as an infinite
/// one is; a float64 file within range loads.
#[test]
fn a_float64_checkpoint_beyond_float32_range_is_refused() {
    let (tensors, metadata) = checkpoint_tensors();
    let file_with = |value: f64| {
        let tensors: BTreeMap<String, Tensor> = tensors
            .iter()
            .map(|(name, t)| (name.clone(), t.to_kind(Kind::Double)))
            .collect();
        let _ = tensors["head.bias"].narrow(0, 0, 1).fill_(value);
        TensorFile {
            tensors,
            metadata: metadata.clone(),
        }
    };
    let error = load_error("float64-huge", file_with(1e300));
    assert_contains(&error, "has NaN or infinite values in [\"head.bias\"]");
    let dir = TempDir::new("float64-in-range");
    let path = dir.join("model.safetensors");
    file_with(0.5).write(&path).unwrap();
    let loaded = checkpoint::load(&path, Device::Cpu).unwrap();
    let head_bias = &loaded.vs.variables()["head.bias"];
    assert_eq!(head_bias.kind(), Kind::Float);
    assert_eq!(head_bias.double_value(&[0]), 0.5);
}

/// `vit predict` lists each guess as its class name and number, or, from a checkpoint that
/// names no classes (as one saved from timm), as the number alone: "class 4", never the
/// "class 4 (4)" that says it twice.
#[test]
fn predict_names_a_class_by_number_only_where_the_checkpoint_names_none() {
    let dir = TempDir::new("predict-names");
    let (vs, _model) = tiny_model();
    let guesses = |name: &str, metadata: &[(&str, String)]| -> Vec<String> {
        let (output, image) = predict_one_image(&dir, &vs, name, metadata);
        assert!(output.status.success());
        let stdout = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines[0], image.display().to_string());
        // "   12.34%  NAME": the guesses after the percentages, all five classes.
        lines[1..]
            .iter()
            .map(|line| line.split_once("%  ").unwrap().1.to_string())
            .collect()
    };
    let named = guesses(
        "named.safetensors",
        &[("classes", r#"["a", "b", "c", "d", "e"]"#.into())],
    );
    let unnamed = guesses("unnamed.safetensors", &[]);
    // The same weights rank the classes the same way, whatever they are called.
    assert_eq!(named.len(), 5);
    for (named, unnamed) in named.iter().zip(&unnamed) {
        let (name, number) = named.split_once(" (").unwrap();
        let index: usize = number.strip_suffix(')').unwrap().parse().unwrap();
        assert_eq!(name, ["a", "b", "c", "d", "e"][index]);
        assert_eq!(unnamed, &format!("class {index}"));
    }
}

/// A run folder (of a run with `--ema`) given as a checkpoint: its checkpoints are listed
/// (not its resume state, which is none), and best_model.safetensors is the one suggested,
/// not the first by name; a folder holding only a resume state holds no checkpoint.
#[test]
fn a_run_folder_given_as_a_checkpoint_suggests_its_best_model() {
    let dir = TempDir::new("run-folder-given");
    let (vs, _model) = tiny_model();
    #[rustfmt::skip]
    let names = ["last_model", "best_model", "last_ema_model", "best_ema_model", "resume"];
    for name in names {
        checkpoint::save(
            &vs,
            &tiny_config(),
            &[],
            &dir.join(format!("{name}.safetensors")),
        )
        .unwrap();
    }
    let error = |dir: &std::path::Path| match checkpoint::load(dir, Device::Cpu) {
        Ok(_) => panic!("a folder loaded"),
        Err(e) => format!("{e:#}"),
    };
    let message = error(&dir);
    assert!(
        message.contains(&format!(
            "is a folder, not a checkpoint: give one of the checkpoints in it \
             (best_ema_model.safetensors, best_model.safetensors, last_ema_model.safetensors, \
             last_model.safetensors), such as {}",
            dir.join("best_model.safetensors").display()
        )),
        "{message}"
    );
    let only_resume = TempDir::new("resume-only");
    std::fs::copy(
        dir.join("resume.safetensors"),
        only_resume.join("resume.safetensors"),
    )
    .unwrap();
    let message = error(&only_resume);
    assert_contains(&message, "is a folder, not a checkpoint, and holds none");
}

/// The state dict of a wrapped timm model (timm's ModelEma, torch's AveragedModel, with its
/// own `n_averaged` beside the model's tensors, and DistributedDataParallel prefix
/// `module.`, torch.compile `_orig_mod.`, both together `module._orig_mod.`) is
/// refused with the line of Python that strips the prefix, and the file it writes loads
/// with the model's weights. The advice was to save `model.module.state_dict()`, which a
/// user given the file alone cannot do, and said nothing of torch.compile's prefix.
#[test]
fn a_wrapped_models_checkpoint_is_refused_with_the_line_that_strips_its_prefix() {
    let dir = TempDir::new("wrapped");
    let config = tiny_config();
    run_python(
        &dir,
        &format!(
            "import json, sys, torch, safetensors.torch as st\n\
             from timm.utils import ModelEmaV3\n\
             from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn\n\
             sys.path.insert(0, {:?})\n\
             from vit_reference import timm_model\n\
             config = json.loads({:?})\n\
             model = timm_model(config)\n\
             metadata = {{'config': json.dumps(config)}}\n\
             st.save_file(model.state_dict(), 'plain.safetensors')\n\
             st.save_file(ModelEmaV3(model).state_dict(), 'ema.safetensors', metadata)\n\
             averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999))\n\
             st.save_file(averaged.state_dict(), 'averaged.safetensors', metadata)\n\
             compiled = torch.compile(model)\n\
             st.save_file(compiled.state_dict(), 'compiled.safetensors', metadata)\n\
             state = {{'module.' + k: v for k, v in compiled.state_dict().items()}}\n\
             st.save_file(state, 'both.safetensors')",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference"),
            config.to_json()
        ),
    );
    let plain = TensorFile::read(&dir.join("plain.safetensors")).unwrap();
    for (name, prefix) in [
        ("ema", "module."),
        ("averaged", "module."),
        ("compiled", "_orig_mod."),
        ("both", "module._orig_mod."),
    ] {
        let path = dir.join(format!("{name}.safetensors"));
        let error = match checkpoint::load(&path, Device::Cpu) {
            Ok(_) => panic!("{name} loaded"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            error.contains(&format!(
                "start with `{prefix}`, as those of a wrapped model"
            )),
            "{name}: {error}"
        );
        let command = error
            .split('`')
            .find(|part| part.starts_with("import"))
            .unwrap_or_else(|| panic!("{name}: no command in: {error}"));
        run_python(&dir, command);
        let stripped = dir.join(format!("{name}.converted.safetensors"));
        assert_contains(&error, &format!("then give {}", stripped.display()));
        if name == "both" {
            // Saved without a config: the stripped file is told the one its shapes give.
            let error = match checkpoint::load(&stripped, Device::Cpu) {
                Ok(_) => panic!("{name} loaded without a config"),
                Err(e) => format!("{e:#}"),
            };
            assert_contains(&error, "The tensors' shapes give");
            continue;
        }
        let loaded = checkpoint::load(&stripped, Device::Cpu).unwrap();
        assert_eq!(loaded.model.config, config);
        for (name, tensor) in loaded.vs.variables() {
            assert_close(&name, &tensor, plain.get(&name).unwrap(), 0.0);
        }
    }
}

/// Python lines that set `config` to `config`'s fields and `base` to the keyword arguments
/// of timm's `VisionTransformer` for the same model.
fn timm_base(config: &ViTConfig) -> String {
    format!(
        "config = json.loads({:?})\n\
         base = dict(img_size=config['image_size'], patch_size=config['patch_size'], \
         embed_dim=config['embed_dim'], depth=config['num_layers'], \
         num_heads=config['num_heads'], mlp_ratio=config['mlp_dim'] / config['embed_dim'], \
         num_classes=config['num_classes'])\n",
        config.to_json()
    )
}

/// State dicts of timm models made with options vit's model lacks (timm's own parameter
/// names, saved with the tiny config and without a config) are refused naming the option.
/// `no_embed_class=True`, which only the position embedding's shape shows, was refused
/// for that shape alone, and without a config offered one that would not load.
#[test]
fn timm_options_that_vit_lacks_are_named() {
    let dir = TempDir::new("timm-options");
    let config = tiny_config();
    run_python(
        &dir,
        &format!(
            "import json, safetensors.torch as st\n\
             from timm.models.vision_transformer import VisionTransformer\n\
             from timm.models.deit import VisionTransformerDistilled\n\
             {}\
             for name, model in [\
             ('layer_scale', VisionTransformer(**base, init_values=1e-5)), \
             ('pre_norm', VisionTransformer(**base, pre_norm=True)), \
             ('no_embed_class', VisionTransformer(**base, no_embed_class=True)), \
             ('qk_norm', VisionTransformer(**base, qk_norm=True)), \
             ('registers', VisionTransformer(**base, reg_tokens=2)), \
             ('no_class_token', VisionTransformer(**base, class_token=False, global_pool='avg')), \
             ('distilled', VisionTransformerDistilled(**base)), \
             ('headless', VisionTransformer(**{{**base, 'num_classes': 0}}))]:\n\
             \x20   state = {{k: v.contiguous() for k, v in model.state_dict().items()}}\n\
             \x20   st.save_file(state, name + '.safetensors', metadata={{'config': json.dumps(config)}})\n\
             \x20   st.save_file(state, name + '.no-config.safetensors')",
            timm_base(&config)
        ),
    );
    for (name, option) in [
        ("layer_scale", "init_values (LayerScale)"),
        ("pre_norm", "pre_norm=True"),
        (
            "no_embed_class",
            "no_embed_class=True (no position embedding for the class token)",
        ),
        ("qk_norm", "qk_norm=True"),
        ("registers", "reg_tokens"),
        ("no_class_token", "class_token=False"),
        (
            "distilled",
            "a distillation token (DeiT's distilled models)",
        ),
        ("headless", "num_classes=0 (no classification head)"),
    ] {
        // Without a config, the option is told rather than a config that would not load.
        for file in [name.to_string(), format!("{name}.no-config")] {
            let path = dir.join(format!("{file}.safetensors"));
            let error = match checkpoint::load(&path, Device::Cpu) {
                Ok(_) => panic!("{file} loaded"),
                Err(e) => format!("{e:#}"),
            };
            assert!(
                error.contains("Its tensors are those of a timm VisionTransformer made with")
                    && error.contains(option),
                "{file}: {error}"
            );
        }
    }
}

/// A file without `config` metadata whose tensors are a timm ViT's of another kind than
/// vit's that the names do not tell (attention pooling, no final norm, RMSNorm) is told
/// that a config would not make it load, and why: it was given the config its shapes give
/// to add, and that config, added, was refused.
#[test]
fn a_config_that_would_not_make_a_checkpoint_load_is_not_offered() {
    let dir = TempDir::new("config-not-offered");
    let config = tiny_config();
    run_python(
        &dir,
        &format!(
            "import json, safetensors.torch as st\n\
             from timm.layers import RmsNorm\n\
             from timm.models.vision_transformer import VisionTransformer\n\
             {}\
             for name, model in [\
             ('attention_pool', VisionTransformer(**base, global_pool='map')), \
             ('no_final_norm', VisionTransformer(**base, final_norm=False)), \
             ('rms_norm', VisionTransformer(**base, norm_layer=RmsNorm))]:\n\
             \x20   state = {{k: v.contiguous() for k, v in model.state_dict().items()}}\n\
             \x20   st.save_file(state, name + '.safetensors')\n\
             \x20   st.save_file(state, name + '.config.safetensors', \
             metadata={{'config': json.dumps(config)}})",
            timm_base(&config)
        ),
    );
    for (name, problem) in [
        ("attention_pool", "unexpected keys: [\"attn_pool."),
        (
            "no_final_norm",
            "missing keys: [\"norm.bias\", \"norm.weight\"]",
        ),
        ("rms_norm", "missing keys: [\"blocks.0.norm1.bias\""),
    ] {
        let error = |file: &str| match checkpoint::load(&dir.join(file), Device::Cpu) {
            Ok(_) => panic!("{file} loaded"),
            Err(e) => format!("{e:#}"),
        };
        let without_config = error(&format!("{name}.safetensors"));
        assert!(
            without_config.contains("no `config` metadata, and adding one would not make it load")
                && without_config.contains(problem)
                && !without_config.contains("NUM_HEADS"),
            "{name}: {without_config}"
        );
        let with_config = error(&format!("{name}.config.safetensors"));
        assert!(with_config.contains(problem), "{name}: {with_config}");
    }
}

/// `vit predict` lists the guesses most probable first, as percentages: all five classes of
/// a five-class model, falling, and summing to 100%. (Ranked the wrong way round, or given
/// as fractions, they would not.)
#[test]
fn predict_lists_the_most_probable_classes_first_in_percent() {
    let dir = TempDir::new("predict-order");
    let (vs, _model) = tiny_model();
    let image = dir.join("image.png");
    image::RgbImage::from_fn(8, 8, |x, y| {
        image::Rgb([(x * 30) as u8, (y * 30) as u8, 90])
    })
    .save(&image)
    .unwrap();
    let path = dir.join("model.safetensors");
    checkpoint::save(&vs, &tiny_config(), &[], &path).unwrap();
    #[rustfmt::skip]
    let output = common::vit(&["predict", "--checkpoint", path.to_str().unwrap(), image.to_str().unwrap(), "--device", "cpu"]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    // "   12.34%  class 3" after the file's line.
    let percents: Vec<f64> = stdout
        .lines()
        .skip(1)
        .map(|line| line.trim().split_once('%').unwrap().0.parse().unwrap())
        .collect();
    assert_eq!(percents.len(), 5, "{stdout}");
    assert!(percents.windows(2).all(|p| p[0] >= p[1]), "{stdout}");
    assert!(percents[0] > percents[4], "{stdout}");
    assert!(
        (percents.iter().sum::<f64>() - 100.0).abs() < 0.05,
        "{stdout}"
    );
    // `-`, standard input's usual spelling, is refused as such, unless a file has that name.
    let predict_dash = || {
        std::process::Command::new(common::vit_binary())
            .args([
                "predict",
                "--checkpoint",
                path.to_str().unwrap(),
                "-",
                "--device",
                "cpu",
            ])
            .current_dir(&dir.0)
            .output()
            .unwrap()
    };
    let output = predict_dash();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "Error: vit predict reads image files, not standard input ('-'): save the image to a \
         file and pass its path\n"
    );
    std::fs::copy(&image, dir.join("-")).unwrap();
    assert!(predict_dash().status.success());
}
