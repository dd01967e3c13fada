mod common;
use common::*;

#[test]
fn smoke_tree() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let dst = t.path().join("dst");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/f"), bytes(300_000, 1)).unwrap();
    std::fs::write(src.join("small"), b"hello").unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("nowhere", src.join("dangling")).unwrap();
    let o = opts(t.path());
    let s = mover::sync(&mover::Source::Tree(src.clone()), &mover::Destination::Tree(dst.clone()), &o).unwrap();
    eprintln!("{s:#?}");
    assert_same_tree(&src, &dst);
    let s = mover::sync(&mover::Source::Tree(src.clone()), &mover::Destination::Tree(dst.clone()), &o).unwrap();
    eprintln!("{s:#?}");
    assert_same_tree(&src, &dst);
}
