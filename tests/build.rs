//! Builds every guest of the plugins workspace (`plugins/Cargo.toml`: the
//! scenario plugins in `plugins/` and the test plugins in `tests/plugins/`)
//! for `wasm32-wasip2`, exactly as the README's command does:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --workspace \
//!     --manifest-path plugins/Cargo.toml --target-dir plugins/target
//! ```
//!
//! and tells the tests where the components are: for each guest (a `cdylib`
//! package) `DRHOST_PLUGIN_<NAME>` (e.g. `DRHOST_PLUGIN_DATABASE_CORRUPTION`)
//! is set to the absolute path of its `.wasm`, and `$OUT_DIR/plugins.rs`
//! holds the same table for `drhost_tests::plugin`.
//!
//! The nested cargo runs with a clean environment: everything the outer
//! cargo exports to build scripts (`CARGO_ENCODED_RUSTFLAGS`,
//! `CARGO_PRIMARY_PACKAGE`, `CARGO_CFG_*`, `TARGET`, the jobserver in
//! `CARGO_MAKEFLAGS`, ...) and user settings meant for the host build
//! (`RUSTFLAGS`, `CARGO_TARGET_DIR`, `CARGO_BUILD_TARGET`, `RUSTC_WRAPPER`,
//! ...) would otherwise leak into the guest build and break it.

use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-wasip2";

/// A component starts with the wasm magic and the component-model layer
/// version (`0d 00 01 00`); a core module has `01 00 00 00`.
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// One guest crate: its package name and the file name cargo gives its wasm.
struct Guest {
    package: String,
    dir: PathBuf,
    wasm_stem: String,
}

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let repo = manifest_dir
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf();
    let plugins = repo.join("plugins");
    let target_dir = plugins.join("target");

    let guests = find_guests(&repo);
    watch_sources(&repo, &guests);
    check_target_installed();

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--workspace")
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&plugins)
        // The build script's stdout is parsed by cargo: keep the nested
        // cargo's output on stderr.
        .stdout(Stdio::from(io::stderr()));
    clean_env(&mut cmd);
    eprintln!("running: {cmd:?}");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build the plugins: {e}"));
    if !status.success() {
        panic!(
            "building the plugins workspace ({}) for {TARGET} failed ({status}); \
             the compiler's messages are above. Reproduce with:\n  \
             cargo build --release --target {TARGET} --manifest-path plugins/Cargo.toml --workspace",
            plugins.join("Cargo.toml").display()
        );
    }

    let release = target_dir.join(TARGET).join("release");
    let mut table = String::from(
        "/// Every guest built by `build.rs`: package name and absolute path of its\n\
         /// component (`plugins/target/wasm32-wasip2/release/<crate>.wasm`).\n\
         pub const PLUGINS: &[(&str, &str)] = &[\n",
    );
    for guest in &guests {
        let wasm = release.join(format!("{}.wasm", guest.wasm_stem));
        check_component(&wasm, guest);
        watch_dep_info(&wasm.with_extension("d"));
        let var = format!(
            "DRHOST_PLUGIN_{}",
            guest.package.to_uppercase().replace('-', "_")
        );
        let path = wasm.to_str().expect("plugin paths are UTF-8");
        println!("cargo:rustc-env={var}={path}");
        table.push_str(&format!("    ({:?}, {:?}),\n", guest.package, path));
    }
    table.push_str("];\n");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("plugins.rs");
    fs::write(&out, table).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}

/// The guests: every package under `plugins/*` and `tests/plugins/*` whose
/// `Cargo.toml` declares a `cdylib`. (The SDK is a plain library.)
fn find_guests(repo: &Path) -> Vec<Guest> {
    let mut guests = Vec::new();
    for parent in [repo.join("plugins"), repo.join("tests").join("plugins")] {
        let mut dirs: Vec<PathBuf> = fs::read_dir(&parent)
            .unwrap_or_else(|e| panic!("reading {}: {e}", parent.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|dir| dir.join("Cargo.toml").is_file())
            .collect();
        dirs.sort();
        for dir in dirs {
            let manifest = dir.join("Cargo.toml");
            let text = fs::read_to_string(&manifest)
                .unwrap_or_else(|e| panic!("reading {}: {e}", manifest.display()));
            if !text.contains("cdylib") {
                continue;
            }
            let package = section_string(&text, "package", "name")
                .unwrap_or_else(|| panic!("{}: no `name` in [package]", manifest.display()));
            let wasm_stem =
                section_string(&text, "lib", "name").unwrap_or_else(|| package.replace('-', "_"));
            guests.push(Guest {
                package,
                dir,
                wasm_stem,
            });
        }
    }
    if guests.is_empty() {
        panic!("no guest crates (cdylib packages) found under plugins/ or tests/plugins/");
    }
    guests
}

/// The string value of `key = "..."` in `[section]` of a simple Cargo.toml.
fn section_string(toml: &str, section: &str, key: &str) -> Option<String> {
    let mut in_section = false;
    for line in toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
            continue;
        }
        if !in_section {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim() == key {
            let v = v.trim();
            if let Some(s) = v.strip_prefix('"').and_then(|v| v.split('"').next()) {
                return Some(s.to_string());
            }
        }
    }
    None
}

/// Reruns this script when a guest's sources, the plugins workspace, the WIT
/// contract or the test plugins change. Directories are scanned recursively
/// by cargo, so `plugins/` itself is not listed (it holds `plugins/target`).
fn watch_sources(repo: &Path, guests: &[Guest]) {
    let plugins = repo.join("plugins");
    let mut paths = vec![
        repo.join("wit"),
        plugins.join("Cargo.toml"),
        plugins.join("Cargo.lock"),
        repo.join("tests").join("plugins"),
    ];
    if let Ok(entries) = fs::read_dir(&plugins) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.join("Cargo.toml").is_file() {
                paths.push(path);
            }
        }
    }
    paths.extend(guests.iter().map(|g| g.dir.clone()));
    paths.sort();
    paths.dedup();
    for path in paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
}

/// Also watches every file the compiler read for a guest (its dep-info file),
/// which covers path dependencies outside the listed directories.
fn watch_dep_info(dep_file: &Path) {
    let Ok(contents) = fs::read_to_string(dep_file) else {
        return;
    };
    for line in contents.lines() {
        let Some((_, deps)) = line.split_once(": ") else {
            continue;
        };
        let mut parts = deps.split_whitespace();
        while let Some(part) = parts.next() {
            let mut file = part.to_string();
            while file.ends_with('\\') {
                file.pop();
                file.push(' ');
                match parts.next() {
                    Some(next) => file.push_str(next),
                    None => break,
                }
            }
            // Registry sources never change; the rest may.
            if !file.contains("/registry/src/") {
                println!("cargo:rerun-if-changed={file}");
            }
        }
    }
}

/// Fails early, with the fix, when the wasm32-wasip2 standard library is
/// missing from the toolchain.
fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", rustc.to_string_lossy()));
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let lib = Path::new(&sysroot)
        .join("lib")
        .join("rustlib")
        .join(TARGET)
        .join("lib");
    if !output.status.success() || !lib.is_dir() {
        panic!(
            "the {TARGET} target is not installed for this toolchain ({} has no {}).\n\
             Install it with:\n\n    rustup target add {TARGET}\n",
            if sysroot.is_empty() {
                "the sysroot"
            } else {
                &sysroot
            },
            Path::new("lib/rustlib").join(TARGET).display()
        );
    }
}

/// Removes what the outer cargo (and the user, for the host build) put in
/// the environment that would change or break the nested guest build.
fn clean_env(cmd: &mut Command) {
    // Kept: where cargo lives and how it reaches registries, logging, colours.
    const KEEP: &[&str] = &[
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
        "CARGO_LOG",
    ];
    const REMOVE: &[&str] = &[
        // Flags and wrappers meant for the host build.
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        // The outer cargo's jobserver.
        "MAKEFLAGS",
        "MFLAGS",
        // Build-script environment describing the outer (host) build.
        "TARGET",
        "HOST",
        "OUT_DIR",
        "NUM_JOBS",
        "OPT_LEVEL",
        "DEBUG",
        "PROFILE",
        "RUSTC_LINKER",
        "RUSTDOC",
    ];
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let cargo_var = key.starts_with("CARGO_") && !KEEP.iter().any(|k| key.starts_with(k));
        // `__CARGO_*` are cargo-internal switches (e.g. __CARGO_FIX_PLZ).
        if cargo_var || key.starts_with("__CARGO") || REMOVE.contains(&key) {
            cmd.env_remove(key);
        }
    }
}

/// The guest's `.wasm` must exist and be a component, not a core module.
fn check_component(wasm: &Path, guest: &Guest) {
    let bytes = fs::read(wasm).unwrap_or_else(|e| {
        panic!(
            "{} was not built ({e}): is {} a member of plugins/Cargo.toml?",
            wasm.display(),
            guest.dir.display()
        )
    });
    if !bytes.starts_with(&COMPONENT_HEADER) {
        panic!(
            "{} is not a WebAssembly component (header {:02x?}); guests must be built for {TARGET}",
            wasm.display(),
            &bytes[..bytes.len().min(8)]
        );
    }
}
