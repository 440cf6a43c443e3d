//! The `cosystem-worker` command line: `host` serves the demo app, `client`
//! reads and calls a host.
//!
//! Exit codes: 0 success; 1 the host answered a call with an error, or
//! the host could not serve (an address in use, a `--stdio` session that
//! ended with an error); 2 invalid usage or input (bad flags, bad JSON,
//! unsupported transport, unreadable files); 3 the host could not be
//! reached or refused the credentials; 4 a call settled without the host's
//! answer (`deadline-exceeded`, `outcome-unknown`: it may have run).

mod client;
mod endpoint;
mod host;
mod open_files;
mod signals;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use cosystem_worker::app::MethodError;
use cosystem_worker::host::InputError;
use cosystem_worker::transport::grpc::GrpcError;

/// Shares application state between a host and its clients.
#[derive(Debug, Parser)]
#[command(name = "cosystem-worker", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v: debug; -vv: also the gRPC, HTTP/2
    /// and TLS libraries' debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the demo app (counter, todos, secret) until Ctrl-C or SIGTERM.
    Host(host::HostArgs),
    /// Read or call a running host.
    Client(client::ClientArgs),
}

/// `error` with a tip naming the environment variable its bad value came
/// from, if it came from one: clap names only the flag, which an operator
/// who never typed it will look for in vain.
fn from_environment(mut error: clap::Error, command: &clap::Command) -> clap::Error {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(invalid)) = error.get(ContextKind::InvalidArg) else {
        return error;
    };
    let Some(flag) = invalid
        .split_whitespace()
        .next()
        .and_then(|f| f.strip_prefix("--"))
    else {
        return error;
    };
    let typed = std::env::args_os().any(|arg| {
        arg.to_str().is_some_and(|arg| {
            arg.strip_prefix("--")
                .is_some_and(|rest| rest == flag || rest.starts_with(&format!("{flag}=")))
        })
    });
    let variable = command
        .get_subcommands()
        .chain(std::iter::once(command))
        .flat_map(|c| c.get_arguments())
        .find(|arg| arg.get_long() == Some(flag))
        .and_then(|arg| arg.get_env())
        .filter(|variable| !typed && std::env::var_os(variable).is_some());
    if let Some(variable) = variable {
        let tip = format!(
            "the value came from the environment variable {}",
            variable.to_string_lossy()
        );
        error.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![tip.into()]),
        );
    }
    error
}

impl Cli {
    /// Parses the process's arguments as `Parser::parse` does (printing
    /// usage errors and exiting 2), with the checks clap's attributes cannot
    /// express: [`host::check_stdio`] and [`host::settle_grpc_only_env`].
    pub fn parse_args() -> Self {
        let mut command = Self::command();
        let matches = command
            .try_get_matches_from_mut(std::env::args_os())
            .unwrap_or_else(|error| from_environment(error, &command).exit());
        if let Some(("host", host)) = matches.subcommand()
            // Built by `try_get_matches_from_mut`: the usage line names the
            // binary.
            && let Some(host_command) = command.find_subcommand_mut("host")
            && let Err(error) = host::check_stdio(host, host_command)
        {
            error.exit();
        }
        let mut cli = Self::from_arg_matches(&matches)
            .unwrap_or_else(|error| error.format(&mut command).exit());
        if let (Command::Host(args), Some(("host", host))) =
            (&mut cli.command, matches.subcommand())
        {
            host::settle_grpc_only_env(args, host);
        }
        cli
    }

    /// The tokio runtime the command runs on: the host's `--threads`
    /// workers (one current thread for 0), else one worker per core.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        use tokio::runtime::Builder;
        let threads = match &self.command {
            Command::Host(args) => args.threads,
            Command::Client(_) => None,
        };
        match threads {
            Some(0) => Builder::new_current_thread().enable_all().build(),
            Some(n) => Builder::new_multi_thread()
                .worker_threads(n)
                .enable_all()
                .build(),
            None => Builder::new_multi_thread().enable_all().build(),
        }
    }
}

/// Whether a host's text must not reach the terminal as it is: control
/// characters, the line and paragraph separators some readers split lines
/// on, and the marks that reorder text on screen.
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// A message from the host, printed on one line: what [`unprintable`]
/// names is escaped, so that a host cannot break the error line a script
/// reads or send escape sequences to the terminal.
struct OneLine<'a>(&'a str);

impl std::fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            if unprintable(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// `\ndetails: <JSON>` for an error that carries details, or nothing: the
/// error's details are part of the host's answer (spec §3.9), such as the
/// balance a refused withdrawal found. They go on a line of their own, so
/// that no message text can be mistaken for them, with what [`unprintable`]
/// names written as JSON escapes (serde_json writes DEL, C1 controls and
/// the separators as they are; they can only stand inside strings, where
/// `\uXXXX` reads the same).
fn details_line(error: &MethodError) -> String {
    let Some(details) = &error.details else {
        return String::new();
    };
    let mut line = String::from("\ndetails: ");
    for c in details.to_string().chars() {
        if unprintable(c) {
            line.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            line.push(c);
        }
    }
    line
}

/// Why a command failed; each maps to one line on stderr and an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Invalid usage or input.
    #[error("{0}")]
    Usage(String),
    /// An endpoint that does not apply to this command (e.g. `--stdio` for
    /// a client).
    #[error("{0} is not supported here")]
    NotSupported(String),
    /// A file named on the command line could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Setting up or running the gRPC transport failed.
    #[error("{0}")]
    Grpc(#[from] GrpcError),
    /// The host was not reached in time.
    #[error("unavailable: no connection to {url} within {seconds}s{}", last.as_deref().map(|l| format!(" ({})", OneLine(l))).unwrap_or_default())]
    Unreachable {
        /// Where.
        url: String,
        /// The bound.
        seconds: f64,
        /// The last connection error, if any.
        last: Option<String>,
    },
    /// The host refused the connection for good (credentials), or could not
    /// be reached for good (a `--spawn` command that cannot be started, or
    /// that exits with a non-zero status before speaking).
    #[error("{}: {}", .0.code.kebab_name(), OneLine(&.0.message))]
    Refused(MethodError),
    /// The host answered a call with an error; its details, if any, follow
    /// on the next line as JSON.
    #[error("{}: {}{}", .0.code.kebab_name(), OneLine(&.0.message), details_line(.0))]
    Call(MethodError),
    /// The call settled without the host's answer (`outcome-unknown`,
    /// `deadline-exceeded`: [`ErrorCode::is_local`](cosystem_worker::wire::ErrorCode::is_local)); it may or may not
    /// have run.
    #[error("{}: {}", .0.code.kebab_name(), OneLine(&.0.message))]
    Unanswered(MethodError),
    /// The host's one `--stdio` session ended with an error.
    #[error("the stdio session ended with an error: {0}")]
    Session(InputError),
    /// Writing output or another local I/O step failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The operating system gave no randomness for a default secret.
    #[error("no randomness for a default --secret-token: {0}")]
    Randomness(getrandom::Error),
}

impl CliError {
    /// This error, its message prefixed with the flag whose value caused
    /// it, when it is a usage error.
    pub fn for_flag(self, flag: &str) -> Self {
        match self {
            CliError::Usage(message) => CliError::Usage(format!("{flag}: {message}")),
            other => other,
        }
    }

    /// A call that settled with `error`: the host's answer, or one the
    /// client gave it without an answer.
    pub fn settled(error: MethodError) -> Self {
        if error.code.is_local() {
            CliError::Unanswered(error)
        } else {
            CliError::Call(error)
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Call(_) => ExitCode::from(1),
            CliError::Unanswered(_) => ExitCode::from(4),
            CliError::Usage(_) | CliError::NotSupported(_) | CliError::ReadFile { .. } => {
                ExitCode::from(2)
            }
            CliError::Grpc(
                GrpcError::InvalidToken(_)
                | GrpcError::InvalidUrl(_)
                | GrpcError::Tls(_)
                | GrpcError::TlsOptionsOnPlaintext { .. }
                | GrpcError::ClientCaWithoutTls,
            ) => ExitCode::from(2),
            CliError::Grpc(_)
            | CliError::Session(_)
            | CliError::Io(_)
            | CliError::Randomness(_) => ExitCode::from(1),
            CliError::Unreachable { .. } | CliError::Refused(_) => ExitCode::from(3),
        }
    }
}

/// Installs the stderr logger: RUST_LOG if set, else this crate at info
/// and its libraries at warn; -v: this crate at debug; -vv: the libraries
/// (tonic, h2, hyper, rustls) at debug too, which shows what happens below
/// the protocol: TLS handshakes that fail, HTTP/2 connections that reset.
pub fn init_tracing(cli: &Cli) {
    let directives = match cli.verbose {
        0 => "warn,cosystem_worker=info",
        1 => "warn,cosystem_worker=debug",
        _ => "debug,cosystem_worker=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Host(args) => host::run(args).await,
        Command::Client(args) => client::run(args).await,
    }
}

/// Reads a file named by a flag.
fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// Reads a token file: its content with surrounding whitespace removed.
fn read_token(path: &Path) -> Result<String, CliError> {
    let bytes = read_file(path)?;
    let token = String::from_utf8(bytes)
        .map_err(|_| CliError::Usage(format!("{}: the token is not UTF-8", path.display())))?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(CliError::Usage(format!(
            "{}: the token file is empty",
            path.display()
        )));
    }
    Ok(token)
}
