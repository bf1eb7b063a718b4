//! The agent's view of the cluster: the opted-in namespaces, this node's pods, and the state of
//! the connection to the API server. Written only by the watch tasks (through [`KubeCache::apply_*`]),
//! read by the targeting source and the span enricher.
//!
//! A relist (after a restart of the watch, e.g. when the API server comes back) is buffered and
//! replaces the old contents only when complete, so the current view — and with it every target —
//! is kept for as long as the API server is away.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::watcher::Event;

use super::pod::PodInfo;
use crate::export::status::KubernetesStatus;

/// A keyed copy of what a watch lists, kept current by its events.
#[derive(Debug)]
pub struct Mirror<V> {
    live: BTreeMap<String, V>,
    /// The relist in progress (between `Init` and `InitDone`).
    pending: Option<BTreeMap<String, V>>,
}

impl<V> Default for Mirror<V> {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
            pending: None,
        }
    }
}

impl<V> Mirror<V> {
    /// Applies one watch event. `entry` gives an object's key and value, or `None` for an object
    /// that does not belong (it is then removed, as if deleted).
    pub fn apply<K>(&mut self, event: Event<K>, entry: impl Fn(&K) -> (String, Option<V>)) {
        match event {
            Event::Init => self.pending = Some(BTreeMap::new()),
            Event::InitApply(obj) => {
                let (key, value) = entry(&obj);
                let target = self.pending.as_mut().unwrap_or(&mut self.live);
                match value {
                    Some(v) => {
                        target.insert(key, v);
                    }
                    None => {
                        target.remove(&key);
                    }
                }
            }
            Event::InitDone => {
                if let Some(listed) = self.pending.take() {
                    self.live = listed;
                }
            }
            Event::Apply(obj) => {
                let (key, value) = entry(&obj);
                match value {
                    Some(v) => {
                        self.live.insert(key, v);
                    }
                    None => {
                        self.live.remove(&key);
                    }
                }
            }
            Event::Delete(obj) => {
                let (key, _) = entry(&obj);
                self.live.remove(&key);
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.live.get(key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.live.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.live.iter()
    }
}

/// One watch's health.
#[derive(Clone, Debug, Default)]
struct WatchHealth {
    /// The last thing it said was an event, not an error.
    ok: bool,
    /// A full list has been received at least once.
    synced: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Names of the namespaces that match the opt-in selector.
    namespaces: Mirror<()>,
    /// This node's pods in every namespace, by UID.
    pods: Mirror<Arc<PodInfo>>,
    ns_watch: WatchHealth,
    pod_watch: WatchHealth,
    last_error: Option<String>,
    last_error_unix_nano: Option<u64>,
}

/// The shared view; cheap to clone.
#[derive(Clone, Debug)]
pub struct KubeCache {
    node: Arc<str>,
    namespace_selector: Arc<str>,
    state: Arc<RwLock<State>>,
    /// Watch events applied so far: the targeting thread rescans when it moves (a namespace
    /// opting in execs nothing, so no kernel event would tell it).
    changes: Arc<std::sync::atomic::AtomicU64>,
}

impl KubeCache {
    pub fn new(node: &str, namespace_selector: &str) -> Self {
        Self {
            node: node.into(),
            namespace_selector: namespace_selector.into(),
            state: Arc::default(),
            changes: Arc::default(),
        }
    }

    /// How many watch events have been applied (it only grows).
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    fn changed(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// An event of the watch on namespaces matching the opt-in selector.
    pub fn apply_namespace(&self, event: Event<Namespace>) {
        let mut s = self.write();
        s.ns_watch.ok = true;
        s.ns_watch.synced |= matches!(event, Event::InitDone);
        s.namespaces.apply(event, |ns| {
            (ns.metadata.name.clone().unwrap_or_default(), Some(()))
        });
        drop(s);
        self.changed();
    }

    /// An event of the watch on this node's pods. Pods of other nodes (which the field selector
    /// already keeps away) are dropped here too.
    pub fn apply_pod(&self, event: Event<Pod>) {
        let node = self.node.clone();
        let mut s = self.write();
        s.pod_watch.ok = true;
        s.pod_watch.synced |= matches!(event, Event::InitDone);
        s.pods.apply(event, |pod| {
            let uid = pod
                .metadata
                .uid
                .as_deref()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let info = PodInfo::from_pod(pod).filter(|p| p.node.as_deref() == Some(&*node));
            if let Some(problem) = info.as_ref().and_then(|p| p.annotation_problem.as_ref()) {
                tracing::warn!(pod = %uid, "{problem}");
            }
            (uid, info.map(Arc::new))
        });
        drop(s);
        self.changed();
    }

    /// A watch failed (the API server is away, refused the request, or sent something unreadable).
    /// What is known is kept; the watch retries with backoff.
    pub fn watch_failed(&self, pods: bool, error: String) {
        let mut s = self.write();
        if pods {
            s.pod_watch.ok = false;
        } else {
            s.ns_watch.ok = false;
        }
        s.last_error = Some(error);
        s.last_error_unix_nano = Some(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        );
    }

    /// A failing watch's API server answers again (its watcher resumes by itself).
    pub fn watch_recovered(&self, pods: bool) {
        let mut s = self.write();
        if pods {
            s.pod_watch.ok = true;
        } else {
            s.ns_watch.ok = true;
        }
    }

    /// The pod with this UID, if it runs on this node in an opted-in namespace.
    pub fn opted_in_pod(&self, uid: &str) -> Option<Arc<PodInfo>> {
        let s = self.read();
        let pod = s.pods.get(uid)?;
        s.namespaces.contains(&pod.namespace).then(|| pod.clone())
    }

    /// The pod with this UID on this node, opted in or not (for metadata of spans still in flight).
    pub fn pod(&self, uid: &str) -> Option<Arc<PodInfo>> {
        self.read().pods.get(uid).cloned()
    }

    /// What `/status` shows under `kubernetes`.
    pub fn status(&self) -> KubernetesStatus {
        let s = self.read();
        let mut pods: Vec<String> = s
            .pods
            .iter()
            .filter(|(_, p)| s.namespaces.contains(&p.namespace))
            .map(|(_, p)| format!("{}/{}", p.namespace, p.name))
            .collect();
        pods.sort();
        KubernetesStatus {
            connected: s.ns_watch.ok && s.pod_watch.ok,
            synced: s.ns_watch.synced && s.pod_watch.synced,
            node: self.node.to_string(),
            namespace_selector: self.namespace_selector.to_string(),
            watched_namespaces: s.namespaces.iter().map(|(k, _)| k.clone()).collect(),
            pods_on_node: s.pods.len() as u64,
            opted_in_pods: pods,
            last_error: s.last_error.clone(),
            last_error_unix_nano: s.last_error_unix_nano,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(name: &str) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    }

    fn pod(ns: &str, name: &str, uid: &str, node: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "spec": {"nodeName": node, "containers": []}
        }))
        .unwrap()
    }

    #[test]
    fn a_relist_replaces_the_view_only_when_complete() {
        let c = KubeCache::new("node-a", "infertap.io/enabled=true");
        c.apply_namespace(Event::Init);
        c.apply_namespace(Event::InitApply(ns("llm")));
        c.apply_namespace(Event::InitDone);
        c.apply_pod(Event::Init);
        c.apply_pod(Event::InitApply(pod("llm", "a", "UID-A", "node-a")));
        c.apply_pod(Event::InitApply(pod("other", "b", "uid-b", "node-a")));
        // The field selector should have kept it away; dropped all the same.
        c.apply_pod(Event::InitApply(pod("llm", "c", "uid-c", "node-b")));
        c.apply_pod(Event::InitDone);
        assert_eq!(c.opted_in_pod("uid-a").unwrap().name, "a");
        assert!(c.opted_in_pod("uid-b").is_none(), "namespace not opted in");
        assert!(c.pod("uid-b").is_some());
        assert!(c.pod("uid-c").is_none(), "another node's pod");
        let st = c.status();
        assert!(st.connected && st.synced);
        assert_eq!(st.watched_namespaces, vec!["llm"]);
        assert_eq!(st.pods_on_node, 2);
        assert_eq!(st.opted_in_pods, vec!["llm/a"]);

        // The API server goes away: everything is kept, the error shows.
        c.watch_failed(true, "connection refused".into());
        assert!(c.opted_in_pod("uid-a").is_some());
        let st = c.status();
        assert!(!st.connected);
        assert_eq!(st.last_error.as_deref(), Some("connection refused"));

        // It comes back and relists: until InitDone the old view stands; then a's deletion
        // (missed while away) shows.
        c.apply_pod(Event::Init);
        c.apply_pod(Event::InitApply(pod("other", "b", "uid-b", "node-a")));
        assert!(c.opted_in_pod("uid-a").is_some());
        c.apply_pod(Event::InitDone);
        assert!(c.opted_in_pod("uid-a").is_none());
        assert!(c.status().connected);

        // Unlabelling a namespace is a deletion on the selector's watch.
        c.apply_pod(Event::Apply(pod("llm", "d", "uid-d", "node-a")));
        assert!(c.opted_in_pod("uid-d").is_some());
        c.apply_namespace(Event::Delete(ns("llm")));
        assert!(c.opted_in_pod("uid-d").is_none());
        c.apply_namespace(Event::Apply(ns("llm")));
        assert!(c.opted_in_pod("uid-d").is_some());
        c.apply_pod(Event::Delete(pod("llm", "d", "uid-d", "node-a")));
        assert!(c.pod("uid-d").is_none());
    }
}
