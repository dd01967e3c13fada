//! `daffe agent`: listens for peers (mutual TLS) and receives volumes into
//! the local daemon's storage. `daffe agent init` makes a cluster CA and this
//! node's certificate; `daffe agent issue` makes another node's.

use crate::config::DEFAULT_CONTROL_SOCKET;
use crate::control::ControlClient;
use crate::migrate::agent::{AgentHandler, Outgoing};
use crate::migrate::duration;
use clap::{Args, Subcommand};
use mover::net::Endpoint;
use mover::net::identity::{self, NodeFiles};
use mover::net::tls;
use mover::net::{Agent, ConnObserver, PeerInfo, Refusal};
use mover::net::{bandwidth_limiter, parse_rate};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where `init` puts, and every command looks for, the node's TLS files.
pub(crate) const DEFAULT_TLS_DIR: &str = "/etc/daffe/agent";
/// The agents' port (see `mover::net::DEFAULT_PORT`).
pub(crate) const DEFAULT_LISTEN: &str = "0.0.0.0:7450";

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub(crate) command: Option<AgentCommand>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgentCommand {
    /// Create a cluster CA and this node's certificate (ca.pem, ca.key,
    /// node.pem, node.key). Keep ca.key here; give other nodes `issue` output.
    Init {
        /// Directory to create the CA and this node's files in (the same
        /// folder every other command reads as --tls-dir). Old spelling: --dir.
        #[arg(long = "tls-dir", alias = "dir", env = "DAFFE_TLS_DIR", default_value = DEFAULT_TLS_DIR)]
        dir: PathBuf,
        /// This node's name (letters, digits, '.', '-', '_'). Old spelling:
        /// --name.
        #[arg(long = "node", alias = "name")]
        name: String,
    },
    /// Issue a certificate for another node with the CA in --tls-dir.
    Issue {
        /// Directory with the CA (ca.pem, ca.key), as `init` made it. Old
        /// spelling: --ca-dir.
        #[arg(long = "tls-dir", alias = "ca-dir", env = "DAFFE_TLS_DIR", default_value = DEFAULT_TLS_DIR)]
        ca_dir: PathBuf,
        /// The other node's name (letters, digits, '.', '-', '_').
        #[arg(long = "node", alias = "name")]
        name: String,
        /// Directory to write ca.pem, node.pem, node.key into (copy it to the node).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Options shared by the agent and `daffe migrate`: identity and link.
#[derive(Debug, Clone, Args)]
pub(crate) struct PeerOptions {
    /// Directory with ca.pem, node.pem, node.key (see `daffe agent init`).
    #[arg(long, env = "DAFFE_TLS_DIR", default_value = DEFAULT_TLS_DIR)]
    pub(crate) tls_dir: PathBuf,
    /// This node's name in the peer protocol: the one its certificate
    /// (node.pem) names, which is the default; a different name is refused
    /// (peers know a node by its certificate). Old spelling: --name.
    #[arg(long = "node", alias = "name", env = "DAFFE_NODE_NAME")]
    pub(crate) name: Option<String>,
    /// Bandwidth limit shared by all streams of this process: bytes/s with
    /// K/M/G (binary) or bits with kbit/mbit/gbit, e.g. 10M or 100mbit.
    #[arg(long)]
    pub(crate) bwlimit: Option<String>,
    /// Do not compress chunks (zstd) on the wire.
    #[arg(long)]
    pub(crate) no_compress: bool,
    /// A peer silent this long is considered gone.
    #[arg(long, default_value = "60s")]
    pub(crate) io_timeout: String,
}

impl PeerOptions {
    /// This node's name: the one its certificate carries (issue 12,
    /// finding 5: a peer's identity is its certificate's name, and a `Hello`
    /// naming another node is refused, so `--node` can only repeat it).
    pub(crate) fn node_name(&self) -> Result<String, String> {
        let files = self.files();
        let certified = identity::node_name(&files)
            .map_err(|e| format!("{e} (see `daffe agent init` / `daffe agent issue`)"))?;
        match &self.name {
            Some(n) if *n != certified => Err(format!(
                "--node {n}, but the certificate {} names node {certified}: peers know a node \
                 by its certificate; give --node {certified} (or none), or issue a \
                 certificate for {n} with `daffe agent issue --node {n}`",
                files.cert.display()
            )),
            _ => Ok(certified),
        }
    }

    pub(crate) fn files(&self) -> NodeFiles {
        NodeFiles::in_dir(&self.tls_dir)
    }

    pub(crate) fn endpoint(&self) -> Result<Endpoint, String> {
        let mut ep = Endpoint::new(&self.node_name()?);
        ep.hello.zstd = !self.no_compress;
        ep.io_timeout = duration::parse(&self.io_timeout).map_err(|e| e.to_string())?;
        if let Some(r) = &self.bwlimit {
            let rate = parse_rate(r).map_err(|e| e.to_string())?;
            ep.bucket = Some(Arc::new(bandwidth_limiter(rate)));
        }
        Ok(ep)
    }
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// TCP address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub(crate) listen: String,
    /// The local daemon's control socket.
    #[arg(long, env = "DAFFE_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    pub(crate) control_socket: PathBuf,
    /// Make received data durable (and resumable after a cut) every this
    /// many bytes (K/M/G suffixes).
    #[arg(long, default_value = "64M")]
    pub(crate) checkpoint: profiles::ByteSize,
    #[command(flatten)]
    pub(crate) peer: PeerOptions,
    #[command(flatten)]
    pub(crate) metrics: super::serve::MetricsArgs,
}

pub fn run(args: AgentArgs) -> ExitCode {
    match args.command {
        Some(AgentCommand::Init { dir, name }) => match identity::init(&dir, &name) {
            Ok(_) => {
                println!(
                    "created a cluster CA and the certificate of {name} in {} \
                     (CA key: {}; keep it here)",
                    dir.display(),
                    dir.join(identity::CA_KEY).display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => super::fail(false, e),
        },
        Some(AgentCommand::Issue { ca_dir, name, out }) => {
            match identity::issue(&ca_dir, &name, &out) {
                Ok(_) => {
                    println!(
                        "issued the certificate of {name} in {} (copy that directory to {name})",
                        out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => super::fail(false, e),
            }
        }
        None => serve(args.run),
    }
}

fn serve(args: RunArgs) -> ExitCode {
    super::init_logging();
    let ep = match args.peer.endpoint() {
        Ok(ep) => ep,
        Err(e) => return super::fail(false, e),
    };
    let tls = match tls::server_config(&args.peer.files()) {
        Ok(t) => t,
        Err(e) => return super::fail(false, format!("{e} (see `daffe agent init`)")),
    };
    let listener = match std::net::TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => return super::fail(false, format!("cannot listen on {}: {e}", args.listen)),
    };
    // The receiving side's bytes and rounds (no volume gauges: those are
    // the daemon's).
    if let Err(e) = args.metrics.start(Arc::new(|| {})) {
        return super::fail(false, e);
    }
    let mut handler = AgentHandler::new(ControlClient::new(&args.control_socket));
    handler.checkpoint_bytes = args.checkpoint.bytes().max(1);
    // Cluster mode's handovers: this agent sends a volume to another node's
    // agent with its own certificate.
    handler.outgoing = Some(Outgoing {
        files: args.peer.files(),
        ep: ep.clone(),
    });
    let handler = Arc::new(handler);
    let node = ep.hello.node.clone();
    let agent = Arc::new(Agent::new(tls, ep, handler).with_observer(Arc::new(Counted)));
    let shutdown = Arc::new(AtomicBool::new(false));
    if let Err(e) = watch_signals(shutdown.clone()) {
        return super::fail(false, format!("cannot watch signals: {e}"));
    }
    tracing::info!(listen = %args.listen, %node, "daffe agent listening");
    super::notify::ready();
    match agent.serve(listener, &shutdown) {
        Ok(()) => {
            tracing::info!("daffe agent stopped");
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(false, format!("agent: {e}")),
    }
}

/// SIGTERM or SIGINT sets `flag` (a tokio runtime on a side thread waits).
fn watch_signals(flag: Arc<AtomicBool>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                flag.store(true, Ordering::SeqCst);
            })
        })?;
    Ok(())
}

/// Counts the agent's connections in the process's metrics
/// (`--metrics-addr`).
struct Counted;

impl ConnObserver for Counted {
    fn accepted(&self, _peer: &PeerInfo) {
        crate::metrics::daemon().connection(None);
    }
    fn refused(&self, _addr: std::net::SocketAddr, why: Refusal) {
        crate::metrics::daemon().connection(Some(why.as_str()));
    }
    fn closed(&self, _peer: &PeerInfo) {
        crate::metrics::daemon().connection_closed();
    }
}
