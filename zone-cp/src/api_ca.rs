//! A zone's own API CA: it signs the certificates of the zone's API and DDS, which the
//! zone's sidecars and ingresses (`--cp-ca-file`), the CLI and Terraform verify. It is
//! rotated in three steps (`causeway_pki::ca_rotation`) with nothing restarted and no
//! proxy cut off:
//!
//! - **stage**: a new CA is trusted but signs nothing yet. The zone sends every
//!   connected proxy both CAs over DDS; each writes them over its CA file and says what
//!   it trusts. The data dir's `api-ca.pem` (and the `--token-out-dir` copy) hold both.
//! - **activate**, once every connected proxy trusts the new CA: the API and DDS present
//!   certificates from it from the next handshake on (their TLS reloads in place).
//! - **finish**: the old CA is dropped, everywhere.
//!
//! The CAs live in `api-cas.json` in the data dir (0600, keys sealed); this module holds
//! their file format and the rules, without sockets. Data dirs of earlier versions kept
//! one CA in `api-ca.pem` and `api-ca-key.sealed`; they are read once and moved here.

use std::path::Path;

use anyhow::Context as _;
use causeway_pki::ca_rotation::{CaPhase, CaStep, Slots, apply_three_step, bundle};
use causeway_pki::sealing::Sealer;
use causeway_pki::{CertKey, write_private};
use serde::{Deserialize, Serialize};

/// The common name of every zone API CA.
pub(crate) const API_CA_NAME: &str = "Causeway Zone API CA";
/// The CAs and their rotation, in the data dir.
const STATE_FILE: &str = "api-cas.json";
/// Where earlier versions kept the one CA's sealed key (its certificate was `api-ca.pem`).
const LEGACY_KEY_FILE: &str = "api-ca-key.sealed";
/// How long the API's and DDS's certificates last (they are issued at every start).
const SERVER_CERT_DAYS: i64 = 825;

/// The zone's API CAs: the one that signs, and during a rotation the staged or the
/// previous one (PEM; keys sealed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApiCas {
    pub(crate) cert_pem: String,
    key_sealed: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) staged_cert_pem: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    staged_key_sealed: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) previous_cert_pem: String,
}

impl ApiCas {
    /// A new CA, its key sealed.
    pub(crate) fn generate(sealer: &Sealer) -> anyhow::Result<(ApiCas, CertKey)> {
        let ca = causeway_pki::generate_ca(API_CA_NAME)?;
        let cas = ApiCas {
            cert_pem: ca.cert_pem.clone(),
            key_sealed: sealer.seal(&ca.key_pem),
            ..ApiCas::default()
        };
        Ok((cas, ca))
    }

    /// The CAs in `dir`, from an earlier version's files if need be (moved into the
    /// state file then); `None` on a first start.
    pub(crate) fn load(dir: &Path) -> anyhow::Result<Option<ApiCas>> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let state = dir.join(STATE_FILE);
        if state.exists() {
            let cas = serde_json::from_str(&read(&state)?).with_context(|| {
                format!(
                    "{} is damaged; the zone cannot serve its API without its CA",
                    state.display()
                )
            })?;
            return Ok(Some(cas));
        }
        let legacy = dir.join(LEGACY_KEY_FILE);
        if !legacy.exists() {
            return Ok(None);
        }
        let cas = ApiCas {
            cert_pem: read(&dir.join(crate::API_CA_FILE))?,
            key_sealed: read(&legacy)?.trim().to_string(),
            ..ApiCas::default()
        };
        write_private(&state, &serde_json::to_string_pretty(&cas)?)
            .with_context(|| format!("writing {}", state.display()))?;
        std::fs::remove_file(&legacy).with_context(|| format!("removing {}", legacy.display()))?;
        Ok(Some(cas))
    }

    /// Saves the CAs (synced) in `dir`, then what clients should trust to `dir`'s
    /// `api-ca.pem` and, when given, the `--token-out-dir` copy.
    pub(crate) fn save(&self, dir: &Path, token_out: Option<&Path>) -> anyhow::Result<()> {
        let state = dir.join(STATE_FILE);
        write_private(&state, &serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", state.display()))?;
        let trust = self.trust();
        for d in std::iter::once(dir).chain(token_out) {
            let f = d.join(crate::API_CA_FILE);
            // The token-out dir's copy is the operator's: updated when it is there.
            if d == dir || f.exists() {
                write_private(&f, &trust).with_context(|| format!("writing {}", f.display()))?;
            }
        }
        Ok(())
    }

    /// The CAs clients must trust now (PEM, one after another).
    pub(crate) fn trust(&self) -> String {
        bundle(&[
            &self.cert_pem,
            &self.staged_cert_pem,
            &self.previous_cert_pem,
        ])
    }

    pub(crate) fn phase(&self) -> CaPhase {
        CaPhase::of(&self.staged_cert_pem, &self.previous_cert_pem)
    }

    /// SHA-256 of the signing CA.
    pub(crate) fn signing_sha256(&self) -> String {
        causeway_pki::first_cert_sha256(&self.cert_pem)
    }

    /// Takes `step` if the signing CA is still `expected`, or says why not (`self`
    /// unchanged).
    pub(crate) fn apply(&mut self, expected: &str, step: CaStep) -> Result<(), String> {
        apply_three_step(
            Slots {
                what: "zone API CA",
                status: "causeway zone api-ca status",
                cert: &mut self.cert_pem,
                key: &mut self.key_sealed,
                staged_cert: &mut self.staged_cert_pem,
                staged_key: &mut self.staged_key_sealed,
                previous: &mut self.previous_cert_pem,
            },
            expected,
            step,
        )
    }

    /// The keys sealed again under `sealer`'s current key (a seal key rotation); true
    /// when any was under the previous one.
    pub(crate) fn reseal(&mut self, sealer: &Sealer) -> anyhow::Result<bool> {
        let mut changed = false;
        for key in [&mut self.key_sealed, &mut self.staged_key_sealed] {
            if key.is_empty() {
                continue;
            }
            if let Some(again) = sealer
                .reseal(key.trim())
                .context("the API CA key is sealed under neither seal key")?
            {
                *key = again;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// A server certificate for `addr`'s host from the signing CA, followed by the CA.
    pub(crate) fn server_cert(
        &self,
        sealer: &Sealer,
        addr: std::net::SocketAddr,
    ) -> anyhow::Result<CertKey> {
        let ca = CertKey {
            cert_pem: self.cert_pem.clone(),
            key_pem: sealer
                .open(self.key_sealed.trim())
                .context("opening the zone API CA's key with --seal-key-file")?,
        };
        let leaf = causeway_pki::issue(
            &ca,
            API_CA_NAME,
            &causeway_pki::server_names(&addr.ip().to_string(), &[]),
            SERVER_CERT_DAYS,
        )?;
        Ok(CertKey {
            cert_pem: format!("{}{}", leaf.cert_pem, ca.cert_pem),
            key_pem: leaf.key_pem,
        })
    }
}

/// Which CA (SHA-256) signed the certificates the zone's listeners present now, as
/// their reloads report it: a rotation finishes once both present the signing CA's.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Serving {
    pub(crate) api: String,
    pub(crate) dds: String,
}

/// Which of [`Serving`]'s fields a listener reports in.
pub(crate) type ServingField = fn(&mut Serving) -> &mut String;

/// A listener's first certificate, from the signing CA, recorded in `serving`.
pub(crate) fn first_cert(
    shared: &crate::Shared,
    addr: std::net::SocketAddr,
    field: ServingField,
) -> anyhow::Result<CertKey> {
    let cas = shared.api_cas.borrow().clone();
    let cert = cas.server_cert(&shared.sealer, addr)?;
    *field(&mut shared.serving_ca.lock().expect("serving lock")) = cas.signing_sha256();
    Ok(cert)
}

/// Keeps a listener's certificate from the signing CA after [`first_cert`]: `install`
/// gets a new one for `addr` whenever the signing CA changes (an activation), and
/// `serving` says which CA it is from. Returns once the CAs' sender is gone.
pub(crate) async fn follow_signing(
    shared: std::sync::Arc<crate::Shared>,
    addr: std::net::SocketAddr,
    listener: &'static str,
    field: ServingField,
    install: impl Fn(&CertKey) -> anyhow::Result<()>,
) {
    let mut cas = shared.api_cas.subscribe();
    let mut signing = field(&mut shared.serving_ca.lock().expect("serving lock")).clone();
    loop {
        let now = cas.borrow_and_update().clone();
        if now.signing_sha256() != signing {
            match now
                .server_cert(&shared.sealer, addr)
                .and_then(|c| install(&c))
            {
                Ok(()) => {
                    signing = now.signing_sha256();
                    *field(&mut shared.serving_ca.lock().expect("serving lock")) = signing.clone();
                    tracing::info!(listener, ca_sha256 = %signing, "presenting a certificate from the new zone API CA");
                }
                Err(e) => {
                    tracing::error!(listener, error = %e, "cannot issue a certificate from the zone API CA; keeping the last one")
                }
            }
        }
        if cas.changed().await.is_err() {
            return;
        }
    }
}

/// What the step after the current phase waits for: to activate, every connected
/// proxy (its name, and the CAs it reported trusting) must trust the staged CA; to
/// finish, the API and DDS must present certificates from the new one (`serving`).
pub(crate) fn waiting_for(
    cas: &ApiCas,
    serving: &Serving,
    proxies: &[(String, Vec<String>)],
) -> Vec<String> {
    match cas.phase() {
        CaPhase::Steady => Vec::new(),
        CaPhase::Staged => {
            let staged = causeway_pki::first_cert_sha256(&cas.staged_cert_pem);
            let behind: Vec<&str> = proxies
                .iter()
                .filter(|(_, trusted)| !trusted.contains(&staged))
                .map(|(name, _)| name.as_str())
                .collect();
            if behind.is_empty() {
                return Vec::new();
            }
            const SHOWN: usize = 5;
            let mut names = behind[..behind.len().min(SHOWN)].join(", ");
            if behind.len() > SHOWN {
                names += &format!(" and {} more", behind.len() - SHOWN);
            }
            vec![format!(
                "{} of {} connected proxies to trust the staged CA ({names})",
                behind.len(),
                proxies.len()
            )]
        }
        CaPhase::Activated => {
            let signing = cas.signing_sha256();
            [("the zone API", &serving.api), ("DDS", &serving.dds)]
                .into_iter()
                // An empty one is a listener this zone does not run (no --dds-addr).
                .filter(|(_, sha)| !sha.is_empty() && **sha != signing)
                .map(|(what, _)| format!("{what} to present a certificate of the new CA"))
                .collect()
        }
    }
}

/// The step named `name`; staging generates the new CA and seals its key.
pub(crate) fn step_named(name: &str, sealer: &Sealer) -> Result<CaStep, String> {
    Ok(match name {
        "stage" => {
            let (next, _) = ApiCas::generate(sealer).map_err(|e| e.to_string())?;
            CaStep::Stage {
                cert_pem: next.cert_pem,
                key_sealed: next.key_sealed,
            }
        }
        "activate" => CaStep::Activate,
        "finish" => CaStep::Finish,
        other => {
            return Err(format!(
                "{other:?} is no step of a zone API CA rotation: stage, activate or finish"
            ));
        }
    })
}

/// `GET /api-ca`: the CAs, what the API and DDS present, what each connected proxy
/// trusts, and the next step (the shape of the global CAs' statuses).
pub(crate) fn status_json(
    cas: &ApiCas,
    serving: &Serving,
    proxies: &[(String, Vec<String>)],
) -> serde_json::Value {
    use causeway_pki::ca_rotation::{ca_json as ca, next_json};
    let mut listed = vec![ca(&cas.cert_pem, "signing")];
    if !cas.staged_cert_pem.is_empty() {
        listed.push(ca(&cas.staged_cert_pem, "staged"));
    }
    if !cas.previous_cert_pem.is_empty() {
        listed.push(ca(&cas.previous_cert_pem, "previous"));
    }
    let waiting = waiting_for(cas, serving, proxies);
    let phase = cas.phase();
    serde_json::json!({
        "phase": phase.name(),
        "cas": listed,
        "bundlePem": cas.trust(),
        "serving": serving,
        "proxies": proxies
            .iter()
            .map(|(name, trusted)| serde_json::json!({"proxy": name, "trusted": trusted}))
            .collect::<Vec<_>>(),
        "next": next_json(phase.next_step(), &waiting),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(&[9u8; 32]).unwrap()
    }

    #[test]
    fn a_rotation_is_trusted_before_it_signs_and_the_old_ca_until_it_finishes() {
        let s = sealer();
        let (mut cas, old) = ApiCas::generate(&s).unwrap();
        let old_sha = causeway_pki::first_cert_sha256(&old.cert_pem);
        let (next, _) = ApiCas::generate(&s).unwrap();
        let new_sha = next.signing_sha256();
        let stage = CaStep::Stage {
            cert_pem: next.cert_pem.clone(),
            key_sealed: next.key_sealed.clone(),
        };
        let addr = "127.0.0.1:1".parse().unwrap();
        let issuer = |cas: &ApiCas| {
            let chain = cas.server_cert(&s, addr).unwrap().cert_pem;
            causeway_pki::issued_by(&chain, &cas.cert_pem)
        };

        cas.apply(&old_sha, stage.clone()).unwrap();
        assert_eq!(cas.phase(), CaPhase::Staged);
        let mut both = vec![old_sha.clone(), new_sha.clone()];
        both.sort();
        assert_eq!(causeway_pki::cert_shas(&cas.trust()), both);
        assert_eq!(
            cas.signing_sha256(),
            old_sha,
            "staged: the old CA still signs"
        );
        assert!(issuer(&cas));

        // A proxy that has not taken the bundle yet holds the activation up.
        let proxies = vec![
            ("default/web-1".to_string(), both.clone()),
            ("default/backend-1".to_string(), vec![old_sha.clone()]),
        ];
        let old_serving = Serving {
            api: old_sha.clone(),
            dds: old_sha.clone(),
        };
        let waiting = waiting_for(&cas, &old_serving, &proxies);
        assert_eq!(
            waiting,
            ["1 of 2 connected proxies to trust the staged CA (default/backend-1)"]
        );
        assert!(waiting_for(&cas, &old_serving, &proxies[..1]).is_empty());

        cas.apply(&old_sha, CaStep::Activate).unwrap();
        assert_eq!(cas.signing_sha256(), new_sha);
        assert_eq!(causeway_pki::cert_shas(&cas.trust()), both);
        assert!(
            issuer(&cas),
            "activated: the server certificate is the new CA's"
        );
        // Finishing waits for both listeners to reload.
        assert_eq!(
            waiting_for(&cas, &old_serving, &proxies),
            [
                "the zone API to present a certificate of the new CA",
                "DDS to present a certificate of the new CA"
            ]
        );
        let reloaded = Serving {
            api: new_sha.clone(),
            dds: String::new(),
        };
        assert!(waiting_for(&cas, &reloaded, &proxies).is_empty());
        let status = status_json(&cas, &reloaded, &proxies);
        assert_eq!(status["phase"], "activated");
        assert_eq!(status["next"]["step"], "finish");
        assert_eq!(status["cas"][1]["role"], "previous");

        // A stale step (the old CA named) is refused and changes nothing.
        let before = cas.clone();
        assert!(cas.apply(&old_sha, CaStep::Finish).is_err());
        assert_eq!(cas, before);
        cas.apply(&new_sha, CaStep::Finish).unwrap();
        assert_eq!(cas.phase(), CaPhase::Steady);
        assert_eq!(causeway_pki::cert_shas(&cas.trust()), [new_sha]);
    }

    #[test]
    fn an_earlier_versions_ca_files_move_into_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer();
        let (cas, ca) = ApiCas::generate(&s).unwrap();
        std::fs::write(dir.path().join(crate::API_CA_FILE), &ca.cert_pem).unwrap();
        std::fs::write(dir.path().join(LEGACY_KEY_FILE), &cas.key_sealed).unwrap();
        let loaded = ApiCas::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded, cas);
        assert!(!dir.path().join(LEGACY_KEY_FILE).exists());
        assert_eq!(ApiCas::load(dir.path()).unwrap().unwrap(), cas);
        assert!(
            ApiCas::load(tempfile::tempdir().unwrap().path())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_seal_key_rotation_reseals_both_keys_of_a_rotation() {
        let old = Sealer::new(&[1u8; 32]).unwrap();
        let (mut cas, _) = ApiCas::generate(&old).unwrap();
        let (next, _) = ApiCas::generate(&old).unwrap();
        let sha = cas.signing_sha256();
        cas.apply(
            &sha,
            CaStep::Stage {
                cert_pem: next.cert_pem,
                key_sealed: next.key_sealed,
            },
        )
        .unwrap();
        let both = Sealer::new(&[2u8; 32])
            .unwrap()
            .with_previous(Sealer::new(&[1u8; 32]).unwrap());
        assert!(cas.reseal(&both).unwrap());
        let only_new = Sealer::new(&[2u8; 32]).unwrap();
        assert!(
            cas.server_cert(&only_new, "127.0.0.1:1".parse().unwrap())
                .is_ok()
        );
        assert!(only_new.open(&cas.staged_key_sealed).is_ok());
        assert!(!cas.reseal(&both).unwrap());
    }
}
