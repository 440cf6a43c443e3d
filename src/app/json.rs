//! Module values to JSON, refusing what JSON cannot represent (spec J6).
//!
//! `serde_json` writes a NaN or an infinity as `null`, so a module's state or
//! result would silently change meaning on the wire. Before converting, a
//! serializer that builds nothing walks the value and stops at the first
//! non-finite number; the conversion itself is then `serde_json`'s.

use std::fmt;

use serde::Serialize;
use serde::ser;
use serde_json::Value;

use super::MethodError;

/// `value` as JSON, or an `INTERNAL` error naming `what` when it holds a
/// non-finite number or does not serialise at all.
pub(super) fn to_json<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<Value, MethodError> {
    value
        .serialize(&mut Finite)
        .map_err(|e| MethodError::internal(format!("{what} cannot be represented as JSON: {e}")))?;
    serde_json::to_value(value)
        .map_err(|e| MethodError::internal(format!("{what} does not serialise: {e}")))
}

/// Whether `value` serialises without a non-finite number, which
/// `serde_json` would write as `null`.
pub(crate) fn check_finite<T: Serialize + ?Sized>(value: &T) -> Result<(), NotJson> {
    value.serialize(&mut Finite)
}

/// Why a value is not JSON.
#[derive(Debug)]
pub(crate) struct NotJson(String);

impl fmt::Display for NotJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotJson {}

impl ser::Error for NotJson {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        NotJson(msg.to_string())
    }
}

/// Walks a value, failing at its first non-finite number.
struct Finite;

fn finite(v: f64) -> Result<(), NotJson> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(NotJson(format!("the number {v} has no JSON form")))
    }
}

macro_rules! accept {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Result<(), NotJson> { Ok(()) })*
    };
}

impl ser::Serializer for &mut Finite {
    type Ok = ();
    type Error = NotJson;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    accept!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_f32(self, v: f32) -> Result<(), NotJson> {
        finite(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<(), NotJson> {
        finite(v)
    }

    fn serialize_none(self) -> Result<(), NotJson> {
        Ok(())
    }

    fn serialize_unit(self) -> Result<(), NotJson> {
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), NotJson> {
        value.serialize(self)
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), NotJson> {
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), NotJson> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), NotJson> {
        value.serialize(self)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self, NotJson> {
        Ok(self)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self, NotJson> {
        Ok(self)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, NotJson> {
        Ok(self)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, NotJson> {
        Ok(self)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self, NotJson> {
        Ok(self)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, NotJson> {
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, NotJson> {
        Ok(self)
    }
}

/// The compound parts: every element, field, key and value is walked.
macro_rules! walk_compound {
    ($($trait:ident :: $method:ident),* $(,)?) => {
        $(impl ser::$trait for &mut Finite {
            type Ok = ();
            type Error = NotJson;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotJson> {
                value.serialize(&mut **self)
            }

            fn end(self) -> Result<(), NotJson> {
                Ok(())
            }
        })*
    };
}

walk_compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for &mut Finite {
    type Ok = ();
    type Error = NotJson;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), NotJson> {
        key.serialize(&mut **self)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotJson> {
        value.serialize(&mut **self)
    }

    fn end(self) -> Result<(), NotJson> {
        Ok(())
    }
}

/// The struct parts: every field's value is walked.
macro_rules! walk_fields {
    ($($trait:ident),* $(,)?) => {
        $(impl ser::$trait for &mut Finite {
            type Ok = ();
            type Error = NotJson;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                _: &'static str,
                value: &T,
            ) -> Result<(), NotJson> {
                value.serialize(&mut **self)
            }

            fn end(self) -> Result<(), NotJson> {
                Ok(())
            }
        })*
    };
}

walk_fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[derive(Serialize)]
    struct Reading {
        label: String,
        samples: Vec<f64>,
        peak: Option<f32>,
    }

    #[test]
    fn a_nan_or_an_infinity_anywhere_in_the_value_is_an_internal_error() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let nested = Reading {
                label: "x".into(),
                samples: vec![1.0, bad],
                peak: None,
            };
            let error = to_json(&nested, "the state").unwrap_err();
            assert_eq!(error.code, crate::wire::ErrorCode::Internal);
            assert!(error.message.contains("the state"), "{}", error.message);
            let mut keyed = BTreeMap::new();
            keyed.insert("k", (1, Some(bad as f32)));
            assert!(to_json(&keyed, "the value").is_err());
            assert!(to_json(&bad, "the value").is_err());
        }
    }

    #[test]
    fn an_unrepresentable_value_that_is_not_a_number_is_still_refused() {
        let mut map = BTreeMap::new();
        map.insert(vec![1u8], 1);
        assert!(to_json(&map, "the value").is_err());
    }

    #[test]
    fn finite_values_convert_as_serde_json_converts_them() {
        let reading = Reading {
            label: "t".into(),
            samples: vec![0.5, -0.0, 1e300],
            peak: Some(2.5),
        };
        assert_eq!(
            to_json(&reading, "the state").unwrap(),
            json!({"label": "t", "samples": [0.5, -0.0, 1e300], "peak": 2.5})
        );
    }

    proptest! {
        #[test]
        fn any_finite_numbers_convert_exactly_like_serde_json(
            values in proptest::collection::vec(any::<f64>().prop_filter("finite", |v| v.is_finite()), 0..8),
            names in proptest::collection::btree_map("[a-z]{1,4}", any::<i64>(), 0..4),
        ) {
            let value = (values.clone(), names.clone(), Some(()), "s");
            prop_assert_eq!(to_json(&value, "v").unwrap(), serde_json::to_value(&value).unwrap());
        }

        #[test]
        fn any_value_holding_a_non_finite_number_is_refused(
            values in proptest::collection::vec(any::<f64>(), 1..8),
        ) {
            let has_non_finite = values.iter().any(|v| !v.is_finite());
            prop_assert_eq!(to_json(&values, "v").is_err(), has_non_finite);
        }
    }
}
