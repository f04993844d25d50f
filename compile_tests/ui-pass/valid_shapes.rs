use nalgebra::SMatrix;
use static_attention::{Linear, Mask, MultiHead, SelfAttention};

const W: [[f32; 4]; 4] = [[0.5, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.5]];
const L: Linear<4, 4> = Linear::from_rows(W, [0.0; 4]);
static LAYER: MultiHead<3, 4, 2> = MultiHead::from_parts(L, L, L, L);

fn main() {
    let x = SMatrix::<f32, 3, 4>::repeat(1.0);
    let _ = LAYER.forward(&x, &Mask::none());
    let head = SelfAttention::<3, 4>::from_parts(L, L, L);
    let _ = head.forward(&x, &Mask::none());
    decoder::grouped_shapes_build();
}

mod decoder {
    use static_attention::positions::{NoPositions, Rope, RopeStyle};
    use static_attention::{GroupedQuery, KvCache, SMatrix, Scratch, grouped_query_attention};

    static CACHE: KvCache<8, 4> = KvCache::new();

    pub fn grouped_shapes_build() {
        let layer = GroupedQuery::<8, 4, 2, 8, 4>::from_seed(1);
        let rope = Rope::<2, 16>::new(10_000.0, RopeStyle::RotateHalf).expect("a valid base");
        let mut cache = CACHE.clone();
        let x = SMatrix::<f32, 3, 8>::zeros();
        let _ = layer.decode(&x, &mut cache, &rope);
        let _ = layer.decode(&x, &mut cache, &NoPositions);
        // Caller-owned: one scratch type, with the query width and the key/value width.
        let mut scratch = Scratch::<1, 1, 8, f32, 4>::new();
        let mut out = SMatrix::<f32, 1, 8>::zeros();
        let token = SMatrix::<f32, 1, 8>::zeros();
        let _ = layer.decode_into(&token, &mut cache, &rope, &mut scratch, &mut out);
        let q = [SMatrix::<f32, 2, 4>::zeros(); 6];
        let kv = [SMatrix::<f32, 3, 4>::zeros(); 3];
        let _ = grouped_query_attention(&q, &kv, &kv, &static_attention::Mask::none(), None);
    }
}
