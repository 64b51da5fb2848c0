use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // The kernel programs share their types with oxd-common; rebuild them when it changes.
    println!("cargo:rerun-if-changed=../oxd-common/src");
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../oxd-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "oxd-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("cannot build the eBPF programs (needs the nightly toolchain with rust-src and bpf-linker: run `cargo xtask setup`)")
}
