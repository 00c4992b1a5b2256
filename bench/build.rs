//! Compiles the benchmark's BPF programs (`bench/ebpf/bench.bpf.c`: the
//! live-frames generator, the sender-side counter, the ceiling reflector and
//! an XDP_PASS stub) with clang into `OUT_DIR/bench.bpf.o`, which
//! `src/gen/bpf.rs` embeds and opens with libbpf-rs by program name, as
//! `reflector/build.rs` does for the data-plane program.
//!
//! clang: `clang-19` unless `RICOCHET_CLANG` names another (scripts/setup.sh
//! installs clang-19); kernel UAPI headers from linux-libc-dev, libbpf
//! headers from the vendored libbpf-sys.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ebpf = manifest.join("ebpf");
    let src = ebpf.join("bench.bpf.c");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    let clang = env::var("RICOCHET_CLANG").unwrap_or_else(|_| "clang-19".to_owned());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    let local = format!("-I{}", ebpf.display());

    SkeletonBuilder::new()
        .source(&src)
        .obj(out.join("bench.bpf.o"))
        .clang(&clang)
        .clang_args([
            multiarch.as_str(),
            local.as_str(),
            "-mcpu=v3",
            "-Wall",
            "-Werror",
        ])
        .build()
        .unwrap_or_else(|e| panic!("building {}: {e:#}", src.display()));

    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", ebpf.join("bench.h").display());
    println!("cargo:rerun-if-env-changed=RICOCHET_CLANG");
}
