//! The plugin server: go-plugin's handshake (the magic cookie; a line on stdout with our
//! address and a fresh self-signed certificate, which Terraform then pins for TLS; see
//! [`serve`] for why Terraform's own certificate is not checked in turn), and the
//! tfplugin6 `Provider` service, which decodes values and hands each call to
//! [`crate::resources`].

use std::collections::HashMap;
use std::sync::RwLock;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::client::{Client, Connection};
use crate::data_sources::DataSourceDef;
use crate::plugin::grpc_controller_server::{GrpcController, GrpcControllerServer};
use crate::proto::provider_server::{Provider, ProviderServer};
use crate::proto::*;
use crate::resources::{Diag, ResourceDef};
use crate::schema::{Attr, Block, Mode, Step, TfType, to_proto};
use crate::value::{self, Value};

/// go-plugin's cookie for Terraform providers: proves Terraform started us.
const MAGIC_COOKIE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";

/// What the environment provides; the provider block's attributes win over it.
#[derive(Debug, Default, Clone)]
pub struct Defaults {
    /// `CAUSEWAY_ADDR`: API address(es), comma-separated.
    pub addr: Option<String>,
    /// `CAUSEWAY_TOKEN`.
    pub token: Option<String>,
    /// `CAUSEWAY_CA_CERT` (or `CAUSEWAY_CA_FILE`): a PEM file path, or PEM text.
    pub ca_cert: Option<String>,
    /// `TF_PLUGIN_MAGIC_COOKIE`, set by Terraform.
    pub magic_cookie: Option<String>,
    /// `PLUGIN_CLIENT_CERT`: Terraform's certificate (PEM); set when it wants TLS.
    pub client_cert: Option<String>,
}

/// Runs the provider until Terraform shuts it down.
pub async fn serve(defaults: Defaults) -> anyhow::Result<()> {
    if defaults.magic_cookie.as_deref() != Some(MAGIC_COOKIE) {
        bail!(
            "this binary is a Terraform plugin: Terraform starts it. Install it with a dev_overrides or filesystem mirror entry for causeway/causeway (see docs/terraform.md)"
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")?;
    let addr = listener.local_addr()?;

    let mut builder = tonic::transport::Server::builder();
    let mut cert_b64 = String::new();
    // Terraform asks for TLS by passing its own certificate.
    if defaults.client_cert.is_some() {
        let key = rcgen::KeyPair::generate().context("generating the plugin key")?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
            rcgen::KeyUsagePurpose::KeyAgreement,
            rcgen::KeyUsagePurpose::KeyCertSign,
        ];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .self_signed(&key)
            .context("self-signing the plugin certificate")?;
        cert_b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(cert.der());
        // Terraform pins this certificate, so it talks to us and nobody else. The other
        // way round is not checked: go-plugin signs Terraform's certificate with ECDSA
        // P-521, which ring (our only crypto provider) cannot verify. Like the
        // `tf-provider` crate, we rely on the listener being on loopback only.
        let tls =
            ServerTlsConfig::new().identity(Identity::from_pem(cert.pem(), key.serialize_pem()));
        builder = builder.tls_config(tls).context("TLS configuration")?;
    }

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let provider = ProviderService::new(defaults);
    let controller = Controller { stop: stop_tx };
    // The handshake line: core protocol 1, plugin protocol 6, where, and our certificate.
    println!("1|6|tcp|{addr}|grpc|{cert_b64}");
    builder
        .add_service(ProviderServer::new(provider).max_decoding_message_size(64 << 20))
        .add_service(GrpcControllerServer::new(controller))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        )
        .await
        .context("serving the plugin")?;
    Ok(())
}

struct Controller {
    stop: tokio::sync::watch::Sender<bool>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(
        &self,
        _: Request<crate::plugin::Empty>,
    ) -> Result<Response<crate::plugin::Empty>, Status> {
        let _ = self.stop.send(true);
        Ok(Response::new(crate::plugin::Empty {}))
    }
}

struct ProviderService {
    defaults: Defaults,
    resources: HashMap<String, ResourceDef>,
    data_sources: HashMap<String, DataSourceDef>,
    client: RwLock<Option<Client>>,
}

impl ProviderService {
    fn new(defaults: Defaults) -> ProviderService {
        ProviderService {
            defaults,
            resources: crate::resources::resources()
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect(),
            data_sources: crate::data_sources::data_sources()
                .into_iter()
                .map(|d| (d.name.clone(), d))
                .collect(),
            client: RwLock::new(None),
        }
    }

    fn resource(&self, name: &str) -> Result<&ResourceDef, Status> {
        self.resources
            .get(name)
            .ok_or_else(|| Status::not_found(format!("no resource type {name}")))
    }

    fn client(&self) -> Result<Client, Vec<Diagnostic>> {
        self.client
            .read()
            .expect("the client lock is never poisoned: nothing panics holding it")
            .clone()
            .ok_or_else(|| {
                diags(vec![Diag::new(
                    "the causeway provider is not configured (no provider block was evaluated)",
                )])
            })
    }

    fn configure(&self, config: &Value) -> Result<Client, String> {
        let pick = |attr: &str, default: &Option<String>| {
            config
                .get(attr)
                .as_str()
                .map(str::to_owned)
                .or_else(|| default.clone())
        };
        let addr = pick("address", &self.defaults.addr).unwrap_or_default();
        let token = pick("token", &self.defaults.token).ok_or(
            "no API token: set `token` in the provider block or CAUSEWAY_TOKEN (the admin token `causeway up` prints)",
        )?;
        let ca_pem = match (
            config.get("ca_cert").as_str(),
            config.get("ca_cert_file").as_str(),
            &self.defaults.ca_cert,
        ) {
            (Some(pem), _, _) => Some(pem.to_owned()),
            (None, Some(path), _) => Some(read_ca(path)?),
            (None, None, Some(v)) if v.trim_start().starts_with("-----BEGIN") => Some(v.clone()),
            (None, None, Some(path)) => Some(read_ca(path)?),
            (None, None, None) => None,
        };
        Client::new(Connection {
            addrs: addr
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| {
                    if a.starts_with("http://") || a.starts_with("https://") {
                        a.to_owned()
                    } else {
                        format!("https://{a}")
                    }
                })
                .collect(),
            token,
            ca_pem,
        })
    }
}

fn read_ca(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading the CA certificate {path}: {e}"))
}

fn provider_schema() -> Block {
    Block {
        description: "Causeway's global control plane.".into(),
        attrs: vec![
            Attr::new(
                "address",
                TfType::String,
                Mode::Optional,
                "API address(es) of the global control plane, comma-separated (`https://127.0.0.1:5681`). Default: CAUSEWAY_ADDR.",
            ),
            Attr::new(
                "token",
                TfType::String,
                Mode::Optional,
                "Admin API token. Default: CAUSEWAY_TOKEN.",
            )
            .sensitive(),
            Attr::new(
                "ca_cert",
                TfType::String,
                Mode::Optional,
                "PEM of the CA that signed the API certificate.",
            ),
            Attr::new(
                "ca_cert_file",
                TfType::String,
                Mode::Optional,
                "Path of that PEM file. Default: CAUSEWAY_CA_CERT (or CAUSEWAY_CA_FILE).",
            ),
        ],
        blocks: vec![],
    }
}

// === values and diagnostics on the wire ===

fn decode(v: &Option<DynamicValue>) -> Result<Value, Status> {
    let Some(v) = v else { return Ok(Value::Null) };
    if !v.msgpack.is_empty() {
        return value::decode(&v.msgpack).map_err(|e| Status::invalid_argument(e.to_string()));
    }
    if !v.json.is_empty() {
        let j: serde_json::Value = serde_json::from_slice(&v.json)
            .map_err(|e| Status::invalid_argument(format!("bad JSON value: {e}")))?;
        return Ok(value::from_json(&j));
    }
    Ok(Value::Null)
}

fn encode(v: &Value) -> Option<DynamicValue> {
    Some(DynamicValue {
        msgpack: value::encode(v),
        json: vec![],
    })
}

fn path_proto(path: &[Step]) -> Option<AttributePath> {
    use attribute_path::step::Selector;
    if path.is_empty() {
        return None;
    }
    Some(AttributePath {
        steps: path
            .iter()
            .map(|s| attribute_path::Step {
                selector: Some(match s {
                    Step::Attr(a) => Selector::AttributeName(a.clone()),
                    Step::Index(i) => Selector::ElementKeyInt(*i),
                    Step::Key(k) => Selector::ElementKeyString(k.clone()),
                }),
            })
            .collect(),
    })
}

fn diags(ds: Vec<Diag>) -> Vec<Diagnostic> {
    ds.into_iter()
        .map(|d| Diagnostic {
            severity: if d.warning {
                diagnostic::Severity::Warning
            } else {
                diagnostic::Severity::Error
            } as i32,
            summary: d.summary,
            detail: d.detail,
            attribute: path_proto(&d.path),
        })
        .collect()
}

/// A resource value with its version from private state (`{"version": N}`).
fn with_version(mut v: Value, private: &[u8]) -> Value {
    let version = serde_json::from_slice::<serde_json::Value>(private)
        .ok()
        .and_then(|p| p.get("version").and_then(serde_json::Value::as_u64));
    if let Some(n) = version
        && !v.is_null()
    {
        v.set("version", Value::Number(n.into()));
    }
    v
}

/// Splits the version out of a resource value, into private state.
fn split_version(mut v: Value) -> (Value, Vec<u8>) {
    let version = match &mut v {
        Value::Map(m) => m.remove("version"),
        _ => None,
    };
    let private = match version {
        Some(Value::Number(n)) => serde_json::json!({ "version": n }).to_string().into_bytes(),
        _ => vec![],
    };
    (v, private)
}

fn schema_of(b: &Block) -> Option<Schema> {
    Some(Schema {
        version: 0,
        block: Some(to_proto(b)),
    })
}

// === the Provider service ===

#[tonic::async_trait]
impl Provider for ProviderService {
    async fn get_metadata(
        &self,
        _: Request<get_metadata::Request>,
    ) -> Result<Response<get_metadata::Response>, Status> {
        Ok(Response::new(get_metadata::Response {
            server_capabilities: None,
            diagnostics: vec![],
            data_sources: self
                .data_sources
                .keys()
                .map(|n| get_metadata::DataSourceMetadata {
                    type_name: n.clone(),
                })
                .collect(),
            resources: self
                .resources
                .keys()
                .map(|n| get_metadata::ResourceMetadata {
                    type_name: n.clone(),
                })
                .collect(),
            functions: vec![],
        }))
    }

    async fn get_provider_schema(
        &self,
        _: Request<get_provider_schema::Request>,
    ) -> Result<Response<get_provider_schema::Response>, Status> {
        Ok(Response::new(get_provider_schema::Response {
            provider: schema_of(&provider_schema()),
            resource_schemas: self
                .resources
                .iter()
                .map(|(n, r)| (n.clone(), schema_of(&r.schema).expect("some")))
                .collect(),
            data_source_schemas: self
                .data_sources
                .iter()
                .map(|(n, d)| (n.clone(), schema_of(&d.schema).expect("some")))
                .collect(),
            diagnostics: vec![],
            provider_meta: None,
            server_capabilities: None,
            functions: HashMap::new(),
        }))
    }

    async fn validate_provider_config(
        &self,
        _: Request<validate_provider_config::Request>,
    ) -> Result<Response<validate_provider_config::Response>, Status> {
        Ok(Response::new(validate_provider_config::Response {
            diagnostics: vec![],
        }))
    }

    async fn validate_resource_config(
        &self,
        req: Request<validate_resource_config::Request>,
    ) -> Result<Response<validate_resource_config::Response>, Status> {
        self.resource(&req.get_ref().type_name)?;
        Ok(Response::new(validate_resource_config::Response {
            diagnostics: vec![],
        }))
    }

    async fn validate_data_resource_config(
        &self,
        _: Request<validate_data_resource_config::Request>,
    ) -> Result<Response<validate_data_resource_config::Response>, Status> {
        Ok(Response::new(validate_data_resource_config::Response {
            diagnostics: vec![],
        }))
    }

    async fn upgrade_resource_state(
        &self,
        req: Request<upgrade_resource_state::Request>,
    ) -> Result<Response<upgrade_resource_state::Response>, Status> {
        // Schema version 0 only: the stored JSON is the state as it is.
        let raw = req
            .into_inner()
            .raw_state
            .map(|r| r.json)
            .unwrap_or_default();
        let state = if raw.is_empty() {
            Value::Null
        } else {
            let j: serde_json::Value = serde_json::from_slice(&raw)
                .map_err(|e| Status::invalid_argument(format!("bad state JSON: {e}")))?;
            value::from_json(&j)
        };
        Ok(Response::new(upgrade_resource_state::Response {
            upgraded_state: encode(&state),
            diagnostics: vec![],
        }))
    }

    async fn configure_provider(
        &self,
        req: Request<configure_provider::Request>,
    ) -> Result<Response<configure_provider::Response>, Status> {
        let config = decode(&req.get_ref().config)?;
        let diagnostics = match self.configure(&config) {
            Ok(c) => {
                *self.client.write().expect("never poisoned") = Some(c);
                vec![]
            }
            Err(e) => diags(vec![Diag::new(e)]),
        };
        Ok(Response::new(configure_provider::Response { diagnostics }))
    }

    async fn read_resource(
        &self,
        req: Request<read_resource::Request>,
    ) -> Result<Response<read_resource::Response>, Status> {
        let req = req.into_inner();
        let def = self.resource(&req.type_name)?;
        let prior = with_version(decode(&req.current_state)?, &req.private);
        let result = match self.client() {
            Ok(c) => crate::resources::read(&c, def, &prior).await.map_err(diags),
            Err(d) => Err(d),
        };
        let (state, diagnostics) = match result {
            Ok(s) => (s, vec![]),
            Err(d) => (prior, d),
        };
        let (state, private) = split_version(state);
        Ok(Response::new(read_resource::Response {
            new_state: encode(&state),
            diagnostics,
            private,
        }))
    }

    async fn plan_resource_change(
        &self,
        req: Request<plan_resource_change::Request>,
    ) -> Result<Response<plan_resource_change::Response>, Status> {
        let req = req.into_inner();
        let def = self.resource(&req.type_name)?;
        let prior = decode(&req.prior_state)?;
        let proposed = decode(&req.proposed_new_state)?;
        let config = decode(&req.config)?;
        let plan = crate::resources::plan(def, &prior, &proposed, &config);
        Ok(Response::new(plan_resource_change::Response {
            planned_state: encode(&split_version(plan.planned).0),
            requires_replace: plan
                .requires_replace
                .iter()
                .filter_map(|p| path_proto(p))
                .collect(),
            planned_private: req.prior_private,
            diagnostics: diags(plan.diags),
            legacy_type_system: false,
        }))
    }

    async fn apply_resource_change(
        &self,
        req: Request<apply_resource_change::Request>,
    ) -> Result<Response<apply_resource_change::Response>, Status> {
        let req = req.into_inner();
        let def = self.resource(&req.type_name)?;
        // The version read last, which the write must still find.
        let prior = with_version(decode(&req.prior_state)?, &req.planned_private);
        let planned = decode(&req.planned_state)?;
        let (state, diagnostics) = match self.client() {
            Ok(c) => match crate::resources::apply(&c, def, &prior, &planned).await {
                Ok(s) => (s, vec![]),
                Err((s, d)) => (s, diags(d)),
            },
            Err(d) => (prior, d),
        };
        let (state, private) = split_version(state);
        Ok(Response::new(apply_resource_change::Response {
            new_state: encode(&state),
            private,
            diagnostics,
            legacy_type_system: false,
        }))
    }

    async fn import_resource_state(
        &self,
        req: Request<import_resource_state::Request>,
    ) -> Result<Response<import_resource_state::Response>, Status> {
        let req = req.into_inner();
        let def = self.resource(&req.type_name)?;
        let result = match self.client() {
            Ok(c) => crate::resources::import(&c, def, &req.id)
                .await
                .map_err(diags),
            Err(d) => Err(d),
        };
        let (imported_resources, diagnostics) = match result {
            Ok(state) => {
                let (state, private) = split_version(state);
                (
                    vec![import_resource_state::ImportedResource {
                        type_name: req.type_name.clone(),
                        state: encode(&state),
                        private,
                    }],
                    vec![],
                )
            }
            Err(d) => (vec![], d),
        };
        Ok(Response::new(import_resource_state::Response {
            imported_resources,
            diagnostics,
        }))
    }

    async fn move_resource_state(
        &self,
        _: Request<move_resource_state::Request>,
    ) -> Result<Response<move_resource_state::Response>, Status> {
        Err(Status::unimplemented("moving state between resource types"))
    }

    async fn read_data_source(
        &self,
        req: Request<read_data_source::Request>,
    ) -> Result<Response<read_data_source::Response>, Status> {
        let req = req.into_inner();
        let def = self
            .data_sources
            .get(&req.type_name)
            .ok_or_else(|| Status::not_found(format!("no data source {}", req.type_name)))?;
        let config = decode(&req.config)?;
        let result = match self.client() {
            Ok(c) => crate::data_sources::read_data(&c, def, &config)
                .await
                .map_err(diags),
            Err(d) => Err(d),
        };
        let (state, diagnostics) = match result {
            Ok(s) => (s, vec![]),
            Err(d) => (Value::Null, d),
        };
        Ok(Response::new(read_data_source::Response {
            state: encode(&state),
            diagnostics,
        }))
    }

    async fn get_functions(
        &self,
        _: Request<get_functions::Request>,
    ) -> Result<Response<get_functions::Response>, Status> {
        Ok(Response::new(get_functions::Response {
            functions: HashMap::new(),
            diagnostics: vec![],
        }))
    }

    async fn call_function(
        &self,
        _: Request<call_function::Request>,
    ) -> Result<Response<call_function::Response>, Status> {
        Err(Status::unimplemented(
            "the causeway provider has no functions",
        ))
    }

    async fn stop_provider(
        &self,
        _: Request<stop_provider::Request>,
    ) -> Result<Response<stop_provider::Response>, Status> {
        // Nothing runs in the background; Terraform shuts the plugin down next.
        Ok(Response::new(stop_provider::Response {
            error: String::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Terraform (gRPC-go) takes messages of up to 4 MiB by default.
    #[tokio::test]
    async fn the_schema_fits_in_a_grpc_message() {
        let svc = ProviderService::new(Defaults::default());
        let resp = svc
            .get_provider_schema(Request::new(get_provider_schema::Request {}))
            .await
            .unwrap()
            .into_inner();
        let len = resp.encoded_len();
        assert!(len < 4 << 20, "schema is {len} bytes");
        assert!(
            resp.resource_schemas
                .contains_key("causeway_mesh_http_route")
        );
    }
}
