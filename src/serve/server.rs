//! Assembling the Pingora server: the data-plane proxy service, the admin service, and the
//! background services (readiness, probes).

use crate::model::Config;
use crate::serve::admin::Admin;
use crate::serve::header_guard::GuardedApp;
use crate::serve::proxy::Proxy;
use crate::serve::state::{Shared, Stores};
use async_trait::async_trait;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Read buffer of each client connection (see `build`).
const CLIENT_READ_BUFFER: usize = 0;

/// Marks the process ready once the data-plane listener accepts connections.
struct Readiness {
    shared: Arc<Shared>,
    listen: String,
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            if tokio::net::TcpStream::connect(&self.listen).await.is_ok() {
                self.shared.ready.store(true, Ordering::Relaxed);
                log::info!("twinroute ready: data plane on {}", self.listen);
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.changed() => return,
            }
        }
        let _ = shutdown.changed().await;
        self.shared.ready.store(false, Ordering::Relaxed);
    }
}

/// Pingora's server settings for `config`.
fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(config.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(5),
        // Per-process paths: several instances (tests, sidecars sharing /tmp) must not collide.
        pid_file: std::env::temp_dir()
            .join(format!("twinroute-{}.pid", std::process::id()))
            .to_string_lossy()
            .into_owned(),
        upgrade_sock: std::env::temp_dir()
            .join(format!("twinroute-upgrade-{}.sock", std::process::id()))
            .to_string_lossy()
            .into_owned(),
        ..ServerConf::default()
    }
}

/// Build a server for `config` (read from `config_path`, watched for reloads when given). The
/// returned `Shared` is what the admin API and tests observe. Fails when the job store under
/// `state_dir` cannot be opened.
pub fn build(config: Config, config_path: Option<String>) -> Result<(Server, Arc<Shared>), String> {
    let stores = Stores::for_config(&config);
    build_with(config, config_path, stores)
}

/// `build`, keeping answers in `stores` (a shared store, or a test's own).
pub fn build_with(
    config: Config,
    config_path: Option<String>,
    stores: Stores,
) -> Result<(Server, Arc<Shared>), String> {
    let conf = server_conf(&config);
    let listen = config.listen.clone();
    // Idle HTTP/1 keepalive connections are closed by the header guard; h2 ones by Pingora,
    // which takes the value at start (a reload changes the HTTP/1 one only).
    let h2_idle = config.client_keepalive_timeout;
    let admin_listen = config.admin_listen.clone();
    let threads = config.threads;
    // Fail fast on a port another process holds: Pingora would retry the bind forever while that
    // process's socket answered the readiness check (in a pod, the app's own server on 4000).
    for addr in [&listen, &admin_listen] {
        std::net::TcpListener::bind(addr.as_str())
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    }
    crate::serve::stage::team::observe_budgets(&config);
    let shared = Shared::new(config, stores)?;
    let mut server = Server::new_with_opt_and_conf(None, conf);

    let mut http = pingora::proxy::http_proxy(&server.configuration, Proxy::new(shared.clone()));
    // HTTP/2 clients with prior knowledge (h2c) as well as HTTP/1.1 on the same port. An h2
    // connection with no stream open is closed like an idle HTTP/1 keepalive one.
    let mut opts = pingora::apps::HttpServerOptions::default();
    opts.h2c = true;
    opts.h2_idle_timeout = Some(h2_idle);
    http.server_options = Some(opts);
    let mut proxy = Service::new(
        "twinroute data plane".to_string(),
        GuardedApp::new(http, shared.clone()),
    );
    // Small downstream read buffers: Pingora's default is 64 KiB per connection, zeroed at
    // accept, which at thousands of concurrent streams was most of the heap. Pingora's HTTP/1
    // parser reads into its own header and body buffers, so the buffered reader under it only
    // copies twice; `CLIENT_READ_BUFFER` keeps one small read for a request that arrives whole.
    proxy.add_listener(
        ListenerConfig::tcp(listen.as_str())
            .l4_buffer(L4BufferSettings::new(CLIENT_READ_BUFFER, 1460)),
    );
    proxy.threads = Some(threads);

    let mut admin = Service::new(
        "twinroute admin".to_string(),
        GuardedApp::new(
            Admin {
                shared: shared.clone(),
            },
            shared.clone(),
        ),
    );
    admin.add_tcp(&admin_listen);
    admin.threads = Some(1);

    let readiness = background_service(
        "readiness",
        Readiness {
            shared: shared.clone(),
            listen: listen.clone(),
        },
    );
    let probes = background_service(
        "probes",
        crate::serve::probe::ProbeService::new(shared.clone()),
    );

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(readiness);
    server.add_service(probes);
    server.add_service(background_service(
        "tokens",
        crate::serve::refresh::TokenRefresher {
            shared: shared.clone(),
        },
    ));
    server.add_service(background_service(
        "drain",
        crate::serve::reload::Drainer {
            shared: shared.clone(),
        },
    ));
    server.add_service(background_service(
        "memory trim",
        crate::serve::trim::Trimmer {
            shared: shared.clone(),
        },
    ));
    if let Some(fleet) = &shared.fleet {
        server.add_service(background_service(
            "shared state",
            crate::serve::fleet::FleetService {
                fleet: fleet.clone(),
                shared: shared.clone(),
            },
        ));
    }
    if shared.queue.is_some() {
        server.add_service(background_service(
            "queue drain",
            crate::serve::drain::Drain {
                shared: shared.clone(),
            },
        ));
    }
    if let Some(path) = config_path {
        server.add_service(background_service(
            "reload",
            crate::serve::reload::Reloader {
                shared: shared.clone(),
                path,
            },
        ));
    }
    Ok((server, shared))
}
