//! `vit bench` and `bench/compare.py` (what `make bench` runs) on a tiny model: they run,
//! report what they promise, and the side-by-side table compares like with like. No
//! speed is asserted: throughput is measured with the benchmark, never in tests.

mod common;

use common::{assert_contains, python, vit};
use serde_json::Value;
use std::process::{Command, Output};
use tch::{Device, Kind, Tensor};

fn succeeded(what: &str, output: Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `bench/compare.py` with this build's vit on a tiny model on the CPU, one thread, plus
/// `extra`.
fn compare_py(extra: &[&str]) -> Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/compare.py");
    #[rustfmt::skip]
    let args = [
        "--config", "tiny", "--warmup", "1", "--device", "cpu", "--threads", "1",
    ];
    Command::new(python())
        .args([script, "--vit"])
        .arg(common::vit_binary())
        .args(args)
        .args(extra)
        .output()
        .unwrap()
}

/// `bench/train_pytorch.py` on the tiny preset, plus `extra`.
fn train_pytorch_py(extra: &[&str]) -> Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/train_pytorch.py");
    Command::new(python())
        .args([script, "--config", "tiny"])
        .args(extra)
        .output()
        .unwrap()
}

/// `bench/train_pytorch.py` on the tiny preset run once for each of `runs` (its extra
/// arguments), as a script (`__main__`), all in one interpreter so that torch is imported
/// once: each run's exit status and what it wrote to stderr. A run that gets past its
/// checks goes on as the script would.
fn train_pytorch_py_runs(runs: &[Vec<&str>]) -> Vec<(i64, String)> {
    const RUNNER: &str = r#"
import contextlib, io, json, runpy, sys, traceback
script, runs = sys.argv[1], json.loads(sys.argv[2])
results = []
for extra in runs:
    sys.argv = [script, "--config", "tiny", *extra]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exit:
            code = exit.code
            if isinstance(code, str):  # sys.exit("error: ..."), as the interpreter says it
                print(code, file=sys.stderr)
                code = 1
            code = code or 0
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append([code, stderr.getvalue()])
print(json.dumps(results))
"#;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/train_pytorch.py");
    let output = Command::new(python())
        .args(["-c", RUNNER, script, &serde_json::to_string(runs).unwrap()])
        .output()
        .unwrap();
    let results: Vec<(i64, String)> =
        serde_json::from_str(&succeeded("the runner", output)).unwrap();
    assert_eq!(results.len(), runs.len());
    results
}

/// `vit bench --json` as [`vit_bench_steps`] runs it, with one warm-up step and two timed.
fn vit_bench(extra: &[&str]) -> Value {
    vit_bench_steps("1", "2", extra)
}

/// `vit bench --json` of the tiny model on the CPU, one thread, batch 32, with `warmup`
/// untimed and `steps` timed steps, plus `extra`.
fn vit_bench_steps(warmup: &str, steps: &str, extra: &[&str]) -> Value {
    #[rustfmt::skip]
    let mut args = vec![
        "bench", "--config", "tiny", "--batch-size", "32", "--steps", steps, "--warmup", warmup,
        "--device", "cpu", "--threads", "1", "--json",
    ];
    args.extend(extra);
    serde_json::from_slice(&vit(&args).stdout).unwrap()
}

/// bf16 on a CPU without AVX-512 BF16 instructions is warned of, and only there: libtorch's
/// bf16 kernels crawl without them (21 to 27 times slower than fp32 on an AMD EPYC Zen 3).
#[test]
fn bf16_is_warned_of_on_a_cpu_without_bf16_instructions() {
    for precision in ["fp32", "bf16"] {
        #[rustfmt::skip]
        let output = vit(&[
            "bench", "--config", "tiny", "--batch-size", "8", "--steps", "1", "--warmup", "0",
            "--device", "cpu", "--threads", "1", "--precision", precision,
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let warned = stderr.contains(
            "warning: --precision bf16 on a CPU without AVX-512 BF16 instructions: libtorch's \
             bf16 is slower than fp32 there",
        ) && stderr.contains("leave it out to run in fp32, or run on a GPU");
        let expected = precision == "bf16" && common::cpu_lacks_bf16();
        assert_eq!(warned, expected, "--precision {precision}: {stderr}");
    }
}

/// A user's mistake is reported as a message, not with a stack trace, even where
/// RUST_BACKTRACE is set (compare.py then summarised a failed side by a backtrace frame).
#[test]
fn an_error_is_its_message_even_with_rust_backtrace_set() {
    let output = Command::new(common::vit_binary())
        .args(["bench", "--embed-dim", "30", "--num-heads", "4"])
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("Error: --embed-dim (30) must be divisible by --num-heads (4)")
            && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

/// `RUST_LIB_BACKTRACE=1` still asks for the error's backtrace (RUST_BACKTRACE alone does
/// not give one: see above).
#[test]
fn rust_lib_backtrace_still_gives_an_errors_backtrace() {
    let output = Command::new(common::vit_binary())
        .args(["bench", "--embed-dim", "30", "--num-heads", "4"])
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("Error: --embed-dim (30) must be divisible by --num-heads (4)")
            && stderr.contains("Stack backtrace:"),
        "{stderr}"
    );
}

#[test]
fn vit_bench_reports_throughput_and_memory_for_each_setting() {
    // (flags, precision, fused AdamW, fused attention, libtorch's linear and dropout masks)
    for (extra, precision, fused_adamw, fused_attention, libtorch_kernels) in [
        (
            &["--dropout", "0.1", "--phases"][..],
            "fp32",
            true,
            true,
            false,
        ),
        (
            &["--precision", "bf16", "--adamw", "loop"][..],
            "bf16",
            false,
            true,
            false,
        ),
        (&["--explicit-attention"][..], "fp32", true, false, false),
        (
            &[
                "--dropout",
                "0.1",
                "--libtorch-dropout",
                "--libtorch-linear",
            ][..],
            "fp32",
            true,
            true,
            true,
        ),
    ] {
        let report = vit_bench(extra);
        assert_eq!(report["precision"], precision, "{report}");
        assert_eq!(report["fused_adamw"], fused_adamw, "{report}");
        assert_eq!(report["fused_attention"], fused_attention, "{report}");
        assert_eq!(report["libtorch_dropout"], libtorch_kernels, "{report}");
        // Unasked, the linear layers run as vit train runs them on this CPU, in fp32 (see
        // bench_reports_the_linear_kernel_that_ran).
        let libtorch_linear =
            libtorch_kernels || !vit_tch::model::onednn_linear_by_default() || precision == "bf16";
        assert_eq!(report["libtorch_linear"], libtorch_linear, "{report}");
        assert_eq!(report["threads"], 1);
        // What the run took, so that the record says how to repeat it.
        assert_eq!(
            (&report["steps"], &report["warmup"]),
            (&2.into(), &1.into())
        );
        assert_eq!(report["cuda_graph"], false, "{report}");
        assert_eq!(report["parameters"], 21162, "the tiny preset's size");
        assert_eq!(report["model"]["embed_dim"], 32, "{report}");
        for key in ["train_images_per_s", "infer_images_per_s"] {
            let value = report[key].as_f64().unwrap();
            assert!(value.is_finite() && value > 0.0, "{key} = {value}");
        }
        // Model FLOP/s: images/s times the tiny model's forward FLOPs (PyTorch's count, as
        // tests/parity.rs checks it), three forwards' worth for a training image.
        let forward = report["forward_flops_per_image"].as_f64().unwrap();
        assert_eq!(forward, vit_tch::model::ViTConfig::tiny().forward_flops());
        for (key, images, per_image) in [
            ("train_flops_per_s", "train_images_per_s", 3.0 * forward),
            ("infer_flops_per_s", "infer_images_per_s", forward),
        ] {
            let expected = report[images].as_f64().unwrap() * per_image;
            let value = report[key].as_f64().unwrap();
            assert!(
                (value - expected).abs() <= 1e-9 * expected,
                "{key} = {value}"
            );
        }
        let peak = report["peak_rss_bytes"].as_u64().unwrap();
        let baseline = report["baseline_rss_bytes"].as_u64().unwrap();
        assert!(peak >= baseline && baseline > 0, "{report}");
        assert!(
            report["peak_device_bytes"].is_null(),
            "no CUDA memory on the CPU"
        );
        // --phases times each part of the step: every one took some time.
        let phases = &report["phase_ms_per_step"];
        if extra.contains(&"--phases") {
            for phase in ["forward", "backward", "clip", "optimizer"] {
                let ms = phases[phase].as_f64().unwrap_or(f64::NAN);
                assert!(ms.is_finite() && ms > 0.0, "{phase}: {phases}");
            }
        } else {
            assert!(phases.is_null(), "{report}");
        }
    }
}

/// `--libtorch-dropout` on a model without dropout (the tiny preset's) draws no masks: a
/// warning says so, and the report does not claim libtorch's masks.
#[test]
fn libtorch_dropout_without_dropout_is_warned_about() {
    #[rustfmt::skip]
    let args = [
        "bench", "--config", "tiny", "--batch-size", "32", "--steps", "2", "--warmup", "1",
        "--device", "cpu", "--threads", "1", "--libtorch-dropout",
    ];
    let output = vit(&args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        stderr.contains(
            "warning: --libtorch-dropout changes nothing here: the model has no dropout \
             (--dropout 0), so no masks are drawn; add --dropout P to time them"
        ),
        "{stderr}"
    );
    assert!(!stdout.contains("libtorch dropout"), "{stdout}");
    // The set-up line names the preset, here as it is.
    assert!(
        stdout.starts_with("tiny preset (21162 parameters), batch 32"),
        "{stdout}"
    );
    let report = vit_bench(&["--libtorch-dropout"]);
    assert_eq!(report["libtorch_dropout"], false, "{report}");
    // With dropout there are masks to draw: no warning.
    let output = vit(&[&args[..], &["--dropout", "0.1"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("warning: --libtorch-dropout"), "{stderr}");
}

/// The loss reported is the last timed step's: the second step's whether the first was
/// warm-up or timed, which is not the first step's.
#[test]
fn the_loss_reported_is_the_last_timed_steps() {
    let loss = |warmup: &str, steps: &str| {
        let report = vit_bench_steps(warmup, steps, &[]);
        report["last_step_loss"].as_f64().unwrap()
    };
    let second_step = loss("0", "2");
    assert_eq!(loss("1", "1"), second_step);
    assert_ne!(loss("0", "1"), second_step, "the first step's loss");
}

/// `vit bench`'s text report gives each line's model FLOP/s: its images/s times the tiny
/// model's forward FLOPs per image, three forward passes' worth for a training image and
/// one for inference (both figures printed to a tenth).
#[test]
fn vit_bench_text_gives_each_lines_flops_per_second() {
    #[rustfmt::skip]
    let args = [
        "bench", "--config", "tiny", "--batch-size", "32", "--steps", "2", "--warmup", "1",
        "--device", "cpu", "--threads", "1",
    ];
    let stdout = String::from_utf8(vit(&args).stdout).unwrap();
    let forward = vit_tch::model::ViTConfig::tiny().forward_flops();
    for (label, flops_per_image) in [("train:", 3.0 * forward), ("inference:", forward)] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line:\n{stdout}"));
        // "train:     1234.5 images/s      12.3 GFLOP/s"
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((words[2], words[4]), ("images/s", "GFLOP/s"), "{line}");
        let images_per_s: f64 = words[1].parse().unwrap();
        let gflops_per_s: f64 = words[3].parse().unwrap();
        let expected = images_per_s * flops_per_image / 1e9;
        let rounding = 0.05 + 0.05 * flops_per_image / 1e9;
        assert!(
            (gflops_per_s - expected).abs() <= rounding * 1.001,
            "{line}: expected {expected:.3} GFLOP/s"
        );
    }
}

/// The peak resident memory is the high-water mark (`VmHWM`), not what is resident now:
/// memory touched and freed again since still counts.
#[test]
#[cfg(target_os = "linux")]
fn peak_rss_counts_memory_freed_since() {
    const SIZE: usize = 256 << 20;
    // Written, so resident; freed, it goes back to the system (glibc maps a block this
    // large on its own).
    drop(std::hint::black_box(vec![1u8; SIZE]));
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap();
    let peak = vit_tch::bench::peak_rss_bytes();
    assert!(
        peak >= rss_kib * 1024 + SIZE as u64 / 2,
        "peak {peak} bytes, resident now {rss_kib} KiB"
    );
}

/// Each switch changes what runs: the last step's loss moves off the one without it (which
/// a second run repeats bit for bit), but only as far as its numerics explain.
#[test]
fn each_bench_switch_changes_what_runs_and_not_what_it_computes() {
    let loss = |flags: &[&str]| {
        let report = vit_bench(&[&["--dropout", "0.1"], flags].concat());
        report["last_step_loss"].as_f64().unwrap()
    };
    assert_eq!(loss(&[]), loss(&[]), "not repeatable");
    let switch_changes = |flags: &[&str], switch: &str, tolerance: f64, bits_differ: bool| {
        let (without, with) = (loss(flags), loss(&[flags, &[switch]].concat()));
        if bits_differ {
            assert_ne!(with, without, "{switch} computed the very same bits");
        }
        assert!(
            (with - without).abs() <= tolerance * without.abs(),
            "{switch}: loss {with} against {without}"
        );
    };
    // bf16 rounding; other kernels' float32 rounding; other masks of the same distribution.
    switch_changes(&[], "--precision=bf16", 0.05, true);
    // Products of 256-long rows, in batches of 32 that make them large enough for oneDNN.
    // Whether its bits differ from MKL's is the CPU's and the libraries' choice (on an AMD
    // EPYC, they round 32- and 128-long rows alike and 256-long ones not). Unasked, the
    // layers run this CPU's default kernel, which the other switch changes.
    let sizes = ["--embed-dim", "256", "--mlp-dim", "512"];
    let [default_kernel, other_kernel] = match vit_tch::model::onednn_linear_by_default() {
        true => ["--onednn-linear", "--libtorch-linear"],
        false => ["--libtorch-linear", "--onednn-linear"],
    };
    let asked = loss(&[&sizes[..], &[default_kernel]].concat());
    assert_eq!(loss(&sizes), asked, "unasked is not {default_kernel}");
    switch_changes(
        &sizes,
        other_kernel,
        1e-4,
        linear_kernels_round_differently(256),
    );
    switch_changes(&[], "--libtorch-dropout", 0.1, true);
    // In float32 on the CPU, libtorch's fused attention computes these small shapes with
    // the explicit formula, bit for bit; under bf16 autocast the two differ.
    switch_changes(&["--precision=bf16"], "--explicit-attention", 1e-3, true);
}

/// The report names the linear kernel that ran: oneDNN where asked (as by default on AMD's
/// CPUs) for the fp32 products of the tiny model at batch 32 (its largest, qkv, has 32 x 65
/// x 32 x 96 multiply-adds); libtorch's `linear` under bf16 autocast, and at batch 2, whose
/// products are all under oneDNN's threshold, where `--onednn-linear` is warned to change
/// nothing.
#[test]
fn bench_reports_the_linear_kernel_that_ran() {
    let bench = |extra: &[&str]| {
        #[rustfmt::skip]
        let mut args = vec![
            "bench", "--config", "tiny", "--steps", "1", "--warmup", "0", "--device", "cpu",
            "--threads", "1", "--json", "--onednn-linear",
        ];
        args.extend(extra);
        let output = vit(&args);
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (report["libtorch_linear"].clone(), stderr)
    };
    let batch_32 = ["--batch-size", "32"];
    let changes_nothing = "warning: --onednn-linear changes nothing here: ";
    let (libtorch_linear, stderr) = bench(&batch_32);
    assert_eq!(libtorch_linear, false, "{stderr}");
    assert!(!stderr.contains(changes_nothing), "{stderr}");
    let (libtorch_linear, stderr) = bench(&[&batch_32[..], &["--precision", "bf16"]].concat());
    assert_eq!(libtorch_linear, true, "{stderr}");
    let bf16 = format!("{changes_nothing}oneDNN's path is for fp32 products");
    assert_contains(&stderr, &bf16);
    let (libtorch_linear, stderr) = bench(&["--batch-size", "2"]);
    assert_eq!(libtorch_linear, true, "{stderr}");
    let small = format!("{changes_nothing}the products are under the 4259840");
    assert_contains(&stderr, &small);
}

/// Whether vit's oneDNN linear layer and libtorch's `linear` give different float32 bits on
/// this CPU for a product of `inner`-long rows as large as the bench's.
fn linear_kernels_round_differently(inner: i64) -> bool {
    tch::manual_seed(0);
    let input = Tensor::randn([32 * 65, inner], (Kind::Float, Device::Cpu));
    let weight = Tensor::randn([3 * inner, inner], (Kind::Float, Device::Cpu)) * 0.05;
    let onednn = vit_tch::ffi::onednn_linear(&input, &weight, None).unwrap();
    !onednn.equal(&input.linear::<Tensor>(&weight, None))
}

#[test]
fn more_threads_than_cores_is_a_warning() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let threads = (cores + 1).to_string();
    #[rustfmt::skip]
    let output = vit(&[
        "bench", "--config", "tiny", "--batch-size", "2", "--steps", "1", "--warmup", "0",
        "--device", "cpu", "--threads", &threads, "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warning = format!("--threads {threads} is more than the {cores} cores here");
    assert_contains(&stderr, &warning);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["threads"],
        cores as i64 + 1,
        "the count asked for is still used"
    );
    // As many threads as cores is no warning.
    let threads = cores.to_string();
    #[rustfmt::skip]
    let output = vit(&[
        "bench", "--config", "tiny", "--batch-size", "2", "--steps", "1", "--warmup", "0",
        "--device", "cpu", "--threads", &threads, "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("warning: --threads"), "{stderr}");
}

#[test]
fn compare_py_prints_one_table_with_ratios_of_the_same_work() {
    // With dropout, so that there are masks for --libtorch-dropout to draw.
    let output = compare_py(&[
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--sides",
        "vit,reference",
        "--adamw",
        "loop",
        "--dropout",
        "0.1",
        "--libtorch-dropout",
        "--libtorch-linear",
        "--json",
    ]);
    let result: Value = serde_json::from_str(&succeeded("compare.py", output)).unwrap();
    assert_eq!(result["settings"]["adamw"], "loop");
    assert_eq!(result["settings"]["libtorch_dropout"], true);
    assert_eq!(result["settings"]["libtorch_linear"], true);
    assert_eq!(result["settings"]["cuda_graph"], false);
    let binary = std::fs::canonicalize(common::vit_binary()).unwrap();
    assert_eq!(
        result["settings"]["vit_binaries"],
        serde_json::json!({ "vit": binary.to_str().unwrap() })
    );
    assert_eq!(result["parameters"], 21162);
    let sides = result["sides"].as_object().unwrap();
    assert_eq!(sides.len(), 2, "{result}");
    assert_eq!(sides["vit"]["fused_adamw"], false);
    assert_eq!(sides["vit"]["libtorch_dropout"], true);
    assert_eq!(sides["vit"]["libtorch_linear"], true);
    let ratios = &result["ratios"]["vit/reference"];
    for key in ["train_images_per_s", "infer_images_per_s"] {
        let expected =
            sides["vit"][key].as_f64().unwrap() / sides["reference"][key].as_f64().unwrap();
        let ratio = ratios[key].as_f64().unwrap();
        assert!(
            (ratio - expected).abs() < 1e-9,
            "{key}: {ratio} vs {expected}"
        );
    }
}

/// What a side writes to stderr (vit's warnings, such as the one on bf16 where the CPU has
/// no bf16 instructions) reaches compare.py's stderr after the side's name, once for all
/// the repeats.
#[test]
fn compare_py_passes_on_a_sides_warnings_once() {
    let dir = common::TempDir::new("compare-side-warning");
    let noisy = dir.join("noisy");
    std::fs::write(
        &noisy,
        format!(
            "#!/bin/sh\necho 'warning: a side said this' >&2\nexec '{}' \"$@\"\n",
            common::vit_binary().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&noisy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let also = format!("vit-noisy={}", noisy.display());
    #[rustfmt::skip]
    let output = compare_py(&[
        "--batch-size", "2", "--steps", "1", "--repeats", "2", "--sides", "vit", "--also-vit", &also,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = succeeded("compare.py", output);
    assert_contains(&stdout, "vit/vit-noisy");
    assert_eq!(
        stderr
            .matches("vit-noisy: warning: a side said this\n")
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("\nvit: warning"), "{stderr}");
}

/// A side that fails is reported and left out, and the others' figures still come out
/// (on a GPU run, a failing `vit-graph` must not cost the eager sides).
#[test]
fn compare_py_keeps_the_sides_that_ran_when_one_fails() {
    let output = compare_py(&[
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--sides",
        "vit",
        "--also-vit",
        "vit-broken=/bin/false",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a failed side must fail the run:\n{stdout}"
    );
    assert!(stdout.contains("train images/s"), "{stdout}\n{stderr}");
    assert_contains(&stdout, "vit-broken: failed, left out");
    assert_contains(&stderr, "side(s) vit-broken failed");

    // Sides that fail otherwise: an older vit whose report lacks a figure, one refusing a
    // flag (its reason is its error line, not the hint after it), and one that ran once,
    // then failed: each is left out, and with no side left, the error says so.
    let dir = common::TempDir::new("compare-failing-sides");
    let script = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path.to_str().unwrap().to_string()
    };
    let old = format!("vit-old={}", script("old", "echo '{\"parameters\": 1}'"));
    let picky = format!(
        "vit-picky={}",
        script(
            "picky",
            "echo \"error: unexpected argument '--adamw' found\" >&2; echo >&2; \
             echo \"For more information, try '--help'.\" >&2; exit 2"
        )
    );
    #[rustfmt::skip]
    let output = compare_py(&["--batch-size", "2", "--steps", "1", "--sides", "vit", "--also-vit", &old, "--also-vit", &picky]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert_contains(&stdout, "train images/s");
    for reason in [
        "vit-old: failed, left out (`",
        "printed a report without train_images_per_s, infer_images_per_s)",
        "vit-picky: failed, left out (error: unexpected argument '--adamw' found)",
    ] {
        assert!(stdout.contains(reason), "{reason}: {stdout}");
    }
    let once = dir.join("ran");
    let vit = common::vit_binary();
    let flaky = script(
        "flaky",
        &format!(
            "test -e '{}' && exit 3; touch '{0}'; exec '{}' \"$@\"",
            once.display(),
            vit.display()
        ),
    );
    let output = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/compare.py"))
        .args([
            "--vit",
            &flaky,
            "--sides",
            "vit",
            "--repeats",
            "2",
            "--config",
            "tiny",
        ])
        .args([
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.ends_with("error: every side failed\n"), "{stderr}");
}

/// The benchmark scripts' user errors are one line each, before any work: a `--vit` that
/// is no executable (here a bare name, which a subprocess would look up on PATH, of a file
/// that is not a program), a PyTorch training run into a folder that holds a metrics.csv
/// (which it would replace), and each value the PyTorch training script checks (as vit
/// train does: ranges, NaN and infinity, a model vit refuses, images it cannot take).
#[test]
fn bench_scripts_refuse_bad_paths_before_running() {
    let dir = common::TempDir::new("bench-scripts");
    std::fs::write(dir.join("vit"), "not a program").unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/compare.py");
    let output = Command::new(python())
        .current_dir(&dir.0)
        .args([
            script, "--vit", "vit", "--config", "tiny", "--device", "cpu",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(
        stderr.trim_end(),
        "error: no vit binary at vit (an executable file); build it with `cargo build --release`"
    );

    // A device no side could use, and two vit sides under one label (one would hide the
    // other's figures).
    let vit = common::vit_binary();
    let also = format!("vit-a={}", vit.to_string_lossy());
    for (flags, message) in [
        (
            vec!["--device", "gpu"],
            "--device takes cpu, cuda or cuda:N, got `gpu`",
        ),
        (
            vec!["--device", "cpu", "--also-vit", &also, "--also-vit", &also],
            "error: two vit sides are labelled vit-a",
        ),
        // A model vit refuses is refused before any side starts.
        (
            vec!["--device", "cpu", "--config", "tiny", "--num-heads", "3"],
            "error: --embed-dim (32) must be divisible by --num-heads (3)",
        ),
    ] {
        let output = compare_py(&flags);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flags:?}");
        assert!(stderr.contains(message), "{flags:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{flags:?}: a side ran");
    }

    let metrics = dir.join("metrics.csv");
    std::fs::write(&metrics, "the user's").unwrap();
    let output = train_pytorch_py(&["--out", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_contains(&stderr, "already holds a metrics.csv");
    assert!(!stderr.contains("Traceback"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), "the user's");

    // Values vit train refuses are refused as it does, before any data is read (there is
    // none here), not met with PyTorch's traceback mid-run.
    let no_data = dir.join("no-data");
    let seed_past = (u128::from(u64::MAX) + 1).to_string();
    let not_positive =
        "--lr must be a positive finite number, --weight-decay a finite number >= 0, --warmup-epochs >= 0";
    let clip_grad = "--clip-grad must be a finite number >= 0 (0 turns it off), got";
    let seed = format!("--seed must be a whole number in 0..={}, got", u64::MAX);
    #[rustfmt::skip]
    let refusals = [
        ("--label-smoothing", "2", "--label-smoothing must be in [0, 1), got 2.0".to_string()),
        ("--num-layers", "0", "--num-layers must be positive, got 0".into()),
        ("--image-size", "64", "this script does not resize them".into()),
        ("--clip-grad", "-1", format!("{clip_grad} -1.0")),
        ("--clip-grad", "inf", format!("{clip_grad} inf")),
        ("--clip-grad", "nan", format!("{clip_grad} nan")),
        ("--seed", "-1", format!("{seed} -1")),
        ("--seed", seed_past.as_str(), format!("{seed} {seed_past}")),
        ("--lr", "nan", not_positive.into()),
        ("--lr", "inf", not_positive.into()),
        ("--lr", "0", not_positive.into()),
        ("--weight-decay", "nan", not_positive.into()),
        ("--dropout", "1", "--dropout must be in [0, 1), got 1.0".into()),
        ("--dropout", "-0.1", "--dropout must be in [0, 1), got -0.1".into()),
        ("--in-channels", "0", "--in-channels must be positive, got 0".into()),
        ("--in-channels", "1", "--in-channels 1: cifar10 images have 3 channels".into()),
        ("--threads", "0", "--threads must be at least 1".into()),
        ("--device", "gpu", "--device takes cpu, cuda or cuda:N, got `gpu`".into()),
    ];
    let runs: Vec<Vec<&str>> = refusals
        .iter()
        .map(|(flag, value, _)| vec!["--data-dir", no_data.to_str().unwrap(), flag, value])
        .collect();
    for ((flag, value, message), (code, stderr)) in
        refusals.iter().zip(train_pytorch_py_runs(&runs))
    {
        assert_eq!(code, 2, "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(message.as_str()) && !stderr.contains("Traceback"),
            "{flag} {value}: {stderr}"
        );
    }
}

/// A PyTorch training run refused for what only the data shows (no data, a --train-subset
/// past it, a --num-classes it does not have) or for an --out it cannot create leaves no
/// --out folder behind, nor any of its parents that it made; and keeps an --out folder that
/// was there before, with what it held.
#[test]
fn a_refused_pytorch_training_run_leaves_no_out_folder_behind() {
    let dir = common::TempDir::new("pytorch-out");
    let data_dir = dir.join("data");
    common::write_cifar10(&data_dir);
    let no_data = dir.join("no-data");
    let (data_dir, no_data) = (data_dir.to_str().unwrap(), no_data.to_str().unwrap());
    let kept = dir.join("kept");
    std::fs::create_dir(&kept).unwrap();
    std::fs::write(kept.join("notes.txt"), "the user's").unwrap();
    let too_long_name = "x".repeat(300);
    let new_run = dir.join("new/run");
    let under_kept = kept.join("new").join(&too_long_name);
    let under_new = dir.join("new").join(&too_long_name);
    for (out, data_dir, extra, message, code) in [
        (&new_run, no_data, &[][..], "data_batch_1.bin is missing", 1),
        (
            &new_run,
            data_dir,
            &["--train-subset", "16"][..],
            "error: --train-subset must be in 1..=15",
            1,
        ),
        (
            &new_run,
            data_dir,
            &["--num-classes", "100"][..],
            "error: --num-classes 100, but cifar10 has 10",
            1,
        ),
        (
            &kept,
            data_dir,
            &["--train-subset", "16"][..],
            "error: --train-subset must be in 1..=15",
            1,
        ),
        // mkdir makes the parents before the name too long fails.
        (&under_new, data_dir, &[][..], "cannot create --out", 2),
        (&under_kept, data_dir, &[][..], "cannot create --out", 2),
    ] {
        let out = out.to_str().unwrap();
        let flags = [&["--data-dir", data_dir, "--out", out][..], extra].concat();
        let output = train_pytorch_py(&flags);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(message) && !stderr.contains("Traceback"),
            "{extra:?}: {stderr}"
        );
        assert!(!dir.join("new").exists(), "{out} was left behind");
        assert_eq!(
            std::fs::read_dir(&kept).unwrap().count(),
            1,
            "--out {out} changed what the folder there holds"
        );
        assert_eq!(
            std::fs::read_to_string(kept.join("notes.txt")).unwrap(),
            "the user's"
        );
    }
}

/// A PyTorch training run ends, as `vit train` does, with its best epoch: the first with
/// the highest test accuracy in its metrics.csv.
#[test]
fn a_pytorch_training_run_ends_with_its_best_epoch() {
    let dir = common::TempDir::new("pytorch-best");
    let data_dir = dir.join("data");
    common::write_cifar10(&data_dir);
    let out = dir.join("run");
    #[rustfmt::skip]
    let output = train_pytorch_py(&[
        "--data-dir", data_dir.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--epochs", "3", "--warmup-epochs", "1", "--batch-size", "5", "--threads", "1",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}");
    let mut metrics = csv::Reader::from_path(out.join("metrics.csv")).unwrap();
    let test_acc = metrics
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "test_acc");
    let accuracies: Vec<f64> = metrics
        .records()
        .map(|row| row.unwrap()[test_acc.unwrap()].parse().unwrap())
        .collect();
    assert_eq!(accuracies.len(), 3);
    let (best, epoch) = common::first_best(&accuracies);
    // The seeded run ties at its best (four test images), so the line shows which of the
    // tied epochs it names: the first.
    let tied = accuracies
        .iter()
        .filter(|&&accuracy| accuracy == best)
        .count();
    assert!(tied > 1, "no tie to break: {accuracies:?}");
    let expected = format!(
        "Best Validation Accuracy: {:.2}% (epoch {epoch} of 3)\n",
        100.0 * best
    );
    assert!(
        stdout.ends_with(&expected),
        "{expected:?} does not end {stdout}"
    );
}

/// On the CPU, a model whose weights fit in the memory here but whose training state
/// (four copies of them) does not is refused before it is built, naming the flag to lower
/// (the kernel would kill the bench without a word), and so is a batch too large.
#[test]
fn bench_on_the_cpu_refuses_a_model_that_cannot_train_in_memory() {
    let memory = vit_tch::runtime::memory_bytes().expect("Linux tells its memory in /proc/meminfo");
    // The tiny model's head holds 33 weights a class: here they take half the memory.
    let classes = (memory as f64 / 2.0 / 4.0 / 33.0) as i64;
    let classes = classes.to_string();
    #[rustfmt::skip]
    let output = common::run_vit(&["bench", "--config", "tiny", "--num-classes", &classes, "--device", "cpu", "--steps", "1", "--warmup", "0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("Error: training the model would take at least")
            && stderr.contains("use a smaller --num-classes or --embed-dim"),
        "{stderr}"
    );
    // So is a batch whose step cannot fit (2^40 images: libtorch's allocator would fail,
    // a smaller one too many be killed), naming --batch-size.
    #[rustfmt::skip]
    let output = common::run_vit(&["bench", "--config", "tiny", "--batch-size", "1099511627776", "--device", "cpu", "--steps", "1", "--warmup", "0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("Error: a training step on batches of 1099511627776 images")
            && stderr.contains("use a smaller --batch-size"),
        "{stderr}"
    );
}

/// bench/train_pytorch.py seeds each shuffle and step as vit train does: its port of
/// `draw_seed` gives vit's seeds, for seeds below and above 2^32, shuffles and steps, and
/// epochs far enough in for the draw number to pass 2^32.
#[test]
fn train_pytorch_py_seeds_its_draws_as_vit_does() {
    let mut cases = Vec::new();
    for seed in [0u64, 1, 42, u64::from(u32::MAX) + 7, u64::MAX] {
        for (epoch, step, steps_per_epoch) in [
            (0, None, 196),
            (0, Some(0), 196),
            (3, Some(195), 196),
            (321, None, 391),
            (9_000_000, Some(500), 1000),
        ] {
            let seed_of = vit_tch::train::draw_seed(seed, epoch, step, steps_per_epoch);
            cases.push((seed, epoch, step, steps_per_epoch, seed_of));
        }
    }
    const PORT: &str = r#"
import json, runpy, sys
draw_seed = runpy.run_path(sys.argv[1])["draw_seed"]
print(json.dumps([draw_seed(*case) for case in json.loads(sys.argv[2])]))
"#;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/train_pytorch.py");
    let inputs: Vec<_> = cases.iter().map(|c| (c.0, c.1, c.2, c.3)).collect();
    let output = Command::new(python())
        .args(["-c", PORT, script, &serde_json::to_string(&inputs).unwrap()])
        .output()
        .unwrap();
    let ported: Vec<i64> = serde_json::from_str(&succeeded("the port", output)).unwrap();
    let expected: Vec<i64> = cases.iter().map(|c| c.4).collect();
    assert_eq!(
        ported, expected,
        "for (seed, epoch, step, steps per epoch) {inputs:?}"
    );
}
