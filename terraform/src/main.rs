//! `terraform-provider-causeway`: started by Terraform, never by hand. Reads the
//! environment defaults of the provider block here, at the edge, and serves.

use causeway_terraform::{Defaults, serve};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    // Terraform shows the plugin's stderr in its own log (TF_LOG); tokens are never logged.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAUSEWAY_PROVIDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let defaults = Defaults {
        addr: env("CAUSEWAY_ADDR"),
        token: env("CAUSEWAY_TOKEN"),
        // The CLI calls it CAUSEWAY_CA_FILE; accept both.
        ca_cert: env("CAUSEWAY_CA_CERT").or_else(|| env("CAUSEWAY_CA_FILE")),
        magic_cookie: env("TF_PLUGIN_MAGIC_COOKIE"),
        client_cert: env("PLUGIN_CLIENT_CERT"),
    };
    match serve(defaults).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("terraform-provider-causeway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
