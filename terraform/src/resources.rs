//! The provider's resources: their schemas and what plan, apply, read and import do
//! for each, in terms of the global API.
//!
//! Three families share one implementation:
//! - typed resources (`causeway_mesh`, `causeway_zone`, one per policy kind): the
//!   envelope (`mesh`, `name`, `labels`, server-set `version`) plus the spec's fields as
//!   attributes and nested blocks generated from the type's JSON Schema;
//! - `causeway_policy`: any type, its spec as YAML;
//! - one-shot tokens (`causeway_dataplane_token`, `causeway_ingress_token`,
//!   `causeway_api_token`): issued on create, shown once, replaced when an input
//!   changes; destroying or replacing one revokes it.
//!
//! The server-set `version` of a resource travels in the values handled here as the
//! attribute `version`, but Terraform keeps it in the resource's private state (see
//! `server.rs`): it changes with every write, and as an attribute it would add a
//! "known after apply" line to every plan.
//!
//! Rules that hold for all: a change of identity (`type`, `mesh`, `name`) replaces; other
//! changes update in place with the version read last as the expected version, so a
//! change made by someone else in between fails with a conflict instead of being
//! overwritten; a resource deleted outside Terraform reads as gone and is planned again;
//! a spec the API would reject fails at plan, on the attribute, with the API's message
//! (both run `causeway_api::validate`).

use std::collections::BTreeMap;

use causeway_api::{Resource, Scope, TypeInfo};
use reqwest::{Method, StatusCode};
use serde_json::{Value as Json, json};

use crate::client::{CallError, Client};
use crate::schema::{
    Attr, Block, Mode, Step, TfType, api_path_to_tf, block_from_json_schema, json_to_tf,
    snake_case, tf_to_json,
};
use crate::value::Value;

/// Attribute names the provider adds around a spec; no spec field may take them.
pub const ENVELOPE: &[&str] = &["id", "name", "mesh", "labels", "version"];

/// Zone attributes about its token, not part of the Zone resource.
const ZONE_TOKEN_INPUTS: &[&str] = &["token_rotation", "token_valid_for"];
const ZONE_TOKEN_OUTPUTS: &[&str] = &["token", "token_id", "token_expires_at"];

/// A problem to show the user, on an attribute when `path` is not empty: an error, or a
/// warning that lets the run go on.
#[derive(Debug, Clone)]
pub struct Diag {
    pub summary: String,
    pub detail: String,
    pub path: Vec<Step>,
    pub warning: bool,
}

impl Diag {
    pub fn new(summary: impl Into<String>) -> Diag {
        Diag {
            summary: summary.into(),
            detail: String::new(),
            path: vec![],
            warning: false,
        }
    }

    /// A warning: shown, and the plan or apply goes on.
    pub(crate) fn warning(summary: impl Into<String>) -> Diag {
        Diag {
            warning: true,
            ..Diag::new(summary)
        }
    }

    pub(crate) fn at(mut self, path: Vec<Step>) -> Diag {
        self.path = path;
        self
    }

    fn detail(mut self, detail: impl Into<String>) -> Diag {
        self.detail = detail.into();
        self
    }
}

pub type Diags = Vec<Diag>;

pub enum Kind {
    /// A typed resource of the model; `zone` adds the token attributes.
    Object {
        info: &'static TypeInfo,
        spec: Block,
        zone: bool,
    },
    /// `causeway_policy`: any mesh-scoped type, spec as YAML.
    Generic,
    DataplaneToken,
    IngressToken,
    /// A named global API token with a role.
    ApiToken,
}

pub struct ResourceDef {
    pub name: String,
    pub kind: Kind,
    pub schema: Block,
}

/// Every resource the provider serves.
pub fn resources() -> Vec<ResourceDef> {
    let mut out = Vec::new();
    for info in causeway_api::types() {
        // Not configuration: dataplanes, zone ingresses and drill reports are written by
        // zones; a drill is a rehearsal with a fixed window, started with `causeway drill`.
        if !info.is_configuration() {
            continue;
        }
        let spec = block_from_json_schema(&(info.spec_schema)());
        let zone = info.kind == "Zone";
        let mut schema = Block {
            description: format!(
                "A {} of the Causeway resource model. {}",
                info.kind, spec.description
            ),
            ..Block::default()
        };
        schema.attrs.push(Attr::new(
            "id",
            TfType::String,
            Mode::Computed,
            "`name`, or `mesh/name` for a resource in a mesh (the import ID).",
        ));
        if info.scope == Scope::Mesh {
            schema.attrs.push(Attr::new(
                "mesh",
                TfType::String,
                Mode::Required,
                "The mesh it belongs to. Changing it replaces the resource.",
            ));
        }
        schema.attrs.push(Attr::new(
            "name",
            TfType::String,
            Mode::Required,
            "Its name, a DNS label. Changing it replaces the resource.",
        ));
        schema.attrs.push(labels_attr());
        if zone {
            schema.attrs.extend([
                Attr::new("token_rotation", TfType::String, Mode::Optional,
                    "Any value; changing it issues a new zone token and revokes the previous one."),
                Attr::new("token_valid_for", TfType::String, Mode::Optional,
                    "Lifetime of the zone token (Go-style duration, default `8760h`)."),
                Attr::new("token", TfType::String, Mode::Computed,
                    "The zone token to install the zone control plane with. Shown once by the API, kept in the state.").sensitive(),
                Attr::new("token_id", TfType::String, Mode::Computed, "The zone token's id (for `causeway` token revocation)."),
                Attr::new("token_expires_at", TfType::String, Mode::Computed, "When the zone token expires (RFC 3339)."),
            ]);
        }
        schema.attrs.extend(spec.attrs.iter().cloned());
        schema.blocks.extend(spec.blocks.iter().cloned());
        out.push(ResourceDef {
            name: format!("causeway_{}", snake_case(info.kind)),
            kind: Kind::Object { info, spec, zone },
            schema,
        });
    }
    out.push(ResourceDef {
        name: "causeway_policy".into(),
        kind: Kind::Generic,
        schema: Block {
            description: "Any policy, its spec as YAML (or JSON): for kinds without a typed resource or specs kept as files.".into(),
            attrs: vec![
                Attr::new("id", TfType::String, Mode::Computed, "`type/mesh/name` (the import ID)."),
                Attr::new("type", TfType::String, Mode::Required, "The policy kind, e.g. `MeshTimeout`. Changing it replaces the resource."),
                Attr::new("mesh", TfType::String, Mode::Required, "The mesh. Changing it replaces the resource."),
                Attr::new("name", TfType::String, Mode::Required, "Its name. Changing it replaces the resource."),
                labels_attr(),
                Attr::new("spec", TfType::String, Mode::Required, "The spec as YAML or JSON, e.g. `yamlencode({...})` or `file(\"timeout.yaml\")`."),
            ],
            blocks: vec![],
        },
    });
    out.push(ResourceDef {
        name: "causeway_dataplane_token".into(),
        kind: Kind::DataplaneToken,
        schema: Block {
            description: "A dataplane token, bound to a mesh and a service, for a sidecar to get its certificate. Issued on create; any change issues a new one.".into(),
            attrs: token_attrs(&[
                ("mesh", "The mesh."),
                ("service", "The service the token is bound to."),
            ]),
            blocks: vec![],
        },
    });
    out.push(ResourceDef {
        name: "causeway_ingress_token".into(),
        kind: Kind::IngressToken,
        schema: Block {
            description: "A zone ingress token, bound to a zone. Issued on create; any change issues a new one.".into(),
            attrs: token_attrs(&[("zone", "The zone the ingress runs in.")]),
            blocks: vec![],
        },
    });
    let mut api_token_attrs = vec![
        Attr::new(
            "name",
            TfType::String,
            Mode::Required,
            "A label shown in `causeway token list` and the audit log. Changing it issues a new token.",
        ),
        Attr::new(
            "role",
            TfType::String,
            Mode::Required,
            "`admin` (everything), `mesh-editor` (changes only what lives in `meshes`; reads the rest) or `viewer` (reads only). Changing it issues a new token.",
        ),
        Attr::new(
            "meshes",
            TfType::List(Box::new(TfType::String)),
            Mode::Optional,
            "The meshes a `mesh-editor` may change (required for that role, refused for the others). Changing it issues a new token.",
        ),
    ];
    api_token_attrs.extend(token_attrs(&[]).into_iter().map(|mut a| {
        if a.name == "valid_for" {
            a.description = "Lifetime (Go-style duration, default `2160h`, 90 days). Changing it issues a new token.".into();
        }
        a
    }));
    out.push(ResourceDef {
        name: "causeway_api_token".into(),
        kind: Kind::ApiToken,
        schema: Block {
            description: "A named token of the global API with a role. Issued on create (the API keeps only its hash); any change issues a new one and revokes the old one, as does destroying it. Every change made with it is in the audit log under its name.".into(),
            attrs: api_token_attrs,
            blocks: vec![],
        },
    });
    out
}

fn labels_attr() -> Attr {
    Attr::new(
        "labels",
        TfType::Map(Box::new(TfType::String)),
        Mode::Optional,
        "Labels, with Kubernetes label syntax.",
    )
}

pub(crate) fn version_attr() -> Attr {
    Attr::new(
        "version",
        TfType::Number,
        Mode::Computed,
        "Server-set version (the Raft index of its last write); the expected version of the next update.",
    )
}

fn token_attrs(inputs: &[(&str, &str)]) -> Vec<Attr> {
    let mut attrs: Vec<Attr> = inputs
        .iter()
        .map(|(n, d)| {
            Attr::new(
                n,
                TfType::String,
                Mode::Required,
                &format!("{d} Changing it issues a new token."),
            )
        })
        .collect();
    attrs.extend([
        Attr::new(
            "valid_for",
            TfType::String,
            Mode::Optional,
            "Lifetime (Go-style duration, default `168h`; a connected proxy's zone renews it). Changing it issues a new token.",
        ),
        Attr::new("id", TfType::String, Mode::Computed, "The token's id."),
        Attr::new(
            "expires_at",
            TfType::String,
            Mode::Computed,
            "When it expires (RFC 3339).",
        ),
        Attr::new("token", TfType::String, Mode::Computed, "The token.").sensitive(),
    ]);
    attrs
}

// === helpers ===

fn computed_names(def: &ResourceDef) -> Vec<&str> {
    def.schema
        .attrs
        .iter()
        .filter(|a| a.mode == Mode::Computed)
        .map(|a| a.name.as_str())
        .collect()
}

/// `prior` and `proposed` agree on everything the user sets, leaving out `skip`.
fn same_inputs(def: &ResourceDef, prior: &Value, proposed: &Value, skip: &[&str]) -> bool {
    let computed = computed_names(def);
    let names = def
        .schema
        .attrs
        .iter()
        .map(|a| a.name.as_str())
        .chain(def.schema.blocks.iter().map(|b| b.name.as_str()));
    names
        .filter(|n| !computed.contains(n) && !skip.contains(n))
        .all(|n| prior.get(n) == proposed.get(n))
}

pub(crate) fn str_attr(v: &Value, name: &str) -> String {
    v.get(name).as_str().unwrap_or_default().to_owned()
}

fn labels_json(v: &Value) -> Json {
    match v.get("labels") {
        Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), json!(v.as_str().unwrap_or_default())))
                .collect(),
        ),
        _ => json!({}),
    }
}

/// Labels as read back: none reads as whatever "none" was before (null or `{}`).
fn labels_tf(remote: &Json, prior: &Value) -> Value {
    match remote.get("labels").and_then(Json::as_object) {
        Some(m) if !m.is_empty() => crate::value::from_json(&Json::Object(m.clone())),
        _ => match prior.get("labels") {
            Value::Map(m) if m.is_empty() => Value::Map(BTreeMap::new()),
            _ => Value::Null,
        },
    }
}

pub(crate) fn api_path(info: &TypeInfo, mesh: &str, name: &str) -> String {
    match info.scope {
        Scope::Global => format!("/{}/{name}", info.plural),
        Scope::Mesh => format!("/meshes/{mesh}/{}/{name}", info.plural),
    }
}

pub(crate) fn describe(kind: &str, mesh: &str, name: &str) -> String {
    if mesh.is_empty() {
        format!("{kind} {name:?}")
    } else {
        format!("{kind} {name:?} in mesh {mesh:?}")
    }
}

/// Two specs of `info` mean the same (`90s` and `1m30s`, `"70%"` and `70`).
fn same_spec(info: &TypeInfo, a: &Json, b: &Json) -> bool {
    match ((info.canonical_spec)(a), (info.canonical_spec)(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

pub(crate) fn version_of(v: &Json) -> Value {
    v.get("version")
        .and_then(Json::as_u64)
        .map_or(Value::Null, |n| Value::Number(n.into()))
}

fn prior_version(v: &Value) -> Option<u64> {
    match v.get("version") {
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// Diagnostics for a failed API call, each field error on its attribute: a spec field
/// through `spec`'s names, an API field named in `renames` (`validFor` -> `valid_for`) on
/// that attribute.
pub(crate) fn call_diags(
    e: &CallError,
    what: &str,
    spec: Option<&Block>,
    renames: &[(&str, &str)],
) -> Diags {
    let fields = e.field_errors();
    let placed: Diags = fields
        .iter()
        .filter(|(f, _)| !f.is_empty())
        .map(|(field, reason)| {
            let path = match renames.iter().find(|(api, _)| api == field) {
                Some((_, tf)) => vec![Step::Attr((*tf).into())],
                None => api_path_to_tf(spec.unwrap_or(&Block::default()), field),
            };
            Diag::new(format!("{what}: {field}: {reason}"))
                .detail(format!("The Causeway API rejected {what}: {}", e.message()))
                .at(path)
        })
        .collect();
    if placed.is_empty() {
        vec![Diag::new(format!("{what}: {}", e.message()))]
    } else {
        placed
    }
}

/// The attribute an API field path (`spec.to[0].default`) is on: through the typed spec
/// block, or `spec` itself for `causeway_policy`.
fn attribute_of(spec_block: Option<&Block>, field: &str) -> Vec<Step> {
    match spec_block {
        Some(b) => api_path_to_tf(b, field),
        None if field.starts_with("spec") => vec![Step::Attr("spec".into())],
        None => api_path_to_tf(&Block::default(), field),
    }
}

fn validation_diags(r: &Resource, spec_block: Option<&Block>, what: &str) -> Diags {
    match causeway_api::validate(r) {
        Ok(()) => vec![],
        Err(errors) => errors
            .errors
            .iter()
            .map(|e| {
                Diag::new(format!("{what}: {}: {}", e.field, e.reason))
                    .detail("The Causeway API would reject this (same validation as the server).")
                    .at(attribute_of(spec_block, &e.field))
            })
            .collect(),
    }
}

/// Warnings for the parts of a valid resource the proxies do not enforce yet (the same
/// ones the API answers a write with): no silent no-ops.
fn enforcement_diags(r: &Resource, spec_block: Option<&Block>, what: &str) -> Diags {
    causeway_api::warnings(r)
        .iter()
        .map(|w| {
            // `type` (the whole kind) is on the resource, not an attribute.
            let path = if w.field.starts_with("spec") {
                attribute_of(spec_block, &w.field)
            } else {
                vec![]
            };
            Diag::warning(format!("{what}: {}: {}", w.field, w.reason))
                .detail("Causeway accepts and stores it, but it has no effect on traffic yet.")
                .at(path)
        })
        .collect()
}

// === plan ===

pub struct Plan {
    pub planned: Value,
    pub requires_replace: Vec<Vec<Step>>,
    pub diags: Diags,
}

/// Plans a change. `prior` is null on create, `proposed` null on destroy.
pub fn plan(def: &ResourceDef, prior: &Value, proposed: &Value, config: &Value) -> Plan {
    let mut out = Plan {
        planned: proposed.clone(),
        requires_replace: vec![],
        diags: vec![],
    };
    if proposed.is_null() {
        return out;
    }
    // Warned at write time: when the resource is created or changed.
    out.diags = validate_config(def, config, prior.is_null() || prior != proposed);
    let identity: &[&str] = match &def.kind {
        Kind::Object { .. } => &["mesh", "name"],
        Kind::Generic => &["type", "mesh", "name"],
        Kind::DataplaneToken => &["mesh", "service", "valid_for"],
        Kind::IngressToken => &["zone", "valid_for"],
        Kind::ApiToken => &["name", "role", "meshes", "valid_for"],
    };
    let creating = prior.is_null();
    if !creating {
        for n in identity {
            if prior.get(n) != proposed.get(n) {
                out.requires_replace.push(vec![Step::Attr((*n).into())]);
            }
        }
    }
    let p = &mut out.planned;
    match &def.kind {
        Kind::Object { .. } | Kind::Generic => {
            let mesh = proposed.get("mesh").clone();
            let name = proposed.get("name").clone();
            let id = match (&def.kind, &mesh, &name) {
                (Kind::Generic, Value::String(m), Value::String(n)) => match proposed.get("type") {
                    Value::String(t) => Value::string(format!("{t}/{m}/{n}")),
                    _ => Value::Unknown,
                },
                (Kind::Object { info, .. }, _, Value::String(n)) if info.scope == Scope::Global => {
                    Value::string(n.clone())
                }
                (Kind::Object { .. }, Value::String(m), Value::String(n)) => {
                    Value::string(format!("{m}/{n}"))
                }
                _ => Value::Unknown,
            };
            p.set("id", id);
            if matches!(def.kind, Kind::Object { zone: true, .. }) {
                let rotate = creating
                    || prior.get("token").is_null()
                    || ZONE_TOKEN_INPUTS
                        .iter()
                        .any(|n| prior.get(n) != proposed.get(n));
                if rotate {
                    for n in ZONE_TOKEN_OUTPUTS {
                        p.set(n, Value::Unknown);
                    }
                }
            }
        }
        Kind::DataplaneToken | Kind::IngressToken | Kind::ApiToken => {
            if creating {
                for n in ["id", "expires_at", "token"] {
                    p.set(n, Value::Unknown);
                }
            }
        }
    }
    out
}

/// The API's validation, run on the configuration when it is fully known; when it
/// passes and `writing`, the warnings the write would get.
fn validate_config(def: &ResourceDef, config: &Value, writing: bool) -> Diags {
    if config.has_unknown() || !matches!(def.kind, Kind::Object { .. } | Kind::Generic) {
        return vec![];
    }
    match build(def, config) {
        Ok((r, _)) => {
            let what = describe(&r.kind, r.mesh.as_deref().unwrap_or(""), &r.name);
            let spec = match &def.kind {
                Kind::Object { spec, .. } => Some(spec),
                _ => None,
            };
            let errors = validation_diags(&r, spec, &what);
            if errors.is_empty() && writing {
                enforcement_diags(&r, spec, &what)
            } else {
                errors
            }
        }
        Err(d) => d,
    }
}

/// The API resource a Terraform value describes, and its URL path.
fn build(def: &ResourceDef, v: &Value) -> Result<(Resource, String), Diags> {
    let (kind, info, spec_json) = match &def.kind {
        Kind::Object { info, spec, .. } => {
            let spec_json = tf_to_json(spec, v, &[])
                .map_err(|e| vec![Diag::new(format!("invalid value: {}", e.reason)).at(e.path)])?;
            (info.kind.to_owned(), *info, spec_json)
        }
        Kind::Generic => {
            let kind = str_attr(v, "type");
            let info = causeway_api::type_info(&kind)
                .filter(|t| t.scope == Scope::Mesh)
                .ok_or_else(|| {
                    let known: Vec<&str> = causeway_api::types()
                        .iter()
                        .filter(|t| t.scope == Scope::Mesh)
                        .map(|t| t.kind)
                        .collect();
                    vec![
                        Diag::new(format!(
                            "{kind:?} is not a kind of resource in a mesh; known: {}",
                            known.join(", ")
                        ))
                        .at(vec![Step::Attr("type".into())]),
                    ]
                })?;
            let text = str_attr(v, "spec");
            let spec_json: Json = serde_yaml::from_str::<Option<Json>>(&text)
                .map_err(|e| {
                    vec![
                        Diag::new(format!("spec is not YAML or JSON: {e}"))
                            .at(vec![Step::Attr("spec".into())]),
                    ]
                })?
                .unwrap_or_else(|| json!({}));
            (kind, info, spec_json)
        }
        _ => unreachable!("tokens are not resources of the model"),
    };
    let mesh = match info.scope {
        Scope::Mesh => Some(str_attr(v, "mesh")),
        Scope::Global => None,
    };
    let name = str_attr(v, "name");
    let mut r = Resource::new(kind, mesh.as_deref(), name.clone(), spec_json);
    if let Json::Object(m) = labels_json(v) {
        r.labels = m
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
            .collect();
    }
    let path = api_path(info, mesh.as_deref().unwrap_or(""), &name);
    Ok((r, path))
}

// === state from the API ===

/// The state of a typed or generic resource as read from the API. Keeps the prior
/// spelling of a spec that means the same (so `90s` stays `90s`), and the prior values
/// of attributes the API does not hold (zone token settings).
fn state_from_remote(def: &ResourceDef, remote: &Json, prior: &Value) -> Value {
    let remote_spec = remote.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mesh = remote.get("mesh").and_then(Json::as_str).unwrap_or("");
    let name = remote.get("name").and_then(Json::as_str).unwrap_or("");
    let mut state = match &def.kind {
        Kind::Object { info, spec, .. } => {
            let prior_spec = (!prior.is_null())
                .then(|| tf_to_json(spec, prior, &[]).ok())
                .flatten();
            let mut s = match prior_spec {
                Some(p) if same_spec(info, &p, &remote_spec) => prior.clone(),
                _ => json_to_tf(spec, &remote_spec),
            };
            let id = if info.scope == Scope::Global {
                name.to_owned()
            } else {
                format!("{mesh}/{name}")
            };
            s.set("id", Value::string(id));
            if info.scope == Scope::Mesh {
                s.set("mesh", Value::string(mesh));
            }
            for n in ZONE_TOKEN_INPUTS.iter().chain(ZONE_TOKEN_OUTPUTS) {
                if def.schema.attrs.iter().any(|a| a.name == *n) {
                    s.set(n, prior.get(n).clone());
                }
            }
            s
        }
        Kind::Generic => {
            let kind = remote.get("type").and_then(Json::as_str).unwrap_or("");
            let info = causeway_api::type_info(kind);
            let prior_text = prior.get("spec").as_str().unwrap_or("");
            let prior_spec = serde_yaml::from_str::<Option<Json>>(prior_text)
                .ok()
                .flatten()
                .unwrap_or_else(|| json!({}));
            let keep =
                !prior.is_null() && info.is_some_and(|i| same_spec(i, &prior_spec, &remote_spec));
            let spec = if keep {
                prior.get("spec").clone()
            } else {
                Value::string(serde_yaml::to_string(&remote_spec).unwrap_or_default())
            };
            let mut s = Value::Map(BTreeMap::new());
            s.set("id", Value::string(format!("{kind}/{mesh}/{name}")));
            s.set("type", Value::string(kind));
            s.set("mesh", Value::string(mesh));
            s.set("spec", spec);
            s
        }
        _ => unreachable!("tokens are not read from the model"),
    };
    state.set("name", Value::string(name));
    state.set("labels", labels_tf(remote, prior));
    state.set("version", version_of(remote));
    state
}

// === apply ===

/// Applies a planned change; returns the new state (null after a delete), or the state
/// to keep (what exists now) with the errors.
pub async fn apply(
    client: &Client,
    def: &ResourceDef,
    prior: &Value,
    planned: &Value,
) -> Result<Value, (Value, Diags)> {
    match &def.kind {
        Kind::Object { .. } | Kind::Generic => apply_object(client, def, prior, planned).await,
        Kind::DataplaneToken | Kind::IngressToken | Kind::ApiToken => {
            if planned.is_null() {
                revoke_token(client, def, prior)
                    .await
                    .map_err(|d| (prior.clone(), d))?;
                return Ok(Value::Null);
            }
            let state = issue_token(client, def, planned)
                .await
                .map_err(|d| (prior.clone(), d))?;
            // The token it replaces stops working: every zone refuses it from now on.
            if !prior.is_null() {
                revoke_token(client, def, prior)
                    .await
                    .map_err(|d| (state.clone(), d))?;
            }
            Ok(state)
        }
    }
}

async fn apply_object(
    client: &Client,
    def: &ResourceDef,
    prior: &Value,
    planned: &Value,
) -> Result<Value, (Value, Diags)> {
    let keep = |d: Diags| (prior.clone(), d);
    let spec_block = match &def.kind {
        Kind::Object { spec, .. } => Some(spec),
        _ => None,
    };
    let is_zone = matches!(def.kind, Kind::Object { zone: true, .. });
    if planned.is_null() {
        let (r, path) = build(def, prior).map_err(keep)?;
        let what = describe(&r.kind, r.mesh.as_deref().unwrap_or(""), &r.name);
        match client
            .call(Method::DELETE, &path, None, prior_version(prior))
            .await
        {
            Ok(_) => {}
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {}
            Err(e) => return Err(keep(conflict_or(e, &what, spec_block))),
        }
        if is_zone {
            let tokens = format!("/zones/{}/tokens", r.name);
            match client.call(Method::DELETE, &tokens, None, None).await {
                Ok(_) => {}
                Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {}
                // The zone is gone; its tokens are useless without it.
                Err(e) => {
                    return Err((
                        Value::Null,
                        call_diags(&e, &format!("revoking the tokens of {what}"), None, &[]),
                    ));
                }
            }
        }
        return Ok(Value::Null);
    }
    let (r, path) = build(def, planned).map_err(keep)?;
    let what = describe(&r.kind, r.mesh.as_deref().unwrap_or(""), &r.name);
    let mut state = planned.clone();
    let mut changed = prior.is_null() || !same_inputs(def, prior, planned, ZONE_TOKEN_INPUTS);
    // A `causeway_policy` spec respelled (after an import, say) but meaning the same is
    // not written again.
    if changed
        && !prior.is_null()
        && let (Kind::Generic, Ok((before, _))) = (&def.kind, build(def, prior))
        && let Some(info) = causeway_api::type_info(&r.kind)
    {
        changed = before.key() != r.key()
            || before.labels != r.labels
            || !same_spec(info, &before.spec, &r.spec);
    }
    state.set("version", prior.get("version").clone());
    if changed {
        let body = serde_json::to_value(&r).expect("a resource serializes");
        // On create, version 0 means "must not exist yet": never take over a resource
        // someone else made.
        let expected = if prior.is_null() {
            Some(0)
        } else {
            prior_version(prior)
        };
        let (_, stored) = client
            .call(Method::PUT, &path, Some(&body), expected)
            .await
            .map_err(|e| {
                keep(if prior.is_null() && e.status() == Some(StatusCode::CONFLICT) {
                    vec![Diag::new(format!("{what} already exists"))
                        .detail("It was created outside this Terraform configuration. Import it (`terraform import` with its id) or choose another name.")]
                } else {
                    conflict_or(e, &what, spec_block)
                })
            })?;
        state.set("version", version_of(&stored));
    }
    if is_zone && planned.get("token") == &Value::Unknown {
        // What exists if issuing fails: the zone, without a token (the next plan issues one).
        let mut tokenless = state.clone();
        for n in ZONE_TOKEN_OUTPUTS {
            tokenless.set(
                n,
                if prior.is_null() {
                    Value::Null
                } else {
                    prior.get(n).clone()
                },
            );
        }
        let mut body = json!({});
        if let Some(v) = planned.get("token_valid_for").as_str() {
            body["validFor"] = json!(v);
        }
        let (_, issued) = client
            .call(
                Method::POST,
                &format!("/zones/{}/token", r.name),
                Some(&body),
                None,
            )
            .await
            .map_err(|e| {
                let d = call_diags(
                    &e,
                    &format!("issuing a token for {what}"),
                    None,
                    &[("validFor", "token_valid_for")],
                );
                (tokenless.clone(), d)
            })?;
        copy_issued(
            &mut state,
            &issued,
            &[
                ("token", "token"),
                ("id", "token_id"),
                ("expiresAt", "token_expires_at"),
            ],
        );
        // Rotation: the previous token stops working once the new one exists.
        if let Some(old) = prior.get("token_id").as_str() {
            let p = format!("/zones/{}/tokens/{old}", r.name);
            match client.call(Method::DELETE, &p, None, None).await {
                Ok(_) => {}
                Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {}
                Err(e) => {
                    let d = call_diags(
                        &e,
                        &format!("revoking the previous token of {what}"),
                        None,
                        &[],
                    );
                    return Err((state, d));
                }
            }
        }
    }
    Ok(state)
}

/// A version conflict explained in Terraform's terms; other errors on their attributes.
fn conflict_or(e: CallError, what: &str, spec: Option<&Block>) -> Diags {
    if e.status() == Some(StatusCode::CONFLICT)
        && e.field_errors().iter().any(|(f, _)| f == "version")
    {
        return vec![Diag::new(format!("{what} was changed by someone else since Terraform read it"))
            .detail(format!(
                "{}. Nothing was overwritten. Run `terraform plan` again to see the change and decide.",
                e.message()
            ))];
    }
    call_diags(&e, what, spec, &[])
}

async fn issue_token(client: &Client, def: &ResourceDef, planned: &Value) -> Result<Value, Diags> {
    let mut body = json!({});
    if let Some(v) = planned.get("valid_for").as_str() {
        body["validFor"] = json!(v);
    }
    let (path, what, fields): (String, String, &[(&str, &str)]) = match def.kind {
        Kind::ApiToken => {
            body["name"] = json!(str_attr(planned, "name"));
            body["role"] = json!(str_attr(planned, "role"));
            let meshes: Vec<&str> = match planned.get("meshes") {
                Value::List(items) => items.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            body["meshes"] = json!(meshes);
            (
                "/api-tokens".into(),
                "an API token".into(),
                &[
                    ("name", "name"),
                    ("role", "role"),
                    ("meshes", "meshes"),
                    ("validFor", "valid_for"),
                ],
            )
        }
        Kind::DataplaneToken => {
            body["service"] = json!(str_attr(planned, "service"));
            (
                format!("/meshes/{}/dataplane-token", str_attr(planned, "mesh")),
                "a dataplane token".into(),
                &[
                    ("service", "service"),
                    ("validFor", "valid_for"),
                    ("name", "mesh"),
                ],
            )
        }
        _ => (
            format!("/zones/{}/ingress-token", str_attr(planned, "zone")),
            "an ingress token".into(),
            &[("validFor", "valid_for"), ("name", "zone")],
        ),
    };
    let (_, issued) = client
        .call(Method::POST, &path, Some(&body), None)
        .await
        .map_err(|e| call_diags(&e, &format!("issuing {what}"), None, fields))?;
    let mut state = planned.clone();
    copy_issued(
        &mut state,
        &issued,
        &[
            ("id", "id"),
            ("token", "token"),
            ("expiresAt", "expires_at"),
        ],
    );
    Ok(state)
}

/// Where a dataplane or ingress token of this resource is revoked.
fn token_path(def: &ResourceDef, state: &Value) -> Option<String> {
    let id = state.get("id").as_str()?;
    Some(match def.kind {
        Kind::ApiToken => format!("/api-tokens/{id}"),
        Kind::DataplaneToken => {
            format!("/meshes/{}/dataplane-tokens/{id}", str_attr(state, "mesh"))
        }
        _ => format!("/zones/{}/ingress-tokens/{id}", str_attr(state, "zone")),
    })
}

/// Revokes the token a resource holds; one already revoked or expired is fine.
async fn revoke_token(client: &Client, def: &ResourceDef, state: &Value) -> Result<(), Diags> {
    let Some(path) = token_path(def, state) else {
        return Ok(());
    };
    match client.call(Method::DELETE, &path, None, None).await {
        Ok(_) => Ok(()),
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(()),
        Err(e) => Err(call_diags(&e, "revoking the token", None, &[])),
    }
}

/// Copies fields of an issued token (`{id, expiresAt, token}`) into attributes.
fn copy_issued(state: &mut Value, issued: &Json, fields: &[(&str, &str)]) {
    for (api, attr) in fields {
        state.set(
            attr,
            Value::opt_string(issued.get(*api).and_then(Json::as_str)),
        );
    }
}

// === read and import ===

/// Refreshes a resource: null when it no longer exists.
pub async fn read(client: &Client, def: &ResourceDef, prior: &Value) -> Result<Value, Diags> {
    match &def.kind {
        Kind::DataplaneToken | Kind::IngressToken | Kind::ApiToken => {
            // A token revoked (or expired) outside Terraform is issued again by the next
            // apply. One the cluster has no record of (issued before tokens were
            // recorded) is kept: it cannot be revoked, so it is not known to be dead.
            let Some(path) = token_path(def, prior) else {
                return Ok(prior.clone());
            };
            let list = path
                .rsplit_once('/')
                .map(|(l, _)| format!("{l}?expired=true"))
                .unwrap_or_default();
            let list = if matches!(def.kind, Kind::ApiToken) {
                "/api-tokens?all=true".to_string()
            } else {
                list
            };
            let items = client
                .get(&list)
                .await
                .map_err(|e| call_diags(&e, "reading the token", None, &[]))?
                .unwrap_or(Json::Null);
            let id = prior.get("id").as_str().unwrap_or_default();
            let dead = items
                .get("items")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .find(|t| t.get("id").and_then(Json::as_str) == Some(id))
                .is_some_and(|t| {
                    t.get("revokedAt").is_some_and(|r| !r.is_null())
                        || t.get("expired") == Some(&json!(true))
                        || t.get("live") == Some(&json!(false))
                });
            Ok(if dead { Value::Null } else { prior.clone() })
        }
        Kind::Object { zone, .. } => {
            let (r, path) = build(def, prior)?;
            let what = describe(&r.kind, r.mesh.as_deref().unwrap_or(""), &r.name);
            let Some(remote) = client
                .get(&path)
                .await
                .map_err(|e| call_diags(&e, &what, None, &[]))?
            else {
                return Ok(Value::Null);
            };
            let mut state = state_from_remote(def, &remote, prior);
            if *zone && let Some(id) = prior.get("token_id").as_str() {
                // A token revoked outside Terraform is issued again by the next apply.
                let tokens = client
                    .get(&format!("/zones/{}/tokens", r.name))
                    .await
                    .map_err(|e| call_diags(&e, &what, None, &[]))?
                    .unwrap_or(Json::Null);
                let alive = tokens
                    .get("items")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .any(|t| {
                        t.get("id").and_then(Json::as_str) == Some(id)
                            && t.get("expired") != Some(&json!(true))
                    });
                if !alive {
                    for n in ZONE_TOKEN_OUTPUTS {
                        state.set(n, Value::Null);
                    }
                }
            }
            Ok(state)
        }
        Kind::Generic => {
            let (r, path) = build(def, prior)?;
            let what = describe(&r.kind, r.mesh.as_deref().unwrap_or(""), &r.name);
            match client
                .get(&path)
                .await
                .map_err(|e| call_diags(&e, &what, None, &[]))?
            {
                None => Ok(Value::Null),
                Some(remote) => Ok(state_from_remote(def, &remote, prior)),
            }
        }
    }
}

/// Imports a resource by id: `name` (meshes, zones), `mesh/name` (typed policies),
/// `Type/mesh/name` (`causeway_policy`).
pub async fn import(client: &Client, def: &ResourceDef, id: &str) -> Result<Value, Diags> {
    let parts: Vec<&str> = id.split('/').collect();
    let (info, mesh, name, hint) = match &def.kind {
        Kind::Object { info, .. } if info.scope == Scope::Global => (*info, "", parts[0], "NAME"),
        Kind::Object { info, .. } => match parts.as_slice() {
            [m, n] => (*info, *m, *n, "MESH/NAME"),
            _ => (*info, "", "", "MESH/NAME"),
        },
        Kind::Generic => match parts.as_slice() {
            [t, m, n] => match causeway_api::type_info(t) {
                Some(info) => (info, *m, *n, "TYPE/MESH/NAME"),
                None => {
                    return Err(vec![Diag::new(format!(
                        "unknown type {t:?} in import id {id:?}"
                    ))]);
                }
            },
            _ => {
                return Err(vec![Diag::new(format!(
                    "import id {id:?} is not TYPE/MESH/NAME, e.g. MeshTimeout/default/backend"
                ))]);
            }
        },
        Kind::DataplaneToken | Kind::IngressToken => return import_token(def, id),
        Kind::ApiToken => {
            return Err(vec![
                Diag::new("an API token cannot be imported").detail(
                    "The cluster keeps only its hash, so Terraform could not fill `token`. Let Terraform issue a new one, then revoke the old one with `causeway token revoke ID`.",
                ),
            ]);
        }
    };
    if name.is_empty() || (info.scope == Scope::Global && parts.len() != 1) {
        return Err(vec![Diag::new(format!("import id {id:?} is not {hint}"))]);
    }
    let what = describe(info.kind, mesh, name);
    let remote = client
        .get(&api_path(info, mesh, name))
        .await
        .map_err(|e| call_diags(&e, &what, None, &[]))?
        .ok_or_else(|| {
            vec![Diag::new(format!(
                "{what} does not exist; nothing to import"
            ))]
        })?;
    let mut state = state_from_remote(def, &remote, &Value::Null);
    // Every attribute present, null when unset, as Terraform expects of a state.
    for a in &def.schema.attrs {
        if matches!(state.get(&a.name), Value::Null) {
            state.set(&a.name, Value::Null);
        }
    }
    Ok(state)
}

/// Imports a token by its value: the API shows a token only once, so only whoever holds
/// it can hand it to Terraform. Its claims (readable without a key) fill the attributes;
/// `valid_for` is left unset when the lifetime is the default.
fn import_token(def: &ResourceDef, token: &str) -> Result<Value, Diags> {
    use base64::Engine as _;
    let (prefix, kind, inputs): (&str, &str, &[&str]) = match def.kind {
        Kind::DataplaneToken => ("cwd1", "dataplane", &["mesh", "service"]),
        _ => ("cwi1", "ingress", &["zone"]),
    };
    let bad = || {
        vec![
            Diag::new(format!("the import id is not a token of kind {kind} ({prefix})")).detail(format!(
                "Import a token by its value: `terraform import {}.NAME {prefix}.…` (the API shows a token only when it issues it).",
                def.name
            )),
        ]
    };
    let token = token.trim();
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || parts[0] != prefix {
        return Err(bad());
    }
    let claims: Json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(bad)?;
    let mut state = Value::Map(Default::default());
    for a in &def.schema.attrs {
        state.set(&a.name, Value::Null);
    }
    for input in inputs {
        let v = claims.get(*input).and_then(Json::as_str).ok_or_else(bad)?;
        state.set(input, Value::string(v));
    }
    state.set(
        "id",
        Value::opt_string(claims.get("id").and_then(Json::as_str)),
    );
    state.set("token", Value::string(token));
    let (iat, exp) = (
        claims.get("iat").and_then(Json::as_i64).ok_or_else(bad)?,
        claims.get("exp").and_then(Json::as_i64).ok_or_else(bad)?,
    );
    if let Ok(t) = time::OffsetDateTime::from_unix_timestamp(exp)
        && let Ok(s) = t.format(&time::format_description::well_known::Rfc3339)
    {
        state.set("expires_at", Value::string(s));
    }
    let lifetime = exp - iat;
    // The API's default lifetime of dataplane and ingress tokens (168h).
    if lifetime != 168 * 3600 {
        let text = if lifetime % 3600 == 0 {
            format!("{}h", lifetime / 3600)
        } else if lifetime % 60 == 0 {
            format!("{}m", lifetime / 60)
        } else {
            format!("{lifetime}s")
        };
        state.set("valid_for", Value::string(text));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_imported_by_its_value() {
        use base64::Engine as _;
        let claims = json!({"mesh": "default", "service": "web", "id": "ab12", "iat": 1_000_000, "exp": 1_000_000 + 24 * 3600});
        let token = format!(
            "cwd1.{}.sig",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&claims).unwrap())
        );
        let s = import_token(&def("causeway_dataplane_token"), &token).unwrap();
        assert_eq!(s.get("service").as_str(), Some("web"));
        assert_eq!(s.get("mesh").as_str(), Some("default"));
        assert_eq!(s.get("id").as_str(), Some("ab12"));
        assert_eq!(s.get("valid_for").as_str(), Some("24h"));
        assert_eq!(s.get("token").as_str(), Some(token.as_str()));
        // The other kind, or anything else, is refused with the way to do it.
        let e = import_token(&def("causeway_ingress_token"), &token).unwrap_err();
        assert!(
            format!("{e:?}").contains("not a token of kind ingress"),
            "{e:?}"
        );
        assert!(import_token(&def("causeway_dataplane_token"), "web").is_err());
    }

    fn def(name: &str) -> ResourceDef {
        resources()
            .into_iter()
            .find(|r| r.name == name)
            .expect("registered")
    }

    /// A `causeway_mesh_timeout` value with `connect_timeout`.
    fn timeout(d: &ResourceDef, name: &str, connect: &str) -> Value {
        object(
            d,
            name,
            &json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": connect}}]}),
        )
    }

    /// A value of the typed resource `d`: `name` in mesh `default`, with `spec`.
    fn object(d: &ResourceDef, name: &str, spec_json: &serde_json::Value) -> Value {
        let Kind::Object { spec, .. } = &d.kind else {
            unreachable!()
        };
        let mut v = json_to_tf(spec, spec_json);
        for a in &d.schema.attrs {
            if a.json.is_none() {
                v.set(&a.name, Value::Null);
            }
        }
        v.set("mesh", Value::string("default"));
        v.set("name", Value::string(name));
        v
    }

    #[test]
    fn plans() {
        let d = def("causeway_mesh_timeout");
        let mut prior = timeout(&d, "t", "2s");
        prior.set("id", Value::string("default/t"));

        // Create: the id is known from the config.
        let p = plan(
            &d,
            &Value::Null,
            &timeout(&d, "t", "2s"),
            &timeout(&d, "t", "2s"),
        );
        // (Warnings, if the proxies do not enforce all of it, are not errors.)
        assert!(p.diags.iter().all(|d| d.warning) && p.requires_replace.is_empty());
        assert_eq!(p.planned.get("id").as_str(), Some("default/t"));

        // No change: the prior state, nothing to replace.
        let mut same = timeout(&d, "t", "2s");
        same.set("id", Value::string("default/t"));
        let p = plan(&d, &prior, &same, &timeout(&d, "t", "2s"));
        assert_eq!(p.planned, prior);
        assert!(p.requires_replace.is_empty());

        // A spec change updates in place; a new name replaces.
        let p = plan(&d, &prior, &timeout(&d, "t", "3s"), &timeout(&d, "t", "3s"));
        assert!(p.requires_replace.is_empty());
        let p = plan(&d, &prior, &timeout(&d, "u", "2s"), &timeout(&d, "u", "2s"));
        assert_eq!(p.requires_replace, vec![vec![Step::Attr("name".into())]]);

        // A value the API rejects fails at plan, on its attribute.
        let bad = timeout(&d, "t", "soon");
        let p = plan(&d, &prior, &bad, &bad);
        assert_eq!(p.diags.len(), 1, "{:?}", p.diags);
        assert_eq!(
            p.diags[0].path,
            [
                Step::Attr("to".into()),
                Step::Index(0),
                Step::Attr("default".into()),
                Step::Attr("connect_timeout".into())
            ]
        );
        assert!(
            p.diags[0]
                .summary
                .contains("spec.to[0].default.connectTimeout")
        );
    }

    /// A plan that writes a policy the proxies do not enforce would warn (the run going
    /// on); every field is enforced now, so plans of policies warn about nothing.
    #[test]
    fn a_plan_of_enforced_policies_warns_about_nothing() {
        let d = def("causeway_policy");
        let policy = |kind: &str, spec: &str| {
            let mut v = Value::Map(BTreeMap::new());
            for (k, val) in [
                ("type", kind),
                ("mesh", "default"),
                ("name", "p"),
                ("spec", spec),
            ] {
                v.set(k, Value::string(val));
            }
            for a in &d.schema.attrs {
                if v.get(&a.name).is_null() {
                    v.set(&a.name, Value::Null);
                }
            }
            v
        };
        // Every field is enforced: a plan warns about nothing.
        let logs = policy(
            "MeshMetric",
            "{targetRef: {kind: Mesh}, default: {backends: [{type: Prometheus, prometheus: {mtls: true}}]}}",
        );
        let p = plan(&d, &Value::Null, &logs, &logs);
        assert!(p.diags.is_empty(), "{:?}", p.diags);

        let limits = policy(
            "MeshCircuitBreaker",
            "{targetRef: {kind: Mesh}, from: [{targetRef: {kind: MeshService, name: web}, default: {connectionLimits: {maxConnections: 5}}}]}",
        );
        let p = plan(&d, &Value::Null, &limits, &limits);
        assert!(p.diags.is_empty(), "enforced: {:?}", p.diags);
    }

    #[test]
    fn a_new_token_input_replaces_the_token() {
        let d = def("causeway_dataplane_token");
        let mut prior = Value::Map(BTreeMap::new());
        for (k, v) in [
            ("mesh", "default"),
            ("service", "web"),
            ("id", "1"),
            ("token", "t"),
        ] {
            prior.set(k, Value::string(v));
        }
        prior.set("valid_for", Value::Null);
        prior.set("expires_at", Value::string("2030-01-01T00:00:00Z"));
        let mut proposed = prior.clone();
        proposed.set("service", Value::string("api"));
        let p = plan(&d, &prior, &proposed, &proposed);
        assert_eq!(p.requires_replace, vec![vec![Step::Attr("service".into())]]);
    }

    /// Reading back a spec the API stored in canonical form keeps the user's spelling, so
    /// an unchanged configuration plans nothing; a real change shows.
    #[test]
    fn reads_keep_the_spelling_of_an_equal_spec() {
        let d = def("causeway_mesh_timeout");
        let prior = timeout(&d, "t", "90s");
        let remote = |connect: &str| {
            json!({"type": "MeshTimeout", "mesh": "default", "name": "t", "version": 7,
                   "spec": {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectTimeout": connect}}]}})
        };
        let connect = |v: &Value| {
            let Value::List(to) = v.get("to") else {
                panic!("to is a list")
            };
            to[0].get("default").get("connect_timeout").clone()
        };
        let same = state_from_remote(&d, &remote("1m30s"), &prior);
        assert_eq!(connect(&same), Value::string("90s"));
        assert_eq!(same.get("version"), &Value::Number(7.into()));
        let changed = state_from_remote(&d, &remote("2m"), &prior);
        assert_eq!(connect(&changed), Value::string("2m"));
    }
}
