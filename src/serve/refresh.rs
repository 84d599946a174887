//! The background service that keeps short-lived provider credentials fresh: every second,
//! each token-using provider (Vertex) gets a token minted when it has none or little life
//! left (`serve::credentials`), so requests never wait on a token endpoint.

use crate::serve::credentials::{Need, Net};
use crate::serve::state::Shared;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

pub struct TokenRefresher {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for TokenRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let rt = self.shared.runtime.load_full();
            for p in rt.config.providers.iter() {
                if !crate::serve::credentials::refreshable(p) {
                    continue;
                }
                let (shared, p) = (self.shared.clone(), p.clone());
                tokio::spawn(async move {
                    let net = Net {
                        connector: &shared.connector,
                        resolver: &shared.resolver,
                    };
                    // Asking for a token that outlives the refresh margin mints when needed.
                    let _ = shared.tokens.bearer(net, &p, Need::Refresh).await;
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
