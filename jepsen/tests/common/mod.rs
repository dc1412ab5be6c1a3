//! What the suite's tests share.

use std::path::PathBuf;
use std::process::Command;

/// The `shoal` binary next to `shoal-jepsen`, if this is root and it is built; otherwise says
/// why the test is skipped, or fails when `SHOAL_REQUIRE_NETNS=1` (CI, as root, built).
pub fn shoal_or_skip(what: &str) -> Option<PathBuf> {
    let shoal = std::path::Path::new(env!("CARGO_BIN_EXE_shoal-jepsen"))
        .parent()
        .unwrap()
        .join("shoal");
    let root = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() == "0" && shoal.exists() {
        return Some(shoal);
    }
    assert!(
        std::env::var("SHOAL_REQUIRE_NETNS").as_deref() != Ok("1"),
        "SHOAL_REQUIRE_NETNS=1 but not root, or {} missing",
        shoal.display()
    );
    eprintln!("skipping {what}: it needs root and the shoal binary");
    None
}
