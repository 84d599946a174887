//! The `twinroute` command line: `run`, `check`, `demo`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use twinroute::config;

/// jemalloc, not the system allocator: why, and what it costs and saves, is in the README's
/// allocator table (`serve::trim` hands its pages back after a burst).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (`malloc_conf`, prefixed as tikv-jemalloc-sys
/// builds it): two arenas rather than four per CPU (a sidecar has two request threads, and each
/// arena keeps its own free pages); unused pages handed back after 1 s of allocator activity
/// rather than 10 s, and at once rather than lazily (`MADV_FREE` pages still count in RSS).
///
/// `slab_sizes`: objects of 4, 8 and 10 KiB (each stream holds five: Pingora's header buffers and
/// boxed app future, twinroute's request future, the connection task) share slabs of 16 and 10
/// pages instead of taking one extent each (~22,000 of them at 5,000 streams, whose descriptors
/// jemalloc keeps after the load). RSS 30 s after 5,000 streams: median 25.8 MB against 29.6
/// (five interleaved runs each, README), same peak, no measurable CPU cost.
#[cfg(not(target_env = "msvc"))]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &u8 =
    &b"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0,slab_sizes:4096-8192:16|10240-10240:10\0"[0];

#[derive(Parser)]
#[command(
    name = "twinroute",
    version,
    about = "Keeps LLM API calls alive across providers: a localhost egress proxy built on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short)]
        config: String,
    },
    /// Validate a config and print the routing table it produces.
    Check {
        #[arg(long, short)]
        config: String,
        /// Also call each provider once with its key and report, per offering, whether its
        /// model is listed, missing, refused or unreachable. Exits 2 when a model has no
        /// reachable twin.
        #[arg(long)]
        live: bool,
        /// Fail (exit 1) when any provider has no credential (instead of leaving it out of
        /// rotation with a warning).
        #[arg(long)]
        strict: bool,
    },
    /// Run the proxy on built-in mock providers (one failing) and show failover. No API key needed.
    Demo,
    /// Serve the Kubernetes mutating admission webhook that injects the twinroute sidecar into
    /// pods annotated `twinroute.io/inject: "true"` (POST /mutate, GET /healthz).
    InjectWebhook {
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: String,
        /// PEM certificate chain for TLS (the API server only calls webhooks over TLS).
        #[arg(long, required_unless_present = "insecure_http")]
        tls_cert: Option<String>,
        /// PEM private key for TLS.
        #[arg(long, required_unless_present = "insecure_http")]
        tls_key: Option<String>,
        /// Injector settings YAML (image, configMap, keysSecret, ports, resources, ...).
        #[arg(long)]
        settings: String,
        /// Serve plain HTTP instead of TLS: for local experiments only.
        #[arg(long)]
        insecure_http: bool,
    },
    /// Serve one mock provider (for benchmarks and manual experiments).
    #[command(hide = true)]
    Mock {
        #[arg(long)]
        listen: String,
        #[arg(long, default_value = "mock")]
        name: String,
        /// Answer every completion with this status instead of 200.
        #[arg(long)]
        fail_status: Option<u16>,
        /// Streams (`"stream": true`) send this many chunks ...
        #[arg(long, default_value_t = 5)]
        sse_chunks: usize,
        /// ... this many milliseconds apart.
        #[arg(long, default_value_t = 10)]
        sse_interval_ms: u64,
    },
}

fn init_logging() {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    b.format_timestamp_millis();
    twinroute::observe::redact_log::install(b);
}

/// The proxy's logging: as `init_logging`, with the writes on the log writer's thread (off the
/// request path; see `observe::log_writer`).
fn init_proxy_logging() {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    b.format_timestamp_millis();
    // The buffer lines wait in for the writer thread (1 MiB; TWINROUTE_LOG_BUFFER_BYTES for
    // tuning and for the tests that put the writer under pressure).
    let capacity = std::env::var("TWINROUTE_LOG_BUFFER_BYTES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1 << 20);
    match twinroute::observe::log_writer::start(capacity) {
        Ok(pipe) => {
            b.target(env_logger::Target::Pipe(Box::new(pipe)));
            // The access line skips env_logger's formatting unless a message regex
            // (`RUST_LOG=info/pattern`) must see it.
            if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains('/')) {
                twinroute::observe::log_writer::allow_direct();
            }
        }
        Err(e) => eprintln!("twinroute: log writer thread: {e}; logging from request threads"),
    }
    twinroute::observe::redact_log::install(b);
}

/// One line naming every provider left out of rotation for want of a credential.
fn warn_without_credentials(cfg: &twinroute::model::Config) {
    let out = cfg.without_credentials();
    if !out.is_empty() {
        log::warn!(
            "{} provider(s) left out of rotation, no credential: {} (set the key, or mark a provider required: true to make this an error)",
            out.len(),
            out.join(", ")
        );
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_proxy_logging();
            let cfg = match config::load_file(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("twinroute: invalid config {config}: {e}");
                    return ExitCode::from(1);
                }
            };
            warn_without_credentials(&cfg);
            log::info!(
                "twinroute {} starting: {} providers, {} models, listening on {} (admin {})",
                env!("CARGO_PKG_VERSION"),
                cfg.providers.len(),
                cfg.catalog.models().len(),
                cfg.listen,
                cfg.admin_listen
            );
            let loopback = |a: &str| {
                a.parse::<std::net::SocketAddr>()
                    .is_ok_and(|s| s.ip().is_loopback())
            };
            if !loopback(&cfg.listen) && cfg.client_tokens.is_empty() {
                log::warn!(
                    "data plane listens on {} (not loopback) without client_tokens_env: anyone who \
                     can reach it spends your provider keys",
                    cfg.listen
                );
            }
            let (server, _shared) = match twinroute::serve::server::build(cfg, Some(config)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("twinroute: {e}");
                    twinroute::observe::log_writer::drain();
                    return ExitCode::from(1);
                }
            };
            server.run(pingora::server::RunArgs::default());
            // Graceful shutdown is over: write out every line before the process ends.
            twinroute::observe::log_writer::drain();
            std::process::exit(0)
        }
        Command::Check {
            config,
            live,
            strict,
        } => match config::load_file(&config) {
            Ok(c) => {
                print!("{}", twinroute::cmd::check::report(&c));
                if strict && !c.without_credentials().is_empty() {
                    eprintln!(
                        "twinroute check --strict: providers without a credential: {}",
                        c.without_credentials().join(", ")
                    );
                    return ExitCode::from(1);
                }
                if !live {
                    return ExitCode::SUCCESS;
                }
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("twinroute check: {e}");
                        return ExitCode::from(1);
                    }
                };
                let (report, ok) = rt.block_on(twinroute::cmd::check::live(&c));
                println!("\n{report}");
                if ok {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("twinroute check: a model has no reachable twin");
                    ExitCode::from(2)
                }
            }
            Err(e) => {
                eprintln!("twinroute: invalid config {config}: {e}");
                ExitCode::from(1)
            }
        },
        Command::Mock {
            listen,
            name,
            fail_status,
            sse_chunks,
            sse_interval_ms,
        } => {
            init_logging();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("twinroute mock: {e}");
                    return ExitCode::from(1);
                }
            };
            let result: Result<(), String> = rt.block_on(async move {
                let addr = listen.parse().map_err(|e| format!("--listen: {e}"))?;
                let m = twinroute::testkit::mock::MockProvider::start_on(addr, &name)
                    .await
                    .map_err(|e| e.to_string())?;
                m.set_record(false);
                m.set_stream(
                    sse_chunks,
                    std::time::Duration::from_millis(sse_interval_ms),
                );
                if let Some(status) = fail_status {
                    m.set_behavior(twinroute::testkit::mock::Behavior::Status {
                        status,
                        body: "{}".into(),
                        retry_after: None,
                    });
                }
                log::info!("mock provider {name} on {}", m.addr);
                std::future::pending::<()>().await;
                Ok(())
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("twinroute mock: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::InjectWebhook {
            listen,
            tls_cert,
            tls_key,
            settings,
            insecure_http,
        } => {
            init_logging();
            let text = match std::fs::read_to_string(&settings) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("twinroute inject-webhook: cannot read {settings}: {e}");
                    return ExitCode::from(1);
                }
            };
            let parsed = match twinroute::inject::InjectorSettings::from_yaml(&text) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("twinroute inject-webhook: {settings}: {e}");
                    return ExitCode::from(1);
                }
            };
            let tls = match (&tls_cert, &tls_key, insecure_http) {
                (Some(c), Some(k), false) => Some((c.as_str(), k.as_str())),
                (_, _, true) => None,
                _ => {
                    eprintln!(
                        "twinroute inject-webhook: --tls-cert and --tls-key are both required"
                    );
                    return ExitCode::from(1);
                }
            };
            match twinroute::inject::server::build(&listen, tls, parsed) {
                Ok(server) => {
                    log::info!(
                        "twinroute inject-webhook on {listen} ({})",
                        if tls.is_some() { "TLS" } else { "plain HTTP" }
                    );
                    server.run_forever()
                }
                Err(e) => {
                    eprintln!("twinroute inject-webhook: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo => {
            twinroute::observe::redact_log::install(env_logger::Builder::from_env(
                env_logger::Env::default().default_filter_or("warn"),
            ));
            let code = twinroute::cmd::demo::run();
            // The proxy runs on its own threads until the process ends.
            std::process::exit(code)
        }
    }
}
