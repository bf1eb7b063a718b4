//! A stand-in for the Kubernetes API server on loopback: what the agent's watchers use of it, in
//! the real JSON shapes, driven by the test.
//!
//! Serves `GET /api/v1/namespaces` and `GET /api/v1/pods`: lists (`{"kind":"PodList",
//! "metadata":{"resourceVersion":…},"items":[…]}`, items without `kind`/`apiVersion` as the real
//! server sends them) and, with `?watch=1`, a stream of `{"type":…,"object":…}` lines from the
//! given `resourceVersion` on. `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-joined)
//! and `fieldSelector` (`a.b.c=v`, `==`, `!=`, on any path of the object) are honoured, including
//! the server's rule that an object leaving a watch's selector is sent as `DELETED` and one
//! entering it as `ADDED`. `timeoutSeconds` ends a watch. No bookmarks, no pagination (every list
//! fits one page), no 410 Gone (the whole history is kept).
//!
//! The test adds and labels namespaces, adds and deletes pods, and takes the server down
//! ([`KubeApi::stop`]: the listener and every open connection are closed, so clients see refused
//! and reset connections) and up again on the same port ([`KubeApi::start`]).
//!
//! Written by hand on axum routes served with hyper, one task per connection in a `JoinSet`, so
//! that going down can cut open watches; nothing else in the tests needs an API server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Namespace,
    Pod,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
        }
    }
}

#[derive(Debug)]
struct Change {
    rv: u64,
    kind: Kind,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Debug, Default)]
struct World {
    rv: u64,
    namespaces: BTreeMap<String, Value>,
    /// `namespace/name` → pod.
    pods: BTreeMap<String, Value>,
    log: Vec<Change>,
}

impl World {
    fn objects(&self, kind: Kind) -> &BTreeMap<String, Value> {
        match kind {
            Kind::Namespace => &self.namespaces,
            Kind::Pod => &self.pods,
        }
    }

    /// Stores `new` (or deletes, with `None`) under `key`, with the next resourceVersion.
    fn change(&mut self, kind: Kind, key: &str, new: Option<Value>) {
        self.rv += 1;
        let rv = self.rv;
        let new = new.map(|mut v| {
            v["metadata"]["resourceVersion"] = json!(rv.to_string());
            v
        });
        let map = match kind {
            Kind::Namespace => &mut self.namespaces,
            Kind::Pod => &mut self.pods,
        };
        let old = match &new {
            Some(v) => map.insert(key.to_string(), v.clone()),
            None => map.remove(key),
        };
        // A deleted object is sent with the deletion's resourceVersion.
        let new_or_deleted = new.clone();
        let old = old.map(|mut o| {
            if new_or_deleted.is_none() {
                o["metadata"]["resourceVersion"] = json!(rv.to_string());
            }
            o
        });
        self.log.push(Change { rv, kind, old, new });
    }
}

/// A selector requirement.
#[derive(Clone, Debug, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
}

/// Parses a label or field selector; `Err` says what is not understood (answered with 400).
fn parse_selector(text: &str) -> Result<Vec<Req>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let req = if let Some((k, v)) = part.split_once("!=") {
            Req::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==") {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once('=') {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some(k) = part.strip_prefix('!') {
            Req::NotExists(k.trim().into())
        } else if part.contains(' ') || part.contains('(') {
            return Err(format!("unsupported selector requirement {part:?}"));
        } else {
            Req::Exists(part.into())
        };
        out.push(req);
    }
    Ok(out)
}

fn labels_match(reqs: &[Req], obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    reqs.iter().all(|r| match r {
        Req::Eq(k, v) => labels[k].as_str() == Some(v),
        Req::Ne(k, v) => labels[k].as_str() != Some(v),
        Req::Exists(k) => labels.get(k).is_some(),
        Req::NotExists(k) => labels.get(k).is_none(),
    })
}

fn field<'a>(obj: &'a Value, path: &str) -> Option<&'a str> {
    path.split('.')
        .try_fold(obj, |v, k| v.get(k))
        .and_then(Value::as_str)
}

fn fields_match(reqs: &[Req], obj: &Value) -> bool {
    reqs.iter().all(|r| match r {
        Req::Eq(k, v) => field(obj, k).unwrap_or("") == v,
        Req::Ne(k, v) => field(obj, k).unwrap_or("") != v,
        _ => false,
    })
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    label_selector: Option<String>,
    field_selector: Option<String>,
    watch: Option<String>,
    resource_version: Option<String>,
    timeout_seconds: Option<u64>,
}

struct Filter {
    labels: Vec<Req>,
    fields: Vec<Req>,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        labels_match(&self.labels, obj) && fields_match(&self.fields, obj)
    }
}

#[derive(Clone)]
struct Shared {
    world: Arc<Mutex<World>>,
    changed: tokio::sync::watch::Sender<u64>,
    lists: Arc<AtomicU64>,
    watches: Arc<AtomicU64>,
}

fn status_error(code: StatusCode, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": "BadRequest", "code": code.as_u16()});
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn list_or_watch(shared: Shared, kind: Kind, params: ListParams) -> Response {
    let filter = match (
        parse_selector(params.label_selector.as_deref().unwrap_or("")),
        parse_selector(params.field_selector.as_deref().unwrap_or("")),
    ) {
        (Ok(labels), Ok(fields)) => Filter { labels, fields },
        (Err(e), _) | (_, Err(e)) => return status_error(StatusCode::BAD_REQUEST, e),
    };
    let watch = matches!(params.watch.as_deref(), Some("1" | "true"));
    if !watch {
        shared.lists.fetch_add(1, Ordering::Relaxed);
        let world = shared.world.lock().unwrap();
        let items: Vec<Value> = world
            .objects(kind)
            .values()
            .filter(|o| filter.matches(o))
            .cloned()
            .collect();
        let body = json!({
            "kind": format!("{}List", kind.name()),
            "apiVersion": "v1",
            "metadata": {"resourceVersion": world.rv.to_string()},
            "items": items,
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    shared.watches.fetch_add(1, Ordering::Relaxed);
    let from: u64 = params
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(params.timeout_seconds.unwrap_or(1800));
    let deadline = tokio::time::Instant::now() + timeout;
    // Without a resourceVersion, a watch starts with every object as ADDED.
    let mut first: Vec<Value> = Vec::new();
    let cursor = if from == 0 {
        let world = shared.world.lock().unwrap();
        for o in world.objects(kind).values().filter(|o| filter.matches(o)) {
            first.push(event("ADDED", kind, o));
        }
        world.rv
    } else {
        from
    };
    let rx = shared.changed.subscribe();
    let state = (shared, filter, cursor, rx, first);
    let stream = futures::stream::unfold(
        state,
        move |(shared, filter, mut cursor, mut rx, first)| async move {
            if !first.is_empty() {
                let bytes = lines(&first);
                return Some((
                    Ok::<_, std::io::Error>(bytes),
                    (shared, filter, cursor, rx, Vec::new()),
                ));
            }
            loop {
                let events: Vec<Value> = {
                    let world = shared.world.lock().unwrap();
                    let mut out = Vec::new();
                    for c in world.log.iter().filter(|c| c.rv > cursor && c.kind == kind) {
                        let was = c.old.as_ref().is_some_and(|o| filter.matches(o));
                        let is = c.new.as_ref().is_some_and(|n| filter.matches(n));
                        let obj = c.new.as_ref().or(c.old.as_ref()).unwrap();
                        let ty = match (was, is) {
                            (true, true) => "MODIFIED",
                            (false, true) => "ADDED",
                            (true, false) => "DELETED",
                            (false, false) => continue,
                        };
                        // Leaving the selector: the object as it is now, with the new version.
                        out.push(event(ty, kind, obj));
                    }
                    cursor = world.rv;
                    out
                };
                if !events.is_empty() {
                    return Some((Ok(lines(&events)), (shared, filter, cursor, rx, Vec::new())));
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return None },
                    _ = tokio::time::sleep_until(deadline) => return None,
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn event(ty: &str, kind: Kind, obj: &Value) -> Value {
    let mut o = obj.clone();
    o["kind"] = json!(kind.name());
    o["apiVersion"] = json!("v1");
    json!({"type": ty, "object": o})
}

fn lines(events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(e.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route(
            "/api/v1/namespaces",
            get(
                |State(s): State<Shared>, Query(p): Query<ListParams>| async move {
                    list_or_watch(s, Kind::Namespace, p).await
                },
            ),
        )
        .route(
            "/api/v1/pods",
            get(
                |State(s): State<Shared>, Query(p): Query<ListParams>| async move {
                    list_or_watch(s, Kind::Pod, p).await
                },
            ),
        )
        .with_state(shared)
}

/// Accepts connections until dropped (aborted); each connection is a task of `conns`, so
/// aborting this future closes every one of them.
async fn serve(listener: tokio::net::TcpListener, app: Router) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// What a pod in the stand-in looks like.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    /// The controller owner: (kind, name).
    pub owner: Option<(String, String)>,
    /// (container name, container ID without scheme).
    pub containers: Vec<(String, String)>,
}

impl PodSpec {
    /// A pod of Deployment `deployment` (ReplicaSet `<deployment>-<hash>`, label
    /// `pod-template-hash`), one container per entry of `containers`.
    pub fn deployment(
        namespace: &str,
        deployment: &str,
        hash: &str,
        suffix: &str,
        uid: &str,
        node: &str,
        containers: &[(&str, &str)],
    ) -> PodSpec {
        PodSpec {
            namespace: namespace.into(),
            name: format!("{deployment}-{hash}-{suffix}"),
            uid: uid.into(),
            node: node.into(),
            labels: vec![
                ("app".into(), deployment.into()),
                ("pod-template-hash".into(), hash.into()),
            ],
            annotations: Vec::new(),
            owner: Some(("ReplicaSet".into(), format!("{deployment}-{hash}"))),
            containers: containers
                .iter()
                .map(|(n, id)| (n.to_string(), id.to_string()))
                .collect(),
        }
    }

    fn to_json(&self) -> Value {
        let map = |pairs: &[(String, String)]| -> Value {
            pairs
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let mut meta = json!({
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": map(&self.labels),
            "annotations": map(&self.annotations),
        });
        if let Some((kind, name)) = &self.owner {
            meta["ownerReferences"] = json!([{
                "apiVersion": "apps/v1", "kind": kind, "name": name,
                "uid": "11111111-2222-3333-4444-555555555555",
                "controller": true, "blockOwnerDeletion": true,
            }]);
        }
        json!({
            "metadata": meta,
            "spec": {
                "nodeName": self.node,
                "containers": self.containers.iter()
                    .map(|(n, _)| json!({"name": n, "image": "vllm/vllm-openai:v0.11.0"}))
                    .collect::<Vec<_>>(),
            },
            "status": {
                "phase": "Running",
                "qosClass": "Burstable",
                "podIP": "10.244.0.17",
                "startTime": "2026-01-01T00:00:00Z",
                "containerStatuses": self.containers.iter().map(|(n, id)| json!({
                    "name": n,
                    "containerID": format!("containerd://{id}"),
                    "image": "docker.io/vllm/vllm-openai:v0.11.0",
                    "imageID": "docker.io/vllm/vllm-openai@sha256:0",
                    "ready": true, "started": true, "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}},
                })).collect::<Vec<_>>(),
            },
        })
    }
}

/// The stand-in, on its own small runtime, for synchronous tests.
pub struct KubeApi {
    rt: tokio::runtime::Runtime,
    shared: Shared,
    addr: SocketAddr,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl KubeApi {
    /// Starts serving on a free port of 127.0.0.1.
    pub fn start_new() -> KubeApi {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (changed, _) = tokio::sync::watch::channel(0);
        let shared = Shared {
            world: Arc::default(),
            changed,
            lists: Arc::default(),
            watches: Arc::default(),
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binding the API stand-in");
        let addr = listener.local_addr().unwrap();
        let server = rt.spawn(serve(listener, router(shared.clone())));
        KubeApi {
            rt,
            shared,
            addr,
            server: Some(server),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig naming this server (plain HTTP, no credentials) as the current context.
    pub fn write_kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\n\
             users:\n- name: standin\n  user: {{}}\ncontexts:\n- name: standin\n  context:\n    \
             cluster: standin\n    user: standin\ncurrent-context: standin\n",
            self.url()
        );
        std::fs::write(path, text).expect("writing the kubeconfig");
    }

    /// Goes down: the listener and every open connection (watches included) are closed.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = self.rt.block_on(server);
        }
    }

    /// Comes back on the same port.
    pub fn start(&mut self) {
        if self.server.is_some() {
            return;
        }
        let addr = self.addr;
        let listener = self
            .rt
            .block_on(async move {
                for _ in 0..50 {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => return Ok(l),
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                tokio::net::TcpListener::bind(addr).await
            })
            .expect("binding the API stand-in again");
        self.server = Some(self.rt.spawn(serve(listener, router(self.shared.clone()))));
    }

    fn change(&self, kind: Kind, key: &str, f: impl FnOnce(Option<&Value>) -> Option<Value>) {
        let mut w = self.shared.world.lock().unwrap();
        let new = f(w.objects(kind).get(key));
        w.change(kind, key, new);
        let rv = w.rv;
        drop(w);
        self.shared.changed.send_replace(rv);
    }

    pub fn add_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let obj = json!({
            "metadata": {"name": name, "uid": format!("ns-{name}"), "labels": labels,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        self.change(Kind::Namespace, name, |_| Some(obj));
    }

    /// Sets (`Some`) or removes (`None`) a label of a namespace.
    pub fn label_namespace(&self, name: &str, key: &str, value: Option<&str>) {
        self.change(Kind::Namespace, name, |old| {
            let mut o = old.expect("no such namespace").clone();
            match value {
                Some(v) => o["metadata"]["labels"][key] = json!(v),
                None => {
                    if let Some(m) = o["metadata"]["labels"].as_object_mut() {
                        m.remove(key);
                    }
                }
            }
            Some(o)
        });
    }

    pub fn add_pod(&self, pod: &PodSpec) {
        let key = format!("{}/{}", pod.namespace, pod.name);
        self.change(Kind::Pod, &key, |_| Some(pod.to_json()));
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let key = format!("{namespace}/{name}");
        self.change(Kind::Pod, &key, |_| None);
    }

    /// List and watch requests served so far.
    pub fn requests(&self) -> (u64, u64) {
        (
            self.shared.lists.load(Ordering::Relaxed),
            self.shared.watches.load(Ordering::Relaxed),
        )
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_and_match_like_the_api_server() {
        let ns = json!({"metadata": {"name": "llm", "labels": {"infertap.io/enabled": "true", "team": "a"}}});
        let yes = [
            "infertap.io/enabled=true",
            "infertap.io/enabled==true,team",
            "team!=b",
            "!other",
            "",
        ];
        for s in yes {
            assert!(labels_match(&parse_selector(s).unwrap(), &ns), "{s}");
        }
        for s in ["infertap.io/enabled=false", "other", "!team", "team!=a"] {
            assert!(!labels_match(&parse_selector(s).unwrap(), &ns), "{s}");
        }
        assert!(parse_selector("team in (a,b)").is_err());
        let pod = json!({"metadata": {"namespace": "llm"}, "spec": {"nodeName": "node-a"}});
        assert!(fields_match(
            &parse_selector("spec.nodeName=node-a").unwrap(),
            &pod
        ));
        assert!(!fields_match(
            &parse_selector("spec.nodeName=node-b").unwrap(),
            &pod
        ));
        assert!(fields_match(
            &parse_selector("metadata.namespace!=x").unwrap(),
            &pod
        ));
    }
}
