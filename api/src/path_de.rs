//! Deserializing a `serde_json::Value` into a typed struct while remembering where an
//! error happened, so a user sees `spec.mtls.mode: unknown variant ...` rather than only
//! the message. (serde_path_to_error does this in general; this is the small subset we
//! need, over an in-memory value.)
//!
//! How the path is found: every value and key is deserialized through a wrapper that
//! knows its own path. An error that has no path yet takes the path of the innermost
//! wrapper it passes through. `missing_field` and `unknown_field` errors carry the field
//! name, which is appended to the path of the struct they were raised in.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess,
    SeqAccess, VariantAccess, Visitor,
};
use serde_json::{Map, Value};

/// A deserialization error with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathError {
    /// Dotted path from the root given to [`from_value`], e.g. `spec.mtls.mode`.
    pub(crate) path: Option<String>,
    pub(crate) message: String,
    /// For missing/unknown field errors: the field, appended to the struct's path.
    field: Option<&'static str>,
}

impl PathError {
    /// Gives the error the path `path` unless it already has one.
    fn at(mut self, path: &str) -> PathError {
        if self.path.is_none() {
            self.path = Some(match self.field.take() {
                Some(field) => join(path, field),
                None => path.to_owned(),
            });
        }
        self
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) if !path.is_empty() => write!(f, "{path}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PathError {}

impl de::Error for PathError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        PathError {
            path: None,
            message: msg.to_string(),
            field: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        PathError {
            path: None,
            message: "is required".to_owned(),
            field: Some(field),
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let message = if expected.is_empty() {
            format!("unknown field `{field}`: no fields are allowed here")
        } else {
            format!(
                "unknown field `{field}`, expected one of: {}",
                expected.join(", ")
            )
        };
        // The key wrapper in `MapDe` gives this error the key's own path.
        PathError {
            path: None,
            message,
            field: None,
        }
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Deserializes `value` as a `T`; error paths start with `root` (`""` for none).
pub(crate) fn from_value<T: DeserializeOwned>(value: &Value, root: &str) -> Result<T, PathError> {
    T::deserialize(ValueDe {
        value,
        path: root.to_owned(),
    })
}

// === ValueDe ===

struct ValueDe<'a> {
    value: &'a Value,
    path: String,
}

impl<'de> Deserializer<'de> for ValueDe<'_> {
    type Error = PathError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        let result = match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    // Without arbitrary_precision every number is u64, i64 or f64.
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_str(s),
            Value::Array(items) => visitor.visit_seq(SeqDe {
                iter: items.iter().enumerate(),
                path: &self.path,
            }),
            Value::Object(map) => visitor.visit_map(MapDe::new(map, &self.path)),
        };
        result.map_err(|e| e.at(&self.path))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        let path = self.path.clone();
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
        .map_err(|e| e.at(&path))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, PathError> {
        let path = self.path.clone();
        visitor.visit_newtype_struct(self).map_err(|e| e.at(&path))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PathError> {
        let result = match self.value {
            Value::String(variant) => visitor.visit_enum(EnumDe {
                variant,
                value: None,
                path: &self.path,
            }),
            Value::Object(map) if map.len() == 1 => {
                let (variant, value) = map.iter().next().expect("map has exactly one entry");
                let path = join(&self.path, variant);
                visitor.visit_enum(EnumDe {
                    variant,
                    value: Some(value),
                    path: &path,
                })
            }
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        };
        result.map_err(|e| e.at(&self.path))
    }

    /// Structs come from objects only: serde would also read them from arrays (by
    /// position), which a resource never means.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PathError> {
        match self.value {
            Value::Object(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor))
                .map_err(|e: PathError| e.at(&self.path)),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

fn unexpected(value: &Value) -> de::Unexpected<'_> {
    match value {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(_) => de::Unexpected::Other("number"),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

// === SeqDe ===

struct SeqDe<'a, I> {
    iter: I,
    path: &'a str,
}

impl<'de, 'v, I: Iterator<Item = (usize, &'v Value)>> SeqAccess<'de> for SeqDe<'_, I> {
    type Error = PathError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, PathError> {
        match self.iter.next() {
            Some((index, value)) => {
                let path = format!("{}[{index}]", self.path);
                seed.deserialize(ValueDe {
                    value,
                    path: path.clone(),
                })
                .map(Some)
                .map_err(|e| e.at(&path))
            }
            None => Ok(None),
        }
    }
}

// === MapDe ===

struct MapDe<'a> {
    iter: serde_json::map::Iter<'a>,
    path: &'a str,
    pending: Option<(&'a str, &'a Value)>,
}

impl<'a> MapDe<'a> {
    fn new(map: &'a Map<String, Value>, path: &'a str) -> Self {
        MapDe {
            iter: map.iter(),
            path,
            pending: None,
        }
    }
}

impl<'de> MapAccess<'de> for MapDe<'_> {
    type Error = PathError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, PathError> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.pending = Some((key, value));
        let key_de: de::value::StrDeserializer<'_, PathError> = key.as_str().into_deserializer();
        // An error about a key (an unknown field) belongs to the key's own path.
        seed.deserialize(key_de)
            .map(Some)
            .map_err(|e| e.at(&join(self.path, key)))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, PathError> {
        let (key, value) = self
            .pending
            .take()
            .expect("serde calls next_value after next_key");
        // Errors raised after the value was read (a `Deserialize` impl that checks
        // what it read) have not passed through the value's wrapper; give them its path.
        let path = join(self.path, key);
        seed.deserialize(ValueDe {
            value,
            path: path.clone(),
        })
        .map_err(|e| e.at(&path))
    }
}

// === EnumDe ===

struct EnumDe<'a> {
    variant: &'a str,
    value: Option<&'a Value>,
    path: &'a str,
}

impl<'de, 'a> EnumAccess<'de> for EnumDe<'a> {
    type Error = PathError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), PathError> {
        let variant_de: de::value::StrDeserializer<'_, PathError> =
            self.variant.into_deserializer();
        let variant = seed.deserialize(variant_de)?;
        Ok((variant, self))
    }
}

impl<'de> VariantAccess<'de> for EnumDe<'_> {
    type Error = PathError;

    fn unit_variant(self) -> Result<(), PathError> {
        match self.value {
            None | Some(Value::Null) => Ok(()),
            Some(_) => Err(de::Error::custom(format!(
                "`{}` takes no value",
                self.variant
            ))),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, PathError> {
        seed.deserialize(ValueDe {
            value: self.value.unwrap_or(&Value::Null),
            path: self.path.to_owned(),
        })
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, PathError> {
        ValueDe {
            value: self.value.unwrap_or(&Value::Null),
            path: self.path.to_owned(),
        }
        .deserialize_any(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PathError> {
        ValueDe {
            value: self.value.unwrap_or(&Value::Null),
            path: self.path.to_owned(),
        }
        .deserialize_any(visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)] // only deserialized
    struct Outer {
        inner: Inner,
        #[serde(default)]
        list: Vec<Inner>,
        #[serde(default)]
        choice: Option<Choice>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
        #[serde(default)]
        name: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum Choice {
        A,
        B,
    }

    fn err(v: Value) -> (String, String) {
        let e = from_value::<Outer>(&v, "spec").unwrap_err();
        (e.path.unwrap_or_default(), e.message)
    }

    #[test]
    fn paths() {
        let table = [
            (
                json!({"inner": {"count": 1}, "bogus": 1}),
                "spec.bogus",
                "unknown field `bogus`",
            ),
            (
                json!({"inner": {"count": 1, "nmae": "x"}}),
                "spec.inner.nmae",
                "expected one of: count, name",
            ),
            (json!({"inner": {}}), "spec.inner.count", "is required"),
            (json!({}), "spec.inner", "is required"),
            (
                json!({"inner": {"count": "x"}}),
                "spec.inner.count",
                "invalid type: string \"x\"",
            ),
            (
                json!({"inner": {"count": -1}}),
                "spec.inner.count",
                "invalid value",
            ),
            (
                json!({"inner": {"count": 1, "name": 5}}),
                "spec.inner.name",
                "invalid type",
            ),
            (
                json!({"inner": {"count": 1}, "list": [{"count": 1}, {"count": true}]}),
                "spec.list[1].count",
                "invalid type",
            ),
            (
                json!({"inner": {"count": 1}, "choice": "C"}),
                "spec.choice",
                "unknown variant `C`",
            ),
            (json!("x"), "spec", "expected struct Outer"),
        ];
        for (value, path, message) in table {
            let (got_path, got_message) = err(value.clone());
            assert_eq!(got_path, path, "{value}");
            assert!(got_message.contains(message), "{value}: {got_message}");
        }
        assert!(from_value::<Outer>(&json!({"inner": {"count": 1}, "choice": "A"}), "").is_ok());
    }
}
