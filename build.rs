//! Gives the binaries an rpath to the libtorch they were linked against, so they start
//! without LD_LIBRARY_PATH (torch-sys passes `-rpath` only to its own C++ compile).
//! Also rebuilds when a migration is added (`sqlx::migrate!` embeds the folder).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
