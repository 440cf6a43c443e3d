//! The demo app every host implementation serves for conformance
//! (spec/PROTOCOL.md, "Demo app"): `counter`, `todos` and `secret`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::app::{App, Draft, JsonModule, MethodError, TypedModule};

/// The state of the `counter` module.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    /// The count.
    pub count: i64,
}

/// The state of the `secret` module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Secret {
    /// A value that must never leave the host unless `secret` is published.
    pub token: String,
}

/// The sections a demo host publishes unless configured otherwise.
pub const DEFAULT_SECTIONS: [&str; 2] = ["counter", "todos"];

/// `counter`: `{count}` with `increase(by)`, `decrease(by)` and `fail(message)`.
pub fn counter() -> TypedModule<Counter> {
    TypedModule::new("counter", Counter::default())
        .method("increase", |s: &mut Counter, (by,): (i64,)| {
            s.count = s
                .count
                .checked_add(by)
                .ok_or_else(|| MethodError::invalid_argument("count would overflow"))?;
            Ok(s.count)
        })
        .method("decrease", |s: &mut Counter, (by,): (i64,)| {
            s.count = s
                .count
                .checked_sub(by)
                .ok_or_else(|| MethodError::invalid_argument("count would overflow"))?;
            Ok(s.count)
        })
        .method("fail", |_: &mut Counter, (message,): (String,)| {
            Err::<(), _>(MethodError::failed(message))
        })
}

/// The index of the item with `id`. Items are kept in the order they were
/// added and ids only increase, so the list is sorted by id and a lookup is
/// O(log n): a linear scan let a client hold the host for milliseconds per
/// call on a long list by toggling an id that does not exist.
fn find(draft: &Draft<'_>, id: u64) -> Result<usize, MethodError> {
    draft
        .get("/items")
        .and_then(Value::as_array)
        .and_then(|items| {
            items
                .binary_search_by(|item| item["id"].as_u64().unwrap_or(0).cmp(&id))
                .ok()
        })
        .ok_or_else(|| MethodError::not_found(format!("no todo with id {id}")))
}

/// Hands out todo ids: from 1, increasing, never reused within a host's
/// lifetime (a failed call may skip some).
#[derive(Clone, Default)]
struct Ids(Arc<AtomicU64>);

impl Ids {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

fn add_item(draft: &mut Draft<'_>, ids: &Ids, text: String) -> Result<u64, MethodError> {
    let id = ids.next();
    draft.push("/items", json!({"id": id, "text": text, "done": false}))?;
    Ok(id)
}

/// `todos`: `{items: [{id, text, done}]}` with `add(text)`, `toggle(id)`,
/// `remove(id)`, `clear()` and `add_many(texts)`.
///
/// Written as a recording [`JsonModule`], so publishing a change costs
/// O(change) however many items there are.
pub fn todos() -> JsonModule {
    let ids = Ids::default();
    let ids_many = ids.clone();
    JsonModule::new("todos", json!({"items": []}))
        .method("add", move |d: &mut Draft<'_>, (text,): (String,)| {
            add_item(d, &ids, text)
        })
        .method("toggle", |d: &mut Draft<'_>, (id,): (u64,)| {
            let at = find(d, id)?;
            let path = format!("/items/{at}/done");
            let done = !d.get(&path).and_then(Value::as_bool).unwrap_or(false);
            d.replace(&path, done)?;
            Ok(done)
        })
        .method("remove", |d: &mut Draft<'_>, (id,): (u64,)| {
            let at = find(d, id)?;
            d.remove(&format!("/items/{at}"))?;
            Ok(true)
        })
        .method("clear", |d: &mut Draft<'_>, (): ()| {
            let n = d
                .get("/items")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if n > 0 {
                d.replace("/items", json!([]))?;
            }
            Ok(n)
        })
        .method(
            "add_many",
            move |d: &mut Draft<'_>, (texts,): (Vec<String>,)| {
                texts
                    .into_iter()
                    .map(|text| add_item(d, &ids_many, text))
                    .collect::<Result<Vec<_>, _>>()
            },
        )
}

/// `secret`: `{token}` with `rotate()`. Private unless configured otherwise.
pub fn secret(initial_token: impl Into<String>) -> TypedModule<Secret> {
    let initial = initial_token.into();
    // Derived from the initial token, never parsed back out of the current
    // one: `<initial>-r<n>` differs from the initial token and from every
    // earlier rotation whatever the initial token looks like.
    let base = initial.clone();
    let mut rotations = 0u64;
    TypedModule::new("secret", Secret { token: initial }).method(
        "rotate",
        move |s: &mut Secret, (): ()| {
            rotations += 1;
            s.token = format!("{base}-r{rotations}");
            Ok(())
        },
    )
}

/// The whole demo app, with `secret` holding `secret_token`.
pub fn app(secret_token: impl Into<String>) -> App {
    App::new()
        .with(counter())
        .with(todos())
        .with(secret(secret_token))
}

/// The default published sections as owned strings.
pub fn default_sections() -> Vec<String> {
    DEFAULT_SECTIONS.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use crate::app::Module;

    proptest! {
        /// Whatever was added and removed, `toggle` finds exactly the item
        /// with the id asked for, or answers `not-found`.
        #[test]
        fn toggle_finds_the_item_with_the_id_after_any_adds_and_removes(
            adds in 1usize..40,
            removed in prop::collection::vec(1u64..41, 0..20),
            asked in 0u64..45,
        ) {
            let mut todos = super::todos();
            let texts: Vec<String> = (0..adds).map(|i| format!("t{i}")).collect();
            todos.invoke("add_many", &[json!(texts)]).expect("added");
            todos.settle(true);
            for id in &removed {
                if todos.invoke("remove", &[json!(id)]).is_ok() {
                    todos.settle(true);
                }
            }
            let expected = todos.state()["items"]
                .as_array()
                .and_then(|items| items.iter().position(|item| item["id"] == json!(asked)));
            let toggled = todos.invoke("toggle", &[json!(asked)]);
            match expected {
                Some(at) => {
                    prop_assert!(toggled.is_ok());
                    prop_assert_eq!(&todos.state()["items"][at]["done"], &json!(true));
                }
                None => prop_assert_eq!(
                    toggled.map_err(|e| e.code),
                    Err(crate::wire::ErrorCode::NotFound)
                ),
            }
        }
    }
}
