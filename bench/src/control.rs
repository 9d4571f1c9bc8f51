//! The control planes the data-path benches (`sidecar`, `crosszone`, `transparent`)
//! stand on: one global node with mesh `default` (Strict mTLS), and zones serving DDS to
//! the sidecars. The benches measure what comes after; this only has to start the same
//! way for all of them, and say why when it does not.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::sidecar::{
    Svc, api, global_admin_token, global_secret_flags, https_client, wait_file, wait_ok,
};
use crate::{bin, free_port};

/// A running global node and an admin client of its API.
pub(crate) struct Global {
    pub(crate) svc: Svc,
    client: reqwest::Client,
    url: String,
    token: String,
    /// Its KDS port, for zones.
    kds: u16,
    /// When the bench gives up waiting on it.
    deadline: Instant,
}

/// A running zone control plane.
pub(crate) struct Zone {
    pub(crate) svc: Svc,
    /// Where its sidecars reach DDS.
    pub(crate) dds: u16,
    /// Its API port.
    pub(crate) api: u16,
    /// Its data directory (`api-ca.pem` is there).
    pub(crate) dir: PathBuf,
    /// Where it wrote its API tokens.
    pub(crate) tokens: PathBuf,
}

impl Global {
    /// Starts node 1 in `dir/global`, waits until it is ready and creates mesh
    /// `default` with Strict mTLS.
    pub(crate) async fn start(dir: &Path, deadline: Instant) -> anyhow::Result<Global> {
        let (api_port, raft, kds) = (free_port(), free_port(), free_port());
        let gdir = dir.join("global");
        let mut svc = Svc::spawn(
            dir,
            "global-cp",
            Command::new(bin("causeway")?)
                .args(["global-cp", "--node-id", "1"])
                .arg("--data-dir")
                .arg(&gdir)
                .args(global_secret_flags(dir))
                .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
                .args(["--raft-addr", &format!("127.0.0.1:{raft}")])
                .args(["--kds-addr", &format!("127.0.0.1:{kds}")])
                .env("RUST_LOG", "warn"),
            false,
        )?;
        let token = global_admin_token(dir, deadline, &mut svc).await?;
        let ca = wait_file(&gdir.join("api-ca.pem"), deadline, &mut svc).await?;
        let client = https_client(&ca)?;
        let url = format!("https://127.0.0.1:{api_port}");
        wait_ok(
            &client,
            &format!("{url}/ready"),
            None,
            deadline,
            &mut [&mut svc],
        )
        .await?;
        let global = Global {
            svc,
            client,
            url,
            token,
            kds,
            deadline,
        };
        global
            .put(
                "/meshes/default",
                json!({"type": "Mesh", "name": "default", "spec": {"mtls": {"mode": "Strict"}}}),
            )
            .await?;
        Ok(global)
    }

    /// Calls the API as admin, retrying until the deadline; the answer's JSON.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        deadline: Instant,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.url);
        api(&self.client, method, &url, &self.token, body, deadline).await
    }

    /// Puts a resource.
    pub(crate) async fn put(&self, path: &str, resource: Value) -> anyhow::Result<Value> {
        self.call(Method::PUT, path, Some(&resource), self.deadline)
            .await
    }

    /// Lets `from` call `to` (MeshTrafficPermission `<from>-to-<to>`).
    pub(crate) async fn allow(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let name = format!("{from}-to-{to}");
        self.put(
            &format!("/meshes/default/meshtrafficpermissions/{name}"),
            json!({"type": "MeshTrafficPermission", "mesh": "default", "name": name,
                   "spec": {"targetRef": {"kind": "MeshService", "name": to},
                            "from": [{"targetRef": {"kind": "MeshService", "name": from},
                                      "default": {"action": "Allow"}}]}}),
        )
        .await?;
        Ok(())
    }

    /// A dataplane token for `service`, written to `dir/<name>.token`.
    pub(crate) async fn dataplane_token(
        &self,
        dir: &Path,
        name: &str,
        service: &str,
    ) -> anyhow::Result<PathBuf> {
        let v = self
            .call(
                Method::POST,
                "/meshes/default/dataplane-token",
                Some(&json!({"service": service})),
                self.deadline,
            )
            .await?;
        let file = dir.join(format!("{name}.token"));
        std::fs::write(&file, v["token"].as_str().context("no dataplane token")?)?;
        Ok(file)
    }

    /// Starts zone `name` in `dir/<name>` with a token from this node; returns once its
    /// API CA is written (its API and DDS are up).
    pub(crate) async fn zone(&self, dir: &Path, name: &str) -> anyhow::Result<Zone> {
        let v = self
            .call(
                Method::POST,
                &format!("/zones/{name}/token"),
                Some(&json!({})),
                self.deadline,
            )
            .await?;
        let token_file = dir.join(format!("{name}.token"));
        std::fs::write(&token_file, v["token"].as_str().context("no zone token")?)?;
        let (api_port, dds) = (free_port(), free_port());
        let (zdir, tokens) = (dir.join(name), dir.join(format!("{name}-tokens")));
        let mut svc = Svc::spawn(
            dir,
            name,
            Command::new(bin("causeway")?)
                .args(["zone-cp", "--zone", name])
                .args(["--global", &format!("https://127.0.0.1:{}", self.kds)])
                .arg("--token-file")
                .arg(&token_file)
                .arg("--data-dir")
                .arg(&zdir)
                .arg("--seal-key-file")
                .arg(dir.join(format!("{name}-seal.key")))
                .arg("--token-out-dir")
                .arg(&tokens)
                .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
                .args(["--dds-addr", &format!("127.0.0.1:{dds}")])
                .env("RUST_LOG", "warn"),
            false,
        )?;
        wait_file(&zdir.join("api-ca.pem"), self.deadline, &mut svc).await?;
        Ok(Zone {
            svc,
            dds,
            api: api_port,
            dir: zdir,
            tokens,
        })
    }
}

impl Zone {
    /// Starts a sidecar of this zone: a dataplane token from `global` for `service`,
    /// the Dataplane `name` with `spec` written to `dir/<name>-dp.json`, and `command`
    /// (the sidecar binary with any flags of the bench's own) given this zone's flags,
    /// that file and a free admin port. Returns it and its admin port.
    pub(crate) async fn sidecar(
        &self,
        global: &Global,
        dir: &Path,
        mut command: Command,
        name: &str,
        service: &str,
        spec: Value,
    ) -> anyhow::Result<(Svc, u16)> {
        let token_file = global.dataplane_token(dir, name, service).await?;
        let dp = json!({"type": "Dataplane", "mesh": "default", "name": name, "spec": spec});
        let dp_file = dir.join(format!("{name}-dp.json"));
        std::fs::write(&dp_file, serde_json::to_vec(&dp)?)?;
        let admin = free_port();
        let svc = Svc::spawn(
            dir,
            &format!("sidecar-{name}"),
            command
                .args(self.cp_args(&token_file))
                .arg("--dataplane-file")
                .arg(&dp_file)
                .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
                .args(["--drain-seconds", "1"])
                .env("RUST_LOG", "warn"),
            false,
        )?;
        Ok((svc, admin))
    }

    /// The `--cp`, `--cp-ca-file` and `--token-file` flags of a sidecar (or ingress) of
    /// this zone presenting `token`.
    pub(crate) fn cp_args(&self, token: &Path) -> Vec<String> {
        vec![
            "--cp".into(),
            format!("https://127.0.0.1:{}", self.dds),
            "--cp-ca-file".into(),
            self.dir.join("api-ca.pem").display().to_string(),
            "--token-file".into(),
            token.display().to_string(),
        ]
    }
}
