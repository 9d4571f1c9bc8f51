//! Percentages written as a number (`70`, `70.5`) or a string (`"70"`, `"70%"`).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A percentage, meant to be in `0..=100` and allowed to be fractional.
///
/// It reads a number (`70`, `70.5`) or a string (`"70"`, `"70%"`) and rejects anything
/// that is not a finite number. It does not check the range: each field has its own
/// (for example 10..=90 for a renewal point), so the validator of the field checks it
/// and reports the field's path. It serializes as a plain number.
///
/// ```
/// use causeway_api::Percent;
///
/// let p: Percent = serde_json::from_str("\"70%\"").unwrap();
/// assert_eq!(p, Percent::new(70.0));
/// assert_eq!(serde_json::to_string(&p).unwrap(), "70");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    /// A percentage of `value` (70.0 means 70%).
    pub const fn new(value: f64) -> Percent {
        Percent(value)
    }

    /// The number of percent (70.0 for 70%).
    pub const fn value(self) -> f64 {
        self.0
    }

    /// The fraction it stands for (0.7 for 70%).
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Whole numbers as integers, so YAML shows `70`, not `70.0`.
        if self.0.fract() == 0.0 && self.0.abs() < 1e15 {
            serializer.serialize_i64(self.0 as i64)
        } else {
            serializer.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PercentVisitor;

        impl Visitor<'_> for PercentVisitor {
            type Value = Percent;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage: a number like 70 or a string like \"70%\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                Ok(Percent(v as f64))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                Ok(Percent(v as f64))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                if v.is_finite() {
                    Ok(Percent(v))
                } else {
                    Err(E::custom(format!(
                        "invalid percentage {v}: must be a finite number"
                    )))
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                let number = v.trim().strip_suffix('%').unwrap_or(v.trim()).trim_end();
                match number.parse::<f64>() {
                    Ok(n) if n.is_finite() => Ok(Percent(n)),
                    _ => Err(E::custom(format!(
                        "invalid percentage {v:?}: expected a number like 70 or \"70%\""
                    ))),
                }
            }
        }

        deserializer.deserialize_any(PercentVisitor)
    }
}

impl schemars::JsonSchema for Percent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Percent".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [
                {"type": "number"},
                {"type": "string", "pattern": "^\\s*[-+]?[0-9]*\\.?[0-9]+\\s*%?\\s*$"}
            ],
            "description": "A percentage: a number (70, 12.5) or a string (\"70\", \"70%\").",
            "examples": [70, "12.5%"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let ok: &[(&str, f64)] = &[
            ("70", 70.0),
            ("70.5", 70.5),
            ("\"70\"", 70.0),
            ("\"70%\"", 70.0),
            ("\" 12.5 % \"", 12.5),
            ("0", 0.0),
        ];
        for &(json, want) in ok {
            let p: Percent = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(p.value(), want, "{json}");
        }
        for json in ["\"seventy\"", "\"%\"", "\"NaN\"", "\"inf\"", "true", "[70]"] {
            assert!(serde_json::from_str::<Percent>(json).is_err(), "{json}");
        }
    }

    #[test]
    fn serializes_as_number() {
        assert_eq!(serde_json::to_string(&Percent::new(70.0)).unwrap(), "70");
        assert_eq!(serde_json::to_string(&Percent::new(70.5)).unwrap(), "70.5");
        assert_eq!(Percent::new(70.0).fraction(), 0.7);
    }
}
