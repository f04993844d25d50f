//! Shape errors are build errors: trybuild compiles each file in `ui/` and checks that it fails
//! with the pinned message in the `.stderr` beside it. The `ui-pass/` case makes trybuild run a
//! full build, which is where `const { assert!(..) }` checks fire (dtolnay/trybuild#258); it
//! also proves valid shapes compile.

#[test]
fn shape_errors_fail_the_build() {
    let t = trybuild::TestCases::new();
    t.pass("ui-pass/*.rs");
    t.compile_fail("ui/*.rs");
}
