//! Kubernetes mode: which pods of this node are opted in, and their metadata.
//!
//! Two kube-rs watchers run on the agent's runtime: one on the namespaces matching the opt-in label
//! selector (`--namespace-selector`, `infertap.io/enabled=true` by default), one on the pods of
//! this node in every namespace (field selector `spec.nodeName=<NODE_NAME>`). Watching the node's
//! pods cluster-wide keeps it to one watch whatever the number of opted-in namespaces, and makes
//! labelling a namespace take effect at once (its pods are already known). RBAC: `get`, `list`,
//! `watch` on `namespaces` and `pods`, nothing else.
//!
//! The watchers fill a [`KubeCache`]; the targeting source (`probes::pod_targets`) maps processes
//! to pods through their cgroups and publishes the targeted ones in [`ProcPods`]; the
//! [`KubernetesEnricher`] adds the pod's metadata to each span from those two. Data flows one way:
//! API server → cache → targeting → enrichment.
//!
//! The connection comes from `kube::Config::infer`: a kubeconfig (`KUBECONFIG`, `~/.kube/config`)
//! when there is one, else the in-cluster service account (`KUBERNETES_SERVICE_HOST`/`PORT` and
//! `/var/run/secrets/kubernetes.io/serviceaccount/`). When the API server is away, the watchers
//! retry with client-go's backoff (0.8 s doubling to 30 s) and the cache keeps what it knew, so
//! tracing goes on; a relist when it is back replaces the view at once.

pub mod cache;
pub mod pod;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::ListParams;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;

pub use cache::KubeCache;

use super::cgroup::PodRef;
use super::SpanEnricher;
use crate::capture::clock::WallClock;
use crate::conn::Finished;
use crate::export::status::StatusSource;
use crate::schema::attr;
use crate::trace::span::AttrValue;
use crate::trace::Built;

/// How long a process's pod stays known after it stopped being a target, for spans of its last
/// requests that finish (or are flushed) after the targeting thread noticed.
const GONE_GRACE: Duration = Duration::from_secs(10);

/// How often a failing watch checks whether the API server answers again.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// What the Kubernetes source needs from the configuration.
#[derive(Clone, Debug)]
pub struct KubeSettings {
    pub node: String,
    pub namespace_selector: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "kubernetes mode found no way to reach the API server (neither a kubeconfig nor a pod's \
         service account: {0}). Run in the DaemonSet of deploy/kubernetes, set KUBECONFIG, or use \
         --mode standalone"
    )]
    NoConfig(String),
    #[error("kubernetes mode cannot build an API client from its configuration: {0}")]
    Client(#[source] kube::Error),
}

/// Starts both watchers; they run until `stop` turns true. Fails only when there is no
/// configuration at all (an API server that does not answer is retried, not an error).
pub async fn start(
    settings: &KubeSettings,
    status: StatusSource,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<KubeCache, KubeError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| KubeError::NoConfig(e.to_string()))?;
    tracing::info!(api = %config.cluster_url, node = %settings.node,
        selector = %settings.namespace_selector, "Kubernetes mode: watching namespaces and this node's pods.");
    let client = kube::Client::try_from(config).map_err(KubeError::Client)?;
    let cache = KubeCache::new(&settings.node, &settings.namespace_selector);
    status.update(|s| s.kubernetes = Some(cache.status()));

    tokio::spawn(follow(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default().labels(&settings.namespace_selector),
        KubeCache::apply_namespace,
        WatchKind::Namespaces,
        cache.clone(),
        status.clone(),
        stop.clone(),
    ));
    tokio::spawn(follow(
        Api::<Pod>::all(client),
        watcher::Config::default().fields(&format!("spec.nodeName={}", settings.node)),
        KubeCache::apply_pod,
        WatchKind::Pods,
        cache.clone(),
        status,
        stop,
    ));
    Ok(cache)
}

#[derive(Clone, Copy, Debug)]
enum WatchKind {
    Namespaces,
    Pods,
}

/// Feeds one watcher's events to the cache, and errors to its health, until `stop`.
///
/// A watcher that recovers from an error says nothing until something changes (it resumes from
/// the last resourceVersion it saw), so while it is failing, a one-item list with the same
/// selectors is tried every [`PROBE_EVERY`] to tell when the API server answers again.
async fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    apply: fn(&KubeCache, watcher::Event<K>),
    kind: WatchKind,
    cache: KubeCache,
    status: StatusSource,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
{
    let mut probe_params = ListParams::default().limit(1);
    probe_params.label_selector = config.label_selector.clone();
    probe_params.field_selector = config.field_selector.clone();
    let mut stream = std::pin::pin!(watcher(api.clone(), config).default_backoff());
    let mut probe = tokio::time::interval(PROBE_EVERY);
    let mut was_failing = false;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = probe.tick(), if was_failing => {
                let answered = tokio::time::timeout(PROBE_EVERY, api.list(&probe_params)).await;
                if matches!(answered, Ok(Ok(_))) {
                    tracing::info!(watch = ?kind, "Kubernetes API server reachable again.");
                    was_failing = false;
                    cache.watch_recovered(matches!(kind, WatchKind::Pods));
                    let snapshot = cache.status();
                    status.update(|s| s.kubernetes = Some(snapshot));
                }
                continue;
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
        };
        let Some(item) = item else { return };
        match item {
            Ok(event) => {
                if was_failing {
                    tracing::info!(watch = ?kind, "Kubernetes API server reachable again.");
                    was_failing = false;
                }
                apply(&cache, event);
            }
            Err(e) => {
                if !was_failing {
                    tracing::warn!(watch = ?kind, error = %e,
                        "Kubernetes watch failed; keeping the current targets and retrying.");
                }
                was_failing = true;
                cache.watch_failed(matches!(kind, WatchKind::Pods), format!("{kind:?}: {e}"));
            }
        }
        let snapshot = cache.status();
        status.update(|s| s.kubernetes = Some(snapshot));
    }
}

/// Targeted processes → the pod (and container) they run in. Written by the targeting source,
/// read by the enricher.
#[derive(Clone, Debug, Default)]
pub struct ProcPods {
    inner: Arc<RwLock<HashMap<u32, ProcPod>>>,
}

#[derive(Clone, Debug)]
struct ProcPod {
    pod: PodRef,
    /// When it stopped being a target (kept for [`GONE_GRACE`]).
    gone_at: Option<Instant>,
}

impl ProcPods {
    /// Replaces the set of targeted processes: new ones are added, ones no longer listed are
    /// kept for a short grace and then forgotten.
    pub fn publish(&self, targets: &HashMap<u32, PodRef>, now: Instant) {
        let mut m = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for (pid, entry) in m.iter_mut() {
            if !targets.contains_key(pid) && entry.gone_at.is_none() {
                entry.gone_at = Some(now);
            }
        }
        m.retain(|_, e| e.gone_at.is_none_or(|t| now.duration_since(t) < GONE_GRACE));
        for (pid, pod) in targets {
            m.insert(
                *pid,
                ProcPod {
                    pod: pod.clone(),
                    gone_at: None,
                },
            );
        }
    }

    pub fn get(&self, pid: u32) -> Option<PodRef> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .map(|p| p.pod.clone())
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Adds `k8s.*` attributes to the spans of processes in pods: namespace, pod name and UID,
/// container name, node, and the workload (deployment, statefulset, …).
pub struct KubernetesEnricher {
    pub cache: KubeCache,
    pub procs: ProcPods,
}

/// The `k8s.*` attributes of a process in `pod`, in container `container_id`.
pub fn pod_attributes(
    pod: &pod::PodInfo,
    container_id: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (attr::K8S_NAMESPACE_NAME, pod.namespace.clone()),
        (attr::K8S_POD_NAME, pod.name.clone()),
        (attr::K8S_POD_UID, pod.uid.clone()),
    ];
    if let Some(name) = container_id.and_then(|id| pod.container_name(id)) {
        out.push((attr::K8S_CONTAINER_NAME, name.to_string()));
    }
    if let Some(node) = &pod.node {
        out.push((attr::K8S_NODE_NAME, node.clone()));
    }
    out.extend(pod.workload.iter().cloned());
    out
}

impl SpanEnricher for KubernetesEnricher {
    fn enrich(&mut self, finished: &Finished, _clock: &WallClock, out: &mut Built) {
        let Some(pref) = self.procs.get(finished.meta.pid) else {
            return;
        };
        let Some(pod) = self.cache.pod(&pref.pod_uid) else {
            return;
        };
        for (k, v) in pod_attributes(&pod, pref.container_id.as_deref()) {
            out.span
                .attributes
                .push((Cow::Borrowed(k), AttrValue::Str(v)));
        }
        // The metrics label requests by the serving pod.
        out.summary.namespace = Some(pod.namespace.clone());
        out.summary.pod = Some(pod.name.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pref(uid: &str) -> PodRef {
        PodRef {
            pod_uid: uid.into(),
            container_id: None,
            runtime: None,
            qos: None,
        }
    }

    #[test]
    fn gone_processes_stay_known_for_a_grace_then_are_forgotten() {
        let p = ProcPods::default();
        let t0 = Instant::now();
        p.publish(&HashMap::from([(1, pref("a")), (2, pref("b"))]), t0);
        p.publish(
            &HashMap::from([(1, pref("a"))]),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(p.get(2).unwrap().pod_uid, "b");
        p.publish(
            &HashMap::from([(1, pref("a"))]),
            t0 + Duration::from_secs(12),
        );
        assert!(p.get(2).is_none());
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn attributes_name_the_container_whose_id_the_cgroup_shows() {
        let mut info = pod::PodInfo {
            namespace: "llm".into(),
            name: "vllm-0".into(),
            uid: "u".into(),
            node: Some("node-a".into()),
            workload: vec![("k8s.statefulset.name", "vllm".into())],
            containers: Default::default(),
            rule: pod::TargetRule::Cmdline,
            annotation_problem: None,
        };
        info.containers.insert("a".repeat(64), "server".into());
        let attrs = pod_attributes(&info, Some(&"a".repeat(64)));
        assert!(attrs.contains(&("k8s.container.name", "server".into())));
        assert!(attrs.contains(&("k8s.statefulset.name", "vllm".into())));
        assert!(attrs.contains(&("k8s.node.name", "node-a".into())));
        // An unknown container (status not seen yet): no container name, the rest stands.
        let attrs = pod_attributes(&info, Some(&"b".repeat(64)));
        assert!(!attrs.iter().any(|(k, _)| *k == "k8s.container.name"));
        assert_eq!(attrs[1], ("k8s.pod.name", "vllm-0".into()));
    }
}
