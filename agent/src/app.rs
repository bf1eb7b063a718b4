//! Wiring: configuration → probes → targeting thread + pipeline thread → export, with the debug
//! endpoint reading snapshots, and one shutdown signal. Nothing here parses or decides: the
//! pipeline (`pipeline`), its task (`driver`), the targeting thread (`probes::targeting`) and the
//! export stage (`export`) do.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::config::{Config, Mode};
use crate::driver::Driver;
use crate::enrich::kubernetes::{self, KubeSettings, KubernetesEnricher, ProcPods};
use crate::enrich::Enrichers;
use crate::export::debug::{DebugServer, DebugState, Readiness};
use crate::export::metrics::otlp::{MetricsOtlpConfig, OtlpMetricsExporter};
use crate::export::metrics::RequestMetrics;
use crate::export::otlp::{config::OtlpConfig, OtlpSpanExporter};
use crate::export::status::{ProbeStatus, StatusSource};
use crate::export::store::SpanStore;
use crate::export::SpanSink;
use crate::pipeline::{Pipeline, Settings};
use crate::probes::pod_targets::PodScanner;
use crate::probes::targeting::{targeting_loop, Control, KernelMaps, KernelNode};
use crate::probes::targets::{Scanner, TargetSource};
use crate::probes::Probes;
use crate::stats::Stats;
use crate::trace::build::BuildOptions;

pub fn main() -> Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // kube-rs logs every failed request of a retrying watch at ERROR; the Kubernetes
                // source reports the outage once and its end itself (RUST_LOG overrides this).
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = runtime().context("starting the async runtime")?;
    runtime.block_on(run(config))
}

/// The async runtime of the debug endpoint, `/metrics`, the OTLP exporters and the Kubernetes
/// watchers. The pipeline task is not on it (`driver::spawn`).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("infertap")
        .build()
}

async fn run(config: Config) -> Result<()> {
    let kubernetes = match config.resolved_mode() {
        Mode::Kubernetes => Some(config.kubernetes()?),
        _ => None,
    };
    let selector = config.selector()?;
    let stats = Arc::new(Stats::default());

    // Export first, so the debug endpoint can answer while probes load.
    let mut otlp_config = OtlpConfig::from_env().context("reading the OTEL_* configuration")?;
    otlp_config.slow = config.slow_thresholds()?;
    let exporter = OtlpSpanExporter::spawn(&otlp_config, stats.clone())
        .context("starting the OTLP exporter")?;
    let request_metrics = Arc::new(RequestMetrics::new());
    let metrics_config =
        MetricsOtlpConfig::from_env().context("reading the OTEL_* metrics configuration")?;
    let metrics_exporter =
        OtlpMetricsExporter::spawn(&metrics_config, &request_metrics, stats.clone())
            .context("starting the OTLP metrics exporter")?;
    let store = Arc::new(SpanStore::new(config.span_buffer));
    let ticks = Arc::new(crate::export::ticks::TickStore::default());
    let sink = SpanSink::new(store.clone(), exporter.sender(), stats.clone())
        .with_ticks(ticks.clone())
        .with_metrics(request_metrics.clone());
    let status = StatusSource::new(stats.clone(), exporter.state());
    let readiness = Readiness::new("the eBPF probes to attach");
    let liveness = crate::liveness::Liveness::new();
    let stall = Duration::from_secs(config.stall_secs);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    // GPU telemetry: never fails the agent; what cannot start is off, with the reason.
    let gpu = crate::gpu::start(
        config.gpu,
        config.nvml_lib.clone(),
        config.dcgm_exporter_url.clone(),
        Duration::from_secs_f64(config.dcgm_scrape_interval),
        stats.clone(),
        shutdown_rx.clone(),
    );
    crate::export::gpu::publish_status(&gpu.hub, &status);
    if let Some(provider) = metrics_exporter.meter_provider() {
        crate::export::gpu::register_otlp(provider, &gpu.hub);
    }
    {
        let (hub, status, mut stop) = (gpu.hub.clone(), status.clone(), shutdown_rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        crate::export::gpu::publish_status(&hub, &status);
                        hub.sync_targets(status.app().targets.iter().map(|t| t.pid));
                    }
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
    }
    let debug_state = DebugState::new(store, status.clone(), readiness.clone())
        .with_metric_source(request_metrics)
        .with_metric_source(Arc::new(crate::export::gpu::GpuMetrics {
            hub: gpu.hub.clone(),
        }))
        .with_gpu(gpu.hub.clone())
        .with_ticks(ticks)
        .with_liveness(liveness.clone());
    let metrics_task = match config.metrics_addr {
        Some(addr) => {
            let server = DebugServer::bind_metrics(addr, debug_state.clone()).await?;
            tracing::info!(addr = %server.local_addr(), "Metrics listener listening (/metrics only).");
            let mut stop = shutdown_rx.clone();
            Some(tokio::spawn(server.serve(async move {
                let _ = stop.wait_for(|s| *s).await;
            })))
        }
        None => None,
    };
    let server = DebugServer::bind(config.debug_addr, debug_state).await?;
    tracing::info!(addr = %server.local_addr(), "Debug endpoint listening.");
    let mut debug_shutdown = shutdown_rx.clone();
    let debug_task = tokio::spawn(server.serve(async move {
        let _ = debug_shutdown.wait_for(|s| *s).await;
    }));

    // Where targets come from: flags (standalone) or the opted-in pods of this node (kubernetes).
    let mut enrichers = Enrichers::default();
    let source: Box<dyn TargetSource> = match kubernetes {
        Some((cmdline, node)) => {
            if !config.target_pids.is_empty() || !config.target_ports.is_empty() {
                tracing::warn!("--target-pid and --target-port are ignored in kubernetes mode; use the pod annotations infertap.io/target and infertap.io/ports.");
            }
            let settings = KubeSettings {
                node,
                namespace_selector: config.namespace_selector.clone(),
            };
            let cache = kubernetes::start(&settings, status.clone(), shutdown_rx.clone()).await?;
            let procs = ProcPods::default();
            enrichers.push(Box::new(KubernetesEnricher {
                cache: cache.clone(),
                procs: procs.clone(),
            }));
            Box::new(PodScanner::new(cache, procs, cmdline))
        }
        None => Box::new(Scanner::new(selector)),
    };

    let (mut probes, maps) = Probes::load(config.ring_buffer_size, config.bpf_stats)?;
    if let Some(logger) = probes.logger.take() {
        // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd holds it.
        match unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) } {
            Ok(mut fd) => {
                tokio::spawn(async move {
                    while let Ok(mut guard) = fd.readable_mut().await {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(e) => tracing::debug!(error = %e, "Cannot poll kernel program logs."),
        }
    }
    status.update(|s| {
        s.probes = probes
            .states
            .iter()
            .map(|p| ProbeStatus {
                name: p.name.to_string(),
                attached: p.attached,
                error: p.error.clone(),
                run_count: 0,
                run_time_ns: 0,
            })
            .collect()
    });
    let attached = probes.states.iter().filter(|p| p.attached).count();
    tracing::info!(attached, total = probes.states.len(), "Probes attached.");
    readiness.set_ready();

    let kmaps = Arc::new(Mutex::new(KernelMaps::new(
        maps.targets,
        maps.tls_targets,
        maps.sockets,
        maps.forgotten,
    )));
    let (exec_tx, exec_rx) = std::sync::mpsc::channel();
    let (ctl_tx, ctl_rx) = mpsc::channel::<Control>(4096);
    let own_polls = Arc::new(crate::runtime_poll::OwnConnections::default());
    if let Some(interval) = config.runtime_poll() {
        let (st, ctl, own, stats) = (
            status.clone(),
            ctl_tx.clone(),
            own_polls.clone(),
            stats.clone(),
        );
        tokio::spawn(crate::runtime_poll::run(
            interval,
            st,
            ctl,
            own,
            stats,
            shutdown_rx.clone(),
        ));
    }

    // Targeting: a plain thread, since /proc reads block.
    let targeting = {
        let kmaps = kmaps.clone();
        let status = status.clone();
        let stop = shutdown_rx.clone();
        let interval = Duration::from_millis(config.scan_interval_ms);
        let heartbeat = liveness.register("targeting thread", stall);
        std::thread::Builder::new()
            .name("infertap-targets".into())
            .spawn(move || {
                targeting_loop(
                    source, kmaps, ctl_tx, status, exec_rx, interval, stop, heartbeat,
                )
            })?
    };

    if gpu.is_on() {
        enrichers.push(Box::new(
            crate::gpu::enricher::GpuEnricher::new(gpu.hub.clone())
                .with_gpu_hour_cost(config.gpu_hour_cost),
        ));
    }
    let settings = Settings {
        max_connections: config.max_connections,
        idle_timeout_ns: config.idle_timeout().as_nanos() as u64,
        buffer_budget: crate::conn::BufferBudget {
            per_conn: config.conn_buffer_bytes,
            total: config.buffer_budget_bytes,
        },
        build: BuildOptions {
            derive_trace_from_request_id: !config.no_request_id_trace,
        },
    };
    let node = KernelNode {
        maps: kmaps.clone(),
        sockets: maps.sockets_reader,
        execs: exec_tx,
        own: own_polls,
    };
    let driver = Driver {
        pipeline: Pipeline::new(settings, stats.clone(), enrichers, node, sink),
        probes,
        maps: kmaps,
        stats: stats.clone(),
        tls_status: Vec::new(),
        heartbeat: liveness.register("pipeline task", stall),
        capture_only: config.capture_only,
    };
    let pipeline_task = {
        let (status, stop) = (status.clone(), shutdown_rx.clone());
        crate::driver::spawn(move || driver.run(maps.events, maps.drops, ctl_rx, status, stop))
            .context("starting the pipeline thread")?
    };

    shutdown_signal().await;
    tracing::info!("Shutting down.");
    let _ = shutdown_tx.send(true);
    let _ = tokio::task::spawn_blocking(move || pipeline_task.join()).await;
    let _ = targeting.join();
    gpu.shutdown().await;
    exporter.shutdown().await;
    metrics_exporter.shutdown().await;
    let _ = debug_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
