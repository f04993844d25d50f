use static_attention::GroupedQuery;

fn main() {
    // 2 kv heads of 8 features need KV_DIM = 16, not 32.
    let _layer = GroupedQuery::<64, 8, 2, 64, 32>::from_seed(0);
}
