//! Bearer-token checks for the `authorization` request metadata.

use tonic::Status;
use tonic::metadata::MetadataMap;

/// The metadata key carrying the token.
pub const AUTHORIZATION: &str = "authorization";

/// Whether `a` and `b` are equal, taking the same time for every pair of
/// equal-length inputs: a wrong token's first differing byte is not revealed
/// by how long the comparison took. (The length itself is not secret.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Checks that `metadata` carries `authorization: Bearer <expected>`.
/// Every failure is `UNAUTHENTICATED`, with a message that never echoes the
/// presented token.
pub fn check_bearer(metadata: &MetadataMap, expected: &[u8]) -> Result<(), Status> {
    let mut values = metadata.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Status::unauthenticated(
            "missing authorization metadata (expected \"Bearer <token>\")",
        ));
    };
    // Two credentials are ambiguous: which one a proxy or a later check
    // reads is not this check's to guess (spec §17.2).
    if values.next().is_some() {
        return Err(Status::unauthenticated("more than one authorization entry"));
    }
    let bytes = value.as_bytes();
    let Some(token) = strip_bearer(bytes) else {
        return Err(Status::unauthenticated(
            "authorization metadata is not \"Bearer <token>\"",
        ));
    };
    if constant_time_eq(token, expected) {
        Ok(())
    } else {
        Err(Status::unauthenticated("invalid token"))
    }
}

/// The token of a `Bearer <token>` value; the scheme is case-insensitive
/// (RFC 6750 §2.1 via RFC 7235).
fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    Some(&value[SCHEME.len()..])
}

/// Why a token cannot be sent as a metadata value (spec §17.2: one or more
/// visible ASCII characters, 0x21 to 0x7E).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFault {
    /// The token is empty.
    #[error("the token is empty")]
    Empty,
    /// Byte `at` (from 0) of the token is `byte`, which is not visible
    /// ASCII.
    #[error("byte {at} of the token is {byte:#04x}, not visible ASCII (0x21 to 0x7e){hint}", hint = whitespace_hint(*byte))]
    Byte {
        /// Where in the token.
        at: usize,
        /// The byte found there.
        byte: u8,
    },
}

/// A line break is the usual culprit: a token read from a file or an
/// environment variable that kept its newline.
fn whitespace_hint(byte: u8) -> &'static str {
    match byte {
        b'\n' | b'\r' => ": a line break, which a token read from a file keeps unless trimmed",
        b' ' | b'\t' => ": whitespace",
        _ => "",
    }
}

/// Checks that `token` can be sent as a metadata value, or says why not.
pub fn check_token(token: &str) -> Result<(), TokenFault> {
    if token.is_empty() {
        return Err(TokenFault::Empty);
    }
    match token
        .bytes()
        .enumerate()
        .find(|(_, b)| !b.is_ascii_graphic())
    {
        Some((at, byte)) => Err(TokenFault::Byte { at, byte }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_slice_equality() {
        let cases: [(&[u8], &[u8]); 5] = [
            (b"", b""),
            (b"abc", b"abc"),
            (b"abc", b"abd"),
            (b"abc", b"ab"),
            (b"xbc", b"abc"),
        ];
        for (a, b) in cases {
            assert_eq!(constant_time_eq(a, b), a == b, "{a:?} vs {b:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn constant_time_eq_matches_slice_equality_for_any_bytes(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            proptest::prop_assert_eq!(constant_time_eq(&a, &b), a == b);
            proptest::prop_assert!(constant_time_eq(&a, &a));
            // The same bytes but one, wherever it is.
            if !a.is_empty() {
                let mut c = a.clone();
                c[at.index(a.len())] ^= flip;
                proptest::prop_assert!(!constant_time_eq(&a, &c));
            }
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        assert_eq!(strip_bearer(b"Bearer t0k"), Some(&b"t0k"[..]));
        assert_eq!(strip_bearer(b"bearer t0k"), Some(&b"t0k"[..]));
        assert_eq!(strip_bearer(b"Basic t0k"), None);
        assert_eq!(strip_bearer(b"t0k"), None);
    }

    #[test]
    fn a_request_with_two_authorization_entries_is_refused_even_if_one_is_right() {
        let mut metadata = MetadataMap::new();
        metadata.append(AUTHORIZATION, "Bearer right".parse().unwrap());
        assert!(check_bearer(&metadata, b"right").is_ok());
        metadata.append(AUTHORIZATION, "Bearer wrong".parse().unwrap());
        let refused = check_bearer(&metadata, b"right").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(refused.message().contains("more than one"));
    }

    #[test]
    fn tokens_must_be_visible_ascii() {
        assert_eq!(check_token("abc-123_XYZ"), Ok(()));
        assert_eq!(check_token(""), Err(TokenFault::Empty));
        assert_eq!(
            check_token("has space"),
            Err(TokenFault::Byte { at: 3, byte: b' ' })
        );
        assert_eq!(
            check_token("new\nline"),
            Err(TokenFault::Byte { at: 3, byte: b'\n' })
        );
    }
}
