//! Compiles `src/ffi/libtorch_ext.cpp` against libtorch, and makes `target/*/vit` (and the
//! test binaries) find libtorch at run time and keep CUDA.
//!
//! torch-sys links libtorch but leaves two gaps: the binary has no rpath to libtorch's
//! folder (so it fails to start without LD_LIBRARY_PATH), and the linker's `--as-needed`
//! drops libtorch_cuda.so because no symbol of it is referenced directly, which makes
//! `tch::Cuda::is_available()` silently false on a GPU machine.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={EXTENSION}");
    let Some(lib_dir) = libtorch_lib_dir() else {
        panic!(
            "libtorch not found: run `make setup` (it installs torch into .venv), \
             or set LIBTORCH to a libtorch folder"
        );
    };
    compile_extension(&lib_dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib_dir.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

const EXTENSION: &str = "src/ffi/libtorch_ext.cpp";

/// Builds the C++ shim with the same standard and C++ ABI as torch-sys builds its own.
fn compile_extension(lib_dir: &Path) {
    let include = lib_dir.with_file_name("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .file(EXTENSION)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .warnings(false)
        .compile("vit_libtorch_ext");
}

/// `$LIBTORCH/lib` (the `.cargo/config.toml` default points it at the venv's torch),
/// resolved through symlinks so the rpath stays valid wherever cargo is run from.
fn libtorch_lib_dir() -> Option<PathBuf> {
    let root = std::env::var_os("LIBTORCH").map(PathBuf::from)?;
    let lib = root.join("lib");
    lib.join("libtorch.so").exists().then(|| canonical(&lib))
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}
