//! `ProxyConfig`: everything a sidecar needs, computed by its zone control plane from the
//! resource model and streamed over DDS. The sidecar runs on it alone: listeners,
//! identities to expect, who may call, where each destination's endpoints are and how to
//! pick one. Serialized as JSON on the wire and as YAML in golden files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Action, Duration, LoadBalancerType, MtlsMode, Protocol};

/// The configuration of one sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Content hash: equal versions mean equal configs.
    pub version: String,
    pub mesh: String,
    /// The Dataplane's name.
    pub dataplane: String,
    pub zone: String,
    /// The Dataplane's address: where inbound listeners bind.
    pub address: String,
    /// mTLS mode of the mesh; `Off` also when the mesh has no mTLS.
    pub mtls: MtlsMode,
    /// The proxy's identity (`spiffe://<trust-domain>/<service>` of its first inbound);
    /// its certificate carries it.
    pub identity: Option<String>,
    pub inbounds: Vec<InboundListener>,
    pub outbounds: Vec<OutboundListener>,
    /// Transparent proxying: the listener redirected connections arrive on, routed by
    /// their original destination to the outbound with that virtual IP. None: the
    /// Dataplane has no `transparentProxying`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent: Option<TransparentListener>,
    /// Revoked intermediate CAs of the mesh (SHA-256 of the DER, hex): a peer whose chain
    /// contains one is refused, in every zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_cas: Vec<String>,
    /// The mesh's trusted roots (SHA-256 of the DER, hex): two during a root CA
    /// rotation. A proxy whose trust bundle holds other roots renews its certificate at
    /// once, which brings the current bundle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_roots: Vec<String>,
    /// The zone's current intermediate CA of the mesh (SHA-256 of the DER, hex): a proxy
    /// whose certificate another one issued renews it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Where the proxy serves its metrics for Prometheus besides its admin address
    /// (MeshMetric's `Prometheus` backends), on its own address. Empty: the admin
    /// address only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_endpoints: Vec<MetricsEndpoint>,
    /// What those endpoints serve (MeshMetric's profiles and applications); the admin
    /// address's `/metrics` serves every metric the proxy has.
    #[serde(default, skip_serializing_if = "MetricsContent::is_everything")]
    pub metrics_content: MetricsContent,
    /// OTLP/gRPC collectors the proxy pushes its metrics to (MeshMetric's
    /// `OpenTelemetry` backends), as the profiles select them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_push: Vec<MetricsPush>,
    /// Distributed tracing (MeshTrace): every inbound and outbound HTTP request. None:
    /// no MeshTrace with a backend applies to this proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

/// The listener of a redirected workload's outbound connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransparentListener {
    /// The port it listens on, on loopback (IPv4 and IPv6).
    pub port: u16,
    /// A connection to an address that is no outbound's virtual IP goes to that
    /// address (the mesh's `networking.outbound.passthrough`); else it is closed.
    pub passthrough: bool,
    /// The port of the proxy's DNS server (UDP and TCP, on loopback); none: no DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_port: Option<u16>,
    /// The mesh's DNS suffix (`mesh`): `<service>.<suffix>` and
    /// `<service>.<zone>.<suffix>` are the outbounds' names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dns_suffix: String,
}

/// How the application reaches an outbound: a local port the proxy listens on
/// (`vip` none), or a virtual IP, any port (`port` 0). Per-destination state (balancers,
/// routes, loggers) is kept by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutboundKey {
    pub vip: Option<std::net::Ipv4Addr>,
    pub port: u16,
}

impl std::fmt::Display for OutboundKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.vip {
            Some(vip) => write!(f, "{vip}"),
            None => write!(f, "port {}", self.port),
        }
    }
}

/// What a sidecar traces and where it sends spans: the effective MeshTrace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    pub backend: TraceBackendConfig,
    /// Trace context formats read (the first one present wins) and written (all).
    pub propagation: Vec<crate::Propagation>,
    pub sampling: TraceSampling,
    /// Tags added to every span.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<SpanTag>,
}

/// Where spans go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "type"
)]
pub enum TraceBackendConfig {
    /// OTLP: over gRPC to `host:port` (or `http://host:port`), or protobuf over HTTP
    /// POST when the endpoint is an http(s) URL with a path (`.../v1/traces`).
    OpenTelemetry { endpoint: String },
    /// Zipkin v2 JSON, POSTed to `url`.
    Zipkin {
        url: String,
        /// New traces get 128-bit ids (else 64-bit, the upper half zero).
        trace_id128bit: bool,
        /// The server span reuses the client's span id (Zipkin's shared spans).
        shared_span_context: bool,
    },
}

/// Sampling percentages, 0 to 100 (see MeshTrace's `sampling`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSampling {
    pub overall: f64,
    pub client: f64,
    pub random: f64,
}

/// A tag added to every span: a literal, or a request header's value (with a default
/// when it is absent; no default: no tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpanTag {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// Traffic to a service this proxy fronts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundListener {
    /// Where the proxy listens (mTLS when the mesh has it).
    pub port: u16,
    pub service: String,
    /// Where the application listens.
    pub app_address: String,
    pub app_port: u16,
    pub protocol: Protocol,
    pub tags: BTreeMap<String, String>,
    /// Who may call, first match wins; no match means [`InboundListener::default_action`].
    pub permissions: Vec<PermissionRule>,
    /// What happens to callers no rule matches: `Deny` with mTLS (deny by default),
    /// `Allow` without (no identities to check).
    pub default_action: Action,
    /// Timeouts for every caller: the MeshTimeout `from[]` entries whose source is
    /// `Mesh`, merged.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Timeouts for some callers (MeshTimeout `from[]` entries for a service or a SPIFFE
    /// id, each merged over the entries for every caller), most specific first: a
    /// caller gets the first that matches its identity, else `timeouts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caller_timeouts: Vec<CallerTimeouts>,
    /// Faults injected into requests (MeshFaultInjection), by caller, most specific
    /// first: a caller gets the first entry that matches its identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<CallerFaults>,
    /// Local rate limits (MeshRateLimit), by caller, most specific first: a caller
    /// counts against the first entry that matches its identity, whose bucket all the
    /// callers it matches share.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<CallerRateLimit>,
    /// Circuit breaking (MeshCircuitBreaker), by caller, most specific first: a caller
    /// counts against the first entry that matches its identity, whose caps and
    /// ejection state all the callers it matches share. Empty without a policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<CallerLimits>,
    /// Access logs (MeshAccessLog `from[]` and `rules`), by caller, most specific
    /// first: a caller's requests and connections are logged to the sinks of the first
    /// entry that matches its identity (plaintext callers: only an entry for every
    /// caller). Empty: no access log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logs: Vec<CallerAccessLog>,
}

/// A Prometheus scrape endpoint: a port on the proxy's address, and a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MetricsEndpoint {
    pub port: u16,
    pub path: String,
    /// Served over the mesh's mTLS: the proxy's workload certificate, and only scrapers
    /// with a certificate of the mesh are answered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mtls: bool,
}

/// Which of the proxy's metrics its MeshMetric endpoints serve, and the applications'
/// metrics served with them. A family is served when an `include` selector matches it,
/// or when one of `profiles` has it and no `exclude` selector matches it (Kuma's
/// order: include wins over exclude).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsContent {
    /// Empty: every family (`All`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<crate::ProfileName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<crate::Selector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<crate::Selector>,
    /// Scraped at each scrape of an endpoint and served after the proxy's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<ApplicationEndpoint>,
    /// Report every outbound destination from the start, before (or without) traffic
    /// (MeshMetric's `sidecar.includeUnused`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_unused: bool,
}

impl MetricsContent {
    /// Every family of the proxy's, no application's, only what took traffic.
    pub fn is_everything(&self) -> bool {
        *self == MetricsContent::default()
    }
}

/// A collector the proxy pushes its metrics to over OTLP/gRPC, every `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsPush {
    /// `host:port`, or `http://host:port`.
    pub endpoint: String,
    pub interval: Duration,
}

/// An application's metrics endpoint, scraped over plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationEndpoint {
    /// The `app` label its samples get.
    pub name: String,
    pub address: String,
    pub port: u16,
    pub path: String,
}

/// The access-log sinks of the callers one source covers (none: not logged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallerAccessLog {
    pub source: SourceMatch,
    pub sinks: Vec<AccessLogSink>,
}

/// Where access-log entries go, and how each is written: a MeshAccessLog backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "type"
)]
pub enum AccessLogSink {
    /// Lines appended to a file on the proxy's host (`/dev/stdout` for its output).
    File {
        path: String,
        /// None: the built-in line (HTTP or TCP).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<AccessLogFormat>,
    },
    /// Lines sent over a TCP connection to a collector.
    Tcp {
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<AccessLogFormat>,
    },
    /// OTLP/gRPC log records: the built-in line as the body, and these attributes
    /// (values are templates).
    OpenTelemetry {
        endpoint: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attributes: Vec<(String, String)>,
    },
}

/// A line's format; templates use the operators of
/// [`crate::access_log_format::Template`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "type"
)]
pub enum AccessLogFormat {
    /// A text line.
    Plain {
        line: String,
        /// Empty values print as nothing instead of `-`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        omit_empty: bool,
    },
    /// A JSON object per line, its fields in this order.
    Json {
        fields: Vec<(String, String)>,
        /// Fields whose value is empty are left out (else `null`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        omit_empty: bool,
    },
}

/// The faults injected into the requests of the callers one source covers, each
/// independently with its own percentage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallerFaults {
    pub source: SourceMatch,
    pub faults: Vec<Fault>,
}

/// One fault: its parts, each drawn on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// Answer with `httpStatus` instead of forwarding, for `percentage` (0-100) of
    /// requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// Wait `value` before forwarding, for `percentage` of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Send the response body at most `kbps` kilobits a second, for `percentage` of
    /// requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bandwidth: Option<FaultBandwidth>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    pub http_status: u16,
    pub percentage: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    pub value: Duration,
    pub percentage: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultBandwidth {
    pub kbps: u64,
    pub percentage: f64,
}

/// The local rate limits of the callers one source covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallerRateLimit {
    pub source: SourceMatch,
    /// HTTP requests; none: not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRateLimitPolicy>,
    /// New TCP connections; none: not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<RatePolicy>,
}

/// `num` per `interval`: a bucket of `num` tokens, full again once `interval` has
/// passed since it was last filled (so of the requests sent within one interval, at
/// most `num` pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RatePolicy {
    pub num: u32,
    pub interval: Duration,
}

/// An HTTP request rate and the answer to a request over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRateLimitPolicy {
    pub rate: RatePolicy,
    /// Default 429.
    pub status: u16,
    /// Headers set on the answer (replacing), then added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_headers: Vec<(String, String)>,
}

/// The timeouts of the callers one source covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallerTimeouts {
    pub source: SourceMatch,
    pub timeouts: Timeouts,
}

impl InboundListener {
    /// The timeouts for the caller `peer` (none without mTLS).
    pub fn timeouts_for(&self, peer: Option<&Peer>) -> &Timeouts {
        peer.and_then(|p| {
            self.caller_timeouts
                .iter()
                .find(|c| c.source.matches(p))
                .map(|c| &c.timeouts)
        })
        .unwrap_or(&self.timeouts)
    }
}

/// The circuit breaking of the callers one source covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallerLimits {
    pub source: SourceMatch,
    #[serde(flatten)]
    pub limits: InboundLimits,
}

/// An inbound's circuit breaking for one entry's callers together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundLimits {
    /// Caller connections open at once; one more is closed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests in flight to the application at once; one more is answered 503
    /// `overflow` at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Requests waiting for a connection to the application (a dial in progress) at
    /// once; one more is answered 503 `overflow` at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Retried requests (a caller's sidecar marks its second and later tries) in flight
    /// to the application at once; one more is answered 503 `overflow` at once, so a
    /// retry storm from every caller together cannot swamp the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Ejection of the application: when its answers fail as a detector says, the
    /// sidecar answers 503 `app-ejected` itself (marked so the callers' sidecars try
    /// another endpoint) for the ejection time, as Envoy does for an inbound cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// One MeshTrafficPermission rule after merging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionRule {
    pub source: SourceMatch,
    pub action: Action,
    /// The policies behind the rule, for `/config` and inspection.
    pub policies: Vec<String>,
}

/// A caller as its certificate proves it: its SPIFFE id, and the tags its zone signed
/// in from its registered Dataplane (`causeway.io/service` and `causeway.io/zone`
/// among them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub id: String,
    pub tags: BTreeMap<String, String>,
}

impl Peer {
    /// A caller known by its SPIFFE id alone (a certificate without tags).
    pub fn id(id: impl Into<String>) -> Peer {
        Peer {
            id: id.into(),
            tags: BTreeMap::new(),
        }
    }
}

/// Which callers a rule covers, decided from the caller's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum SourceMatch {
    /// Any caller with a mesh identity.
    Any,
    /// Callers whose identity is this SPIFFE id.
    Spiffe { id: String },
    /// Callers whose identity starts with these whole path segments
    /// (`spiffe://td/ns/legacy` covers `spiffe://td/ns/legacy/sa/x`, not
    /// `spiffe://td/ns/legacy-2`).
    SpiffePrefix { prefix: String },
    /// Callers whose certificate carries every one of these tags (`MeshSubset`, and
    /// `MeshServiceSubset` with its service as `causeway.io/service`).
    Tags { tags: BTreeMap<String, String> },
}

impl SourceMatch {
    /// Whether the caller `peer` is covered.
    pub fn matches(&self, peer: &Peer) -> bool {
        match self {
            SourceMatch::Any => true,
            SourceMatch::Spiffe { id } => *id == peer.id,
            SourceMatch::SpiffePrefix { prefix } => {
                peer.id.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/')
                })
            }
            SourceMatch::Tags { tags } => tags.iter().all(|(k, v)| peer.tags.get(k) == Some(v)),
        }
    }
}

/// A destination this proxy's application calls on a local port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundListener {
    /// The local port the application connects to; 0 for an implicit outbound, reached
    /// at its `vip`.
    pub port: u16,
    /// The destination's virtual IP (transparent proxying): redirected connections to
    /// it, on any port, come here. No listener of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
    /// The zone an implicit outbound pins calls to (its `<service>.<zone>` name): only
    /// that zone's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The local address the proxy listens on for it.
    pub address: String,
    pub service: String,
    pub protocol: Protocol,
    /// The identity the destination's certificate must carry.
    pub identity: Option<String>,
    pub load_balancer: LoadBalancerType,
    /// LeastRequest: how many random endpoints each pick compares
    /// (`leastRequest.choiceCount`).
    #[serde(
        default = "default_choice_count",
        skip_serializing_if = "is_default_choice_count"
    )]
    pub choice_count: u32,
    /// PeakEwma: how fast an endpoint's old latencies are forgotten
    /// (`peakEwma.decayTime`).
    #[serde(
        default = "default_ewma_decay",
        skip_serializing_if = "is_default_ewma_decay"
    )]
    pub ewma_decay: Duration,
    /// RingHash: how requests are hashed onto the endpoints' ring (set exactly when
    /// `loadBalancer` is `RingHash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHashConfig>,
    /// Maglev: the lookup table's size and how requests are hashed (set exactly when
    /// `loadBalancer` is `Maglev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MaglevConfig>,
    /// Endpoints in priority order: this zone's first, then other zones in failover
    /// order. The proxy uses the first group whose healthy share is at least
    /// `failoverThreshold`; below it, that group's healthy endpoints and the next
    /// group's share the traffic.
    pub groups: Vec<EndpointGroup>,
    /// Percent of a group's endpoints that must be healthy for it to take all traffic
    /// (MeshLoadBalancingStrategy `crossZone.failoverThreshold`, default 50).
    #[serde(default = "default_failover_threshold")]
    pub failover_threshold: f64,
    /// Timeouts for traffic to this destination: the MeshTimeout `to[]` entries for it,
    /// merged.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Active health checks of this destination's endpoints (MeshHealthCheck); none
    /// without a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Limits and outlier detection for this destination (MeshCircuitBreaker); none
    /// without a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Where the destination's traffic goes instead of its own endpoints
    /// (MeshTCPRoute `backendRefs`): a backend chosen by weight per connection (TCP) or
    /// per request (HTTP). Empty: the destination itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<RouteBackend>,
    /// Retries of failed requests and connects (MeshRetry over the built-in defaults,
    /// which apply without a policy too).
    #[serde(default, skip_serializing_if = "Retry::is_default")]
    pub retry: Retry,
    /// MeshHTTPRoute: the destination's routes, most specific first. A request takes
    /// the first route whose conditions hold; one that matches none goes to the
    /// destination as it is. Empty: no route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_routes: Vec<HttpRoute>,
    /// Access logs of the traffic to this destination (MeshAccessLog `to[]`). Empty:
    /// no access log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<AccessLogSink>,
}

/// One route of a destination: one `matches` entry of a MeshHTTPRoute rule (a rule with
/// several becomes one route per entry, each ranked on its own) and what the rule does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// The MeshHTTPRoute the rule comes from (of several with the same matches, the
    /// one with the highest priority), for per-route timeouts and retries and for
    /// `inspect`.
    pub name: String,
    /// The conditions, all of which must hold; none: every request.
    #[serde(default, skip_serializing_if = "is_every_request")]
    pub matches: crate::HttpRouteMatch,
    /// What is done to a matched request, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    /// Where its requests go, one chosen by weight per request. Empty: the
    /// destination's own endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<RouteBackend>,
    /// The route's own timeouts (MeshTimeout `to[]` for this MeshHTTPRoute, over the
    /// destination's); none: the destination's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// The route's own retries (MeshRetry `to[]` for this MeshHTTPRoute); none: the
    /// destination's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

fn is_every_request(m: &crate::HttpRouteMatch) -> bool {
    *m == crate::HttpRouteMatch::default()
}

/// What a route does to a request (or its response), resolved for this route: a
/// prefix replacement knows the prefix its route matched, a mirror its endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "type"
)]
pub enum RouteFilter {
    /// Request headers changed.
    RequestHeaders(HeaderChanges),
    /// Response headers changed (on the answer the caller gets).
    ResponseHeaders(HeaderChanges),
    /// Answer with a redirect to the request's URL with these parts replaced; the
    /// request goes nowhere.
    Redirect {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheme: Option<crate::Scheme>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathRewrite>,
        status: u16,
    },
    /// Forward with the host or path replaced.
    Rewrite {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathRewrite>,
    },
    /// Send a copy of `percentage` percent (0-100) of the requests to `backend`; its
    /// answers are dropped.
    Mirror {
        backend: RouteBackend,
        percentage: f64,
    },
}

/// Headers set (replaced), added (kept beside existing values) and removed, in that
/// order; names in lower case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderChanges {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A new path for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "type"
)]
pub enum PathRewrite {
    /// Replace the whole path.
    Full { path: String },
    /// Replace `matched`, the path prefix the route matched, with `replacement`.
    Prefix {
        matched: String,
        replacement: String,
    },
}

/// A RingHash balancer's settings, over the built-in defaults (XXHash, a ring of 1024
/// to 8388608 entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RingHashConfig {
    pub hash_function: crate::HashFunction,
    pub min_ring_size: u32,
    pub max_ring_size: u32,
    /// What a request's key is made of, in order (none: a random key, no stickiness).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policies: Vec<crate::HashPolicy>,
}

/// A Maglev balancer's settings, over the built-in default table size (65537). Keys
/// are hashed with XXHash, as Envoy's Maglev does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaglevConfig {
    pub table_size: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policies: Vec<crate::HashPolicy>,
}

/// One backend of a routed destination: a service, or its endpoints with some tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteBackend {
    pub service: String,
    /// The tags its endpoints have (a `MeshServiceSubset`); empty: all of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Its share relative to the other backends' weights; 0 takes nothing.
    pub weight: u32,
    /// The identity its certificate must carry.
    pub identity: Option<String>,
    /// Its endpoints, in priority order, as a destination's.
    pub groups: Vec<EndpointGroup>,
}

/// A destination's retries: the effective MeshRetry over the built-in defaults
/// ([`Retry::DEFAULT`]), which apply without any policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Retry {
    /// Requests that are not gRPC.
    pub http: HttpRetryPolicy,
    /// gRPC calls (`content-type: application/grpc...`).
    pub grpc: GrpcRetryPolicy,
    /// TCP: how many endpoints to try to connect to, one after another.
    pub tcp_connect_attempts: u32,
    /// A cap on retries, so a failing destination never multiplies its load.
    pub budget: RetryBudgetPolicy,
}

/// HTTP retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetryPolicy {
    /// Retries after the first try; 0 turns retries off.
    pub num_retries: u32,
    /// Each try's time to a response's head; [`Duration::ZERO`]: only the request
    /// timeout.
    pub per_try_timeout: Duration,
    pub back_off: BackOffPolicy,
    /// What is retried: `5xx`, `GatewayError`, `Reset`, `ConnectFailure`,
    /// `RefusedStream`, `Retriable4xx`, and status codes (`"503"`).
    pub retry_on: Vec<crate::HttpRetryOn>,
    /// Methods whose requests are retried on every condition (upper case); empty: all
    /// methods when nothing was sent (`ConnectFailure`, `RefusedStream`), and only
    /// idempotent ones (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Answers with a header matching one of these are retried too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_response_headers: Vec<crate::HeaderMatch>,
    /// When not empty, only requests with a header matching one of these are retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_request_headers: Vec<crate::HeaderMatch>,
    /// The pause before retrying a 429 or 503 answer, from its headers.
    #[serde(default = "RateLimitedBackOffPolicy::default_policy")]
    pub rate_limited_back_off: RateLimitedBackOffPolicy,
}

/// The pause a 429 or 503 answer asks for: the first of `resetHeaders` it has that
/// reads, at most `maxInterval`; the exponential backoff when it has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitedBackOffPolicy {
    pub reset_headers: Vec<crate::ResetHeader>,
    pub max_interval: Duration,
}

impl RateLimitedBackOffPolicy {
    /// `Retry-After` (seconds, or an HTTP date), at most 300s.
    pub fn default_policy() -> RateLimitedBackOffPolicy {
        RateLimitedBackOffPolicy {
            reset_headers: vec![crate::ResetHeader {
                name: "retry-after".into(),
                format: crate::ResetHeaderFormat::Seconds,
            }],
            max_interval: Duration::from_secs(300),
        }
    }
}

/// gRPC retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRetryPolicy {
    pub num_retries: u32,
    pub per_try_timeout: Duration,
    pub back_off: BackOffPolicy,
    /// The `grpc-status` codes retried (in a response's head: a trailers-only answer).
    pub retry_on: Vec<crate::GrpcRetryOn>,
}

/// Exponential backoff with full jitter: before retry `n` (from 1), a pause drawn
/// between 0 and `min(base * 2^(n-1), max)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackOffPolicy {
    pub base_interval: Duration,
    pub max_interval: Duration,
}

/// The retry budget: a retry is allowed while the retries of the last 10 seconds are
/// at most `percent` of that window's requests, or while fewer than
/// `minRetryConcurrency` retries are in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudgetPolicy {
    pub percent: u32,
    pub min_retry_concurrency: u32,
}

impl BackOffPolicy {
    /// 25 ms, up to 250 ms.
    pub const DEFAULT: BackOffPolicy = BackOffPolicy {
        base_interval: Duration::from_millis(25),
        max_interval: Duration::from_millis(250),
    };
}

impl Retry {
    /// Without a MeshRetry: one retry of HTTP requests on 5xx, resets and connect
    /// failures, and of gRPC calls on UNAVAILABLE; five connect attempts for TCP; a
    /// budget of 20% with 3 retries always allowed at once.
    pub fn default_policy() -> Retry {
        Retry {
            http: HttpRetryPolicy {
                num_retries: 1,
                per_try_timeout: Duration::ZERO,
                back_off: BackOffPolicy::DEFAULT,
                retry_on: vec![
                    crate::HttpRetryOn::ServerError,
                    crate::HttpRetryOn::Reset,
                    crate::HttpRetryOn::ConnectFailure,
                ],
                methods: Vec::new(),
                retriable_response_headers: Vec::new(),
                retriable_request_headers: Vec::new(),
                rate_limited_back_off: RateLimitedBackOffPolicy::default_policy(),
            },
            grpc: GrpcRetryPolicy {
                num_retries: 1,
                per_try_timeout: Duration::ZERO,
                back_off: BackOffPolicy::DEFAULT,
                retry_on: vec![crate::GrpcRetryOn::Unavailable],
            },
            tcp_connect_attempts: 5,
            budget: RetryBudgetPolicy {
                percent: 20,
                min_retry_concurrency: 3,
            },
        }
    }

    /// Whether these are the built-in defaults (left out of serialized configs).
    pub fn is_default(&self) -> bool {
        *self == Retry::default_policy()
    }
}

impl Default for Retry {
    fn default() -> Retry {
        Retry::default_policy()
    }
}

/// A destination's circuit breaking, from the effective MeshCircuitBreaker over its
/// built-in defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Requests in flight to the destination at once (HTTP); more are answered 503
    /// `overflow` at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Connections open to the destination at once (TCP); more are closed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection to the destination at once (a dial in
    /// progress, or a connection at its stream limit); more are answered 503 `overflow`
    /// at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Retries in flight to the destination at once; a failure that would be retried
    /// past it is answered as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Ejection of endpoints that fail in a row; `None` when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// Outlier detection (Envoy's semantics): an endpoint whose answers fail this many
/// times in a row, or (judged every `interval`) whose success rate or failure
/// percentage stands out, is ejected for `baseEjectionTime` times the number of its
/// ejections, unless that would eject more than `maxEjectionPercent` of the
/// destination's endpoints (one may always be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Local failures (resets) count only in `localOriginFailures`, not in the others.
    pub split_local_errors: bool,
    /// 5xx answers (and local failures, unless split) in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_failures: Option<u32>,
    /// 502, 503 and 504 answers (and local failures, unless split) in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_failures: Option<u32>,
    /// Local failures in a row (with `splitLocalErrors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_origin_failures: Option<u32>,
    /// How often the success rate and failure percentage detectors judge.
    #[serde(default = "default_outlier_interval")]
    pub interval: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRateDetector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage: Option<FailurePercentageDetector>,
}

fn default_outlier_interval() -> Duration {
    Duration::from_secs(10)
}

/// Success-rate outlier detection: among the endpoints with at least `requestVolume`
/// answers in an interval, when there are at least `minimumHosts`, one whose success
/// rate is below the mean by more than `standardDeviationFactor` standard deviations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuccessRateDetector {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    /// The factor in thousandths (1900 for 1.9), as Envoy keeps it.
    pub standard_deviation_factor_thousandths: u32,
}

/// Failure-percentage outlier detection: among the endpoints with at least
/// `requestVolume` answers in an interval, when there are at least `minimumHosts`, one
/// whose failures are at least `threshold` percent of its answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailurePercentageDetector {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    pub threshold: u32,
}

/// Active health checks of a destination's endpoints, from the effective
/// MeshHealthCheck over its built-in defaults. Each sidecar checks each endpoint of the
/// destination (other zones' through their ingresses) every `interval` plus up to
/// `jitter`; `unhealthyThreshold` failures in a row take the endpoint out of the
/// balancer's choice, `healthyThreshold` passes in a row bring it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub interval: Duration,
    pub jitter: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Percent (0-100) of the destination's endpoints that must pass their checks for
    /// the results to count; below it (a broken check, or a wide outage) every
    /// endpoint is used as if the checks passed (Envoy's panic mode).
    pub panic_threshold: u32,
    pub check: HealthCheckKind,
}

/// What one health check does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "type"
)]
pub enum HealthCheckKind {
    /// Connect (mTLS to the endpoint's sidecar, which connects to the application);
    /// then, when `send` is set, send it and expect every `receive` in the answer.
    /// Base64.
    Tcp {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        send: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        receive: Vec<String>,
    },
    /// `GET path`; healthy when the status is one of `expectedStatuses`.
    Http {
        path: String,
        expected_statuses: Vec<u16>,
    },
    /// `grpc.health.v1.Health/Check` for `service` (empty: the whole server), with
    /// `authority` as `:authority`; healthy when the answer is SERVING.
    Grpc { service: String, authority: String },
}

impl OutboundListener {
    /// How the application reaches it.
    pub fn key(&self) -> OutboundKey {
        OutboundKey {
            vip: self.vip,
            port: if self.vip.is_some() { 0 } else { self.port },
        }
    }
}

fn default_failover_threshold() -> f64 {
    50.0
}

/// Two choices, as Envoy's and linkerd2-proxy's.
fn default_choice_count() -> u32 {
    2
}

fn is_default_choice_count(n: &u32) -> bool {
    *n == default_choice_count()
}

/// linkerd2-proxy's decay.
fn default_ewma_decay() -> Duration {
    Duration::from_secs(10)
}

fn is_default_ewma_decay(d: &Duration) -> bool {
    *d == default_ewma_decay()
}

/// The timeouts a listener enforces, from the effective MeshTimeout over the built-in
/// defaults. [`Duration::ZERO`] turns a timeout off (the policy's `0s`).
///
/// The defaults, as Kuma's: connect 5s, idle 1h, request 15s, stream idle 30m, and no
/// maximum stream duration, connection duration or request-headers timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Timeouts {
    /// Each dial to an endpoint (TCP connect, then the TLS handshake; a QUIC stream
    /// through an ingress) and, inbound, to the application. Never zero (the policy
    /// allows 1ms to 1h). Default 5s.
    pub connect: Duration,
    /// A connection with no bytes either way (TCP) or no request in flight (HTTP) for
    /// this long is closed. Default 1h.
    pub idle: Duration,
    /// From the request's head in hand until the response's head: past it, 504 and
    /// the upstream request is cancelled. Default 15s.
    pub request: Duration,
    /// A response body that sends nothing for this long is ended with an error (the
    /// stream is reset). Default 30m.
    pub stream_idle: Duration,
    /// The whole exchange, request to the end of the response: 504 before the
    /// response's head, a reset stream after. Default off.
    pub max_stream_duration: Duration,
    /// Inbound connections older than this are drained. Default off.
    pub max_connection_duration: Duration,
    /// HTTP/1.1: how long a caller (inbound) or the application (outbound) may take to
    /// send a request's headers. Default 60s inbound ([`Timeouts::INBOUND_DEFAULT`]),
    /// off outbound.
    pub request_headers: Duration,
}

impl Timeouts {
    /// The built-in defaults of an inbound: [`Timeouts::DEFAULT`], and callers have 60 s
    /// to send an HTTP/1.1 request's headers, so a slowloris caller (or a plaintext one
    /// in permissive mode) cannot hold connections up to the sidecar's cap. hyper counts
    /// from when the connection waits for a request, so an HTTP/1.1 keep-alive
    /// connection idle that long is closed too, as nginx's `keepalive_timeout` (75 s)
    /// does. The outbound (the local application) keeps it off.
    pub const INBOUND_DEFAULT: Timeouts = Timeouts {
        request_headers: Duration::from_secs(60),
        ..Timeouts::DEFAULT
    };

    /// The built-in defaults (no MeshTimeout at all).
    pub const DEFAULT: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        idle: Duration::from_hours(1),
        request: Duration::from_secs(15),
        stream_idle: Duration::from_mins(30),
        max_stream_duration: Duration::ZERO,
        max_connection_duration: Duration::ZERO,
        request_headers: Duration::ZERO,
    };
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts::DEFAULT
    }
}

/// Endpoints of equal priority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointGroup {
    /// The zone the endpoints are in.
    pub zone: String,
    pub endpoints: Vec<Endpoint>,
}

/// One place to send a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
    /// Relative share of traffic (the instance count behind a zone ingress).
    pub weight: u32,
    /// Through another zone's ingress: the TLS SNI that names the destination, which
    /// the ingress routes on without terminating TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Reach it over QUIC (the remote ingress accepts it): one QUIC connection per
    /// ingress carries every connection to it as a stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quic: bool,
    pub tags: BTreeMap<String, String>,
    /// Its affinity class in the caller's zone (MeshLoadBalancingStrategy
    /// `localZone.affinityTags`); none without affinity tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// An endpoint's affinity class: the first affinity tag whose value it shares with the
/// caller (`class` 0 for the first tag, 1 for the second; the number of tags when it
/// shares none), and that class's weight. The classes present among the endpoints a
/// pick considers take traffic in proportion to their weights (not one after another);
/// inside a class the balancer picks as usual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    pub class: u32,
    pub weight: u32,
}

/// The SNI a sidecar sends to another zone's ingress for `service` in `mesh`.
pub fn ingress_sni(service: &str, mesh: &str) -> String {
    format!("{service}.{mesh}.causeway")
}

/// The SNI that names one endpoint (`id` from the ingress's available services) of
/// `service` in `mesh` behind another zone's ingress.
pub fn endpoint_sni(id: &str, service: &str, mesh: &str) -> String {
    format!("{id}.{service}.{mesh}.causeway")
}

/// The configuration of one zone ingress: which SNI goes where. Computed by its zone
/// control plane from the zone's dataplanes, streamed over DDS like a [`ProxyConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressConfig {
    /// Content hash: equal versions mean equal configs.
    pub version: String,
    pub mesh: String,
    pub zone: String,
    /// The ZoneIngress's name.
    pub name: String,
    /// Set while the ingress must refuse all traffic (a failover drill on its zone), with
    /// the reason it logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusing: Option<String>,
    /// With `refusing`: refuse as a dead network would, silently (a blackhole drill). New
    /// connections get no answer, connections in flight stall; nothing is closed or
    /// reset until it ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub silent: bool,
    /// SNI -> the local endpoints (sidecar inbounds, which terminate the mTLS) it reaches.
    pub routes: BTreeMap<String, Vec<IngressTarget>>,
    /// SNI -> the service it reaches, for the ingress's per-destination metrics (an SNI
    /// cannot be split back: service names may hold dots).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, String>,
}

/// A local endpoint an ingress forwards to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressTarget {
    pub address: String,
    pub port: u16,
}

/// The SPIFFE id of `service` in a mesh with `trust_domain`.
pub fn spiffe_id(trust_domain: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/{service}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spiffe_prefix_covers_whole_path_segments() {
        let p = |prefix: &str| SourceMatch::SpiffePrefix {
            prefix: prefix.into(),
        };
        let legacy = p("spiffe://td/ns/legacy");
        let legacy = |id: &str| legacy.matches(&Peer::id(id));
        assert!(legacy("spiffe://td/ns/legacy"));
        assert!(legacy("spiffe://td/ns/legacy/sa/client"));
        assert!(!legacy("spiffe://td/ns/legacy-2/sa/client"));
        assert!(!legacy("spiffe://td/ns"));
        assert!(p("spiffe://td/").matches(&Peer::id("spiffe://td/web")));
        assert!(p("spiffe://td").matches(&Peer::id("spiffe://td/web")));
        assert!(!p("spiffe://td").matches(&Peer::id("spiffe://td2/web")));
        let exact = SourceMatch::Spiffe {
            id: "spiffe://td/web".into(),
        };
        assert!(
            exact.matches(&Peer::id("spiffe://td/web"))
                && !exact.matches(&Peer::id("spiffe://td/web/x"))
        );
        assert!(SourceMatch::Any.matches(&Peer::id("spiffe://anything/at-all")));
    }

    #[test]
    fn a_tag_source_covers_callers_with_all_of_its_tags() {
        let v2 = SourceMatch::Tags {
            tags: [("version".to_string(), "v2".to_string())].into(),
        };
        let mut peer = Peer::id("spiffe://td/web");
        assert!(!v2.matches(&peer), "no tags in its certificate");
        peer.tags.insert("version".into(), "v1".into());
        assert!(!v2.matches(&peer));
        peer.tags.insert("version".into(), "v2".into());
        peer.tags.insert("team".into(), "a".into());
        assert!(v2.matches(&peer));
    }
}
