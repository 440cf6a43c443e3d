//! `cosystem-conformance`: runs the protocol's test vectors.
//!
//! `vectors` plays every case against the reference cores in this
//! workspace; `list` prints the catalogue; `doc` prints spec/CONFORMANCE.md's
//! generated case catalogue. `host` and `client`, which will drive an
//! implementation under test over gRPC, are not written yet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cosystem_conformance::report::Report;
use cosystem_conformance::vectors::{self, Case};

#[derive(Parser)]
#[command(
    version,
    about = "Conformance vectors for the cosystem-worker protocol"
)]
struct Cli {
    /// Directory of vector files (default: the vectors shipped with this crate).
    #[arg(long, global = true)]
    vectors: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the vectors against the reference host and client cores.
    Vectors {
        /// Only cases whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// List every case: role, tier, name, description.
    List,
    /// Print the case catalogue of spec/CONFORMANCE.md, generated from the vectors.
    Doc {
        /// Rewrite the catalogue inside this file instead of printing it.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Test a host implementation over gRPC (not yet implemented).
    Host {
        /// The host's address.
        #[arg(long)]
        target: Option<String>,
    },
    /// Test a client implementation through its adapter (not yet implemented).
    Client {
        /// The adapter command.
        #[arg(long)]
        adapter: Option<String>,
    },
}

fn load(dir: Option<PathBuf>) -> Result<Vec<Case>, ExitCode> {
    let dir = dir.unwrap_or_else(vectors::default_dir);
    vectors::load_dir(&dir).map_err(|e| {
        eprintln!("cannot load vectors: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cases = match &cli.command {
        Command::Host { .. } | Command::Client { .. } => {
            eprintln!("not yet implemented");
            return ExitCode::from(2);
        }
        _ => match load(cli.vectors) {
            Ok(cases) => cases,
            Err(code) => return code,
        },
    };
    match cli.command {
        Command::Vectors { filter } => {
            let selected = cases
                .iter()
                .filter(|c| filter.as_ref().is_none_or(|f| c.info().name.contains(f)));
            let report = Report::run(selected, Case::run_reference);
            print!("{}", report.to_text());
            if report.failures().next().is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::List => {
            for c in &cases {
                let i = c.info();
                println!(
                    "{:6} {:11} {:40} {}",
                    c.role(),
                    i.tier,
                    i.name,
                    i.description
                );
            }
            ExitCode::SUCCESS
        }
        Command::Doc { write } => {
            let catalogue = cosystem_conformance::doc::catalogue(&cases);
            let Some(path) = write else {
                print!("{catalogue}");
                return ExitCode::SUCCESS;
            };
            let spliced = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|doc| cosystem_conformance::doc::splice(&doc, &catalogue))
                .and_then(|doc| std::fs::write(&path, doc).map_err(|e| e.to_string()));
            match spliced {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Host { .. } | Command::Client { .. } => ExitCode::from(2),
    }
}
