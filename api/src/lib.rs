//! Causeway's public resource model: the resource envelope shared by every type, the
//! typed specs (Mesh, Zone, Dataplane, ZoneIngress and the thirteen policies), the
//! registry that maps type names and URL plurals to their scope, validation and JSON
//! Schema, the validation itself, [`effective`] (which policies apply to a proxy and
//! what they merge to) and [`explain`] (field docs for `causeway explain`).
//!
//! The global control plane, the zone control plane, the CLI and the Terraform provider
//! all parse and validate resources with this crate, so they agree on what is valid and
//! report the same field paths. It must not do I/O: no files, sockets, clocks or
//! environment variables. Callers read bytes and hand them in; this crate only turns
//! text into values and values into errors.
//!
//! ```
//! use causeway_api::{Resource, validate};
//!
//! let mesh = Resource::from_yaml("type: Mesh\nname: default\nspec:\n  crossZone: false\n")?;
//! assert_eq!(mesh.key().to_string(), "Mesh/default");
//! assert!(validate(&mesh).is_ok());
//!
//! let timeout = Resource::from_yaml(
//!     "type: MeshTimeout\nmesh: default\nname: t\nspec:\n  to:\n  - targetRef: {kind: Mesh}\n    default: {connectTimeout: 2h, idleTimout: 1m}\n",
//! )?;
//! let errors = validate(&timeout).unwrap_err().errors;
//! assert_eq!(errors[0].field, "spec.to[0].default.idleTimout"); // unknown field
//! # Ok::<(), causeway_api::ParseError>(())
//! ```
//!
//! Adding a type is one module (its spec struct, documented field by field, and its
//! `Spec::check`) plus one line in the registry (`registry.rs`); its schema, `explain`
//! output and canonical form follow from the type. Policies live in `policies/`, one
//! module each, with their validation tables.

pub mod access_log_format;
mod dataplane;
mod drill;
mod duration;
mod effective;
mod enforcement;
pub mod exposition;
pub mod inspect;
pub mod instance_health;
pub mod kds;
mod merge_patch;
mod mesh;
mod path_de;
mod percent;
mod policies;
pub mod proxy_config;
mod registry;
mod resource;
#[cfg(test)]
mod roundtrip_tests;
mod schema;
mod shape;
mod spec;
pub mod stats;
mod target_ref;
pub mod timestamp;
mod validation;
mod virtual_ip;
mod zone;
mod zone_ingress;
pub mod zone_token;

pub use dataplane::{DataplaneSpec, Inbound, Outbound, Protocol, TransparentProxying};
pub use drill::{
    DRILL_COOLDOWN, DRILL_WARMUP, DrillMode, DrillReportSpec, DrillSpec, DrillType,
    MAX_TIMELINE_STEPS, PhaseStats, TimelineStep,
};
pub use duration::{Duration, DurationError};
pub use effective::{
    EffectiveConfig, FromRule, IgnoredPolicy, InboundConfig, Merged, NotAPolicyKind,
    OutboundConfig, Proxy, ProxyInbound, ProxyOutbound, ServicePort, effective,
};
pub use enforcement::{Enforcement, FieldWarning, Unenforced, WriteResponse, warnings};
pub use merge_patch::merge_patch;
pub use mesh::{
    BuiltinCa, CaBackend, KeyType, MeshSpec, Mtls, MtlsMode, Networking, OutboundNetworking,
    ProvidedCa, VirtualIpSettings,
};
pub use percent::Percent;
pub use policies::mesh_access_log::{
    AccessLogBackend, AccessLogBackendType, AccessLogConf, FileBackend, KeyValue, LogFormat,
    LogFormatType, MeshAccessLogSpec, OtelLogBackend, TcpBackend,
};
pub use policies::mesh_circuit_breaker::{
    CircuitBreakerConf, ConnectionLimits, Consecutive, Detectors, FailurePercentage,
    MeshCircuitBreakerSpec, OutlierDetection, SuccessRate,
};
pub use policies::mesh_fault_injection::{
    Abort, Delay, FaultInjectionConf, HttpFault, MeshFaultInjectionSpec, ResponseBandwidth,
    parse_bandwidth,
};
pub use policies::mesh_health_check::{
    GrpcHealthCheck, HealthCheckConf, HttpHealthCheck, MeshHealthCheckSpec, TcpHealthCheck,
};
pub use policies::mesh_http_route::{
    BackendRef, Header, HeaderMatch, HeaderMatchType, HeaderModifier, HttpFilter, HttpFilterType,
    HttpRouteConf, HttpRouteMatch, HttpRouteRule, HttpRouteTo, MeshHttpRouteSpec, Method,
    PathMatch, PathMatchType, PathModifier, PathModifierType, QueryMatchType, QueryParamMatch,
    RequestMirror, RequestRedirect, Scheme, UrlRewrite,
};
pub use policies::mesh_load_balancing_strategy::{
    AffinityTag, CrossZone, Failover, FailoverFrom, FailoverThreshold, FailoverTo, FailoverToType,
    HashCookie, HashFunction, HashPolicy, HashPolicyType, LeastRequest, LoadBalancer,
    LoadBalancerType, LoadBalancingConf, LocalZone, LocalityAwareness, Maglev,
    MeshLoadBalancingStrategySpec, NamedValue, PeakEwma, RingHash,
};
pub use policies::mesh_metric::{
    ApplicationMetrics, MeshMetricSpec, MetricBackend, MetricBackendType, MetricConf,
    OtelMetricBackend, Profile, ProfileName, Profiles, PrometheusBackend, Selector, SelectorType,
    SidecarMetrics,
};
pub use policies::mesh_metric::{PrometheusTls, PrometheusTlsMode};
pub use policies::mesh_rate_limit::{
    HttpRateLimit, LocalRateLimit, MeshRateLimitSpec, OnRateLimit, Rate, RateLimitConf,
    ResponseHeaders, TcpRateLimit,
};
pub use policies::mesh_retry::{
    BackOff, GrpcRetry, GrpcRetryOn, HttpRetry, HttpRetryOn, MeshRetrySpec, RateLimitedBackOff,
    ResetHeader, ResetHeaderFormat, RetryBudget, RetryConf, TcpRetry,
};
pub use policies::mesh_tcp_route::TcpRouteTo;
pub use policies::mesh_tcp_route::{MeshTcpRouteSpec, TcpRouteConf};
pub use policies::mesh_timeout::{HttpTimeouts, MeshTimeoutSpec, TimeoutConf};
pub use policies::mesh_trace::{
    HeaderTag, MeshTraceSpec, OtelTraceBackend, Propagation, Sampling, TraceBackend,
    TraceBackendType, TraceConf, TraceTag, ZipkinBackend,
};
pub use policies::mesh_traffic_permission::{
    Action, MeshTrafficPermissionSpec, TrafficPermissionConf,
};
pub use policies::mesh_traffic_permission::{
    SpiffeIdMatch, SpiffeMatch, SpiffeMatchType, SpiffeRulesConf,
};
pub use registry::{Role, Scope, SyncDirection, TypeInfo, type_by_plural, type_info, types};
pub use resource::{ParseError, Resource, ResourceKey};
pub use schema::{ExplainError, explain, schema_for_kind};
pub use spec::check_service_name;
pub use target_ref::{DISPLAY_NAME_LABEL, MatchedRule, ProxyType, Rule, SERVICE_LABELS};
pub use target_ref::{NAMESPACE_TAG, PORT_NAME_TAG, PORT_TAG};
pub use target_ref::{PolicyItem, SERVICE_TAG, SpiffeSource, TargetRef, TargetRefKind, ZONE_TAG};
pub use validation::{
    FieldError, ValidationErrors, decode_spec, dns_label_stem, validate, validate_dns_subdomain,
    validate_label_key, validate_label_value, validate_name,
};
pub use virtual_ip::{DEFAULT_VIP_CIDR, Ipv4Range, VirtualIpSpec, virtual_ip_name};
pub use zone::ZoneSpec;
pub use zone_ingress::{AvailableService, ZoneIngressSpec};
