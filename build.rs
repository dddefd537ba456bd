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
        "CUDA_HOME",
        "CUDA_PATH",
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
    // A torch installed anew elsewhere (a venv made again with another Python) moves it:
    // the rpath below must follow.
    println!(
        "cargo:rerun-if-changed={}",
        libtorch.lib_dir.join("libtorch.so").display()
    );
    let cuda_include = libtorch.cuda_include_dir();
    compile_extension(&libtorch, cuda_include.as_deref());
    let lib_dir = &libtorch.lib_dir;
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if libtorch.has_cuda() {
        println!("cargo:rustc-link-search=native={}", lib_dir.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    if cuda_include.is_some() {
        // The CUDA graph and stream functions of the extension live in libc10_cuda.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-lc10_cuda,--as-needed");
    } else if libtorch.has_cuda() {
        println!(
            "cargo:warning=libtorch has CUDA but no CUDA runtime headers were found \
             (set CUDA_HOME): vit is built without --cuda-graph"
        );
    }
}

const EXTENSION: &str = "src/ffi/libtorch_ext.cpp";

/// The libtorch torch-sys links, found as torch-sys finds it.
struct Libtorch {
    /// `lib/`, resolved through symlinks.
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
        // Resolved through symlinks (the venv's `libtorch` is one), so that the rpath stays
        // valid wherever cargo runs and the include folder's neighbours can be found.
        let root = canonical(&root);
        let lib_dir = root.join("lib");
        lib_dir.join("libtorch.so").exists().then(|| Self {
            lib_dir,
            include_dir: root.join("include"),
            cxx11_abi,
        })
    }

    fn has_cuda(&self) -> bool {
        self.lib_dir.join("libtorch_cuda.so").exists()
    }

    /// Where the CUDA runtime headers are, for a CUDA build of libtorch: the pip wheels'
    /// (site-packages/nvidia/*/include: torch brings the runtime's, requirements.txt the
    /// `crt/` ones), else the CUDA toolkit's.
    fn cuda_include_dir(&self) -> Option<PathBuf> {
        if !self.has_cuda() {
            return None;
        }
        // First the wheels' (include_dir is site-packages/torch/include for a pip-installed
        // torch): they are the CUDA version torch was built with, which a toolkit need not be.
        let mut candidates = Vec::new();
        if let Some(site_packages) = self.include_dir.parent().and_then(Path::parent) {
            if let Ok(entries) = std::fs::read_dir(site_packages.join("nvidia")) {
                candidates.extend(entries.flatten().map(|e| e.path().join("include")));
                candidates.sort();
            }
        }
        candidates.extend(
            ["CUDA_HOME", "CUDA_PATH"]
                .iter()
                .filter_map(std::env::var_os)
                .map(|home| PathBuf::from(home).join("include"))
                .chain([PathBuf::from("/usr/local/cuda/include")]),
        );
        // cuda_runtime.h includes crt/, which the runtime wheel alone does not have.
        candidates.into_iter().find(|dir| {
            dir.join("cuda_runtime_api.h").exists() && dir.join("crt/host_config.h").exists()
        })
    }
}

/// Builds the C++ shim with the same standard and C++ ABI as torch-sys builds its own,
/// with its CUDA part when `cuda_include` has the CUDA runtime headers.
fn compile_extension(libtorch: &Libtorch, cuda_include: Option<&Path>) {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file(EXTENSION)
        .include(&libtorch.include_dir)
        .include(libtorch.include_dir.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", libtorch.cxx11_abi))
        .warnings(false);
    if let Some(dir) = cuda_include {
        build.include(dir).define("VIT_CUDA", None);
    }
    build.compile("vit_libtorch_ext");
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}
