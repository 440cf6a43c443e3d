//! Helpers shared by integration tests that need a method caught in flight.

use std::sync::{Arc, Condvar, Mutex};

use cosystem_worker::app::{App, MethodError, TypedModule};
use cosystem_worker::demo;

/// A gate the `slow.hold` method waits at until the test opens it, so a
/// call can be caught while it runs.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<(bool, bool)>, Condvar)>);

impl Gate {
    /// Called by the method: marks it entered, waits until opened.
    fn pass(&self) {
        let (lock, cvar) = &*self.0;
        let mut state = lock.lock().unwrap();
        state.0 = true;
        cvar.notify_all();
        while !state.1 {
            state = cvar.wait(state).unwrap();
        }
    }

    /// Blocks the calling thread until the method is inside the gate.
    pub fn wait_entered(&self) {
        let (lock, cvar) = &*self.0;
        let mut state = lock.lock().unwrap();
        while !state.0 {
            state = cvar.wait(state).unwrap();
        }
    }

    /// Lets the method (and any later one) through.
    pub fn open(&self) {
        let (lock, cvar) = &*self.0;
        lock.lock().unwrap().1 = true;
        cvar.notify_all();
    }
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Slow {
    runs: u64,
}

/// The demo app (with `secret` as its secret token) plus a module `slow`
/// whose method `hold` waits at `gate`, then returns how many times it ran.
pub fn app_with_gate(secret: &str, gate: Gate) -> App {
    demo::app(secret).with(TypedModule::new("slow", Slow::default()).method(
        "hold",
        move |s: &mut Slow, (): ()| {
            gate.pass();
            s.runs += 1;
            Ok::<_, MethodError>(s.runs)
        },
    ))
}
