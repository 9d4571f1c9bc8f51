//! The connection to the zone control plane: certificate signing (renewed before expiry)
//! and the DDS stream that delivers configs (and carries the proxy's ACKs, NACKs,
//! reports and golden-signal deltas back). Both retry with backoff forever; the proxy
//! keeps running on its last config and certificate meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use causeway_api::inspect::ProxyReport;
use causeway_api::kds::dds::dds_client::DdsClient;
use causeway_api::kds::dds::{
    CpTrusted, ProxyAck, ProxyHello, ProxyMessage, ProxyNack, ProxyReport as DdsReport, ProxyStats,
    SignRequest, control_message, proxy_message,
};
use causeway_api::stats::PROXY_REPORT_INTERVAL;
use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::identity::Identity;
use crate::metrics::Metrics;

/// Where the zone control plane is and how to talk to it.
#[derive(Clone)]
pub struct ControlPlane {
    /// `https://host:port` of the zone's DDS.
    pub addr: String,
    /// The zone API CAs (from `--cp-ca-file`, the zone's `api-ca.pem`), replaced by what
    /// the zone sends during a rotation of them.
    pub ca: Arc<Followed>,
    /// The proxy's token: the one it started with until its zone renews it, then each
    /// renewal (see `causeway_pki::dataplane_token`).
    pub token: Arc<Followed>,
}

/// A value read from a file that the zone may replace while the proxy runs (its token,
/// renewed; the CAs of its zone's API, rotated). A replacement is used from then on and
/// written over the file, so a restart starts from it: after the first token expired,
/// or once the zone's API presents a certificate of a new CA.
pub struct Followed {
    current: std::sync::Mutex<String>,
    file: Option<std::path::PathBuf>,
    /// For logs: "token", "zone API CAs".
    what: &'static str,
}

impl Followed {
    /// `value`, read from `file` (where replacements go), if any.
    pub fn new(
        value: String,
        file: Option<std::path::PathBuf>,
        what: &'static str,
    ) -> Arc<Followed> {
        Arc::new(Followed {
            current: std::sync::Mutex::new(value),
            file,
            what,
        })
    }

    /// The value to use now.
    pub fn get(&self) -> String {
        self.current.lock().expect("followed lock").clone()
    }

    /// Takes a replacement from the zone, and writes it over the file (in a blocking
    /// task). An empty or unchanged one changes nothing.
    async fn replace(&self, value: String) {
        if value.trim().is_empty() || *self.current.lock().expect("followed lock") == value {
            return;
        }
        *self.current.lock().expect("followed lock") = value.clone();
        let what = self.what;
        let Some(file) = self.file.clone() else {
            return;
        };
        let written = tokio::task::spawn_blocking({
            let file = file.clone();
            let contents = if value.ends_with('\n') {
                value
            } else {
                format!("{value}\n")
            };
            move || causeway_pki::write_private(&file, &contents)
        })
        .await;
        match written {
            Ok(Ok(())) => {
                tracing::info!(file = %file.display(), what, "the zone sent a new one; written over the file")
            }
            Ok(Err(e)) => tracing::warn!(
                file = %file.display(), what, error = %e,
                "the zone sent a new one but it cannot be written over the file: a restart reads the old one"
            ),
            Err(e) => tracing::warn!(what, error = %e, "writing what the zone sent"),
        }
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl ControlPlane {
    async fn channel(&self) -> anyhow::Result<Channel> {
        let ep = Endpoint::from_shared(self.addr.clone())
            .map_err(|e| anyhow::anyhow!("--cp {:?}: {e}", self.addr))?
            .tls_config(
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca.get())),
            )?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
        Ok(tokio::time::timeout(Duration::from_secs(10), ep.connect())
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {} timed out", self.addr))??)
    }

    /// Asks for a certificate for a fresh key, for the registered Dataplane `dataplane`
    /// (the zone writes its tags into the certificate).
    pub async fn sign(
        &self,
        dataplane: &str,
        revoked: crate::identity::Revoked,
    ) -> anyhow::Result<Identity> {
        let csr = causeway_pki::generate_csr("causeway-dataplane")?;
        let resp = DdsClient::new(self.channel().await?)
            .sign(SignRequest {
                token: self.token.get(),
                csr_pem: csr.csr_pem,
                dataplane: dataplane.to_owned(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("certificate refused: {}", s.message()))?
            .into_inner();
        Identity::new(
            &resp.cert_chain_pem,
            &csr.key_pem,
            &resp.trust_bundle_pem,
            resp.renew_at,
            revoked,
        )
    }

    /// Keeps the identity fresh: signs one now (retrying), then renews at each
    /// certificate's renewal point, or at once when `renew_now` fires (its CA was
    /// revoked). Existing connections keep their session; new ones use the new
    /// certificate.
    pub async fn keep_identity(
        self,
        dataplane: String,
        tx: watch::Sender<Option<Arc<Identity>>>,
        revoked: crate::identity::Revoked,
        renew_now: Arc<tokio::sync::Notify>,
    ) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.sign(&dataplane, revoked.clone()).await {
                Ok(id) => {
                    tracing::info!(id = %id.id, not_after = id.not_after, renew_at = id.renew_at, "workload certificate issued");
                    let wait = (id.renew_at - now_unix()).max(1) as u64;
                    tx.send_replace(Some(Arc::new(id)));
                    backoff = Duration::from_millis(200);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
                        _ = renew_now.notified() => {
                            tracing::info!("renewing the workload certificate now: its CA was revoked or moved on");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "getting a workload certificate; retrying");
                    // A config that says the zone's CA moved (a new intermediate after a
                    // revocation) is worth a try at once.
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5)) => {}
                        _ = renew_now.notified() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Registers the dataplane (or ingress) and follows its config, reconnecting forever.
    pub async fn follow_config<T>(
        self,
        registration: Registration,
        tx: watch::Sender<Option<Arc<T>>>,
    ) where
        T: serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        // Nothing to report: a channel that never changes.
        let (_keep, reports) = watch::channel(None);
        self.follow_config_reporting(registration, tx, reports, None)
            .await
    }

    /// [`ControlPlane::follow_config`], and sends the zone each new [`ProxyReport`]
    /// from `reports` (and the current one on every (re)connect), for `causeway
    /// inspect dataplane`; with `signals`, the golden-signal deltas of its metrics
    /// every [`PROXY_REPORT_INTERVAL`] (what a stream could not send goes on the next).
    pub(crate) async fn follow_config_reporting<T>(
        self,
        registration: Registration,
        tx: watch::Sender<Option<Arc<T>>>,
        mut reports: watch::Receiver<Option<Arc<ProxyReport>>>,
        signals: Option<Arc<Metrics>>,
    ) where
        T: serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        let mut backoff = Duration::from_millis(200);
        let mut signals = signals.map(|metrics| Signals {
            metrics,
            last: HashMap::new(),
        });
        loop {
            let started = std::time::Instant::now();
            match self
                .stream_once(&registration, &tx, &mut reports, signals.as_mut())
                .await
            {
                Ok(()) => tracing::info!("DDS stream ended; reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %e, "DDS stream failed; keeping the last config and retrying")
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(200);
            }
            tokio::time::sleep(backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5)).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn stream_once<T>(
        &self,
        registration: &Registration,
        tx: &watch::Sender<Option<Arc<T>>>,
        reports: &mut watch::Receiver<Option<Arc<ProxyReport>>>,
        mut signals: Option<&mut Signals>,
    ) -> anyhow::Result<()>
    where
        T: serde::de::DeserializeOwned,
    {
        let (up, rx) = mpsc::channel(4);
        let mut hello = ProxyHello {
            token: self.token.get(),
            ..ProxyHello::default()
        };
        match registration {
            Registration::Dataplane(json) => hello.dataplane_json = json.clone(),
            Registration::Ingress(json) => hello.ingress_json = json.clone(),
        }
        up.send(ProxyMessage {
            msg: Some(proxy_message::Msg::Hello(hello)),
        })
        .await?;
        let mut client = DdsClient::new(self.channel().await?);
        let up_stream = ReceiverStream::new(rx);
        let mut down = match registration {
            Registration::Dataplane(_) => client.stream(up_stream).await,
            Registration::Ingress(_) => client.ingress_stream(up_stream).await,
        }
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
        // The zone forgets a proxy's report when its stream ends: send the current one
        // on every new stream, then each change.
        let mut reporting = true;
        let current = reports.borrow_and_update().clone();
        if let Some(r) = current {
            up.send(report_message(&r)).await?;
        }
        let mut signal_tick = tokio::time::interval(PROXY_REPORT_INTERVAL);
        signal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let msg = tokio::select! {
                msg = down.next() => match msg {
                    Some(msg) => msg.map_err(|s| anyhow::anyhow!("{}", s.message()))?,
                    None => break,
                },
                changed = reports.changed(), if reporting => {
                    match changed {
                        Ok(()) => {
                            let current = reports.borrow_and_update().clone();
                            if let Some(r) = current {
                                up.send(report_message(&r)).await?;
                            }
                        }
                        // The reporter is gone (shutting down): stop listening to it.
                        Err(_) => reporting = false,
                    }
                    continue;
                }
                _ = signal_tick.tick(), if signals.is_some() => {
                    if let Some(s) = signals.as_deref_mut() {
                        let deltas = s.metrics.signal_deltas(&mut s.last);
                        if !deltas.is_empty() {
                            up.send(ProxyMessage {
                                msg: Some(proxy_message::Msg::Stats(ProxyStats { signals: deltas })),
                            })
                            .await?;
                        }
                    }
                    continue;
                }
            };
            let snap = match msg.msg {
                Some(control_message::Msg::Config(snap)) => snap,
                Some(control_message::Msg::RenewedToken(t)) => {
                    tracing::debug!(expires_unix = t.expires_unix, "the zone renewed the token");
                    self.token.replace(t.token).await;
                    continue;
                }
                Some(control_message::Msg::CpTrust(t)) => {
                    // Only a bundle that holds CAs replaces the one in use (an empty or
                    // broken one would cut the proxy off its zone at the next connect),
                    // and only when the CAs differ: the file is not rewritten for its
                    // formatting (it may be read-only, as a mounted one).
                    let sent = causeway_pki::cert_shas(&t.ca_bundle_pem);
                    if !sent.is_empty() && sent != causeway_pki::cert_shas(&self.ca.get()) {
                        self.ca.replace(t.ca_bundle_pem).await;
                    }
                    up.send(ProxyMessage {
                        msg: Some(proxy_message::Msg::CpTrusted(CpTrusted {
                            ca_sha256: causeway_pki::cert_shas(&self.ca.get()),
                        })),
                    })
                    .await?;
                    continue;
                }
                None => continue,
            };
            let reply = match serde_json::from_slice::<T>(&snap.json) {
                Ok(cfg) => {
                    tracing::info!(version = %snap.version, "new config");
                    tx.send_replace(Some(Arc::new(cfg)));
                    proxy_message::Msg::Ack(ProxyAck {
                        version: snap.version,
                    })
                }
                Err(e) => {
                    tracing::warn!(version = %snap.version, error = %e, "rejected a config");
                    proxy_message::Msg::Nack(ProxyNack {
                        version: snap.version,
                        reason: e.to_string(),
                    })
                }
            };
            up.send(ProxyMessage { msg: Some(reply) }).await?;
        }
        Ok(())
    }
}

/// The metrics whose deltas go to the zone, and their totals at the last report.
pub(crate) struct Signals {
    metrics: Arc<Metrics>,
    last: HashMap<crate::metrics::SignalLabels, [u64; 2 + causeway_api::stats::BUCKETS]>,
}

fn report_message(r: &ProxyReport) -> ProxyMessage {
    ProxyMessage {
        msg: Some(proxy_message::Msg::Report(DdsReport {
            json: serde_json::to_vec(r).expect("reports serialize"),
        })),
    }
}

/// What a DDS stream registers, as JSON of the resource.
#[derive(Debug, Clone)]
pub enum Registration {
    /// A sidecar's Dataplane; configs are `ProxyConfig`s.
    Dataplane(Vec<u8>),
    /// A zone ingress's ZoneIngress; configs are `IngressConfig`s.
    Ingress(Vec<u8>),
}
