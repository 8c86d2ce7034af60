//! The `signproxy` binary: everything lives in the library; see `signproxy::cli`.

fn main() -> std::process::ExitCode {
    signproxy::cli::main()
}
