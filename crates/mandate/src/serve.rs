//! `mandate serve`: the broker behind its HTTP front, with upkeep and signal handling.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mandate_broker::{Broker, BrokerConfig};
use mandate_core::{Clock, SystemClock};
use mandate_store::{Store, StoreOptions};
use tokio::sync::watch;

use crate::config::Settings;
use crate::datadir;

/// A running broker.
pub struct Running {
    /// Its public URL.
    pub issuer: String,
    /// The broker.
    pub broker: Arc<Broker>,
    /// Where the bootstrap admin token was written, on first start.
    pub admin_token_file: Option<std::path::PathBuf>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops serving and waits for in-flight requests.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.server.await.context("server task failed")??;
        Ok(())
    }
}

/// Opens the store, loads keys and policies, and starts serving.
pub async fn start(settings: &Settings) -> anyhow::Result<Running> {
    datadir::ensure(&settings.data_dir)?;
    if settings.policy_dir_is_default && datadir::seed_policies(&settings.policy_dir)? {
        tracing::info!(dir = %settings.policy_dir.display(), "wrote the default policy pack");
    }
    let key = datadir::signing_key(&settings.data_dir)?;
    let store = Store::open(&StoreOptions {
        url: settings.store_url.clone(),
        durability: settings.durability,
        max_batch: 512,
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot open store: {e}"))?;
    // Signing keys live in the store, sealed under the key-encryption key, so replicas on one
    // database share them (they must share MANDATE_KEK too).
    let kek = datadir::kek(&settings.data_dir, settings.kek_env.as_deref())?;
    let ring = mandate_broker::shared_key_ring(&store, &kek, key, SystemClock.now())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let replicated = store.is_shared();
    let tls = settings
        .tls
        .as_ref()
        .map(mandate_server::tls::server_config)
        .transpose()
        .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let issuer = settings.public_url.clone().unwrap_or_else(|| {
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    });
    let mut cfg = BrokerConfig::new(&issuer, settings.policy_dir.clone());
    cfg.default_task_ttl = settings.default_ttl;
    cfg.max_task_ttl = settings.max_ttl;
    cfg.assertion_max_lifetime = settings.assertion_max_lifetime;
    cfg.leeway = settings.leeway;
    cfg.dpop_required = settings.dpop_required.iter().copied().collect();
    cfg.dpop_registered_key = settings.dpop_registered_key.iter().copied().collect();
    cfg.dpop_max_age = settings.dpop_max_age;
    cfg.api_token_days = settings.api_token_days;
    cfg.audit_sync_decisions = settings.sync_decisions;
    cfg.jwks_ttl = settings.jwks_cache_seconds;
    cfg.jwks_min_refresh = settings.jwks_min_refresh_seconds;
    cfg.audit_arguments = settings.audit_arguments;
    cfg.suspend_after_denied = settings.suspend_after_denied.clone();
    cfg.approval_ttl = settings.approval_ttl;
    cfg.approval_max_wait = settings.approval_max_wait;
    cfg.approval_max_open_per_task = settings.approval_max_open_per_task;
    cfg.webhook = settings.webhook.clone();
    cfg.oidc = settings.oidc.clone();
    cfg.reconfirm_days = settings.reconfirm_days;
    cfg.dormant_days = settings.dormant_days;
    cfg.activity_window_days = settings.activity_window_days;
    cfg.credentials = settings.credentials.clone();
    let mut broker = Broker::start(cfg, store, ring, Arc::new(SystemClock))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    broker.set_kek(kek).map_err(|e| anyhow::anyhow!("{e}"))?;
    broker
        .prepare_credentials()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if replicated {
        broker
            .enable_replication()
            .await
            .map_err(|e| anyhow::anyhow!("cannot follow the shared store: {e}"))?;
        tokio::spawn(broker.clone().follow());
        tracing::info!("following other replicas on the shared store");
    }
    let gateway = match &settings.gateway {
        Some(g) => Some(
            mandate_gateway::Gateway::start(broker.clone(), g.clone())
                .map_err(|e| anyhow::anyhow!("gateway: {e}"))?,
        ),
        None => None,
    };
    let admin_token_file = datadir::bootstrap_admin(&broker, &settings.data_dir).await?;
    let (stop, mut stopped) = watch::channel(false);
    spawn_upkeep(broker.clone(), stopped.clone());
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let extra = gateway.as_ref().map(|g| g.routes());
    let server = tokio::spawn(mandate_server::serve(
        listener,
        broker.clone(),
        extra,
        tls,
        shutdown,
    ));
    Ok(Running {
        issuer,
        broker,
        admin_token_file,
        stop,
        server,
    })
}

fn spawn_upkeep(broker: Arc<Broker>, mut stopped: watch::Receiver<bool>) {
    // Per-task downstream credentials are revoked when their task ends, here or elsewhere.
    let reaper = broker.clone();
    let mut reaper_stopped = stopped.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = reaper.run_lease_reaper() => {}
            _ = reaper_stopped.changed() => {}
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => return,
            }
            broker.tick().await;
            n += 1;
            if n.is_multiple_of(300) {
                broker.purge_once().await;
            }
        }
    });
}

/// Runs until SIGINT or SIGTERM; SIGHUP reloads the policy directory.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let running = start(&settings).await?;
    println!("mandate listening on {}", running.issuer);
    if let Some(path) = &running.admin_token_file {
        println!("bootstrap admin token written to {}", path.display());
    }
    tracing::info!(
        issuer = %running.issuer,
        data_dir = %settings.data_dir.display(),
        policies = %settings.policy_dir.display(),
        "mandate started"
    );
    let broker = running.broker.clone();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match broker.reload_policies(Some("signal:SIGHUP")).await {
                    Ok(msg) => tracing::info!(%msg, "policies reloaded"),
                    Err(e) => tracing::error!(error = %e, "policy reload refused; previous policies stay in force"),
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down");
    running.stop().await
}
