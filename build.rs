//! Tells the Redis tests whether they can run: without `redis-server` on `PATH` (and outside
//! CI) they are marked ignored with the reason, so `cargo test` reports them as ignored rather
//! than as passes that tested nothing. In CI (`CI` set) they always run, and fail loudly when
//! the server is missing: CI installs it.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_redis_server)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=CI");
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<_> = env::split_paths(&path).collect();
    match dirs
        .iter()
        .map(|d| d.join("redis-server"))
        .find(|f| is_executable(f))
    {
        // Removing it re-runs this script.
        Some(server) => println!("cargo::rerun-if-changed={}", server.display()),
        None => {
            // Installing it adds a file to one of these, so watching them re-runs this script
            // (and un-ignores the tests) without a `cargo clean`. Only existing ones: cargo
            // re-runs a script on every build while a watched path is missing.
            for dir in dirs.iter().filter(|d| d.is_dir()) {
                println!("cargo::rerun-if-changed={}", dir.display());
            }
            if !ci() {
                println!("cargo::rustc-cfg=no_redis_server");
            }
        }
    }
}

/// `CI` as CI services set it (`true`, `1`, a name); empty, `0` and `false` mean unset.
fn ci() -> bool {
    env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

#[cfg(unix)]
fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    file.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(file: &Path) -> bool {
    file.is_file() || file.with_extension("exe").is_file()
}
