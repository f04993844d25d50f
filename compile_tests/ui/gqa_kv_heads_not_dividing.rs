use static_attention::GroupedQuery;

fn main() {
    // 8 query heads cannot be shared evenly by 3 kv heads.
    let _layer = GroupedQuery::<64, 8, 3, 64, 24>::from_seed(0);
}
