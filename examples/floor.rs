//! The benchmark's "floor": the smallest Pingora pass-through proxy (no body handling, no
//! routing), so the bench can show what Pingora itself costs next to what twinroute adds.
//!
//! Usage: floor LISTEN_ADDR UPSTREAM_ADDR THREADS

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::net::SocketAddr;

struct Floor {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: floor LISTEN_ADDR UPSTREAM_ADDR THREADS");
        std::process::exit(2);
    }
    let upstream: SocketAddr = args[2].parse().unwrap_or_else(|e| {
        eprintln!("bad upstream address: {e}");
        std::process::exit(2)
    });
    let threads: usize = args[3].parse().unwrap_or(2);
    let conf = pingora::server::configuration::ServerConf {
        threads,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut svc = pingora::proxy::http_proxy_service(&server.configuration, Floor { upstream });
    svc.add_tcp(&args[1]);
    server.add_service(svc);
    server.run_forever();
}
