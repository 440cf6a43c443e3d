//! Driving an adapter program over its stdin and stdout, and an in-process
//! stand-in that goes through the same JSON.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ClientUnderTest, Command, Reply};

/// What precedes the adapter's stderr where a failure quotes it.
pub(crate) const STDERR_QUOTED: &str = "; adapter stderr: ";

/// How many of the adapter's first stderr lines a failure quotes: a
/// runtime's own crash report (a Go `panic:`, a Python traceback's head)
/// starts with its cause, before the stack frames that fill the tail.
const STDERR_HEAD: usize = 4;

/// How many of its last stderr lines a failure quotes.
const STDERR_TAIL: usize = 8;

/// The adapter's stderr as a failure quotes it: its first and last lines,
/// how many fell between, and the first line between them that starts a
/// runtime's crash report (an adapter that logs each command fills the
/// head with its own lines, and a long stack trace the tail).
#[derive(Default)]
struct StderrLog {
    head: Vec<String>,
    tail: VecDeque<String>,
    dropped: usize,
    /// The first crash line past the head, if it fell out of the tail.
    cause: Option<String>,
    /// The first crash line past the head, while still in the tail.
    cause_in_tail: Option<usize>,
    pushed: usize,
}

/// Whether `line` starts a runtime's crash report: Go, Rust, Python and
/// the JVM begin theirs so (Node begins with the file and line, which no
/// prefix tells from an adapter's own logging).
fn starts_crash_report(line: &str) -> bool {
    [
        "panic:",
        "fatal error:",
        "Traceback (most recent call last)",
        "Exception in thread",
    ]
    .iter()
    .any(|p| line.starts_with(p))
        || (line.starts_with("thread '") && line.contains("panicked at"))
}

impl StderrLog {
    fn push(&mut self, line: String) {
        self.pushed += 1;
        if self.head.len() < STDERR_HEAD {
            self.head.push(line);
            return;
        }
        let crash =
            self.cause.is_none() && self.cause_in_tail.is_none() && starts_crash_report(&line);
        if crash {
            self.cause_in_tail = Some(self.pushed);
        }
        if self.tail.len() == STDERR_TAIL
            && let Some(popped) = self.tail.pop_front()
        {
            if self.cause_in_tail == Some(self.pushed - STDERR_TAIL) {
                // Quoted apart, so not among the lines left out.
                self.cause_in_tail = None;
                self.cause = Some(popped);
            } else {
                self.dropped += 1;
            }
        }
        self.tail.push_back(line);
    }

    fn quoted(&self) -> String {
        let mut lines: Vec<&str> = self.head.iter().map(String::as_str).collect();
        lines.extend(self.cause.as_deref());
        let gap = (self.dropped > 0).then(|| format!("… {} lines …", self.dropped));
        lines.extend(gap.as_deref());
        lines.extend(self.tail.iter().map(String::as_str));
        lines.join(" | ")
    }
}

/// How many bytes of each such line it quotes: an adapter that logs a
/// whole state on one line must not make every failure, and the report
/// files, megabytes long.
const STDERR_LINE_BYTES: usize = 1024;

/// The next line of `reader` (without its newline), keeping at most
/// `cap` bytes of it, with the line's whole length; `None` at the end of
/// input. Bytes past `cap` are read and dropped, so a line without end
/// costs no memory.
fn read_capped_line(
    reader: &mut impl BufRead,
    cap: usize,
) -> std::io::Result<Option<(Vec<u8>, usize)>> {
    let mut kept = Vec::new();
    let mut total = 0;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok((total > 0).then_some((kept, total)));
        }
        let newline = buffer.iter().position(|&b| b == b'\n');
        let line = &buffer[..newline.unwrap_or(buffer.len())];
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&line[..line.len().min(room)]);
        total += line.len();
        let used = newline.map_or(buffer.len(), |at| at + 1);
        reader.consume(used);
        if newline.is_some() {
            return Ok(Some((kept, total)));
        }
    }
}

/// A stderr line as a failure quotes it: what was kept of it, as text
/// (a character cut by the cap is left out), saying how long it was when
/// that was more than [`STDERR_LINE_BYTES`].
fn clipped(kept: &[u8], total: usize) -> String {
    let valid = match std::str::from_utf8(kept) {
        Ok(_) => kept,
        // Cut inside a character: the part before it.
        Err(e) if e.error_len().is_none() && total > kept.len() => &kept[..e.valid_up_to()],
        Err(_) => kept,
    };
    let text = String::from_utf8_lossy(valid);
    let text = text.trim_end();
    if total <= STDERR_LINE_BYTES {
        text.to_owned()
    } else {
        format!("{text}… ({total} bytes)")
    }
}

/// How long the probe waits for an adapter to end on empty input before
/// taking it as started: long enough for an interpreter to fail on a
/// missing script, short of what a runtime that lingers would add to
/// every run.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// How long a failure waits for an adapter that stopped answering to
/// exit, so as to quote its exit status.
const EXIT_WAIT: Duration = Duration::from_millis(500);

/// The longest reply line read from an adapter, in bytes. Replies of the
/// suite's vectors are a few KiB; without a bound, an adapter that writes
/// without a newline would make the runner buffer until it ran out of
/// memory.
pub const MAX_REPLY_LINE_BYTES: usize = 64 * 1024 * 1024;

/// The next line of `reader` without its newline (and a `\r` before it),
/// `None` at the end of input. A line over [`MAX_REPLY_LINE_BYTES`], or
/// one that is not UTF-8, is an error, after which nothing more is read.
fn read_reply_line(reader: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let limit = MAX_REPLY_LINE_BYTES as u64 + 1;
    let read = reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    if line.len() > MAX_REPLY_LINE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "a reply line longer than {MAX_REPLY_LINE_BYTES} bytes (one JSON object per line, §6.4)"
            ),
        ));
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A running adapter program. Dropping it closes its stdin and, if it does
/// not exit promptly, kills it.
pub struct AdapterProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<std::io::Result<String>>,
    stderr: Arc<Mutex<StderrLog>>,
    /// Signalled (by disconnecting) when the stderr reader reaches the end.
    stderr_done: Receiver<()>,
    reply_timeout: Duration,
    /// The longest the first reply may take, start-up included; spent once
    /// the adapter has replied.
    start_timeout: Option<Duration>,
    /// When the process was started.
    spawned: Instant,
    /// How the first command went: answered after this long from the
    /// start, or not answered in time.
    first: Option<Started>,
}

/// How an adapter's first command went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// Answered, this long after the process was started.
    Answered(Duration),
    /// Not answered within its timeout.
    TimedOut,
    /// The adapter exited, or its output broke, before it answered.
    Broke,
}

impl AdapterProcess {
    /// Lets the first reply take `timeout` (start-up included) when that is
    /// longer than the reply timeout: a wrapper such as `go run` may build
    /// the adapter first.
    pub fn with_start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = Some(timeout.max(self.reply_timeout));
        self
    }

    /// How the first command went, once one was sent.
    pub fn started(&self) -> Option<Started> {
        self.first
    }

    /// Starts `program` with `args`. Each command must be answered within
    /// `reply_timeout`, or the adapter is killed and the case fails.
    pub fn spawn(program: &str, args: &[String], reply_timeout: Duration) -> Result<Self, String> {
        let mut command = Process::new(program);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A group of its own, so that killing it also kills what a wrapper
        // (`go run`, `poetry run`, a shell script) started.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = super::groups::spawn(&mut command)
            .map_err(|e| format!("cannot start adapter {program:?}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("adapter has no stdout")?;
        let stderr_pipe = child.stderr.take().ok_or("adapter has no stderr")?;
        let (tx, lines) = mpsc::channel();
        // Threads, not async: the runner is synchronous, and a reader thread
        // is what lets a blocked adapter be timed out.
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            loop {
                let line = match read_reply_line(&mut stdout) {
                    Ok(Some(line)) => Ok(line),
                    Ok(None) => return,
                    Err(error) => Err(error),
                };
                let failed = line.is_err();
                if tx.send(line).is_err() || failed {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(StderrLog::default()));
        let log = stderr.clone();
        let (stderr_eof, stderr_done) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            // Dropped at the end of this thread: that is the signal.
            let _eof = stderr_eof;
            let mut reader = BufReader::new(stderr_pipe);
            while let Ok(Some((kept, total))) = read_capped_line(&mut reader, STDERR_LINE_BYTES) {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push(clipped(&kept, total));
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            stderr,
            stderr_done,
            reply_timeout,
            start_timeout: None,
            spawned: Instant::now(),
            first: None,
        })
    }

    /// Starts `program` with `args` once, sends it nothing and closes its
    /// stdin at once, as the runner does before any case: a program that
    /// cannot be started, or that exits with a failure status when its
    /// input ends (a mistyped script path given to an interpreter), is a
    /// run that cannot be made rather than every case failing alike. One
    /// still running after [`PROBE_WAIT`] (a slow runtime, or one that
    /// lingers) is killed and taken as started.
    pub fn probe(program: &str, args: &[String], reply_timeout: Duration) -> Result<(), String> {
        let mut adapter = Self::spawn(program, args, reply_timeout)?;
        drop(adapter.stdin.take());
        match adapter.exit_status(PROBE_WAIT.min(reply_timeout)) {
            Some(Ended::Cleanly) | None => Ok(()),
            Some(ended) => Err(format!(
                "adapter {program:?} exited ({ended}) when its input ended, before any case ran: an adapter exits cleanly at the end of its input (§6.5){}",
                adapter.stderr_tail()
            )),
        }
    }

    /// How the adapter ended, if it has, without reaping it: until it is
    /// reaped its pid, and so its process group's id, cannot be reused,
    /// so killing that group after this reaches nobody else.
    fn ended(&mut self) -> Option<Ended> {
        #[cfg(unix)]
        {
            use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
            let pid = i32::try_from(self.child.id())
                .ok()
                .and_then(Pid::from_raw)?;
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
            let status = waitid(WaitId::Pid(pid), options).ok().flatten()?;
            Some(match (status.exit_status(), status.terminating_signal()) {
                (Some(0), _) => Ended::Cleanly,
                (Some(code), _) => Ended::Status(code),
                (None, Some(signal)) => Ended::Signal(signal),
                (None, None) => Ended::Status(-1),
            })
        }
        #[cfg(not(unix))]
        {
            let status = self.child.try_wait().ok().flatten()?;
            Some(match status.code() {
                Some(0) => Ended::Cleanly,
                code => Ended::Status(code.unwrap_or(-1)),
            })
        }
    }

    pub(crate) fn stderr_tail(&self) -> String {
        let log = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        if log.head.is_empty() {
            String::new()
        } else {
            format!("{STDERR_QUOTED}{}", log.quoted())
        }
    }

    fn gone(&mut self, what: &str) -> String {
        let status = self.exit_status(EXIT_WAIT);
        let status = status.map_or_else(String::new, |s| format!(" ({s})"));
        format!("{what}{status}{}", self.stderr_tail())
    }

    /// How the adapter ended, once it has, waiting up to `wait` for that:
    /// it is exiting or has exited, and it and the thread collecting its
    /// stderr get time for a failure to quote its last words and exit
    /// status. `None` if it is still running.
    fn exit_status(&mut self, wait: Duration) -> Option<Ended> {
        let deadline = std::time::Instant::now() + wait;
        let status = loop {
            let status = self.ended();
            if status.is_some() || std::time::Instant::now() >= deadline {
                break status;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Once it has exited, its stderr ends too: wait (bounded) for the
        // reader to have taken every line, rather than guessing how long.
        if status.is_some() {
            let _ = self.stderr_done.recv_timeout(Duration::from_secs(2));
        }
        status
    }
}

/// How an adapter process ended, as a failure says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Exit status 0.
    Cleanly,
    /// Another exit status.
    Status(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Cleanly => write!(f, "exit status: 0"),
            Ended::Status(code) => write!(f, "exit status: {code}"),
            Ended::Signal(signal) => write!(f, "signal: {signal}"),
        }
    }
}

impl ClientUnderTest for AdapterProcess {
    fn command(&mut self, command: &Command) -> Result<Reply, String> {
        let op = command.to_json()["op"].as_str().unwrap_or("?").to_owned();
        let mut line = command.to_json().to_string();
        line.push('\n');
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(line.as_bytes())
                .and_then(|()| stdin.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        if let Err(e) = written {
            return Err(self.gone(&format!("cannot write {op} to the adapter: {e}")));
        }
        let timeout = self.start_timeout.take().unwrap_or(self.reply_timeout);
        let received = self.lines.recv_timeout(timeout);
        if self.first.is_none() {
            self.first = Some(match &received {
                Ok(Ok(_)) => Started::Answered(self.spawned.elapsed()),
                Err(RecvTimeoutError::Timeout) => Started::TimedOut,
                _ => Started::Broke,
            });
        }
        match received {
            Ok(Ok(text)) => {
                let value: Value = serde_json::from_str(&text)
                    .map_err(|e| format!("the reply to {op} is not JSON ({e}): {text}"))?;
                Reply::from_json(&value).map_err(|e| format!("the reply to {op}: {e}"))
            }
            Ok(Err(e)) => Err(self.gone(&format!("reading the reply to {op}: {e}"))),
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                Err(format!(
                    "no reply to {op} within {} ms; adapter killed{}",
                    timeout.as_millis(),
                    self.stderr_tail()
                ))
            }
            Err(RecvTimeoutError::Disconnected) => match self.exit_status(EXIT_WAIT) {
                Some(status) => Err(format!(
                    "the adapter exited before replying to {op} ({status}){}",
                    self.stderr_tail()
                )),
                None => Err(format!(
                    "the adapter closed its stdout before replying to {op}, and is still running{}",
                    self.stderr_tail()
                )),
            },
        }
    }
}

impl Drop for AdapterProcess {
    fn drop(&mut self) {
        // End of input is the adapter's signal to exit.
        drop(self.stdin.take());
        for _ in 0..50 {
            if self.ended().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Killed as a group even when it exited: what a wrapper left
        // running in the background must not outlive the case. It is not
        // reaped until after (see `ended`), so this reaches no one else.
        self.kill();
        super::groups::forget(&self.child);
        let _ = self.child.wait();
    }
}

impl AdapterProcess {
    /// Kills the adapter and every process of its group.
    fn kill(&mut self) {
        super::groups::kill(self.child.id());
        let _ = self.child.kill();
    }
}

/// A client in this process, driven through the JSON form of every command
/// and reply, so the in-process path checks what an adapter would be sent
/// and what it would answer.
pub struct ThroughJson<C>(pub C);

impl<C: ClientUnderTest> ClientUnderTest for ThroughJson<C> {
    fn command(&mut self, command: &Command) -> Result<Reply, String> {
        let command = Command::from_json(&command.to_json())?;
        let reply = self.0.command(&command)?;
        Reply::from_json(&reply.to_json())
    }
}

/// Serves the adapter protocol for `client` on `input`/`output` until the
/// input ends: the loop an adapter program runs. A command that cannot be
/// read or performed is answered `{"error": "..."}`.
pub fn serve(
    client: &mut impl ClientUnderTest,
    input: impl BufRead,
    mut output: impl Write,
) -> std::io::Result<()> {
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = serde_json::from_str::<Value>(&line)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| Command::from_json(&v))
            .and_then(|c| client.command(&c))
            .map_or_else(|e| serde_json::json!({ "error": e }), |r| r.to_json());
        writeln!(output, "{reply}")?;
        output.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{STDERR_LINE_BYTES, StderrLog, clipped, read_capped_line};

    fn lines(input: &[u8]) -> Vec<String> {
        let mut reader = input;
        let mut out = Vec::new();
        while let Some((kept, total)) = read_capped_line(&mut reader, STDERR_LINE_BYTES).unwrap() {
            assert!(kept.len() <= STDERR_LINE_BYTES);
            out.push(clipped(&kept, total));
        }
        out
    }

    #[test]
    fn long_stderr_lines_are_clipped_on_a_character_boundary() {
        assert_eq!(lines(b"short\n\nlast"), ["short", "", "last"]);
        let long = "é".repeat(STDERR_LINE_BYTES);
        let quoted = lines(format!("{long}\nnext\n").as_bytes());
        let cut = &quoted[0];
        assert!(cut.len() < STDERR_LINE_BYTES + 32, "{}", cut.len());
        assert!(cut.starts_with("éé"), "{cut}");
        assert!(!cut.contains('\u{fffd}'), "{cut}");
        assert!(cut.ends_with(&format!("… ({} bytes)", long.len())), "{cut}");
        assert_eq!(quoted[1], "next");
        // Bytes that are not UTF-8 are quoted, not a reason to stop.
        assert_eq!(lines(b"\xff\xfe\nok\n")[1], "ok");
    }

    #[test]
    fn a_crash_report_keeps_its_first_lines_and_its_last() {
        let mut log = StderrLog::default();
        for line in ["panic: no such module", "", "goroutine 1 [running]:"] {
            log.push(line.to_owned());
        }
        assert_eq!(
            log.quoted(),
            "panic: no such module |  | goroutine 1 [running]:"
        );
        for frame in 0..20 {
            log.push(format!("main.f{frame}()"));
        }
        log.push("exit status 2".to_owned());
        let quoted = log.quoted();
        assert!(quoted.starts_with("panic: no such module |  | goroutine 1 [running]: | main.f0() | … 12 lines … | main.f13()"), "{quoted}");
        assert!(quoted.ends_with("main.f19() | exit status 2"), "{quoted}");
    }

    #[test]
    fn a_crash_report_after_the_head_keeps_its_first_line() {
        let mut log = StderrLog::default();
        for command in 0..10 {
            log.push(format!("handled command {command}"));
        }
        log.push("panic: runtime error: index out of range".to_owned());
        for frame in 0..30 {
            log.push(format!("main.f{frame}()"));
        }
        let quoted = log.quoted();
        assert!(
            quoted.starts_with("handled command 0 | handled command 1 | handled command 2 | handled command 3 | panic: runtime error: index out of range | … 28 lines … | main.f22()"),
            "{quoted}"
        );
        assert!(quoted.ends_with("main.f29()"), "{quoted}");
    }
}
