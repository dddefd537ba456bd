//! Helpers shared by the integration tests: fixture files, strict parameter loading,
//! error measures and assertions, the deterministic parameter formula of
//! `make_fixtures.py`, random parameters, temporary folders, the lock on the global random
//! generator, CIFAR files, and the Python interpreter.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use tch::{nn, Device, Kind, Tensor};
use vit_tch::checkpoint::TensorFile;
use vit_tch::data::augment::{AugmentConfig, Policy, RandomErasing};
use vit_tch::data::mix::MixConfig;
use vit_tch::train::{Regularization, TrainBatch};

mod temp_dir;
// Not every test crate uses it (as with the helpers below, hence `dead_code` above).
#[allow(unused_imports)]
pub use temp_dir::TempDir;

/// `tests/fixtures/NAME.safetensors`, written by the scripts in `tests/reference/`; the
/// folder is `$VIT_FIXTURES` where set (a test binary run on another machine, as
/// bench/gpu.sh does).
pub fn fixture(name: &str) -> TensorFile {
    let folder = std::env::var_os("VIT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    let path = folder.join(format!("{name}.safetensors"));
    TensorFile::read(&path)
        .unwrap_or_else(|e| panic!("{e:#}\n(regenerate the fixtures with `make fixtures`)"))
}

/// The labelled batch of the fixture `file` (its `input` images and `labels`), on `device`.
pub fn fixture_batch(file: &TensorFile, device: Device) -> TrainBatch {
    TrainBatch {
        images: file.get("input").unwrap().to_device(device),
        labels: file.get("labels").unwrap().to_device(device),
        soft_targets: None,
    }
}

/// The tensors stored as `PREFIX.<key>`, under `<key>`.
pub fn with_prefix(file: &TensorFile, prefix: &str) -> BTreeMap<String, Tensor> {
    file.with_prefix(prefix).tensors
}

/// Copies the fixture's `param.*` tensors into `vs`; every variable must be there with its
/// shape and no other (`TensorFile::load_into`'s strict check).
pub fn load_params(file: &TensorFile, vs: &nn::VarStore) {
    let params = TensorFile {
        tensors: with_prefix(file, "param"),
        metadata: HashMap::new(),
    };
    params
        .load_into(vs)
        .expect("fixture parameters fit the module");
}

/// max |actual - expected|; the shapes must be equal.
pub fn max_abs_error(actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(actual.size(), expected.size(), "shape mismatch");
    (actual.to_kind(Kind::Double) - expected.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Panics with `what` and the error if `actual` is further than `tol` from `expected`.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tol: f64) {
    let error = max_abs_error(actual, expected);
    assert!(error <= tol, "{what}: max abs error {error:e} > {tol:e}");
}

/// Panics unless `value` is within 6 standard deviations (`sigma`) of `expected`: a right
/// value, normally distributed, fails this about twice in a billion draws.
pub fn assert_within_6_sigma(what: &str, value: f64, expected: f64, sigma: f64) {
    assert!(
        (value - expected).abs() <= 6.0 * sigma,
        "{what}: {value:e}, expected {expected:e} +- {:e}",
        6.0 * sigma
    );
}

/// Panics unless `count` of `n` independent draws (dropped elements, mixed images, ...),
/// each counted with probability `p`, is within 6 standard deviations, sqrt(n p (1 - p)),
/// of n p (see [`assert_within_6_sigma`]).
pub fn assert_binomial_count(what: &str, count: usize, n: usize, p: f64) {
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    assert_within_6_sigma(
        &format!("{what}: of {n}"),
        count as f64,
        n as f64 * p,
        sigma,
    );
}

/// `norm1.weight`, `norm2.weight`, `norm.weight`: LayerNorm scales.
fn is_layer_norm_weight(name: &str) -> bool {
    let mut parts = name.rsplit('.');
    parts.next() == Some("weight") && parts.next().is_some_and(|p| p.starts_with("norm"))
}

/// `make_fixtures.py`'s `formula_fill`: the i-th parameter in sorted key order becomes
/// 0.02 sin(0.1 arange(numel) + i), computed in float64 and cast to float32; LayerNorm
/// weights get 1 added.
pub fn formula_fill(vs: &nn::VarStore) {
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    tch::no_grad(|| {
        for (i, (name, var)) in variables.iter().enumerate() {
            let numel = var.numel() as i64;
            let mut values =
                (Tensor::arange(numel, (Kind::Double, tch::Device::Cpu)) * 0.1 + i as f64).sin()
                    * 0.02;
            if is_layer_norm_weight(name) {
                values += 1.0;
            }
            var.shallow_clone()
                .copy_(&values.to_kind(Kind::Float).reshape(var.size()));
        }
    });
}

/// Panics unless `haystack` contains `needle`, showing both.
#[track_caller]
pub fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "{haystack}\n--- does not contain ---\n{needle}"
    );
}

/// libtorch's random generator is global to the process and the harness runs tests on
/// parallel threads: a test that seeds it holds this guard until its last draw.
pub fn seeded(seed: i64) -> MutexGuard<'static, ()> {
    static RNG: Mutex<()> = Mutex::new(());
    let guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    guard
}

/// An empty store on the CPU.
pub fn cpu_store() -> nn::VarStore {
    nn::VarStore::new(Device::Cpu)
}

/// Gives every parameter of `vs` new values, `std` times N(0, 1) (zero biases and unit
/// LayerNorms would hide a wrong name or a wrong order), drawn in name order so that a
/// test holding [`seeded`] draws the same ones every run (the store's map has no order).
pub fn randomize(vs: &nn::VarStore, std: f64) {
    for_each_by_name(vs, |var| {
        var.shallow_clone().copy_(&(var.randn_like() * std));
    });
}

/// [`randomize`], adding the draws to the values there (timm's initialisation plus noise).
pub fn perturb(vs: &nn::VarStore, std: f64) {
    for_each_by_name(vs, |var| {
        let _ = var.shallow_clone().g_add_(&(var.randn_like() * std));
    });
}

fn for_each_by_name(vs: &nn::VarStore, mut change: impl FnMut(&Tensor)) {
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    tch::no_grad(|| variables.values().for_each(&mut change));
}

/// The strong recipe's batch: AutoAugment (CIFAR-10 policy), random erasing and
/// MixUp/CutMix with their default settings, mixing in the first epoch only (of a test's
/// two, the second trains on single images).
pub fn strong_augmentation() -> Regularization {
    Regularization {
        augment: Some(AugmentConfig {
            policy: Some(Policy::AutoAugmentCifar10),
            erasing: Some(RandomErasing::default()),
            ..AugmentConfig::default()
        }),
        mix: Some(MixConfig::default()),
        mix_off_epoch: Some(1),
        ..Regularization::default()
    }
}

/// The CPU, and the first GPU where there is one: the data pipeline runs on the training
/// device, so checks that do not depend on the random generator run on both.
pub fn devices() -> Vec<tch::Device> {
    std::iter::once(tch::Device::Cpu)
        .chain(cuda_device("the CPU only"))
        .collect()
}

/// The first GPU, or None where there is none: then a check of CUDA passes without having
/// checked it, and says so on stderr ("no CUDA device: `checked` then"). Where
/// VIT_REQUIRE_CUDA=1 (bench/gpu.sh's test runs), no GPU fails the test instead.
pub fn cuda_device(checked: &str) -> Option<tch::Device> {
    if tch::Cuda::is_available() {
        return Some(tch::Device::Cuda(0));
    }
    assert!(
        std::env::var_os("VIT_REQUIRE_CUDA").is_none_or(|value| value != "1"),
        "no CUDA device, and VIT_REQUIRE_CUDA=1"
    );
    eprintln!("no CUDA device: {checked}");
    None
}

/// Whether this CPU lacks the AVX-512 BF16 instructions, as Linux's /proc/cpuinfo flags
/// say: where vit warns that bf16 runs slowly (off x86-64 it knows nothing, and warns of
/// nothing).
pub fn cpu_lacks_bf16() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags"))
        .expect("a flags line in /proc/cpuinfo");
    !flags.split_whitespace().any(|flag| flag == "avx512_bf16")
}

/// `VIT_PYTHON`, else the project's `.venv/bin/python`, as an absolute path (not resolved:
/// a venv's python is a link that must stay one), so it runs from any folder.
pub fn python() -> PathBuf {
    let python = std::env::var_os("VIT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        python.exists(),
        "no Python interpreter at {}: run `make setup` (or set VIT_PYTHON to a Python with \
         torch, timm and safetensors)",
        python.display()
    );
    std::path::absolute(&python).expect("an absolute path")
}

/// Runs `python -c CODE` in `dir`, expecting success; its standard output.
pub fn run_python(dir: &Path, code: &str) -> String {
    let output = std::process::Command::new(python())
        .current_dir(dir)
        .args(["-c", code])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python -c {code:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The `vit` binary: the one cargo built for these tests, or `$VIT_BIN` where set (a test
/// binary run on another machine, as bench/gpu.sh does).
pub fn vit_binary() -> std::ffi::OsString {
    std::env::var_os("VIT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_vit").into())
}

/// Runs `vit ARGS` (see [`vit_binary`]).
pub fn run_vit(args: &[&str]) -> std::process::Output {
    let binary = vit_binary();
    std::process::Command::new(&binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&binary).display()))
}

/// Runs `vit ARGS` (see [`vit_binary`]) where a fault would wait forever (opening a named
/// pipe) or read without end (/dev/zero): killed after a minute and allowed 2 GiB of
/// memory, so that the test fails instead of hanging or taking the machine's memory.
/// SIGKILL, as vit takes SIGTERM for a stop at the next step, which a wait never reaches.
pub fn run_vit_bounded(args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new("timeout");
    command
        .args(["-s", "KILL", "60"])
        .arg(vit_binary())
        .args(args);
    // The heap and anonymous maps, not the address space libtorch's libraries take.
    with_limit(&mut command, libc::RLIMIT_DATA, 2 << 30)
        .output()
        .expect("cannot run timeout")
}

/// `command`, with the process it starts limited to `bytes` of `resource` (RLIMIT_DATA,
/// RLIMIT_FSIZE, ...). A write past RLIMIT_FSIZE then fails (EFBIG) instead of killing the
/// process with SIGXFSZ.
pub fn with_limit(
    command: &mut std::process::Command,
    resource: libc::__rlimit_resource_t,
    bytes: libc::rlim_t,
) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec, signal() and setrlimit are system calls on values on
    // the stack.
    unsafe {
        command.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            match libc::setrlimit(resource, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        })
    }
}

/// Runs the `vit` binary with `args`, expecting success (the output says why not).
pub fn vit(args: &[&str]) -> std::process::Output {
    let output = run_vit(args);
    assert!(
        output.status.success(),
        "vit {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The highest of a run's test `accuracies` (one per epoch) and the first epoch (from 1)
/// that reached it: the one whose model a run keeps as its best.
pub fn first_best(accuracies: &[f64]) -> (f64, usize) {
    let best = accuracies.iter().cloned().fold(f64::MIN, f64::max);
    let epoch = 1 + accuracies.iter().position(|&acc| acc == best).unwrap();
    (best, epoch)
}

/// Runs `vit ARGS` expecting failure; returns its standard error.
pub fn vit_fails(args: &[&str]) -> String {
    let output = run_vit(args);
    assert!(!output.status.success(), "vit {args:?} should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `command`, with SIGINT and SIGHUP back at their defaults in the child: tests run as a
/// background job (`make test &`) or under nohup pass them on ignored, and vit keeps a
/// signal that whoever started it ignored, so the signals a test sends would never arrive.
pub fn with_default_signals(command: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec, signal() is async-signal-safe and touches no memory.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        })
    }
}

/// `kill SIGNAL` (`-INT`, `-TERM`, `-HUP`) to `child`.
pub fn send(signal: &str, child: &std::process::Child) {
    let pid = child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(killed.success(), "kill {signal} {pid}");
}

/// The pixel byte of image `seed` at channel c, row y, column x.
pub fn pixel(seed: usize, c: usize, y: usize, x: usize) -> u8 {
    ((seed * 31 + c * 101 + y * 7 + x * 3) % 256) as u8
}

/// One record: the label bytes, then the R, G and B planes, row-major.
pub fn record(labels: &[u8], seed: usize) -> Vec<u8> {
    let mut bytes = labels.to_vec();
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                bytes.push(pixel(seed, c, y, x));
            }
        }
    }
    bytes
}

/// CIFAR-10's class names, in label order, as its batches.meta.txt lists them.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// A small CIFAR-10 tree: batch k holds k+1 records (15 training images), the test batch
/// 4; image i has label i % 10. The files (name, bytes), relative to
/// `DATA_DIR/cifar-10-batches-bin`.
pub fn cifar10_files() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut seed = 0;
    for k in 0..5 {
        let mut bytes = Vec::new();
        for _ in 0..=k {
            bytes.extend(record(&[(seed % 10) as u8], seed));
            seed += 1;
        }
        files.push((format!("data_batch_{}.bin", k + 1), bytes));
    }
    let mut test = Vec::new();
    for _ in 0..4 {
        test.extend(record(&[(seed % 10) as u8], seed));
        seed += 1;
    }
    files.push(("test_batch.bin".into(), test));
    files.push((
        "batches.meta.txt".into(),
        (CIFAR10_CLASSES.join("\n") + "\n\n").into_bytes(),
    ));
    files
}

/// Writes [`cifar10_files`] into `data_dir`; gives their folder.
pub fn write_cifar10(data_dir: &Path) -> PathBuf {
    write_cifar10_files(data_dir, cifar10_files())
}

/// Writes `files` (name, bytes) into `data_dir`'s CIFAR-10 folder, as a download unpacks
/// them; gives the folder.
pub fn write_cifar10_files(data_dir: &Path, files: Vec<(String, Vec<u8>)>) -> PathBuf {
    let dir = data_dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}
