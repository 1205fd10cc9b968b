//! Support code for drhost's integration tests: the paths of the real guest
//! components (built from `plugins/` and `tests/plugins/` by `build.rs`, for
//! `wasm32-wasip2`, into `plugins/target/wasm32-wasip2/release/`) and of the
//! repository.
//!
//! ```no_run
//! let wasm = drhost_tests::plugin("misbehave");
//! let runbooks = drhost_tests::repo_root().join("runbooks");
//! # let _ = (wasm, runbooks);
//! ```
//!
//! Each guest's path is also available at compile time as
//! `env!("DRHOST_PLUGIN_<NAME>")`, e.g. `DRHOST_PLUGIN_DATABASE_CORRUPTION`.

use std::path::PathBuf;

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// The absolute path of the component built from the guest package `name`
/// (e.g. `"database-corruption"`, `"misbehave"`, `"fs-access"`,
/// `"wrong-wit"`; underscores are accepted for hyphens).
///
/// # Panics
///
/// When `name` is not a guest of the plugins workspace, or its `.wasm` is
/// gone (e.g. after `cargo clean` in `plugins/`); the message says what to do.
pub fn plugin(name: &str) -> PathBuf {
    let wanted = name.replace('_', "-");
    let Some((_, path)) = PLUGINS.iter().find(|(package, _)| *package == wanted) else {
        let known: Vec<&str> = PLUGINS.iter().map(|(package, _)| *package).collect();
        panic!(
            "no plugin named {name:?}: the plugins workspace builds {}",
            known.join(", ")
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{} is missing; rebuild it with `cargo build --release --target wasm32-wasip2 \
         --manifest-path plugins/Cargo.toml` (or touch tests/build.rs)",
        path.display()
    );
    path
}

/// The repository root (the directory holding the workspace `Cargo.toml`,
/// `wit/`, `plugins/` and `runbooks/`).
pub fn repo_root() -> PathBuf {
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tests
        .parent()
        .expect("the tests crate lives in <repo>/tests")
        .to_path_buf()
}
