//! The protos are compiled in pure Rust (protox): no protoc on the build machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["flow/flow.proto", "relay/relay.proto", "observer/observer.proto", "peer/peer.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
