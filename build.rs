//! Sets `cfg(static_attention_dsp)` where the `i8` projections may use the Cortex-M DSP
//! extension's `SMLAD` (`src/kernels/dsp.rs`): on ARMv7E-M targets (`thumbv7em-*`: Cortex-M4
//! and M7, which always have the extension), and wherever the build enables the `dsp` target
//! feature (`-C target-feature=+dsp`, e.g. for a Cortex-M33 with DSP). Stable Rust does not
//! expose `cfg(target_feature = "dsp")` (an unstable target feature), hence the script.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(static_attention_dsp)");
    println!("cargo::rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let dsp = target.starts_with("thumbv7em") || features.split(',').any(|f| f == "dsp");
    if arch == "arm" && dsp {
        println!("cargo::rustc-cfg=static_attention_dsp");
    }
}
