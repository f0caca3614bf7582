//! Compiles every `.proto` under `proto/kopilka` with a vendored `protoc` (a clean clone needs no
//! system protoc), writes the descriptor set that reflection serves, and generates serde impls
//! (proto3 JSON mapping) so documents such as a loyalty program can be written as YAML or JSON.
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let mut protos = Vec::new();
    collect_protos(&root.join("kopilka"), &mut protos)?;
    protos.sort();
    println!("cargo:rerun-if-changed={}", root.join("kopilka").display());
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    // Safe: build scripts are single-threaded and this is the first thing we do.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let wkt_include = protoc_bin_vendored::include_path()?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("kopilka_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(&protos, &[root.clone(), wkt_include])?;

    let descriptor_set = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_set)?
        .preserve_proto_field_names()
        .build(&[".kopilka"])?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
