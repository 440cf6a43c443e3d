//! Where a host listens and a client connects: the values of `--listen` and
//! `--connect`, and the `--stdio` / `--spawn` flags.
//!
//! Dispatch is in `host.rs` and `client.rs`; an endpoint that does not apply
//! to a command (`--stdio` for a client) is [`CliError::NotSupported`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::CliError;

/// A gRPC address: `http://HOST:PORT`, `https://HOST:PORT`, or bare
/// `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcAddr {
    /// `HOST:PORT`.
    pub authority: String,
    /// `Some(true)` for `https://`, `Some(false)` for `http://`, `None` for
    /// a bare address (a client then uses plaintext; a host uses TLS exactly
    /// when given a certificate).
    pub tls: Option<bool>,
}

impl GrpcAddr {
    /// The URL a client connects to.
    pub fn url(&self) -> String {
        let scheme = if self.tls == Some(true) {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.authority)
    }
}

/// One endpoint of a host or client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// gRPC over HTTP/2 (spec §17.2).
    Grpc(GrpcAddr),
    /// Framed envelopes over TCP: `tcp://HOST:PORT` (spec §17.3).
    Tcp(String),
    /// Framed envelopes over a Unix socket: `unix:PATH` (spec §17.3).
    Unix(PathBuf),
    /// Framed envelopes over this process's stdin/stdout: `--stdio` (host).
    Stdio,
    /// Spawn a host command and talk to it over its stdin/stdout:
    /// `--spawn COMMAND` (client).
    Spawn(Vec<String>),
}

impl Endpoint {
    /// The endpoint a host serves: `--stdio` wins over `--listen`, which
    /// then comes from its variable or default (a `--listen` flag beside
    /// `--stdio` is refused while parsing).
    pub fn for_host(listen: Endpoint, stdio: bool) -> Self {
        if stdio { Endpoint::Stdio } else { listen }
    }

    /// The endpoint a client uses: `--spawn` wins over `--connect` (clap
    /// makes them exclusive).
    pub fn for_client(connect: Endpoint, spawn: Option<&str>) -> Result<Self, CliError> {
        match spawn {
            None => Ok(connect),
            Some(command) => {
                // Split as a POSIX shell would (quotes and backslashes), so
                // an argument may hold spaces; nothing is expanded.
                let words = shlex::split(command).ok_or_else(|| {
                    CliError::Usage(format!("--spawn {command:?}: unbalanced quotes"))
                })?;
                if words.is_empty() {
                    return Err(CliError::Usage("--spawn needs a command".into()));
                }
                Ok(Endpoint::Spawn(words))
            }
        }
    }

    /// The error for a transport this build does not serve yet.
    pub fn not_supported(&self) -> CliError {
        CliError::NotSupported(self.to_string())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Grpc(addr) => match addr.tls {
                Some(true) => write!(f, "https://{}", addr.authority),
                Some(false) => write!(f, "http://{}", addr.authority),
                None => write!(f, "{}", addr.authority),
            },
            Endpoint::Tcp(authority) => write!(f, "tcp://{authority}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Stdio => write!(f, "--stdio"),
            Endpoint::Spawn(words) => {
                let quoted = shlex::try_join(words.iter().map(String::as_str))
                    .unwrap_or_else(|_| words.join(" "));
                write!(f, "--spawn {quoted}")
            }
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        if let Some(path) = value.strip_prefix("unix:") {
            // Accept both `unix:PATH` and `unix://PATH`.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let (scheme, rest) = match value.split_once("://") {
            Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
            None => (None, value),
        };
        let authority = authority(rest)?;
        match scheme.as_deref() {
            None => Ok(Endpoint::Grpc(GrpcAddr {
                authority,
                tls: None,
            })),
            Some("http") => Ok(Endpoint::Grpc(GrpcAddr {
                authority,
                tls: Some(false),
            })),
            Some("https") => Ok(Endpoint::Grpc(GrpcAddr {
                authority,
                tls: Some(true),
            })),
            Some("tcp") => Ok(Endpoint::Tcp(authority)),
            Some(other) => Err(format!(
                "unknown scheme {other}:// (expected http://, https://, tcp://, unix: or HOST:PORT)"
            )),
        }
    }
}

/// Checks `HOST:PORT` (an IPv6 host in brackets) and returns it.
fn authority(rest: &str) -> Result<String, String> {
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    // The service's path is fixed (spec §17.2): an endpoint names no path.
    if let Some((authority, path)) = rest.split_once('/') {
        return Err(format!(
            "{rest:?}: an endpoint has no path (/{path}); give HOST:PORT as {authority:?}"
        ));
    }
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(format!("{rest:?} is not HOST:PORT"));
    };
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return Err(format!("{rest:?} has no valid host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "{rest:?}: write an IPv6 host in brackets, e.g. [::1]:50051"
        ));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{rest:?} has no valid port"))?;
    Ok(rest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(authority: &str, tls: Option<bool>) -> Endpoint {
        Endpoint::Grpc(GrpcAddr {
            authority: authority.into(),
            tls,
        })
    }

    #[test]
    fn grpc_forms_parse_with_their_tls_choice() {
        assert_eq!("127.0.0.1:50051".parse(), Ok(grpc("127.0.0.1:50051", None)));
        assert_eq!(
            "http://localhost:1".parse(),
            Ok(grpc("localhost:1", Some(false)))
        );
        assert_eq!(
            "https://localhost:1/".parse(),
            Ok(grpc("localhost:1", Some(true)))
        );
        assert_eq!("[::1]:7".parse(), Ok(grpc("[::1]:7", None)));
    }

    #[test]
    fn framed_transports_parse_as_placeholders() {
        assert_eq!(
            "tcp://127.0.0.1:9".parse(),
            Ok(Endpoint::Tcp("127.0.0.1:9".into()))
        );
        assert_eq!("unix:/tmp/s".parse(), Ok(Endpoint::Unix("/tmp/s".into())));
        assert_eq!("unix:///tmp/s".parse(), Ok(Endpoint::Unix("/tmp/s".into())));
    }

    #[test]
    fn malformed_endpoints_are_refused_with_a_reason() {
        for bad in [
            "",
            "localhost",
            "ftp://a:1",
            "http://:1",
            "a:b",
            "a:70000",
            "::1:5",
            "unix:",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?} parsed");
        }
        let with_path = "http://127.0.0.1:1/path".parse::<Endpoint>().unwrap_err();
        assert!(with_path.contains("no path"), "{with_path}");
        // A trailing slash alone is not a path.
        assert!("http://127.0.0.1:1/".parse::<Endpoint>().is_ok());
    }

    #[test]
    fn flags_pick_stdio_and_spawn() {
        let listen = grpc("127.0.0.1:1", None);
        assert_eq!(Endpoint::for_host(listen.clone(), true), Endpoint::Stdio);
        assert_eq!(Endpoint::for_host(listen.clone(), false), listen);
        assert_eq!(
            Endpoint::for_client(listen.clone(), Some("worker host --stdio")).unwrap(),
            Endpoint::Spawn(vec!["worker".into(), "host".into(), "--stdio".into()])
        );
        assert!(Endpoint::for_client(listen.clone(), Some("  ")).is_err());
    }

    #[test]
    fn spawn_splits_like_a_shell_so_arguments_may_hold_spaces() {
        let listen = grpc("127.0.0.1:1", None);
        let spawn = Endpoint::for_client(
            listen.clone(),
            Some(r#"cosystem-worker host --stdio --secret-token 'two words' "a \"q\"" b\ c"#),
        )
        .unwrap();
        let words = [
            "cosystem-worker",
            "host",
            "--stdio",
            "--secret-token",
            "two words",
            "a \"q\"",
            "b c",
        ];
        assert_eq!(
            spawn,
            Endpoint::Spawn(words.iter().map(|w| (*w).to_owned()).collect())
        );
        assert_eq!(
            spawn.to_string(),
            r#"--spawn cosystem-worker host --stdio --secret-token 'two words' 'a "q"' 'b c'"#
        );
        let error = Endpoint::for_client(listen, Some("host 'unclosed")).unwrap_err();
        assert!(error.to_string().contains("unbalanced quotes"), "{error}");
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "127.0.0.1:1",
            "http://h:2",
            "https://h:3",
            "tcp://h:4",
            "unix:/s",
        ] {
            let endpoint: Endpoint = text.parse().unwrap();
            assert_eq!(endpoint.to_string(), text);
        }
    }
}
