//! Listeners and their lifecycle: bind, accept a task per connection (HTTP/1.1 and h2c on the
//! same port), and on shutdown stop accepting, let in-flight requests finish within the grace
//! period, then stop the admin listener last so probes see the drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::{ms, Config};
use crate::metrics::{Metrics, UNKNOWN_MODEL};
use crate::proxy::answer::ProxyBody;
use crate::proxy::io::Peer;
use crate::reload::Reloader;
use crate::state::ReloadRequest;
use crate::state::Shared;
use crate::upstream::Upstreams;

/// A sidecar whose listeners are bound and which is ready to run.
pub struct Server {
    shared: Arc<Shared>,
    proxy: TcpListener,
    admin: TcpListener,
    reload_requests: mpsc::Receiver<ReloadRequest>,
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Address from the configuration.
        addr: SocketAddr,
        /// `proxy` or `admin`.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Metric registration failed (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Server {
    /// Binds both listeners for a validated configuration.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, what, source })
        };
        let proxy = bind(config.listen, "proxy").await?;
        let admin = bind(config.admin.listen, "admin").await?;
        let metrics = Metrics::new()?;
        let upstreams = Upstreams::new(&config, &metrics);
        let metrics_unknown = metrics.model(UNKNOWN_MODEL, ms(config.trim.miss_rate_window_ms));
        let (reload, reload_requests) = mpsc::channel(8);
        let config_verify = config.verify;
        let shared = Arc::new(Shared {
            config,
            upstreams,
            metrics,
            ready: Default::default(),
            draining: Default::default(),
            started: Instant::now(),
            trim_state: Default::default(),
            reload,
            unknown_model: metrics_unknown,
            trimming_disabled: Default::default(),
            verifier: crate::verify::Verifier::new(config_verify),
        });
        Ok(Server {
            shared,
            proxy,
            admin,
            reload_requests,
        })
    }

    /// Address the proxy listener is bound to.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy.local_addr().unwrap_or(self.shared.config.listen)
    }

    /// Address the admin listener is bound to.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.shared.config.admin.listen)
    }

    /// Serves until `shutdown` completes, then drains in-flight requests within the grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (proxy_addr, admin_addr) = (self.proxy_addr(), self.admin_addr());
        let Server {
            shared,
            proxy,
            admin,
            reload_requests,
        } = self;
        let (stop_reloader, reloader_stopped) = watch::channel(false);
        let poller = crate::objstore::SourcePoller::spawn(shared.clone(), reloader_stopped.clone());
        let reloader =
            tokio::spawn(Reloader::new(shared.clone(), reload_requests).run(reloader_stopped));
        let sighup = tokio::spawn(reload_on_sighup(shared.clone()));
        let signature_tasks: Vec<_> = (0..shared.upstreams.clusters().len())
            .filter(|&index| shared.upstreams.clusters()[index].signatures.is_some())
            .flat_map(|index| {
                crate::signatures::worker::spawn(ClusterLeaves {
                    shared: shared.clone(),
                    index,
                })
            })
            .collect();
        let (stop_proxy, proxy_stopped) = watch::channel(false);
        let (stop_admin, admin_stopped) = watch::channel(false);
        let proxy_task = tokio::spawn(accept_loop(
            proxy,
            shared.clone(),
            proxy_stopped,
            crate::proxy::general::handle,
            true,
        ));
        let admin_task = tokio::spawn(accept_loop(
            admin,
            shared.clone(),
            admin_stopped,
            crate::admin::handle,
            false,
        ));
        tracing::info!(
            listen = %proxy_addr,
            admin = %admin_addr,
            engine = crate::trim::vector_path(),
            "feature-trimmer {} serving",
            env!("CARGO_PKG_VERSION")
        );
        shutdown.await;
        tracing::info!(
            grace_ms = shared.config.shutdown_grace_ms,
            "shutting down: draining in-flight requests"
        );
        shared.draining.store(true, Ordering::Relaxed);
        let _ = stop_proxy.send(true);
        let _ = proxy_task.await;
        let _ = stop_admin.send(true);
        let _ = admin_task.await;
        sighup.abort();
        for task in signature_tasks {
            task.abort();
        }
        let _ = stop_reloader.send(true);
        let _ = reloader.await;
        if let Some(poller) = poller {
            // A round may be waiting on a slow store; installs are temp + rename, so stopping
            // mid-round leaves the cache whole.
            poller.abort();
            let _ = poller.await;
        }
        tracing::info!("stopped");
    }
}

/// Accepts connections until told to stop, then waits (up to the grace period) for the
/// connections it started. With `lean`, connections start on the lean HTTP/1.1 path (`h1`) and
/// go to hyper when a request needs it.
async fn accept_loop<H, F>(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    handler: H,
    lean: bool,
) where
    H: Fn(Arc<Shared>, Request<Incoming>) -> F + Copy + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ms(shared.config.header_read_timeout_ms));
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let for_service = shared.clone();
                    let service = service_fn(move |mut request: Request<Incoming>| {
                        request.extensions_mut().insert(Peer(peer));
                        handler(for_service.clone(), request)
                    });
                    let watcher = graceful.watcher();
                    let (builder, mut stop) = (builder.clone(), stop.clone());
                    let stream = crate::proxy::io::ClientStream::new(stream, ms(shared.config.client_write_timeout_ms));
                    tokio::spawn(async move {
                        // The watcher, held until the connection ends, keeps the drain waiting.
                        let stream = if lean {
                            match crate::proxy::lean::serve(&shared, stream, &mut stop).await {
                                Some(rewound) => rewound,
                                None => return,
                            }
                        } else {
                            crate::proxy::io::Rewind::untouched(stream)
                        };
                        let connection = builder.serve_connection(TokioIo::new(stream), service);
                        if let Err(e) = watcher.watch(connection.into_owned()).await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let grace = ms(shared.config.shutdown_grace_ms);
    let open = graceful.count();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(open, "grace period over; closing remaining connections");
    }
}

/// SIGHUP forces a bundle rescan, like `POST /reload`.
async fn reload_on_sighup(shared: Arc<Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; use POST /reload");
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP received: rescanning bundles");
        let (reply, _) = tokio::sync::oneshot::channel();
        let _ = shared.reload.send(reply).await;
    }
}

/// One cluster with live signatures, as their tasks see it.
struct ClusterLeaves {
    shared: Arc<Shared>,
    /// Index of the cluster (it has `signatures`).
    index: usize,
}

impl ClusterLeaves {
    fn cluster(&self) -> &crate::upstream::Cluster {
        &self.shared.upstreams.clusters()[self.index]
    }
}

impl crate::signatures::worker::Leaves for ClusterLeaves {
    fn name(&self) -> &str {
        &self.cluster().name
    }

    fn live(&self) -> &crate::signatures::LiveSignatures {
        // `spawn` is only called for clusters that have them.
        self.cluster()
            .signatures
            .as_ref()
            .expect("a cluster with live signatures")
    }

    async fn get(&self, path: &str, limit: usize) -> Result<(u16, Vec<u8>), String> {
        self.cluster()
            .get(path, limit)
            .await
            .map_err(|e| e.to_string())
    }

    fn snapshot(&self) -> Arc<crate::bundle::AllowlistSnapshot> {
        self.shared.trim_state.load().allowlists.clone()
    }

    fn serves(&self, model: &str) -> bool {
        std::ptr::eq(self.shared.upstreams.route(Some(model)), self.cluster())
    }

    fn model_metrics(&self, model: &str) -> Arc<crate::metrics::ModelMetrics> {
        let window = ms(self.shared.config.trim.miss_rate_window_ms);
        Arc::new(self.shared.metrics.model(model, window))
    }
}
