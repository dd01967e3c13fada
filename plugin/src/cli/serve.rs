//! `daffe serve`: the volume plugin daemon (VolumeDriver socket + control socket).

use crate::api::{DriverApi, Limits};
use crate::config::Config;
use crate::control::{self, ControlApi};
use crate::service::VolumeService;
use crate::state::Records;
use crate::{backend, server};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (default: /etc/daffe/daffe.toml if it exists).
    #[arg(long, env = "DAFFE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// VolumeDriver socket; dockerd finds /run/docker/plugins/NAME.sock as plugin NAME.
    #[arg(long, env = "DAFFE_SOCKET")]
    pub(crate) socket: Option<PathBuf>,
    /// Control socket for the daffe CLI.
    #[arg(long, env = "DAFFE_CONTROL_SOCKET")]
    pub(crate) control_socket: Option<PathBuf>,
    /// Group (name or gid) whose members may use the control socket besides
    /// root: the socket becomes 0660 with that group. Default: root only (0600).
    #[arg(long, env = "DAFFE_SOCKET_GROUP")]
    pub(crate) socket_group: Option<String>,
    /// State and default volume roots.
    #[arg(long, env = "DAFFE_DATA_ROOT")]
    pub(crate) data_root: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) metrics: MetricsArgs,
}

/// Where Prometheus metrics are served besides the control socket's
/// `GET /metrics` (`serve` and `agent`).
#[derive(Debug, Args)]
pub(crate) struct MetricsArgs {
    /// Also serve `GET /metrics` over plain HTTP on this IP:PORT (e.g.
    /// 127.0.0.1:9450). Off by default; a loopback address unless
    /// --metrics-public.
    #[arg(long, env = "DAFFE_METRICS_ADDR", value_name = "IP:PORT")]
    pub(crate) metrics_addr: Option<String>,
    /// Allow a --metrics-addr that is not loopback (the metrics have no
    /// authentication).
    #[arg(long, requires = "metrics_addr")]
    pub(crate) metrics_public: bool,
}

impl MetricsArgs {
    /// Binds and serves the metrics if asked; `refresh` updates the gauges
    /// before each scrape. A bad or busy address is an error: an operator
    /// who asked for metrics must not find out from a silent scrape failure.
    pub(crate) fn start(
        &self,
        refresh: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Option<std::net::SocketAddr>, String> {
        let Some(addr) = &self.metrics_addr else {
            return Ok(None);
        };
        let addr =
            crate::metrics::http::check(addr, self.metrics_public).map_err(|e| e.to_string())?;
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("--metrics-addr {addr}: cannot listen: {e}"))?;
        let bound = listener.local_addr().unwrap_or(addr);
        crate::metrics::http::spawn(
            listener,
            crate::metrics::http::Source {
                metrics: crate::metrics::daemon(),
                refresh,
            },
        )
        .map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
        tracing::info!(addr = %bound, "serving metrics");
        Ok(Some(bound))
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::state::StoreError),
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    #[error("recovering interrupted work: {0}")]
    Recover(#[from] crate::service::ServiceError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error(transparent)]
    Root(#[from] crate::state::roots::RootOutside),
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    #[error("cluster mode: {0}")]
    Cluster(#[from] crate::clustering::ClusterError),
    #[error("cluster mode: {0} ([cluster] tls_dir)")]
    Handover(crate::clustering::handover::HandoverError),
    #[error("cluster mode: starting the fence watchdog: {0}")]
    Watchdog(std::io::Error),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Metrics(String),
    #[error("making the data root {} private: {source}", path.display())]
    DataRoot {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub fn run(args: ServeArgs) -> ExitCode {
    super::init_logging();
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if let Some(s) = args.socket {
        cfg.socket = s;
    }
    if let Some(s) = args.control_socket {
        cfg.control_socket = s;
    }
    if let Some(d) = args.data_root {
        cfg.data_root = d;
    }
    // The data root holds every volume's files: private to root (see
    // backend::sys::private_dir), tightened if an older daffe made it 0755.
    crate::backend::sys::private_dir(&cfg.data_root).map_err(|source| ServeError::DataRoot {
        path: cfg.data_root.clone(),
        source,
    })?;
    let socket_group = args
        .socket_group
        .as_deref()
        .map(crate::peer::resolve_group)
        .transpose()?;
    crate::backend::local::sweep_dead_tracking();
    let records = Records::open(&cfg.store_path())?;
    let storage = backend::open(cfg.backend, &cfg.aws, &cfg.data_root)?;
    let mut svc = VolumeService::new(records, storage, cfg.catalog.clone(), cfg.data_root.clone());
    svc.persist_profiles(&cfg.data_root.join("state"))?;
    crate::state::roots::check_catalog(&svc.catalog(), &cfg.data_root)?;
    if let Some(c) = &cfg.cluster {
        let h = handover(c)?;
        if h.is_some() {
            // The same certificate dials standbys; AgentHandover just read it.
            match crate::clustering::standby::AgentStandby::new(&tls_dir(c), &c.node) {
                Ok(s) => svc.set_standby(Arc::new(s)),
                Err(e) => tracing::warn!(error = %e, "no standbys will be kept"),
            }
        }
        svc.set_cluster(join(c, &cfg.data_root)?, h);
    }
    let svc = Arc::new(svc);
    svc.recover()?;
    svc.join_cluster()?;
    if cfg.cluster.is_some() {
        start_standby_rounds(svc.clone());
    }
    // Records for volumes the storage has and the store lacks (EBS: tagged
    // for this host). A failure (AWS unreachable) must not keep the daemon
    // from serving the volumes it knows: dockerd forgets volumes whose
    // plugin denies them.
    match svc.rebuild() {
        Ok(names) if !names.is_empty() => {
            tracing::info!(volumes = %names.join(", "), "records rebuilt from the storage");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "rebuilding records from the storage failed; serving the known volumes")
        }
    }
    let for_metrics = svc.clone();
    args.metrics
        .start(Arc::new(move || {
            if let Ok(views) = for_metrics.views() {
                crate::metrics::daemon().set_volumes(&views);
            }
        }))
        .map_err(ServeError::Metrics)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let result = rt.block_on(async {
        let driver_listener = server::bind(&cfg.socket)?;
        let control_listener = match server::bind_with_group(&cfg.control_socket, socket_group) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_file(&cfg.socket);
                return Err(e.into());
            }
        };
        super::notify::ready();
        tracing::info!(
            socket = %cfg.socket.display(),
            control = %cfg.control_socket.display(),
            data_root = %cfg.data_root.display(),
            backend = %cfg.backend,
            config = ?cfg.source,
            profiles = %svc.catalog().names(),
            "serving"
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let driver = tokio::spawn(server::serve(
            driver_listener,
            Arc::new(DriverApi::new(svc.clone(), Limits::default())),
            stopped(stop_rx.clone()),
        ));
        // dockerd (root) is the VolumeDriver socket's only client; the
        // control socket checks every peer (issue 12, finding 10).
        let control = tokio::spawn(server::serve_checked(
            control_listener,
            Arc::new(ControlApi::new(svc.clone(), control::Limits::default())),
            stopped(stop_rx),
            Some(crate::peer::PeerPolicy {
                group: socket_group,
            }),
        ));
        shutdown_signal().await;
        tracing::info!("shutting down");
        super::notify::stopping();
        let _ = stop_tx.send(true);
        let _ = tokio::join!(driver, control);
        for path in [&cfg.socket, &cfg.control_socket] {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(socket = %path.display(), error = %e, "removing the socket");
            }
        }
        tracing::info!("stopped");
        Ok(())
    });
    // A backend call still running (a hung mount(8)) must not hold up the
    // exit: its volume's state is whatever was last committed, which the
    // next start trusts.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    crate::backend::local::stop_tracking();
    // Volumes stay mounted across a daemon stop on purpose: running
    // containers keep using them, and the persisted counts pick up after.
    result
}

/// Cluster mode: the fence watchdog first (so a heartbeat never goes
/// unwatched), then etcd, this node's lease, and the keeper thread.
fn join(
    c: &cluster::ClusterConfig,
    data_root: &std::path::Path,
) -> Result<Arc<crate::clustering::ClusterNode>, ServeError> {
    use crate::clustering::{ClusterNode, ETCD_TIMEOUT, fencing};
    let heartbeat = data_root.join("state").join("fence.json");
    fencing::start_watchdog(&heartbeat).map_err(ServeError::Watchdog)?;
    let etcd = cluster::etcd::EtcdCoordinator::connect(&c.name, &c.etcd, ETCD_TIMEOUT)
        .map_err(crate::clustering::ClusterError::from)?;
    let node = ClusterNode::start(c.clone(), Arc::new(etcd), heartbeat)?;
    node.spawn_keeper();
    tracing::info!(cluster = %c.name, node = %c.node, agent = %c.agent, "cluster mode");
    Ok(node)
}

/// Cluster mode: how a Mount brings a stale copy up to date (from the last
/// writer's agent, dialed with this node's agent certificate). A `tls_dir`
/// that was set must hold one; without it, the agent's default folder is
/// tried, and a node with no certificate refuses stale copies instead.
fn handover(
    c: &cluster::ClusterConfig,
) -> Result<Option<Arc<dyn crate::clustering::handover::Handover>>, ServeError> {
    use crate::clustering::handover::AgentHandover;
    match AgentHandover::new(&tls_dir(c), &c.node) {
        Ok(h) => Ok(Some(Arc::new(h))),
        Err(e) if c.tls_dir.is_some() => Err(ServeError::Handover(e)),
        Err(e) => {
            tracing::warn!(error = %e, "no agent certificate: a stale copy here is refused, not brought up to date (set [cluster] tls_dir)");
            Ok(None)
        }
    }
}

/// This node's agent certificate folder: `[cluster] tls_dir`, or the agent's default.
fn tls_dir(c: &cluster::ClusterConfig) -> std::path::PathBuf {
    c.tls_dir
        .clone()
        .unwrap_or_else(|| super::agent::DEFAULT_TLS_DIR.into())
}

/// Cluster mode: the owner's standby rounds, on a thread of their own (they
/// read and hash whole volumes; never on the sockets' threads). Each pass
/// starts `ROUND_INTERVAL` after the last one ended.
fn start_standby_rounds(svc: Arc<VolumeService>) {
    let spawned = std::thread::Builder::new()
        .name("standby-rounds".into())
        .spawn(move || {
            loop {
                std::thread::sleep(crate::clustering::standby::ROUND_INTERVAL);
                svc.standby_tick();
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the standby rounds; no standbys will be kept");
    }
}

/// SIGTERM (systemd, dockerd stopping a managed plugin) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
