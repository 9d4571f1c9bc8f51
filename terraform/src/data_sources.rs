//! The data sources: meshes, zones (with whether they are online) and policies, read
//! from the global API.

use std::collections::BTreeMap;

use causeway_api::Scope;
use serde_json::{Value as Json, json};

use crate::client::{CallError, Client};
use crate::resources::{
    Diag, Diags, api_path, call_diags, describe, str_attr, version_attr, version_of,
};
use crate::schema::{Attr, Block, Mode, Step, TfType};
use crate::value::Value;

pub struct DataSourceDef {
    pub name: String,
    pub schema: Block,
}

pub fn data_sources() -> Vec<DataSourceDef> {
    let s = |n: &str, mode: Mode, d: &str| Attr::new(n, TfType::String, mode, d);
    let zone_obj = TfType::Object(BTreeMap::from([
        ("name".into(), TfType::String),
        ("enabled".into(), TfType::Bool),
        ("online".into(), TfType::Bool),
    ]));
    vec![
        DataSourceDef {
            name: "causeway_mesh".into(),
            schema: Block {
                description: "One mesh.".into(),
                attrs: vec![
                    s("name", Mode::Required, "The mesh."),
                    labels_out(),
                    s(
                        "spec_json",
                        Mode::Computed,
                        "Its spec as JSON (`jsondecode` it).",
                    ),
                    version_attr(),
                ],
                blocks: vec![],
            },
        },
        DataSourceDef {
            name: "causeway_meshes".into(),
            schema: Block {
                description: "The names of every mesh.".into(),
                attrs: vec![Attr::new(
                    "names",
                    TfType::List(Box::new(TfType::String)),
                    Mode::Computed,
                    "Mesh names, sorted.",
                )],
                blocks: vec![],
            },
        },
        DataSourceDef {
            name: "causeway_zone".into(),
            schema: Block {
                description: "One zone, with its live state.".into(),
                attrs: vec![
                    s("name", Mode::Required, "The zone."),
                    Attr::new(
                        "enabled",
                        TfType::Bool,
                        Mode::Computed,
                        "Whether the zone may connect.",
                    ),
                    Attr::new(
                        "online",
                        TfType::Bool,
                        Mode::Computed,
                        "Whether its zone control plane is connected now.",
                    ),
                    s(
                        "status_json",
                        Mode::Computed,
                        "The full status the API reports, as JSON.",
                    ),
                    version_attr(),
                ],
                blocks: vec![],
            },
        },
        DataSourceDef {
            name: "causeway_zones".into(),
            schema: Block {
                description: "Every zone and whether it is online.".into(),
                attrs: vec![Attr::new(
                    "zones",
                    TfType::List(Box::new(zone_obj)),
                    Mode::Computed,
                    "`{name, enabled, online}` per zone, by name.",
                )],
                blocks: vec![],
            },
        },
        DataSourceDef {
            name: "causeway_policy".into(),
            schema: Block {
                description: "One policy of any kind.".into(),
                attrs: vec![
                    s("type", Mode::Required, "The kind, e.g. `MeshTimeout`."),
                    s("mesh", Mode::Required, "The mesh."),
                    s("name", Mode::Required, "The name."),
                    labels_out(),
                    s("spec_json", Mode::Computed, "The spec as JSON."),
                    s("spec_yaml", Mode::Computed, "The spec as YAML."),
                    version_attr(),
                ],
                blocks: vec![],
            },
        },
        DataSourceDef {
            name: "causeway_policies".into(),
            schema: Block {
                description: "The names of the policies of one kind in a mesh.".into(),
                attrs: vec![
                    s(
                        "type",
                        Mode::Required,
                        "The kind, e.g. `MeshTrafficPermission`.",
                    ),
                    s("mesh", Mode::Required, "The mesh."),
                    Attr::new(
                        "names",
                        TfType::List(Box::new(TfType::String)),
                        Mode::Computed,
                        "Policy names, sorted.",
                    ),
                ],
                blocks: vec![],
            },
        },
    ]
}

fn labels_out() -> Attr {
    Attr::new(
        "labels",
        TfType::Map(Box::new(TfType::String)),
        Mode::Computed,
        "Labels.",
    )
}

async fn list_all(client: &Client, base: &str) -> Result<Vec<Json>, Diags> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("{base}?limit=1000&after={a}"),
            None => format!("{base}?limit=1000"),
        };
        let page = client
            .get(&path)
            .await
            .map_err(|e| call_diags(&e, &format!("listing {base}"), None, &[]))?
            .unwrap_or(Json::Null);
        items.extend(
            page.get("items")
                .and_then(Json::as_array)
                .cloned()
                .unwrap_or_default(),
        );
        match page.get("next").and_then(Json::as_str) {
            Some(n) if !n.is_empty() => after = Some(n.to_owned()),
            _ => return Ok(items),
        }
    }
}

fn names(items: &[Json]) -> Value {
    let mut n: Vec<String> = items
        .iter()
        .filter_map(|i| i.get("name")?.as_str().map(str::to_owned))
        .collect();
    n.sort();
    Value::List(n.into_iter().map(Value::String).collect())
}

/// Reads a data source.
pub async fn read_data(
    client: &Client,
    def: &DataSourceDef,
    config: &Value,
) -> Result<Value, Diags> {
    let mut state = config.clone();
    let not_found = |what: String| vec![Diag::new(format!("{what} does not exist"))];
    let fail = |what: &str| {
        let what = what.to_owned();
        move |e: CallError| call_diags(&e, &what, None, &[])
    };
    match def.name.as_str() {
        "causeway_mesh" => {
            let name = str_attr(config, "name");
            let what = describe("Mesh", "", &name);
            let r = client
                .get(&format!("/meshes/{name}"))
                .await
                .map_err(fail(&what))?
                .ok_or_else(|| not_found(what.clone()))?;
            state.set(
                "labels",
                crate::value::from_json(r.get("labels").unwrap_or(&json!({}))),
            );
            state.set(
                "spec_json",
                Value::string(r.get("spec").unwrap_or(&json!({})).to_string()),
            );
            state.set("version", version_of(&r));
        }
        "causeway_meshes" => {
            state.set("names", names(&list_all(client, "/meshes").await?));
        }
        "causeway_zone" => {
            let name = str_attr(config, "name");
            let what = describe("Zone", "", &name);
            let r = client
                .get(&format!("/zones/{name}"))
                .await
                .map_err(fail(&what))?
                .ok_or_else(|| not_found(what.clone()))?;
            state.set(
                "enabled",
                Value::Bool(
                    r.pointer("/spec/enabled")
                        .and_then(Json::as_bool)
                        .unwrap_or(true),
                ),
            );
            state.set(
                "online",
                Value::Bool(
                    r.pointer("/status/online")
                        .and_then(Json::as_bool)
                        .unwrap_or(false),
                ),
            );
            state.set(
                "status_json",
                Value::string(r.get("status").unwrap_or(&json!({})).to_string()),
            );
            state.set("version", version_of(&r));
        }
        "causeway_zones" => {
            let mut zones = list_all(client, "/zones").await?;
            zones.sort_by(|a, b| {
                a.get("name")
                    .and_then(Json::as_str)
                    .cmp(&b.get("name").and_then(Json::as_str))
            });
            let list = zones
                .iter()
                .map(|z| {
                    Value::Map(BTreeMap::from([
                        (
                            "name".into(),
                            Value::opt_string(z.get("name").and_then(Json::as_str)),
                        ),
                        (
                            "enabled".into(),
                            Value::Bool(
                                z.pointer("/spec/enabled")
                                    .and_then(Json::as_bool)
                                    .unwrap_or(true),
                            ),
                        ),
                        (
                            "online".into(),
                            Value::Bool(
                                z.pointer("/status/online")
                                    .and_then(Json::as_bool)
                                    .unwrap_or(false),
                            ),
                        ),
                    ]))
                })
                .collect();
            state.set("zones", Value::List(list));
        }
        "causeway_policy" | "causeway_policies" => {
            let kind = str_attr(config, "type");
            let mesh = str_attr(config, "mesh");
            let info = causeway_api::type_info(&kind)
                .filter(|t| t.scope == Scope::Mesh)
                .ok_or_else(|| {
                    vec![
                        Diag::new(format!("{kind:?} is not a policy kind"))
                            .at(vec![Step::Attr("type".into())]),
                    ]
                })?;
            if def.name == "causeway_policies" {
                let items = list_all(client, &format!("/meshes/{mesh}/{}", info.plural)).await?;
                state.set("names", names(&items));
            } else {
                let name = str_attr(config, "name");
                let what = describe(&kind, &mesh, &name);
                let r = client
                    .get(&api_path(info, &mesh, &name))
                    .await
                    .map_err(fail(&what))?
                    .ok_or_else(|| not_found(what.clone()))?;
                let spec = r.get("spec").cloned().unwrap_or_else(|| json!({}));
                state.set(
                    "labels",
                    crate::value::from_json(r.get("labels").unwrap_or(&json!({}))),
                );
                state.set("spec_json", Value::string(spec.to_string()));
                state.set(
                    "spec_yaml",
                    Value::string(serde_yaml::to_string(&spec).unwrap_or_default()),
                );
                state.set("version", version_of(&r));
            }
        }
        other => return Err(vec![Diag::new(format!("unknown data source {other}"))]),
    }
    Ok(state)
}
