//! The Terraform provider for Causeway, `causeway`: platform teams declare meshes, zones
//! (with their tokens), policies and dataplane/ingress tokens in HCL, and this provider
//! turns plans into calls to the global policy API.
//!
//! It speaks Terraform's plugin protocol 6 itself, on tonic (the `tf-provider` crate would
//! bring a second major version of tonic, prost and rcgen into the workspace): a gRPC
//! server behind go-plugin's handshake over TLS ([`serve`]), values in cty's
//! MessagePack ([`value`]), schemas generated from the resource model's JSON Schema
//! ([`schema`]), plan/apply/read/import per resource ([`resources`]) and the data
//! sources ([`data_sources`]).
//!
//! It depends on `causeway-api` for the model and its validation, and on nothing
//! server-side; it must never log tokens (they are sensitive attributes).

mod client;
pub mod data_sources;
pub mod resources;
pub mod schema;
mod server;
pub mod value;

pub use server::{Defaults, serve};

/// Messages and services of tfplugin6 (generated).
#[allow(unreachable_pub, dead_code, clippy::all, rust_2018_idioms)]
pub(crate) mod proto {
    tonic::include_proto!("tfplugin6");
}

/// go-plugin's controller service (generated).
#[allow(unreachable_pub, dead_code, clippy::all, rust_2018_idioms)]
pub(crate) mod plugin {
    tonic::include_proto!("plugin");
}
