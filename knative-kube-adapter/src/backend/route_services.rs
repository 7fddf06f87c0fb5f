//! [`RouteServices`]: a Kubernetes Service per serving Route and per
//! traffic tag, so the Route's cluster-local names resolve
//! (`specs/CRDS.md`, "Route: a Kubernetes Service named like the route";
//! `specs/SERVING.md §2`, "Hostnames").
//!
//! Upstream gives every Route a placeholder Service `<route>` (and
//! `<tag>-<route>` for each tag, the default `tag-template`) of type
//! ExternalName pointing at the ingress gateway, so that
//! `<route>.<ns>.svc.cluster.local` is a DNS name that reaches the ingress,
//! which then routes by `Host`. Here the ingress runs in the operator's
//! process, so the Services point at the operator's ingress Service,
//! [`RouteServicesConfig::ingress_host`].
//!
//! [`desired_route_services`] computes them (pure): type `ExternalName`,
//! port 80 named `http`, the Route's labels plus
//! `serving.knative.dev/route=<route>`, and the Route as controlling owner
//! (so they go when it goes). Tags come from `spec.traffic` and
//! `status.traffic` (a tag keeps its Service until the Route stops
//! serving it); a `<tag>-<route>` longer than 63 characters cannot be a
//! Service name and is skipped with a warning.
//!
//! [`RouteServices::apply`] server-side applies them and deletes the
//! Services labelled for the Route and controlled by it that are no longer
//! desired (a removed tag); [`RouteServices::cleanup`] deletes them all.
//! RBAC: `services` list, patch, delete.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use knative_serving::api::{Route, keys};
use knative_serving::reconciler::controller_reference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use tracing::Instrument;

use super::workload::DEFAULT_FIELD_MANAGER;

/// The default host of the operator's ingress Service.
pub const DEFAULT_INGRESS_HOST: &str = "knative-ingress.knative-serving.svc.cluster.local";
/// The longest Kubernetes Service name (a DNS-1035 label).
const MAX_SERVICE_NAME: usize = 63;

/// Settings of [`RouteServices`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteServicesConfig {
    /// Where the Services point: the DNS name of the Service in front of
    /// the operator's ingress ([`DEFAULT_INGRESS_HOST`]).
    pub ingress_host: String,
    /// The server-side apply field manager.
    pub field_manager: String,
}

impl Default for RouteServicesConfig {
    fn default() -> Self {
        RouteServicesConfig {
            ingress_host: DEFAULT_INGRESS_HOST.to_owned(),
            field_manager: DEFAULT_FIELD_MANAGER.to_owned(),
        }
    }
}

/// Why [`RouteServices`] could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum RouteServicesError {
    /// The Route lacks what the Services need (a name, namespace or uid:
    /// only Routes read from the API server have them).
    #[error("route {route:?}: {message}")]
    Invalid {
        /// The Route.
        route: String,
        /// What is missing.
        message: String,
    },
    /// An API call failed.
    #[error("{message}: {source}")]
    Api {
        /// What was being done.
        message: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// The traffic tags of a Route, from its spec and status, sorted.
fn tags(route: &Route) -> BTreeSet<String> {
    let status = route.status.iter().flat_map(|s| s.traffic.iter());
    route
        .spec
        .traffic
        .iter()
        .chain(status)
        .filter_map(|t| t.tag.clone())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The Services a Route should have (see the [module docs](self)).
pub fn desired_route_services(
    route: &Route,
    config: &RouteServicesConfig,
) -> Result<Vec<Service>, RouteServicesError> {
    let name = route.name_any();
    let invalid = |message: &str| RouteServicesError::Invalid {
        route: name.clone(),
        message: message.to_owned(),
    };
    if route.metadata.name.is_none() {
        return Err(invalid("has no name"));
    }
    let namespace = route
        .namespace()
        .ok_or_else(|| invalid("has no namespace"))?;
    if route.metadata.uid.is_none() {
        return Err(invalid("has no uid, so it cannot own Services"));
    }
    let owner = controller_reference(route);
    let mut labels: BTreeMap<String, String> = route.labels().clone();
    labels.insert(keys::ROUTE.to_owned(), name.clone());
    let service = |service_name: String| Service {
        metadata: ObjectMeta {
            name: Some(service_name),
            namespace: Some(namespace.clone()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".to_owned()),
            external_name: Some(config.ingress_host.clone()),
            session_affinity: Some("None".to_owned()),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: 80,
                protocol: Some("TCP".to_owned()),
                target_port: Some(IntOrString::Int(80)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let mut services = vec![service(name.clone())];
    for tag in tags(route) {
        let tagged = format!("{tag}-{name}");
        if tagged.len() > MAX_SERVICE_NAME {
            tracing::warn!(route = %name, %tag, "tag Service name {tagged:?} is longer than 63 characters; skipped");
            continue;
        }
        services.push(service(tagged));
    }
    Ok(services)
}

/// Keeps each Route's Services (see the [module docs](self)).
#[derive(Clone)]
pub struct RouteServices {
    client: Client,
    config: RouteServicesConfig,
}

impl std::fmt::Debug for RouteServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteServices")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn api_error(message: String) -> impl FnOnce(kube::Error) -> RouteServicesError {
    move |source| RouteServicesError::Api { message, source }
}

impl RouteServices {
    /// Writes through `client`.
    pub fn new(client: Client, config: RouteServicesConfig) -> Self {
        RouteServices { client, config }
    }

    /// Its settings.
    pub fn config(&self) -> &RouteServicesConfig {
        &self.config
    }

    /// Applies the Route's Services and deletes the ones it no longer
    /// needs; returns the names of the Services it has.
    pub async fn apply(&self, route: &Route) -> Result<Vec<String>, RouteServicesError> {
        let span = tracing::info_span!(
            "route_services",
            namespace = route.namespace().unwrap_or_default(),
            route = route.name_any()
        );
        async {
            let desired = desired_route_services(route, &self.config)?;
            let namespace = route.namespace().unwrap_or_default();
            let api: Api<Service> = Api::namespaced(self.client.clone(), &namespace);
            let params = PatchParams::apply(&self.config.field_manager).force();
            let mut names = Vec::with_capacity(desired.len());
            for service in &desired {
                let name = service.name_any();
                api.patch(&name, &params, &Patch::Apply(service))
                    .await
                    .map_err(api_error(format!(
                        "cannot apply Service {namespace}/{name}"
                    )))?;
                names.push(name);
            }
            let uid = route.metadata.uid.as_deref();
            let stale: Vec<String> = self
                .labelled(&api, &route.name_any())
                .await?
                .into_iter()
                .filter(|s| {
                    s.owner_references()
                        .iter()
                        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
                })
                .map(|s| s.name_any())
                .filter(|n| !names.contains(n))
                .collect();
            for name in stale {
                self.delete(&api, &namespace, &name).await?;
            }
            tracing::debug!(services = ?names, "route services applied");
            Ok(names)
        }
        .instrument(span)
        .await
    }

    /// Deletes every Service labelled for Route `namespace/route`.
    pub async fn cleanup(&self, namespace: &str, route: &str) -> Result<(), RouteServicesError> {
        async {
            let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
            for service in self.labelled(&api, route).await? {
                self.delete(&api, namespace, &service.name_any()).await?;
            }
            Ok(())
        }
        .instrument(tracing::info_span!(
            "route_services_cleanup",
            namespace,
            route
        ))
        .await
    }

    async fn labelled(
        &self,
        api: &Api<Service>,
        route: &str,
    ) -> Result<Vec<Service>, RouteServicesError> {
        let params = ListParams::default().labels(&format!("{}={route}", keys::ROUTE));
        let list = api.list(&params).await.map_err(api_error(format!(
            "cannot list the Services of route {route}"
        )))?;
        Ok(list.items)
    }

    async fn delete(
        &self,
        api: &Api<Service>,
        namespace: &str,
        name: &str,
    ) -> Result<(), RouteServicesError> {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::debug!(service = name, "stale route Service deleted");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(e) => Err(api_error(format!(
                "cannot delete Service {namespace}/{name}"
            ))(e)),
        }
    }
}

#[cfg(test)]
mod tests;
