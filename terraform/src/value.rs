//! Terraform values as they cross the plugin protocol: a dynamic tree that can hold
//! unknown values (known only after apply), encoded with MessagePack the way cty does.
//!
//! cty's encoding is plain MessagePack with one addition: an unknown value is any
//! extension (Terraform writes `fixext1` type 0; newer versions add refinements in other
//! extension types). Objects and maps are both MessagePack maps; Terraform decodes them
//! against the schema we declared, so the tree needs no type tags of its own.

use std::collections::BTreeMap;

/// A Terraform value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Not known until apply.
    Unknown,
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    List(Vec<Value>),
    /// An object or a map.
    Map(BTreeMap<String, Value>),
}

/// Bytes that are not the MessagePack Terraform sends.
#[derive(Debug)]
pub struct DecodeError(pub String);

impl std::error::Error for DecodeError {}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed MessagePack from Terraform: {}", self.0)
    }
}

impl Value {
    /// The attribute `name` of an object (Null when absent or not an object).
    pub fn get(&self, name: &str) -> &Value {
        match self {
            Value::Map(m) => m.get(name).unwrap_or(&Value::Null),
            _ => &Value::Null,
        }
    }

    /// The string, when this is a known string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Whether this value or anything inside it is unknown.
    pub fn has_unknown(&self) -> bool {
        match self {
            Value::Unknown => true,
            Value::List(items) => items.iter().any(Value::has_unknown),
            Value::Map(m) => m.values().any(Value::has_unknown),
            _ => false,
        }
    }

    /// Sets attribute `name` of an object (no-op on anything else).
    pub fn set(&mut self, name: &str, value: Value) {
        if let Value::Map(m) = self {
            m.insert(name.to_owned(), value);
        }
    }

    pub fn string(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// `Some(s)` as a string, `None` as null.
    pub fn opt_string(s: Option<&str>) -> Value {
        s.map_or(Value::Null, Value::string)
    }
}

// === decoding ===

/// Decodes one MessagePack value.
pub fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let mut r = Reader { bytes, at: 0 };
    let v = r.value(0)?;
    Ok(v)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| DecodeError("truncated".into()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| acc << 8 | *b as u64))
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > 128 {
            return Err(DecodeError("nested too deeply".into()));
        }
        let b = self.take(1)?[0];
        let int = |i: i64| Ok(Value::Number(i.into()));
        match b {
            0x00..=0x7f => int(b as i64),
            0xe0..=0xff => int(b as i8 as i64),
            0xc0 => Ok(Value::Null),
            0xc2 => Ok(Value::Bool(false)),
            0xc3 => Ok(Value::Bool(true)),
            0xcc => int(self.uint(1)? as i64),
            0xcd => int(self.uint(2)? as i64),
            0xce => int(self.uint(4)? as i64),
            0xcf => Ok(Value::Number(self.uint(8)?.into())),
            0xd0 => int(self.uint(1)? as u8 as i8 as i64),
            0xd1 => int(self.uint(2)? as u16 as i16 as i64),
            0xd2 => int(self.uint(4)? as u32 as i32 as i64),
            0xd3 => int(self.uint(8)? as i64),
            0xca => {
                let f = f32::from_bits(self.uint(4)? as u32) as f64;
                Ok(float(f))
            }
            0xcb => Ok(float(f64::from_bits(self.uint(8)?))),
            0xa0..=0xbf => self.string((b & 0x1f) as usize),
            0xd9 | 0xc4 => {
                let n = self.uint(1)? as usize;
                self.string(n)
            }
            0xda | 0xc5 => {
                let n = self.uint(2)? as usize;
                self.string(n)
            }
            0xdb | 0xc6 => {
                let n = self.uint(4)? as usize;
                self.string(n)
            }
            0x90..=0x9f => self.array((b & 0x0f) as usize, depth),
            0xdc => {
                let n = self.uint(2)? as usize;
                self.array(n, depth)
            }
            0xdd => {
                let n = self.uint(4)? as usize;
                self.array(n, depth)
            }
            0x80..=0x8f => self.map((b & 0x0f) as usize, depth),
            0xde => {
                let n = self.uint(2)? as usize;
                self.map(n, depth)
            }
            0xdf => {
                let n = self.uint(4)? as usize;
                self.map(n, depth)
            }
            // Extensions: cty's unknown value (with or without refinements).
            0xd4 => self.ext(1),
            0xd5 => self.ext(2),
            0xd6 => self.ext(4),
            0xd7 => self.ext(8),
            0xd8 => self.ext(16),
            0xc7 => {
                let n = self.uint(1)? as usize;
                self.ext(n)
            }
            0xc8 => {
                let n = self.uint(2)? as usize;
                self.ext(n)
            }
            0xc9 => {
                let n = self.uint(4)? as usize;
                self.ext(n)
            }
            other => Err(DecodeError(format!("unexpected byte 0x{other:02x}"))),
        }
    }

    fn ext(&mut self, len: usize) -> Result<Value, DecodeError> {
        self.take(1 + len)?; // type byte, then data
        Ok(Value::Unknown)
    }

    fn string(&mut self, n: usize) -> Result<Value, DecodeError> {
        let s = self.take(n)?;
        String::from_utf8(s.to_vec())
            .map(Value::String)
            .map_err(|_| DecodeError("a string is not UTF-8".into()))
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        let mut items = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::List(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let Value::String(k) = self.value(depth + 1)? else {
                return Err(DecodeError("a map key is not a string".into()));
            };
            let v = self.value(depth + 1)?;
            m.insert(k, v);
        }
        Ok(Value::Map(m))
    }
}

fn float(f: f64) -> Value {
    // Whole numbers come back as integers so that `2` compares equal to `2.0`.
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::Number((f as i64).into())
    } else {
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

// === encoding ===

/// Encodes a value as MessagePack.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Unknown => out.extend_from_slice(&[0xd4, 0, 0]),
        Value::Null => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push(0xd3);
                out.extend_from_slice(&i.to_be_bytes());
            } else if let Some(u) = n.as_u64() {
                out.push(0xcf);
                out.extend_from_slice(&u.to_be_bytes());
            } else {
                out.push(0xcb);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_bits().to_be_bytes());
            }
        }
        Value::String(s) => {
            header(out, s.len(), 0xa0, 32, [0xd9, 0xda, 0xdb]);
            out.extend_from_slice(s.as_bytes());
        }
        Value::List(items) => {
            header(out, items.len(), 0x90, 16, [0, 0xdc, 0xdd]);
            for item in items {
                write(item, out);
            }
        }
        Value::Map(m) => {
            header(out, m.len(), 0x80, 16, [0, 0xde, 0xdf]);
            for (k, v) in m {
                write(&Value::String(k.clone()), out);
                write(v, out);
            }
        }
    }
}

/// A length header: the fix form below `fix_limit`, else the 8-bit (when there is one),
/// 16-bit or 32-bit form.
fn header(out: &mut Vec<u8>, len: usize, fix: u8, fix_limit: usize, codes: [u8; 3]) {
    if len < fix_limit {
        out.push(fix | len as u8);
    } else if len < 256 && codes[0] != 0 {
        out.extend_from_slice(&[codes[0], len as u8]);
    } else if len < 65536 {
        out.push(codes[1]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(codes[2]);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

// === JSON ===

/// A JSON value as a Terraform value (no unknowns in JSON).
pub fn from_json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => Value::Number(n.clone()),
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::List(a.iter().map(from_json).collect()),
        serde_json::Value::Object(m) => {
            Value::Map(m.iter().map(|(k, v)| (k.clone(), from_json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let long = "x".repeat(300);
        let v = Value::Map(BTreeMap::from([
            ("a".into(), Value::Null),
            ("b".into(), Value::Unknown),
            ("c".into(), Value::Number((-5).into())),
            ("d".into(), Value::Number(70000.into())),
            ("e".into(), Value::String(long)),
            (
                "f".into(),
                Value::List((0..20).map(|i| Value::Number(i.into())).collect()),
            ),
            ("g".into(), Value::Bool(true)),
            (
                "h".into(),
                Value::Number(serde_json::Number::from_f64(1.5).unwrap()),
            ),
        ]));
        assert_eq!(decode(&encode(&v)).unwrap(), v);
    }

    #[test]
    fn reads_what_cty_writes() {
        // {"a": unknown, "n": 1.0 as float64, "s": "hi", "neg": -1 as int8}
        let bytes = [
            0x84, 0xa1, b'a', 0xd4, 0, 0, 0xa1, b'n', 0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0xa1,
            b's', 0xa2, b'h', b'i', 0xa3, b'n', b'e', b'g', 0xd0, 0xff,
        ];
        let v = decode(&bytes).unwrap();
        assert_eq!(v.get("a"), &Value::Unknown);
        assert_eq!(v.get("n"), &Value::Number(1.into()));
        assert_eq!(v.get("s").as_str(), Some("hi"));
        assert_eq!(v.get("neg"), &Value::Number((-1).into()));
        assert!(decode(&[0x92, 0x01]).is_err(), "truncated array");
    }
}
