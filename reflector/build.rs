//! Compiles the XDP program (`ebpf/ricochet.bpf.c`) with clang into
//! `OUT_DIR/ricochet.bpf.o`, which `src/bpf` embeds and opens with libbpf-rs
//! (the object is opened by name rather than through a generated skeleton so
//! that the loaded program can live in an ordinary struct).
//!
//! clang: `clang-19` unless `RICOCHET_CLANG` names another (scripts/setup.sh
//! installs clang-19). The libbpf headers come from the vendored libbpf-sys;
//! the kernel UAPI headers from linux-libc-dev (`asm/types.h` lives in the
//! multiarch include directory).

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ebpf = manifest.join("..").join("ebpf");
    let src = ebpf.join("ricochet.bpf.c");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    let clang = env::var("RICOCHET_CLANG").unwrap_or_else(|_| "clang-19".to_owned());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    let local = format!("-I{}", ebpf.display());

    SkeletonBuilder::new()
        .source(&src)
        .obj(out.join("ricochet.bpf.o"))
        .clang(&clang)
        .clang_args([
            multiarch.as_str(),
            local.as_str(),
            // BPF_FETCH atomics (__sync_fetch_and_add with a used result)
            "-mcpu=v3",
            "-Wall",
            "-Werror",
        ])
        .build()
        .unwrap_or_else(|e| panic!("building {}: {e:#}", src.display()));

    println!("cargo:rerun-if-changed={}", src.display());
    println!(
        "cargo:rerun-if-changed={}",
        ebpf.join("ricochet.h").display()
    );
    println!("cargo:rerun-if-env-changed=RICOCHET_CLANG");
}
