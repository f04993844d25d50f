use static_attention::KvCache;

fn main() {
    let _cache = KvCache::<0, 16>::new();
}
