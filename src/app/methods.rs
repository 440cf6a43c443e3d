//! The declared-method table every kind of module keeps.

use std::collections::BTreeMap;

use super::MethodError;

/// A module's name and its declared methods, by name. Only what is declared
/// here is callable remotely.
pub(crate) struct Methods<F> {
    name: String,
    table: BTreeMap<String, F>,
}

impl<F> Methods<F> {
    pub(crate) fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            table: BTreeMap::new(),
        }
    }

    pub(crate) fn declare(&mut self, method: impl Into<String>, f: F) {
        self.table.insert(method.into(), f);
    }

    pub(crate) fn module_name(&self) -> &str {
        &self.name
    }

    pub(crate) fn declares(&self, method: &str) -> bool {
        self.table.contains_key(method)
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.table.keys().cloned().collect()
    }

    /// The method, or the `not-found` error a call of an undeclared one gets.
    pub(crate) fn get_mut(&mut self, method: &str) -> Result<&mut F, MethodError> {
        self.table
            .get_mut(method)
            .ok_or_else(|| MethodError::not_found(format!("no method {method}")))
    }
}
