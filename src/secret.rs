//! `Secret`: a credential string that redacts itself in `Debug`/`Display` and is zeroized on drop;
//! [`SecretRef`], where the config says a secret comes from, whose type errors never show a value.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

/// A credential (app secret, token, JWE, key material). The only way to read it is
/// [`Secret::expose`], so every use site is greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Zeroizing::new(value.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret comes from: `"literal"`, `{ env = "VAR" }` or `{ file = "PATH" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Literal(Secret),
    Env(String),
    File(PathBuf),
}

/// What a secret may look like; every secret type error says it.
pub(crate) const SECRET_FORMS: &str =
    r#"a secret: "literal" in quotes, { env = "VAR" } or { file = "PATH" }"#;

/// toml hands a date-time to a visitor as a one-key table under this key.
const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

/// A secret of the wrong TOML type. serde's default message quotes the value ("invalid type:
/// integer `86753091234`"), and a mistyped secret is still a secret: name only its type.
fn wrong_secret_type<E: de::Error>(found: &str) -> E {
    E::custom(format!(
        "expected {SECRET_FORMS}; found {found} (value not shown)"
    ))
}

fn wrong_source_type<E: de::Error>(found: &str) -> E {
    E::custom(format!(
        "expected {SECRET_FORMS}, the variable name or path in quotes; found {found} (value not shown)"
    ))
}

/// Visitor methods for every TOML type but strings and tables, each refusing by type alone.
macro_rules! refuse_by_type {
    ($de:lifetime, $value:ty, $wrong:ident) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$value, E> {
            Err($wrong("a boolean"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$value, E> {
            Err($wrong("an integer"))
        }
        fn visit_i128<E: de::Error>(self, _: i128) -> Result<$value, E> {
            Err($wrong("an integer"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$value, E> {
            Err($wrong("an integer"))
        }
        fn visit_u128<E: de::Error>(self, _: u128) -> Result<$value, E> {
            Err($wrong("an integer"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$value, E> {
            Err($wrong("a float"))
        }
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<$value, E> {
            Err($wrong("bytes"))
        }
        fn visit_none<E: de::Error>(self) -> Result<$value, E> {
            Err($wrong("nothing"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<$value, E> {
            Err($wrong("nothing"))
        }
        fn visit_seq<A: de::SeqAccess<$de>>(self, _: A) -> Result<$value, A::Error> {
            Err($wrong("an array"))
        }
    };
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretRefVisitor;
        impl<'de> Visitor<'de> for SecretRefVisitor {
            type Value = SecretRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(SECRET_FORMS)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretRef, E> {
                Ok(SecretRef::Literal(Secret::new(v)))
            }
            refuse_by_type!('de, SecretRef, wrong_secret_type);
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
                let mut found: Option<SecretRef> = None;
                while let Some(key) = map.next_key::<String>()? {
                    // The key decides how (and whether) the value is read: an unknown key's
                    // value may be the secret itself, so it is never read.
                    let source = match key.as_str() {
                        "env" => SecretRef::Env(map.next_value::<SourceName>()?.0),
                        "file" => SecretRef::File(PathBuf::from(map.next_value::<SourceName>()?.0)),
                        TOML_DATETIME_KEY => return Err(wrong_secret_type("a date-time")),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown secret source `{other}`: use {{ env = \"VAR\" }} or {{ file = \"PATH\" }}"
                            )))
                        }
                    };
                    if found.replace(source).is_some() {
                        return Err(de::Error::custom(
                            "a secret takes exactly one of `env` or `file`",
                        ));
                    }
                }
                found.ok_or_else(|| {
                    de::Error::custom(
                        r#"empty secret table: use { env = "VAR" } or { file = "PATH" }"#,
                    )
                })
            }
        }
        deserializer.deserialize_any(SecretRefVisitor)
    }
}

/// The string inside `{ env = ... }` or `{ file = ... }`. Anything else is refused by type alone,
/// since a secret pasted in the wrong place must not be echoed.
struct SourceName(String);

impl<'de> Deserialize<'de> for SourceName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SourceNameVisitor;
        impl<'de> Visitor<'de> for SourceNameVisitor {
            type Value = SourceName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(SECRET_FORMS)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SourceName, E> {
                Ok(SourceName(v.to_owned()))
            }
            refuse_by_type!('de, SourceName, wrong_source_type);
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SourceName, A::Error> {
                let datetime = map
                    .next_key::<String>()?
                    .is_some_and(|k| k == TOML_DATETIME_KEY);
                Err(wrong_source_type(if datetime {
                    "a date-time"
                } else {
                    "a table"
                }))
            }
        }
        deserializer.deserialize_any(SourceNameVisitor)
    }
}

/// `message` with the text of every `string "…"` dropped. serde quotes the offending value in type
/// errors, and that value can be a secret under the wrong key: `[ebay]` instead of
/// `[ebay.default]` makes each key a profile name and each literal secret a mistyped profile.
pub fn without_quoted_strings(message: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        out.push_str("string");
        let quoted = &rest[at + MARK.len()..];
        // The value is Debug-escaped: `\` escapes the next character, the first bare `"` closes.
        let mut end = quoted.len();
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &quoted[end..];
    }
    out.push_str(rest);
    out
}

/// Whether `given` equals `expected`, in time that depends on neither where they differ nor
/// their lengths (both are hashed first). A `Choice`, so callers can combine several checks
/// without short-circuiting.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> subtle::Choice {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(given).ct_eq(&Sha256::digest(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(bool::from(constant_time_eq(b"token-1", b"token-1")));
        assert!(!bool::from(constant_time_eq(b"token-1", b"token-2")));
        assert!(!bool::from(constant_time_eq(b"token", b"token-1")));
        assert!(!bool::from(constant_time_eq(b"", b"x")));
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(***))");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }
}
