//! `cosystem-conformance`: the protocol's conformance suite.
//!
//! - `vectors` plays every vector against the reference cores in this
//!   workspace; `list` prints the catalogue; `doc` prints spec/CONFORMANCE.md's
//!   generated catalogues and rule coverage.
//! - `client -- CMD ARGS…` tests a client implementation in any language
//!   through its adapter program (spec/CONFORMANCE.md §6).
//! - `host --connect URL` tests a running host implementation in any language
//!   over gRPC (spec/CONFORMANCE.md §7).
//! - `adapter` is the reference adapter: the reference client behind the
//!   adapter protocol on stdin/stdout.
//!
//! Exit status: 0 when every required case passed (every case, with
//! `--strict`) and no case listed as a known failure passed, 1 otherwise,
//! 2 when the run could not be made (bad arguments, unreadable files, an
//! adapter or host that cannot be reached).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use cosystem_conformance::adapter::process::serve;
use cosystem_conformance::adapter::reference::{Breakage, ReferenceClient};
use cosystem_conformance::adapter::runner::{self, ClientRun};
use cosystem_conformance::interop::peer::Transport;
use cosystem_conformance::interop::{self, HostRun};
use cosystem_conformance::report::{Format, Report, parse_known_failures};
use cosystem_conformance::select::Selection;
use cosystem_conformance::vectors::{self, Case, Tier};

#[derive(Parser)]
#[command(version, about = "Conformance suite for the cosystem-worker protocol")]
struct Cli {
    /// Directory of vector files to use instead of those built into this
    /// binary (which are conformance/vectors as it was built).
    #[arg(long, global = true)]
    vectors: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Options every run mode shares.
#[derive(Args)]
struct RunArgs {
    /// Run only the case with this name; repeat for several.
    #[arg(long, value_name = "NAME")]
    case: Vec<String>,
    /// Run only cases whose name contains this.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Run only cases of this tier: required or recommended.
    #[arg(long, value_name = "TIER")]
    tier: Option<Tier>,
    /// Fail the run (exit status 1) when a recommended case fails too, not
    /// only a required one; a case listed in --known-failures still does
    /// not fail it. For an implementation that means to pass every case.
    #[arg(long)]
    strict: bool,
    /// Stop once a required case has failed: the cases after it are
    /// reported SKIP (an adapter that hangs on every case otherwise costs
    /// a reply timeout per case).
    #[arg(long)]
    fail_fast: bool,
    /// How to print the report: text, json or junit.
    #[arg(long, default_value = "text", value_name = "FORMAT")]
    format: Format,
    /// Also write the report as JUnit XML to this file (for a CI's test
    /// view, beside the printed report).
    #[arg(long, value_name = "FILE")]
    junit_file: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json_file: Option<PathBuf>,
    /// A file of case names (one per line, `#` comments) expected to fail.
    /// They still run: a failure is reported XFAIL and does not fail the
    /// run; a pass is reported XPASS and fails it.
    #[arg(long, value_name = "FILE")]
    known_failures: Option<PathBuf>,
    /// A file of case names (same format) not to run at all, for a case
    /// that crashes or wedges the implementation; reported SKIP.
    #[arg(long, value_name = "FILE")]
    skip: Option<PathBuf>,
    /// What suite runs ([`suite::describe`](cosystem_conformance::suite::describe)),
    /// for the reports, including those of a run not made.
    #[arg(skip)]
    suite: Option<String>,
}

impl RunArgs {
    fn select(&self) -> Selection {
        Selection {
            names: self.case.iter().cloned().collect(),
            filter: self.filter.clone(),
            tier: self.tier,
        }
    }

    /// Creates the report files asked for, before any case runs: a run
    /// is not lost to a path that cannot be written at its end. Each holds
    /// a report of a run not made until the run's own replaces it.
    fn create_report_files(&self, mode: &str) -> Result<(), ExitCode> {
        // If one cannot be made, those that could say why the run was not.
        self.write_not_made(mode, "the run was interrupted before it ended")
            .map_err(|why| self.not_made(mode, why))
    }

    /// Writes a report of a run that could not be made, saying `why`, to
    /// each report file asked for; the first path that cannot be written
    /// is the error, after every other has been tried.
    fn write_not_made(&self, mode: &str, why: &str) -> Result<(), String> {
        let mut failed = None;
        for (path, format) in self.report_files() {
            if let Err(e) = std::fs::write(
                path,
                Report::not_made(format, mode, why, self.suite.as_deref()),
            ) {
                failed.get_or_insert(format!("{}: {e}", path.display()));
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn report_files(&self) -> impl Iterator<Item = (&PathBuf, Format)> {
        [
            (&self.junit_file, Format::Junit),
            (&self.json_file, Format::Json),
        ]
        .into_iter()
        .filter_map(|(path, format)| path.as_ref().map(|p| (p, format)))
    }

    /// [`usage`] for a run whose report files exist: they say `why` too.
    fn not_made(&self, mode: &str, why: String) -> ExitCode {
        let _ = self.write_not_made(mode, &why);
        usage(why)
    }

    fn known(&self) -> Result<BTreeSet<String>, ExitCode> {
        read_names(self.known_failures.as_ref())
    }

    fn skipped(&self) -> Result<BTreeSet<String>, ExitCode> {
        read_names(self.skip.as_ref())
    }
}

/// The case names a list file holds; none without a file.
fn read_names(path: Option<&PathBuf>) -> Result<BTreeSet<String>, ExitCode> {
    let Some(path) = path else {
        return Ok(BTreeSet::new());
    };
    std::fs::read_to_string(path)
        .map(|text| parse_known_failures(&text))
        .map_err(|e| usage(format!("{}: {e}", path.display())))
}

#[derive(Subcommand)]
enum Command {
    /// Run the vectors against the reference host and client cores.
    Vectors {
        /// Only cases whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// How to print the report: text, json or junit.
        #[arg(long, default_value = "text", value_name = "FORMAT")]
        format: Format,
    },
    /// List every case: role, tier, name, description.
    List,
    /// Print the case catalogues of spec/CONFORMANCE.md, generated from the
    /// vectors and the host interop cases, and its rule coverage, which also
    /// reads the rule ids of spec/PROTOCOL.md. Fails when a case cites an id
    /// the spec does not define, or the spec defines one twice.
    Doc {
        /// Rewrite the generated parts inside this file instead of printing
        /// them.
        #[arg(long)]
        write: Option<PathBuf>,
        /// The spec/PROTOCOL.md to read rule ids from instead of the copy
        /// built into this binary.
        #[arg(long, value_name = "FILE")]
        spec: Option<PathBuf>,
    },
    /// Test a host implementation over gRPC or framed byte streams. The
    /// host must serve the demo app (spec §19) and have no other client
    /// during the run.
    Host {
        /// The host's URL: http://127.0.0.1:50051, or HOST:PORT for plain
        /// http (gRPC); tcp://HOST:PORT or unix:PATH for a listener of
        /// length-prefixed frames (spec §17.3). The cases that need one
        /// transport run only over it.
        #[arg(long, value_name = "URL")]
        connect: String,
        /// Keep trying the first connection for this long, in ms, for a
        /// host started just before the run (default: try once).
        #[arg(long, default_value_t = 0, value_name = "MS")]
        wait_ms: u64,
        /// A file holding the bearer token the host requires (gRPC only).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// A string contained in every token the host's secret module ever
        /// holds (the reference host: its --secret-token); no byte the host
        /// sends may contain it.
        #[arg(long, value_name = "MARKER")]
        secret_marker: Option<String>,
        /// The host's history window in versions (H11), for the case that
        /// outruns it.
        #[arg(long, default_value_t = 1024, value_name = "N")]
        history_window: u64,
        /// The host's max message size in bytes (§15), its frame limit on
        /// framed streams (FB3), for the cases that send a message of
        /// exactly that size and a length just over it (below 4 GiB − 1, so
        /// that a length can be over it).
        #[arg(long, default_value_t = 4 * 1024 * 1024, value_name = "BYTES",
              value_parser = clap::value_parser!(u32).range(1024 * 1024..i64::from(u32::MAX)))]
        max_message_size: u32,
        /// How long a framed host may take to close a connection that sends
        /// no first envelope (FB6), in ms.
        #[arg(long, default_value_t = 30000, value_name = "MS")]
        first_frame_wait_ms: u64,
        /// The host's bookmark interval (H10, §15), in ms, for the case
        /// that waits for a bookmark.
        #[arg(long, default_value_t = 5000, value_name = "MS")]
        bookmark_interval_ms: u64,
        /// The longest any single wait may last, in ms.
        #[arg(long, default_value_t = 5000, value_name = "MS")]
        step_timeout_ms: u64,
        /// The longest a whole case may last, in ms.
        #[arg(long, default_value_t = 60000, value_name = "MS")]
        case_timeout_ms: u64,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Test a client implementation through its adapter program, started once
    /// per case as `CMD ARGS…` (spec/CONFORMANCE.md §6).
    Client {
        /// The longest the adapter may take to answer one command, in ms.
        #[arg(long, default_value_t = 5000, value_name = "MS")]
        reply_timeout_ms: u64,
        /// The longest the adapter may take to answer its first command,
        /// start-up included, in ms, until some case's adapter has answered
        /// (a wrapper such as `go run` may build it first); at least the
        /// reply timeout (spec/CONFORMANCE.md §6.5).
        #[arg(long, default_value_t = 30000, value_name = "MS")]
        start_timeout_ms: u64,
        #[command(flatten)]
        run: RunArgs,
        /// The adapter command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        adapter: Vec<String>,
    },
    /// Serve the adapter protocol on stdin/stdout for the reference client.
    Adapter {
        /// Break the client on purpose (apply-across-gap,
        /// settle-before-catch-up, ignore-epoch, skip-resync, settled-first,
        /// accept-empty-capability, reverse-settlements), to show the suite
        /// catches it. Also read from COSYSTEM_ADAPTER_BREAK.
        #[arg(long = "break", value_name = "MODE", env = "COSYSTEM_ADAPTER_BREAK")]
        breakage: Option<Breakage>,
    },
}

fn usage(message: String) -> ExitCode {
    eprintln!("cosystem-conformance: {message}");
    ExitCode::from(2)
}

fn load(dir: Option<PathBuf>) -> Result<Vec<Case>, ExitCode> {
    match dir {
        Some(dir) => vectors::load_dir(&dir),
        None => vectors::load_embedded(),
    }
    .map_err(|e| usage(format!("cannot load vectors: {e}")))
}

/// The text of spec/PROTOCOL.md: the file named, or the built-in copy.
fn read_spec(path: Option<PathBuf>) -> Result<String, ExitCode> {
    match path {
        Some(path) => {
            std::fs::read_to_string(&path).map_err(|e| usage(format!("{}: {e}", path.display())))
        }
        None => Ok(cosystem_conformance::coverage::EMBEDDED_SPEC.to_owned()),
    }
}

fn finish(report: &Report, format: Format, mode: &str) -> ExitCode {
    print!("{}", report.render(format, mode));
    verdict(report)
}

/// [`finish`] for a `client` or `host` run, also writing the files asked
/// for; one that cannot be written makes the run fail to be made (2).
fn finish_run(report: &Report, run: &RunArgs, mode: &str) -> Result<ExitCode, ExitCode> {
    // The report is printed first: a file that cannot be written now (it
    // was created before the run) still leaves the run's verdict printed.
    let verdict = finish(report, run.format, mode);
    // Every file gets the report, even after one that cannot be written.
    let mut failed = None;
    let _reports = cosystem_conformance::adapter::writing_reports();
    for (path, format) in run.report_files() {
        if let Err(e) = std::fs::write(path, report.render(format, mode)) {
            failed.get_or_insert(format!("{}: {e}", path.display()));
        }
    }
    match failed {
        Some(why) => Err(usage(why)),
        None => Ok(verdict),
    }
}

/// The exit status of a run: 0 when it succeeded, 1 otherwise.
fn verdict(report: &Report) -> ExitCode {
    if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    // `--version` names what this build checks, not just the crate.
    let version: &'static str = Box::leak(
        vectors::load_embedded()
            .map(|cases| cosystem_conformance::suite::describe(&cases))
            .unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_owned())
            .into_boxed_str(),
    );
    let matches = <Cli as clap::CommandFactory>::command()
        .version(version)
        .get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    match run(cli) {
        Ok(code) | Err(code) => code,
    }
}

fn run(cli: Cli) -> Result<ExitCode, ExitCode> {
    Ok(match cli.command {
        Command::Vectors { filter, format } => {
            let cases = load(cli.vectors)?;
            let selected: Vec<&Case> = cases
                .iter()
                .filter(|c| filter.as_ref().is_none_or(|f| c.info().name.contains(f)))
                .collect();
            if selected.is_empty() {
                // As in the other modes: a mistyped filter must not pass.
                return Err(usage("no vector matches the selection".into()));
            }
            let mut report = Report::run(selected, Case::run_reference);
            report.suite = Some(cosystem_conformance::suite::describe(&cases));
            finish(&report, format, "vectors")
        }
        Command::List => {
            use std::io::Write;
            let cases = load(cli.vectors)?;
            let mut out = std::io::stdout().lock();
            let lines = cases
                .iter()
                .map(|c| {
                    (
                        c.role().to_string(),
                        c.info().tier,
                        c.info().name.as_str(),
                        c.info().description.as_str(),
                    )
                })
                .chain(
                    interop::cases::CASES
                        .iter()
                        .map(|c| ("interop".to_owned(), c.tier, c.name, c.description)),
                );
            for (role, tier, name, description) in lines {
                // A reader that stops early (`| head`) is not an error.
                if writeln!(out, "{role:7} {tier:11} {name:40} {description}").is_err() {
                    break;
                }
            }
            ExitCode::SUCCESS
        }
        Command::Doc { write, spec } => {
            let cases = load(cli.vectors)?;
            let spec = read_spec(spec)?;
            let Some(path) = write else {
                let coverage =
                    cosystem_conformance::doc::rule_coverage(&cases, &spec).map_err(usage)?;
                print!("{}", cosystem_conformance::doc::catalogue(&cases));
                print!("{}", cosystem_conformance::doc::interop_catalogue());
                print!("{coverage}");
                return Ok(ExitCode::SUCCESS);
            };
            std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|doc| cosystem_conformance::doc::splice_all(&doc, &cases, &spec))
                .and_then(|doc| std::fs::write(&path, doc).map_err(|e| e.to_string()))
                .map_err(|e| usage(format!("{}: {e}", path.display())))?;
            ExitCode::SUCCESS
        }
        Command::Client {
            reply_timeout_ms,
            start_timeout_ms,
            run,
            adapter,
        } => {
            let cases = load(cli.vectors)?;
            let mut run = run;
            run.suite = Some(cosystem_conformance::suite::describe(&cases));
            let (program, args) = adapter
                .split_first()
                .ok_or_else(|| usage("client needs an adapter command after --".into()))?;
            let config = ClientRun {
                program: program.clone(),
                args: args.to_vec(),
                select: run.select(),
                fail_fast: run.fail_fast,
                known_failures: run.known()?,
                skip: run.skipped()?,
                reply_timeout: Duration::from_millis(reply_timeout_ms),
                start_timeout: Duration::from_millis(start_timeout_ms),
            };
            run.create_report_files("client")?;
            cosystem_conformance::adapter::kill_adapters_on_signal();
            let mut report = runner::run(&cases, &config).map_err(|e| run.not_made("client", e))?;
            report.suite = run.suite.clone();
            report.strict = run.strict;
            finish_run(&report, &run, "client")?
        }
        Command::Host {
            connect,
            wait_ms,
            token_file,
            secret_marker,
            history_window,
            max_message_size,
            first_frame_wait_ms,
            bookmark_interval_ms,
            step_timeout_ms,
            case_timeout_ms,
            mut run,
        } => {
            // Quietly: the host runner needs no vectors, so vectors that do
            // not load only leave the reports without their suite line.
            run.suite = match &cli.vectors {
                Some(dir) => vectors::load_dir(dir),
                None => vectors::load_embedded(),
            }
            .ok()
            .map(|cases| cosystem_conformance::suite::describe(&cases));
            let token = token_file
                .map(|path| {
                    std::fs::read_to_string(&path)
                        .map(|t| t.trim().to_owned())
                        .map_err(|e| usage(format!("{}: {e}", path.display())))
                })
                .transpose()?;
            let mut config = HostRun::new(interop::host_url(&connect));
            config.token = token;
            config.secret_marker = secret_marker;
            config.select = run.select();
            config.fail_fast = run.fail_fast;
            config.wait = Duration::from_millis(wait_ms);
            config.known_failures = run.known()?;
            config.skip = run.skipped()?;
            config.step_timeout = Duration::from_millis(step_timeout_ms);
            config.case_timeout = Duration::from_millis(case_timeout_ms);
            config.options.history_window = history_window;
            config.options.max_message_size = max_message_size;
            config.options.first_frame_wait = Duration::from_millis(first_frame_wait_ms);
            config.options.bookmark_interval = Duration::from_millis(bookmark_interval_ms);
            interop::check_names(&config).map_err(|e| {
                // Names the host runner does not know may be host vectors.
                let cases = load(cli.vectors.clone()).unwrap_or_default();
                let names: Vec<&str> = config.select.names.iter().map(String::as_str).collect();
                usage(format!(
                    "{e}{}",
                    cosystem_conformance::select::host_vector_hint(&cases, &names)
                ))
            })?;
            // A host tested over both transports gets two reports a CI can
            // tell apart.
            let mode = match interop::transport_of(&config.url) {
                Ok(Transport::Framed) => "host-framed",
                _ => "host",
            };
            run.create_report_files(mode)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| run.not_made(mode, format!("cannot start the runtime: {e}")))?;
            let mut report = runtime
                .block_on(interop::run(&config))
                .map_err(|e| run.not_made(mode, e))?;
            report.suite = run.suite.clone();
            report.strict = run.strict;
            finish_run(&report, &run, mode)?
        }
        Command::Adapter { breakage } => {
            let mut client = ReferenceClient::new(breakage);
            let stdin = std::io::stdin();
            let stdout = std::io::stdout();
            match serve(&mut client, stdin.lock(), stdout.lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("adapter: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    })
}
