//! `cosystem-worker`: run the reference host over gRPC, or a client of one.
//! See `cosystem-worker --help` and the README's CLI reference.

mod cli;

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    // clap prints usage errors itself and exits 2 (0 for --help/--version).
    let cli = cli::Cli::parse_args();
    cli::init_tracing(&cli);
    let runtime = match cli.runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the runtime: {error}"
            );
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(cli::run(cli));
    // Tasks still running (client drivers, server connections) are dropped.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "error: {error}");
            error.exit_code()
        }
    }
}
