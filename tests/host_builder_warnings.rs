//! What `HostBuilder::build` warns about: a published section that names no
//! module of the app (a typo that would otherwise publish nothing, silently).

use std::io::Write;
use std::sync::{Arc, Mutex};

use cosystem_worker::demo;
use cosystem_worker::host::Host;

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines written while `sections` are given to a demo host.
fn log_of_build(sections: &[&str]) -> String {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        drop(
            Host::builder(demo::app("s"))
                .sections(sections.to_vec())
                .build(),
        );
    });
    let bytes = captured.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn a_section_that_names_no_module_is_warned_about() {
    let log = log_of_build(&["counter", "countr"]);
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("names no module"), "{log}");
    assert!(log.contains("countr"), "{log}");
    assert_eq!(log.lines().count(), 1, "{log}");
}

#[test]
fn sections_that_all_name_modules_are_not_warned_about() {
    assert_eq!(log_of_build(&["counter", "todos"]), "");
}
