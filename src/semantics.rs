//! The rules every function follows, in one place (the text of `docs/SEMANTICS.md`).
#![doc = include_str!("../docs/SEMANTICS.md")]
