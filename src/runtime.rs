//! The process and its machine: libtorch's CPU thread count, how libtorch's errors
//! (which tch raises as panics) and failed writes to stdout reach the user, the interrupt
//! handlers (signals started ignored stay ignored), how the process ends (at once, on a
//! second Ctrl-C; quietly, on a closed output pipe), what its CPU is and has, and the
//! memory there is.

use crate::cli::Precision;
use crate::listing::noun_for;
use std::cell::Cell;
use std::io::Write;
use std::path::Path;
use tch::Device;

/// Sets libtorch's CPU thread count when `--threads` is given, warning when it exceeds
/// the cores here (the threads would then wait for each other, and a run crawls).
pub fn apply_threads(threads: Option<i32>) {
    let Some(threads) = threads else {
        return;
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads as usize > cores {
        eprintln!(
            "warning: --threads {threads} is more than the {cores} {} here; it is likely \
             to run slower than --threads {cores}",
            noun_for(cores, "core")
        );
    }
    tch::set_num_threads(threads);
}

/// Warns when `flags` (precision flags and their values, as `("--precision", Bf16)`) ask
/// for bf16 on the CPU and the CPU lacks the AVX-512 BF16 instructions. Without them
/// libtorch's bf16 kernels crawl: on this project's AMD EPYC Zen 3 (AVX2 only) the
/// notebook model trained 21 to 27 times and inferred 7 to 9 times slower in bf16 than in
/// fp32 (`vit bench --precision`), where the Zen 4, which has them, trained 1.1 times and
/// inferred 1.4 times faster; CPUs with AVX-512 but not its BF16 part are unmeasured. A
/// warning, not an error: bf16's numbers on the CPU can be what a user wants to see.
/// `resumed`: the flags are those of a run being resumed, which keeps them.
pub fn warn_if_bf16_is_slow(device: Device, flags: &[(&str, Precision)], resumed: bool) {
    let bf16_flags: Vec<String> = flags
        .iter()
        .filter(|(_, precision)| *precision == Precision::Bf16)
        .map(|(flag, _)| format!("{flag} bf16"))
        .collect();
    if bf16_flags.is_empty() || device != Device::Cpu || cpu_has_bf16() != Some(false) {
        return;
    }
    eprintln!("{}", slow_bf16_warning(&bf16_flags, resumed));
}

/// The warning of [`warn_if_bf16_is_slow`] for `bf16_flags` (as "--precision bf16"), with
/// what to do: leave them out, or, for a `resumed` run, which keeps them, start anew.
fn slow_bf16_warning(bf16_flags: &[String], resumed: bool) -> String {
    let them = match bf16_flags.len() {
        1 => "it",
        _ => "them",
    };
    let what_to_do = match resumed {
        false => format!("leave {them} out to run in fp32, or run on a GPU"),
        true => format!(
            "the resumed run keeps {them}: resume it on a GPU (--device cuda), or start a new \
             run without {them} to train in fp32"
        ),
    };
    format!(
        "warning: {} on a CPU without AVX-512 BF16 instructions: libtorch's bf16 is slower \
         than fp32 there, many times so on some CPUs (on an AMD EPYC Zen 3, training 21 to \
         27 times, inference 7 to 9 times); {what_to_do}",
        bf16_flags.join(" and ")
    )
}

/// Whether the CPU has the AVX-512 BF16 instructions (and the OS lets them run); unknown
/// off x86-64.
fn cpu_has_bf16() -> Option<bool> {
    #[cfg(target_arch = "x86_64")]
    {
        Some(std::arch::is_x86_feature_detected!("avx512bf16"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The x86 CPU's vendor string (CPUID leaf 0: "GenuineIntel", "AuthenticAMD", ...); none
/// on other architectures.
pub(crate) fn cpu_vendor() -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: every x86_64 CPU has CPUID and its leaf 0 (a safe function in newer Rust).
        #[allow(unused_unsafe)]
        let id = unsafe { std::arch::x86_64::__cpuid(0) };
        let bytes = [id.ebx, id.edx, id.ecx].map(u32::to_le_bytes).concat();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The memory this process may use, where it can be read: the machine's (`MemTotal` of
/// /proc/meminfo), or less where a cgroup limits it (a container's, a Slurm job's), whose
/// kernel kills the process without a word when it takes more.
pub fn memory_bytes() -> Option<u64> {
    let machine = physical_memory_bytes()?;
    let memberships = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let limits = cgroup_memory_limits(&memberships, Path::new("/sys/fs/cgroup"));
    Some(limits.into_iter().fold(machine, u64::min))
}

/// The machine's memory (`MemTotal` of /proc/meminfo), where it can be read.
pub fn physical_memory_bytes() -> Option<u64> {
    proc_memory_bytes("/proc/meminfo", "MemTotal:")
}

/// The memory limits of the cgroups that `memberships` (as /proc/self/cgroup lists them)
/// names and of the cgroups above them, in the cgroup file system at `root`: cgroup v2's
/// `memory.max` and v1's memory controller's `memory.limit_in_bytes`. "max", or v1's huge
/// number, is no limit.
fn cgroup_memory_limits(memberships: &str, root: &Path) -> Vec<u64> {
    let mut limits = Vec::new();
    for line in memberships.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (hierarchy, file) = match controllers {
            "" => (root.to_path_buf(), "memory.max"),
            _ if controllers.split(',').any(|c| c == "memory") => {
                (root.join("memory"), "memory.limit_in_bytes")
            }
            _ => continue,
        };
        // A cgroup outside this namespace's root is shown as `/..`: not here to read.
        if path.split('/').any(|part| part == "..") {
            continue;
        }
        let cgroup = hierarchy.join(path.trim_start_matches('/'));
        for folder in cgroup.ancestors().take_while(|f| f.starts_with(&hierarchy)) {
            let limit = std::fs::read_to_string(folder.join(file));
            limits.extend(limit.ok().and_then(|text| text.trim().parse::<u64>().ok()));
        }
    }
    limits
}

/// A memory line of a /proc file (`KEY: N kB`, as /proc/meminfo and /proc/self/status
/// write them) in bytes, where it can be read. `key` ends with its colon.
pub(crate) fn proc_memory_bytes(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let value = text.lines().find_map(|line| line.strip_prefix(key))?;
    let kib = value
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

thread_local! {
    /// Set while `catch_panic` runs its closure: the caller reports a libtorch error.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Runs a `vit` command with libtorch's errors and failed writes to stdout reported briefly
/// (see `report_errors_briefly`): one that unwinds out of the command, its message printed,
/// exits with status 1 as other errors do; any other panic goes on unwinding.
/// With `end_on_a_closed_pipe`, a closed pipe on stdout ends the process quietly (see
/// `end_quietly_on_a_closed_pipe`).
pub fn run_command(
    end_on_a_closed_pipe: bool,
    command: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // vit's errors are messages for the user, not bugs: RUST_BACKTRACE (often set for
    // panics) must not add a stack trace to them. RUST_LIB_BACKTRACE=1 still asks for one.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    report_errors_briefly();
    if end_on_a_closed_pipe {
        end_quietly_on_a_closed_pipe();
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(command)) {
        Ok(result) => result,
        Err(payload) if brief_error(&panic_message(payload.as_ref())).is_some() => {
            std::process::exit(1)
        }
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// Installs `handler` for Ctrl-C, SIGTERM and SIGHUP (the ctrlc crate's set), except for
/// those the process was started with ignored: `nohup vit ...` must outlive its terminal,
/// and a script's background job ignores Ctrl-C. Once per process.
pub fn on_interrupt(handler: impl FnMut() + Send + 'static) -> anyhow::Result<()> {
    let ignored: Vec<libc::c_int> = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
        .into_iter()
        .filter(|&signal| is_ignored(signal))
        .collect();
    ctrlc::set_handler(handler)
        .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))?;
    // ctrlc's thread, just started, takes the signals; this thread, and those it starts
    // later (libtorch's: call this before they start), block them, so that the kernel
    // delivers them to ctrlc's thread alone. Delivered to a thread in libtorch's oneDNN
    // kernels, one corrupted the heap: a SIGTERM mid-step crashed
    // `vit train` about one time in three.
    block_interrupts();
    for signal in ignored {
        // SAFETY: setting a signal's disposition to SIG_IGN has no other effect.
        unsafe {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
    Ok(())
}

/// Blocks Ctrl-C, SIGTERM and SIGHUP in the calling thread and the threads it starts later.
fn block_interrupts() {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only
    // changes this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Whether `signal` is ignored (SIG_IGN) in this process.
fn is_ignored(signal: libc::c_int) -> bool {
    // SAFETY: with a null new action, sigaction only reads the current one into `current`.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
    }
}

/// Ends the process at once with `status`, as a second Ctrl-C must: without exit handlers,
/// which would tear libtorch down under a step still running on another thread (a crash,
/// not a quit).
pub fn quit_at_once(status: i32) -> ! {
    // SAFETY: _exit only ends the process; nothing is read or written.
    unsafe { libc::_exit(status) }
}

/// Lets a closed pipe on stdout (`vit data | head`) end the process quietly, as it ends other
/// command-line tools, instead of making `println!` panic ("failed printing to stdout").
/// Rust's own sockets do not raise SIGPIPE (they send with MSG_NOSIGNAL), so downloads
/// still get an error. Not for `train`: the signal would end it before its run is saved
/// (`2>&1 | tee` when Ctrl-C has ended tee); it drops lines it cannot write and saves on.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: setting a signal's disposition to its default has no other effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Makes the panics that are not bugs print as one line, with advice where there is some:
/// a libtorch error that tch raises as a panic (out of memory, say) instead of a panic
/// report with libtorch's C++ stack, and `println!`'s failed write to stdout (a full disk
/// under `> results.json`). The panic still unwinds (run folders finish their writes); any
/// other panic (a bug) keeps Rust's full report, also where `catch_panic` catches it. An
/// error that `catch_panic` catches prints nothing here: its caller reports it.
fn report_errors_briefly() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = panic_message(info.payload());
        match brief_error(&message) {
            Some(_) if CATCHING.get() => {}
            // Not eprintln!: a panic here, on a stderr that fails too, would abort.
            Some(error) => {
                let _ = writeln!(std::io::stderr(), "Error: {error}");
            }
            None => default_hook(info),
        }
    }));
}

/// Runs `f`, returning its panic as an error (libtorch's in one line) instead of
/// unwinding further.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> anyhow::Result<T> {
    let was_catching = CATCHING.replace(true);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.set(was_catching);
    result.map_err(|payload| {
        let message = panic_message(payload.as_ref());
        anyhow::anyhow!("{}", brief_error(&message).unwrap_or(message))
    })
}

/// The text a panic was raised with.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".to_owned())
}

/// The one-line report of a panic that is not a bug (see `report_errors_briefly`).
fn brief_error(message: &str) -> Option<String> {
    if let Some(error) = message.strip_prefix("failed printing to stdout: ") {
        return Some(format!("cannot write to standard output: {error}"));
    }
    libtorch_error(message)
}

/// The first line of the libtorch error in a panic's message, with advice for running out
/// of memory: tch's (it prints its error with `{:?}`: `Torch("what\nframe #0: ...")`), or
/// that of a call into vit's own libtorch shim (`crate::ffi`), unwrapped where its caller
/// cannot fail (`fused AdamW: libtorch fused AdamW failed: what` and libtorch's C++ stack
/// on the next lines).
fn libtorch_error(message: &str) -> Option<String> {
    let (source, first_line) = match message.split_once("Torch(\"") {
        Some((_, error)) => (
            "libtorch".to_string(),
            error.split("\\n").next().unwrap_or(error),
        ),
        None => {
            let (call, error) = crate::ffi::unwrapped_failure(message)?;
            (format!("libtorch ({call})"), error)
        }
    };
    // A tensor whose byte count overflows 64 bits would not fit either.
    let advice = if ["allocate", "out of memory", "size calculation overflowed"]
        .iter()
        .any(|sign| first_line.contains(sign))
    {
        "\nThe model or batch needs more memory than the device has: use a smaller \
         --batch-size or model"
    } else {
        ""
    };
    Some(format!("{source}: {first_line}{advice}"))
}

#[cfg(test)]
mod tests {
    use super::{brief_error, cgroup_memory_limits, slow_bf16_warning};
    use crate::temp_dir::TempDir;

    /// The limits of a process's cgroups and of those above them, v1's and v2's, are
    /// read; no limit ("max"), other controllers and cgroups that are not the process's
    /// are not.
    #[test]
    fn cgroup_memory_limits_are_those_of_the_process_and_above() {
        let root = TempDir::new("cgroups");
        let write = |folder: &str, file: &str, text: &str| {
            let folder = root.join(folder);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join(file), text).unwrap();
        };
        write("memory", "memory.limit_in_bytes", "9223372036854771712\n");
        write("memory/job", "memory.limit_in_bytes", "2000\n");
        write("memory/job/step", "memory.limit_in_bytes", "3000\n");
        write("memory/other", "memory.limit_in_bytes", "1000\n");
        write("cpu/job/step", "memory.limit_in_bytes", "500\n");
        write("slice", "memory.max", "max\n");
        write("slice/container", "memory.max", "4000\n");
        let memberships = "5:cpu,cpuacct:/job/step\n4:memory:/job/step\n0::/slice/container\n";
        let mut limits = cgroup_memory_limits(memberships, &root);
        limits.sort();
        assert_eq!(limits, [2000, 3000, 4000, 9223372036854771712]);
    }

    /// A v1 hierarchy that holds the memory controller among others counts, a cgroup path
    /// with a colon in it is read whole, and the folders above the hierarchy's root are
    /// not read, nor is a cgroup outside it (here the root is itself in a folder with
    /// limits).
    #[test]
    fn cgroup_memory_limits_stay_in_the_memory_hierarchy() {
        let above = TempDir::new("cgroups-above");
        let root = above.join("cgroup");
        let write = |folder: &std::path::Path, file: &str, text: &str| {
            std::fs::create_dir_all(folder).unwrap();
            std::fs::write(folder.join(file), text).unwrap();
        };
        write(&above, "memory.max", "100\n");
        write(&above, "memory.limit_in_bytes", "100\n");
        write(&root.join("memory/job"), "memory.limit_in_bytes", "2000\n");
        write(&root.join("slice/a:b"), "memory.max", "4000\n");
        write(&root.join("slice/a"), "memory.max", "500\n");
        for (memberships, expected) in [
            ("4:blkio,memory:/job\n", vec![2000]),
            ("4:memory,hugetlb:/job\n", vec![2000]),
            ("0::/slice/a:b\n", vec![4000]),
            ("0::/slice\n", vec![]),
            // Outside this namespace's root: the folder above it is not read.
            ("0::/..\n", vec![]),
        ] {
            let mut limits = cgroup_memory_limits(memberships, &root);
            limits.sort();
            assert_eq!(limits, expected, "{memberships:?}");
        }
    }

    /// tch's panic message for a libtorch error, as `{:?}` of its error writes it.
    fn tch_panic(what: &str) -> String {
        format!("called `Result::unwrap()` on an `Err` value: Torch({what:?})")
    }

    /// The first line of libtorch's error, with the advice about memory for the ways
    /// libtorch says it ran out (the CPU allocator's "can't allocate", CUDA's "out of
    /// memory" without "allocate" in it, a size past 64 bits), and for no other error.
    #[test]
    fn a_libtorch_error_is_its_first_line_with_advice_only_for_memory() {
        let advice = "\nThe model or batch needs more memory than the device has: use a smaller \
                      --batch-size or model";
        for (what, brief) in [
            (
                "CUDA error: out of memory\nframe #0: c10::Error",
                format!("libtorch: CUDA error: out of memory{advice}"),
            ),
            (
                "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate \
                 memory\nframe #0: c10::Error",
                format!(
                    "libtorch: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: \
                     can't allocate memory{advice}"
                ),
            ),
            (
                "Storage size calculation overflowed with sizes=[9223372036854775807, 3, 32, \
                 32]\nframe #0: c10::Error",
                format!(
                    "libtorch: Storage size calculation overflowed with \
                     sizes=[9223372036854775807, 3, 32, 32]{advice}"
                ),
            ),
            (
                "shape '[2, 3]' is invalid for input of size 5\nframe #0: c10::Error",
                "libtorch: shape '[2, 3]' is invalid for input of size 5".to_string(),
            ),
        ] {
            assert_eq!(brief_error(&tch_panic(what)), Some(brief), "{what}");
        }
        // A shim call unwrapped (`.expect("linear layer")` of its anyhow error).
        let shim = anyhow::anyhow!(
            "libtorch oneDNN linear failed: [enforce fail at alloc_cpu.cpp:127] err == 0. \
             DefaultCPUAllocator: can't allocate memory: you tried to allocate 42598400000 \
             bytes.\nframe #0: c10::ThrowEnforceNotMet"
        );
        assert_eq!(
            brief_error(&format!("linear layer: {shim:?}")),
            Some(format!(
                "libtorch (oneDNN linear): [enforce fail at alloc_cpu.cpp:127] err == 0. \
                 DefaultCPUAllocator: can't allocate memory: you tried to allocate \
                 42598400000 bytes.{advice}"
            ))
        );
        let shim = anyhow::anyhow!("libtorch fused AdamW failed: Expected all tensors\nframe #0");
        assert_eq!(
            brief_error(&format!("fused AdamW: {shim:?}")),
            Some("libtorch (fused AdamW): Expected all tensors".into())
        );
        // Not a shim call's error unwrapped, though it says much the same: a bug's panic.
        assert_eq!(
            brief_error("the libtorch copy failed: 3 != 4"),
            None,
            "a bug"
        );
        assert_eq!(
            brief_error("failed printing to stdout: No space left on device (os error 28)"),
            Some("cannot write to standard output: No space left on device (os error 28)".into())
        );
        assert_eq!(
            brief_error("index out of bounds: the len is 3"),
            None,
            "a bug"
        );
    }

    /// The slow-bf16 warning names each flag that asked for bf16, and says what to do: a
    /// new run leaves them out, a resumed one (which keeps them) moves or starts anew.
    #[test]
    fn the_slow_bf16_warning_names_the_flags_and_what_to_do() {
        let flags = |names: &[&str]| names.iter().map(|name| format!("{name} bf16")).collect();
        let one: Vec<String> = flags(&["--precision"]);
        let both: Vec<String> = flags(&["--precision", "--eval-precision"]);
        let warning = slow_bf16_warning(&one, false);
        assert!(
            warning.starts_with("warning: --precision bf16 on a CPU without AVX-512 BF16")
                && warning.ends_with("; leave it out to run in fp32, or run on a GPU"),
            "{warning}"
        );
        let warning = slow_bf16_warning(&both, true);
        assert!(
            warning.starts_with("warning: --precision bf16 and --eval-precision bf16 on a CPU")
                && warning.ends_with(
                    "; the resumed run keeps them: resume it on a GPU (--device cuda), or \
                     start a new run without them to train in fp32"
                ),
            "{warning}"
        );
    }
}
