use static_attention::{Linear, MultiHead};

const L: Linear<6, 6> = Linear::from_rows_without_bias([[0.0; 6]; 6]);
// A `static` layer is checked while the static is evaluated.
static LAYER: MultiHead<4, 6, 4> = MultiHead::from_parts(L, L, L, L);

fn main() {
    let _ = &LAYER;
}
