//! What every typed spec shares: the [`Spec`] trait that the registry's function
//! pointers are generated from, and [`Errors`], the collector its checks report into.

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::duration::Duration;
use crate::percent::Percent;
use crate::validation::{FieldError, decode_spec};

/// A typed spec: how it decodes (serde, with unknown fields rejected), what else must
/// hold (`check`), and its JSON Schema (schemars, from the same type and doc comments).
pub(crate) trait Spec: DeserializeOwned + Serialize + JsonSchema {
    /// The checks that the shape alone does not express. Paths start with `spec`.
    fn check(&self, errors: &mut Errors);
}

/// Decodes and checks a spec of type `T`; every problem, paths from the resource root.
pub(crate) fn validate_spec_of<T: Spec>(spec: &Value) -> Vec<FieldError> {
    match decode_spec::<T>(spec) {
        Ok(typed) => {
            let mut errors = Errors::default();
            typed.check(&mut errors);
            errors.0
        }
        Err(e) => with_other_shape_errors::<T>(e, spec),
    }
}

/// The decoder's error first, then the shape errors elsewhere in the document.
fn with_other_shape_errors<T: Spec>(first: FieldError, spec: &Value) -> Vec<FieldError> {
    let others = crate::shape::shape_errors(&spec_schema_of::<T>(), spec, "spec");
    let mut errors = vec![first];
    for e in others {
        if !errors.iter().any(|seen| seen.field == e.field) {
            errors.push(e);
        }
    }
    errors
}

/// Decodes, checks and re-encodes a spec of type `T`, so that equal meanings have equal
/// JSON (`"70%"` and `70` both become `70`, `90s` becomes `1m30s`).
pub(crate) fn canonical_spec_of<T: Spec>(spec: &Value) -> Result<Value, Vec<FieldError>> {
    let typed = decode_spec::<T>(spec).map_err(|e| with_other_shape_errors::<T>(e, spec))?;
    let mut errors = Errors::default();
    typed.check(&mut errors);
    if !errors.0.is_empty() {
        return Err(errors.0);
    }
    serde_json::to_value(&typed).map_err(|e| vec![FieldError::new("spec", e.to_string())])
}

/// The JSON Schema (draft 2020-12) of a spec of type `T`, with its `$defs`.
pub(crate) fn spec_schema_of<T: Spec>() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

/// `path.key`.
pub(crate) fn at(path: &str, key: &str) -> String {
    format!("{path}.{key}")
}

/// `path[index]`.
pub(crate) fn idx(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// The problems found so far, in order.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    /// Records a problem at `field`.
    pub(crate) fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(field, reason));
    }

    /// Records `result`'s error, if any, at `field`.
    pub(crate) fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(reason) = result {
            self.push(field, reason);
        }
    }

    /// Records a problem unless `min <= d <= max`.
    pub(crate) fn duration(
        &mut self,
        field: String,
        d: Option<Duration>,
        min: Duration,
        max: Duration,
    ) {
        if let Some(d) = d
            && (d < min || d > max)
        {
            self.push(field, format!("must be between {min} and {max} (got {d})"));
        }
    }

    /// Records a problem unless `d` is more than zero and at most `max`.
    pub(crate) fn positive_duration(&mut self, field: String, d: Option<Duration>, max: Duration) {
        match d {
            Some(d) if d == Duration::ZERO => {
                self.push(
                    field,
                    format!("must be more than 0s and at most {max} (got 0s)"),
                );
            }
            Some(d) if d > max => {
                self.push(
                    field,
                    format!("must be more than 0s and at most {max} (got {d})"),
                );
            }
            _ => {}
        }
    }

    /// Records a problem unless `min <= p <= max` (percent).
    pub(crate) fn percent(&mut self, field: String, p: Option<Percent>, min: f64, max: f64) {
        if let Some(p) = p
            && !(min..=max).contains(&p.value())
        {
            self.push(
                field,
                format!("must be between {min}% and {max}% (got {p})"),
            );
        }
    }

    /// Records a problem unless `min <= n <= max`.
    pub(crate) fn range<N: PartialOrd + std::fmt::Display + Copy>(
        &mut self,
        field: String,
        n: Option<N>,
        min: N,
        max: N,
    ) {
        if let Some(n) = n
            && (n < min || n > max)
        {
            self.push(field, format!("must be between {min} and {max} (got {n})"));
        }
    }

    /// Records a problem if `n` is less than `min`.
    pub(crate) fn at_least(&mut self, field: String, n: Option<u32>, min: u32) {
        if let Some(n) = n
            && n < min
        {
            self.push(field, format!("must be at least {min} (got {n})"));
        }
    }

    /// Records a problem if a port is 0.
    pub(crate) fn port(&mut self, field: String, port: Option<u16>) {
        if port == Some(0) {
            self.push(field, "must be a port between 1 and 65535 (got 0)");
        }
    }

    /// Records a problem if `value` is empty.
    pub(crate) fn non_empty(&mut self, field: String, value: &str) {
        if value.trim().is_empty() {
            self.push(field, "must not be empty");
        }
    }
}

/// Checks a service name: 1 to 253 characters of letters, digits, `.`, `_` and `-`,
/// starting and ending with a letter or digit (`backend`, `web_default_svc_80`).
/// Checks a service name (the value of `causeway.io/service`); the error says the rule.
pub fn check_service_name(name: &str) -> Result<(), String> {
    let rule =
        "use 1-253 letters, digits, '.', '_' and '-', starting and ending with a letter or digit";
    if name.is_empty() {
        return Err(format!("the service name is empty; {rule}"));
    }
    if name.len() > 253 {
        return Err(format!(
            "the service name is {} characters long, more than 253; {rule}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?} is not a valid service name: it contains {c:?}; {rule}"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err(format!("{name:?} is not a valid service name; {rule}"));
    }
    Ok(())
}

/// Checks a host: an IP address or a DNS name (`10.0.0.1`, `::1`, `db.example.com`).
pub(crate) fn check_host(host: &str) -> Result<(), String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    crate::validation::validate_dns_subdomain(host)
        .map_err(|reason| format!("must be an IP address or a DNS name: {reason}"))
}

/// Checks `host:port` (`collector.observability:4317`, `10.0.0.1:9000`, `[::1]:80`).
pub(crate) fn check_host_port(value: &str) -> Result<(), String> {
    let hint = "use host:port, like otel-collector.observability:4317";
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("{value:?} has no port; {hint}"));
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("{value:?} has an invalid port {port:?}; {hint}")),
    }
    check_host(host).map_err(|reason| format!("{value:?}: the host {reason}"))
}

/// Checks an HTTP header name (an RFC 9110 token, e.g. `x-request-id`).
pub(crate) fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the header name is empty".to_owned());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(*c)))
    {
        Some(c) => Err(format!(
            "{name:?} is not a valid HTTP header name: it contains {c:?}"
        )),
        None => Ok(()),
    }
}

/// Checks an HTTP status code (100 to 599).
pub(crate) fn check_status(code: u16) -> Result<(), String> {
    if (100..=599).contains(&code) {
        Ok(())
    } else {
        Err(format!(
            "must be an HTTP status code between 100 and 599 (got {code})"
        ))
    }
}
