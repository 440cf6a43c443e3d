use serde::de::DeserializeOwned;
use serde_json::Value;

use super::MethodError;

/// Positional method arguments decoded from the call's JSON array.
///
/// Implemented for `()` and tuples of up to six `DeserializeOwned` types, so
/// a method is written as `|state, (by,): (i64,)| …`. Trailing arguments of
/// a type that can be read from `null` (an `Option`) may be left out, and
/// read as `null`; otherwise the count must match. A wrong count or a type
/// error is an `invalid-argument` error naming the argument.
pub trait FromArgs: Sized {
    /// Decodes the arguments.
    fn from_args(args: &[Value]) -> Result<Self, MethodError>;
}

fn arity(expected: usize, args: &[Value]) -> Result<(), MethodError> {
    if args.len() == expected {
        Ok(())
    } else {
        Err(arity_error(expected, expected, args))
    }
}

fn arity_error(least: usize, most: usize, args: &[Value]) -> MethodError {
    let expected = if least == most {
        format!("{most} argument{}", if most == 1 { "" } else { "s" })
    } else {
        format!("{least} to {most} arguments")
    };
    MethodError::invalid_argument(format!("expected {expected}, got {}", args.len()))
}

/// Whether an argument of type `T` may be left out: it is an `Option`. Asked
/// with a deserializer that can only say "none", so that types that merely
/// accept `null` (`Value`, `()`, unit structs) still need their argument.
fn optional<T: DeserializeOwned>() -> bool {
    T::deserialize(OnlyNone).is_ok()
}

/// A deserializer that answers an `Option` with `None` and refuses
/// everything else.
struct OnlyNone;

impl<'de> serde::Deserializer<'de> for OnlyNone {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not an option"))
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_none()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// Checks the count of `args` against a tuple of `most` arguments whose
/// types can each (`optional`) or cannot be left out at the end. Only a
/// short list pays for asking the types.
fn counted(
    most: usize,
    args: &[Value],
    optional: impl FnOnce() -> Vec<bool>,
) -> Result<(), MethodError> {
    if args.len() == most {
        return Ok(());
    }
    if args.len() > most {
        return Err(arity_error(most, most, args));
    }
    let least = optional().iter().rposition(|o| !o).map_or(0, |i| i + 1);
    if args.len() < least {
        return Err(arity_error(least, most, args));
    }
    Ok(())
}

fn arg<T: DeserializeOwned>(args: &[Value], index: usize) -> Result<T, MethodError> {
    let value = args.get(index).unwrap_or(&Value::Null);
    T::deserialize(value)
        .map_err(|e| MethodError::invalid_argument(format!("argument {}: {e}", index + 1)))
}

impl FromArgs for () {
    fn from_args(args: &[Value]) -> Result<Self, MethodError> {
        arity(0, args)
    }
}

/// The raw argument list, for methods that decode arguments themselves.
impl FromArgs for Vec<Value> {
    fn from_args(args: &[Value]) -> Result<Self, MethodError> {
        Ok(args.to_vec())
    }
}

macro_rules! tuple_args {
    ($n:expr; $($t:ident $i:tt),+) => {
        impl<$($t: DeserializeOwned),+> FromArgs for ($($t,)+) {
            fn from_args(args: &[Value]) -> Result<Self, MethodError> {
                counted($n, args, || vec![$(optional::<$t>()),+])?;
                Ok(($(arg::<$t>(args, $i)?,)+))
            }
        }
    };
}

tuple_args!(1; A 0);
tuple_args!(2; A 0, B 1);
tuple_args!(3; A 0, B 1, C 2);
tuple_args!(4; A 0, B 1, C 2, D 3);
tuple_args!(5; A 0, B 1, C 2, D 3, E 4);
tuple_args!(6; A 0, B 1, C 2, D 3, E 4, F 5);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::wire::ErrorCode;

    #[test]
    fn tuple_decodes_positional_arguments() {
        let (a, b): (i64, String) = FromArgs::from_args(&[json!(3), json!("x")]).unwrap();
        assert_eq!((a, b), (3, "x".to_owned()));
    }

    #[test]
    fn wrong_arity_is_invalid_argument() {
        let err = <(i64,)>::from_args(&[]).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("expected 1 argument, got 0"));
        assert!(<()>::from_args(&[json!(1)]).is_err());
    }

    #[test]
    fn trailing_options_may_be_left_out_and_read_as_none() {
        let (a, b, c): (i64, Option<String>, Option<u8>) =
            FromArgs::from_args(&[json!(3)]).unwrap();
        assert_eq!((a, b, c), (3, None, None));
        let (a, b, c): (i64, Option<String>, Option<u8>) =
            FromArgs::from_args(&[json!(3), json!("x")]).unwrap();
        assert_eq!((a, b, c), (3, Some("x".to_owned()), None));
        let err = <(i64, Option<String>)>::from_args(&[]).unwrap_err();
        assert!(
            err.message.contains("expected 1 to 2 arguments, got 0"),
            "{}",
            err.message
        );
        let err =
            <(i64, Option<String>)>::from_args(&[json!(1), json!("x"), json!(2)]).unwrap_err();
        assert!(
            err.message.contains("expected 2 arguments, got 3"),
            "{}",
            err.message
        );
        // Only trailing ones: an Option before a required argument is not
        // optional.
        let err = <(Option<i64>, i64)>::from_args(&[json!(1)]).unwrap_err();
        assert!(
            err.message.contains("expected 2 arguments, got 1"),
            "{}",
            err.message
        );
        // A type that merely accepts null is not an Option: its argument is
        // still needed.
        let err = <(String, Value)>::from_args(&[json!("/a")]).unwrap_err();
        assert!(
            err.message.contains("expected 2 arguments, got 1"),
            "{}",
            err.message
        );
        assert!(<(i64, ())>::from_args(&[json!(1)]).is_err());
    }

    #[test]
    fn wrong_type_names_the_argument() {
        let err = <(i64, i64)>::from_args(&[json!(1), json!("two")]).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.starts_with("argument 2:"), "{}", err.message);
    }
}
