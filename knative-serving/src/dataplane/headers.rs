//! Header names and values of Knative's data plane (`specs/SERVING.md §4`,
//! "Headers"), lower-case as HTTP/2 and hyper's `HeaderName` want them.

use hyper::HeaderMap;

/// Names the revision a request is for (activator routing).
pub const REVISION: &str = "knative-serving-revision";
/// Names the namespace of [`REVISION`].
pub const NAMESPACE: &str = "knative-serving-namespace";
/// Picks a tag's target when tag-header routing is on.
pub const TAG: &str = "knative-serving-tag";
/// Set by the ingress on requests routed by a tag header that fell back
/// to the default route.
pub const DEFAULT_ROUTE: &str = "knative-serving-default-route";
/// A Knative probe: `queue`, `activator` or `probe`.
pub const PROBE: &str = "k-network-probe";
/// A hash the prober sends and the ingress echoes.
pub const HASH: &str = "k-network-hash";
/// Marks a request the activator proxied (`activator`).
pub const PROXY_REQUEST: &str = "k-proxy-request";
/// The Host the client sent, when a hop rewrote it.
pub const ORIGINAL_HOST: &str = "k-original-host";
/// The kubelet's probe marker.
pub const KUBELET_PROBE: &str = "k-kubelet-probe";
/// Tells the ingress to pass a request straight through.
pub const PASSTHROUGH_LB: &str = "k-passthrough-lb";

/// [`PROBE`] value of the queue-proxy.
pub const PROBE_QUEUE: &str = "queue";
/// [`PROBE`] value of the activator.
pub const PROBE_ACTIVATOR: &str = "activator";
/// [`PROXY_REQUEST`] value set by the activator.
pub const PROXY_ACTIVATOR: &str = "activator";

/// The activator prober's user agent.
pub const ACTIVATOR_PROBE_USER_AGENT: &str = "Knative-Activator-Probe";
/// The queue-proxy prober's user agent.
pub const QUEUE_PROXY_PROBE_USER_AGENT: &str = "Knative-Queue-Proxy-Probe";
/// The ingress prober's user agent.
pub const INGRESS_PROBE_USER_AGENT: &str = "Knative-Ingress-Probe";
/// The autoscaler prober's user agent.
pub const AUTOSCALING_PROBE_USER_AGENT: &str = "Knative-Autoscaling-Probe";
/// The kubelet's user-agent prefix.
pub const KUBE_PROBE_USER_AGENT_PREFIX: &str = "kube-probe/";

/// The value of header `name`, if it is present and valid text.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether the request is a Knative probe with value `value`.
pub fn is_probe(headers: &HeaderMap, value: &str) -> bool {
    get(headers, PROBE) == Some(value)
}

/// Whether the request is a kubelet probe (header or user agent).
pub fn is_kubelet_probe(headers: &HeaderMap) -> bool {
    headers.contains_key(KUBELET_PROBE)
        || get(headers, "user-agent").is_some_and(|ua| ua.starts_with(KUBE_PROBE_USER_AGENT_PREFIX))
}

/// Whether the activator proxied the request.
pub fn is_proxied(headers: &HeaderMap) -> bool {
    get(headers, PROXY_REQUEST) == Some(PROXY_ACTIVATOR)
}
