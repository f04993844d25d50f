//! Fuzzes the safetensors loader with arbitrary bytes: it must never panic, a failed load must
//! leave the layer unchanged, and whatever loads must save and load back to the same bytes
//! and run a forward pass.
//!
//! `cargo +nightly fuzz run load_safetensors fuzz/corpus/load_safetensors fuzz/seeds/load_safetensors`

#![no_main]

use libfuzzer_sys::fuzz_target;
use static_attention::{Alignment, Mask, MultiHead, SMatrix};

fuzz_target!(|data: &[u8]| {
    // The seed files are DIM = 4, HEADS = 2; two prefixes and both scalar types.
    for prefix in ["", "encoder.layers.0.self_attn."] {
        if let Ok(layer) = MultiHead::<3, 4, 2>::from_safetensors(data, prefix) {
            let saved = layer.to_safetensors(prefix).unwrap();
            let again = MultiHead::<3, 4, 2>::from_safetensors(&saved, prefix).expect("reload");
            assert_eq!(
                again.to_safetensors(prefix).unwrap(),
                saved,
                "round trip changed the bytes"
            );
            let x = SMatrix::<f32, 3, 4>::from_fn(|i, j| (i as f32 - j as f32) * 0.5);
            let _ = layer.forward(&x, &Mask::causal(Alignment::TopLeft));
        }
    }
    let mut layer = MultiHead::<3, 4, 2, f64>::from_parts(
        static_attention::Linear::from_rows([[1.0; 4]; 4], [0.5; 4]),
        static_attention::Linear::from_rows([[2.0; 4]; 4], [0.5; 4]),
        static_attention::Linear::from_rows([[3.0; 4]; 4], [0.5; 4]),
        static_attention::Linear::from_rows([[4.0; 4]; 4], [0.5; 4]),
    );
    let before = layer.clone();
    if let Err(e) = layer.load_safetensors(data, "") {
        assert!(layer == before, "failed load changed the layer");
        let _ = e.to_string();
    }
});
