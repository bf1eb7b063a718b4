//! Which model names may be a metric label: the models a server serves, learned from its own
//! answers, so that client-chosen text (`gen_ai.request.model`) cannot mint series.
//!
//! Policy, per server (address and port of the SERVER span):
//! - Once a `GET /v1/models` answer of that server was seen (`Summary::served_models`), its
//!   latest list is the served set: a request or response model in it is its own label value;
//!   any other is [`OTHER`].
//! - Before that, the server's own answers are the evidence: a response model
//!   (`gen_ai.response.model`, written by the server, on a response under 400) joins the served
//!   set provisionally, up to [`PROVISIONAL_MAX`] names (a server that echoes whatever a client
//!   sent can add no more); a request model is labelled only when it is one of those.
//! - Routing decisions (an endpoint picker is not the server and sees no answer): a model any
//!   server serves, or one of the first [`PROVISIONAL_MAX`] names decisions carried (first come;
//!   the picker may run on another node than its model servers), else [`OTHER`].
//!
//! Bounds: [`SERVERS_MAX`] servers (past it, a new server learns nothing and its models are
//! [`OTHER`]), [`SERVED_MODELS_MAX`] listed and [`PROVISIONAL_MAX`] provisional names each, every
//! name at most `MAX_LABEL_VALUE_LEN` bytes. The span attributes stay as sent.

use std::collections::HashSet;

use super::bounded;
use crate::protocol::openai::models::SERVED_MODELS_MAX;
use crate::trace::summary::Summary;

/// The label value of a model that is not known to be served.
pub const OTHER: &str = "other";
/// Servers whose served models are remembered.
pub const SERVERS_MAX: usize = 64;
/// Response models taken as served before a server's model list is seen.
pub const PROVISIONAL_MAX: usize = 16;

#[derive(Debug, Default)]
struct Server {
    address: Option<Box<str>>,
    port: Option<i64>,
    /// The latest `/v1/models` list.
    listed: Option<HashSet<Box<str>>>,
    /// Response models seen before any list.
    provisional: HashSet<Box<str>>,
}

impl Server {
    fn serves(&self, model: &str) -> bool {
        match &self.listed {
            Some(l) => l.contains(model),
            None => self.provisional.contains(model),
        }
    }
}

/// The served models of each server, as learned from summaries.
#[derive(Debug, Default)]
pub struct ServedModels {
    /// At most [`SERVERS_MAX`], found by a scan (no key to allocate on the recording path).
    servers: Vec<Server>,
    /// Models of routing decisions taken first come (at most [`PROVISIONAL_MAX`]).
    routed: HashSet<Box<str>>,
}

impl ServedModels {
    fn find(&self, r: &Summary) -> Option<usize> {
        self.servers.iter().position(|s| {
            s.port == r.server_port && s.address.as_deref() == r.server_address.as_deref()
        })
    }

    /// Learns what a SERVER summary says about its server's models.
    pub fn learn(&mut self, r: &Summary) {
        let ok = r.status_code.is_some_and(|s| s < 400);
        let list = !r.served_models.is_empty();
        let response = r.response_model.as_deref().filter(|_| ok);
        if !list && response.is_none() {
            return;
        }
        let i = match self.find(r) {
            Some(i) => i,
            None if self.servers.len() >= SERVERS_MAX => return,
            None => {
                self.servers.push(Server {
                    address: r.server_address.as_deref().map(Into::into),
                    port: r.server_port,
                    ..Server::default()
                });
                self.servers.len() - 1
            }
        };
        let server = &mut self.servers[i];
        if list {
            server.listed = Some(
                r.served_models
                    .iter()
                    .take(SERVED_MODELS_MAX)
                    .map(|m| bounded(m).into())
                    .collect(),
            );
            server.provisional = HashSet::new();
        } else if let Some(m) = response {
            let m = bounded(m);
            if server.listed.is_none()
                && server.provisional.len() < PROVISIONAL_MAX
                && !server.provisional.contains(m)
            {
                server.provisional.insert(m.into());
            }
        }
    }

    /// The label value of `model` on a request to `r`'s server: itself (bounded) when served,
    /// else [`OTHER`].
    pub fn label<'a>(&self, r: &Summary, model: &'a str) -> &'a str {
        let m = bounded(model);
        let served = self.find(r).is_some_and(|i| self.servers[i].serves(m));
        if served {
            m
        } else {
            OTHER
        }
    }

    /// The label value of `model` in a routing decision: itself when any server serves it or it
    /// is one of the first names decisions carried.
    pub fn label_routed<'a>(&mut self, model: &'a str) -> &'a str {
        let m = bounded(model);
        if !self.routed.contains(m) && self.routed.len() < PROVISIONAL_MAX {
            self.routed.insert(m.into());
        }
        if self.routed.contains(m) || self.servers.iter().any(|s| s.serves(m)) {
            m
        } else {
            OTHER
        }
    }

    /// Servers remembered.
    pub fn servers(&self) -> usize {
        self.servers.len()
    }
}
