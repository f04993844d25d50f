use static_attention::Linear;

// 2 inputs, 3 outputs need 4 · (6 + 3) = 36 bytes; this blob has 32.
const BLOB: [u8; 32] = [0; 32];
static L: Linear<2, 3> = Linear::from_le_bytes(&BLOB);

fn main() {
    let _ = L.weight_at(0, 0);
}
