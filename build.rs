//! Compiles `src/ffi/libtorch_ext.cpp` against libtorch, and makes `target/*/vit` (and the
//! test binaries) find libtorch at run time and keep CUDA.
//!
//! torch-sys links libtorch but leaves two gaps: the binary has no rpath to libtorch's
//! folder (so it fails to start without LD_LIBRARY_PATH), and the linker's `--as-needed`
//! drops libtorch_cuda.so because no symbol of it is referenced directly, which makes
//! `tch::Cuda::is_available()` silently false on a GPU machine.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    for var in [
        "LIBTORCH",
        "LIBTORCH_CXX11_ABI",
        "LIBTORCH_USE_PYTORCH",
        "VIRTUAL_ENV",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={EXTENSION}");
    let Some(libtorch) = Libtorch::find() else {
        panic!(
            "libtorch not found: run `make setup` (it installs torch into .venv), \
             or set LIBTORCH to a libtorch folder"
        );
    };
    compile_extension(&libtorch);
    let lib_dir = &libtorch.lib_dir;
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib_dir.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

const EXTENSION: &str = "src/ffi/libtorch_ext.cpp";

/// The libtorch torch-sys links, found as torch-sys finds it.
struct Libtorch {
    /// `lib/`, resolved through symlinks so the rpath stays valid wherever cargo runs.
    lib_dir: PathBuf,
    include_dir: PathBuf,
    /// `_GLIBCXX_USE_CXX11_ABI`: the C++ ABI the library was built with.
    cxx11_abi: String,
}

impl Libtorch {
    /// With `LIBTORCH_USE_PYTORCH`, the torch of the active Python; otherwise `$LIBTORCH`
    /// (which `.cargo/config.toml` points at the venv's torch).
    fn find() -> Option<Self> {
        let (root, cxx11_abi) = if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
            // torch-sys's choice of interpreter.
            let python = match std::env::var_os("VIRTUAL_ENV") {
                Some(_) => "python",
                None => "python3",
            };
            let script = "import os, torch\n\
                          print(os.path.dirname(torch.__file__))\n\
                          print(int(torch._C._GLIBCXX_USE_CXX11_ABI))";
            let output = Command::new(python).args(["-c", script]).output().ok()?;
            let stdout = String::from_utf8(output.stdout).ok()?;
            let mut lines = stdout.lines();
            (PathBuf::from(lines.next()?), lines.next()?.to_owned())
        } else {
            let root = PathBuf::from(std::env::var_os("LIBTORCH")?);
            let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
            (root, abi)
        };
        let lib_dir = root.join("lib");
        lib_dir.join("libtorch.so").exists().then(|| Self {
            lib_dir: canonical(&lib_dir),
            include_dir: root.join("include"),
            cxx11_abi,
        })
    }
}

/// Builds the C++ shim with the same standard and C++ ABI as torch-sys builds its own.
fn compile_extension(libtorch: &Libtorch) {
    cc::Build::new()
        .cpp(true)
        .file(EXTENSION)
        .include(&libtorch.include_dir)
        .include(libtorch.include_dir.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", libtorch.cxx11_abi))
        .warnings(false)
        .compile("vit_libtorch_ext");
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}
