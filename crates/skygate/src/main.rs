//! The `skygate` binary: a shim over [`skygate::main`].

fn main() -> std::process::ExitCode {
    skygate::main()
}
