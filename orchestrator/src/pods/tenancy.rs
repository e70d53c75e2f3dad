//! One namespace per user: where their pods live, and what makes RBAC per user possible.
//!
//! Before the first pod of a user is created, [`UserNamespaces::ensure`] makes (each only
//! when missing, so it is idempotent and safe for any number of replicas):
//! - the Namespace `user_namespace(platform, user)`, labelled with the user and platform;
//! - the ServiceAccount [`SERVER_SERVICE_ACCOUNT`] with no API token mounted and no role:
//!   its pods' bound tokens are their ReportReady credential and nothing more;
//! - the RoleBinding `jbazel-user` of the ClusterRole [`USER_CLUSTER_ROLE`] to the user
//!   (Kubernetes user name = UserId): get/list/watch pods and port-forward to them, in this
//!   namespace only. That is the whole of a user's rights on the cluster.
//!
//! - the NetworkPolicy [`NETWORK_POLICY`]: the server pods' egress goes to the orchestrator
//!   (ReportReady; every call there needs a credential a build cannot read) and to the
//!   operator's `--pod-egress-allow-cidr` list, nowhere else: not other users' pods, not the
//!   cluster's API, not the node. Ingress stays open (desktops dial the pod IP; the cookie
//!   guards it), and another pod cannot send anyway. Enforced by any CNI that implements
//!   NetworkPolicy (Calico, Cilium, GKE Dataplane V2); the local harness's bridge CNI does
//!   not, so there the policy is made and checked but not enforced.
//!
//! The orchestrator's own rights for this are create on namespaces, serviceaccounts,
//! rolebindings and networkpolicies, and `bind` on that one ClusterRole (it does not hold the role's verbs
//! itself). Namespaces seen to exist are remembered, so only a user's first spawn per
//! orchestrator process pays three GETs.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, Resource};
use proto::names::UserId;
use serde::de::DeserializeOwned;

use super::manifest::{
    user_namespace, APP, LABEL_APP, LABEL_MANAGED_BY, LABEL_PLATFORM, LABEL_USER, MANAGED_BY,
    SERVER_SERVICE_ACCOUNT,
};

/// The ClusterRole bound to each user in their namespace (made by the platform's install).
pub const USER_CLUSTER_ROLE: &str = "jbazel-user";
/// The NetworkPolicy of each user namespace.
pub const NETWORK_POLICY: &str = "jbazel-server-egress";

/// Where the server pods may connect to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    /// The orchestrator as the pods reach it: `(ip, port)` when its URL names an IP; a host
    /// name gives `(None, port)`: that port to anywhere.
    pub orchestrator: Option<(Option<String>, u16)>,
    /// Other CIDRs, any port.
    pub allow: Vec<String>,
}

impl Egress {
    /// From the pods' orchestrator URL and the operator's CIDRs. Pure.
    pub fn new(orchestrator_url: &str, allow: &[String]) -> Egress {
        let orchestrator = orchestrator_url.parse::<http::Uri>().ok().and_then(|uri| {
            let scheme = uri.scheme_str()?;
            let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
            let port = uri
                .port_u16()
                .unwrap_or(if scheme == "https" { 443 } else { 80 });
            let ip = host
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| ip.to_string());
            Some((ip, port))
        });
        Egress {
            orchestrator,
            allow: allow.to_vec(),
        }
    }

    /// The policy of the server pods of one namespace. Pure.
    pub fn policy(&self, meta: ObjectMeta) -> NetworkPolicy {
        let peer = |cidr: String| NetworkPolicyPeer {
            ip_block: Some(IPBlock { cidr, except: None }),
            ..Default::default()
        };
        let mut rules = Vec::new();
        if let Some((ip, port)) = &self.orchestrator {
            rules.push(NetworkPolicyEgressRule {
                to: ip.as_ref().map(|ip| {
                    let bits = if ip.contains(':') { 128 } else { 32 };
                    vec![peer(format!("{ip}/{bits}"))]
                }),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(*port))),
                    protocol: Some("TCP".to_string()),
                    ..Default::default()
                }]),
            });
        }
        if !self.allow.is_empty() {
            rules.push(NetworkPolicyEgressRule {
                to: Some(self.allow.iter().cloned().map(peer).collect()),
                ports: None,
            });
        }
        NetworkPolicy {
            metadata: meta,
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(LABEL_APP.to_string(), APP.to_string())])),
                    ..Default::default()
                }),
                policy_types: Some(vec!["Egress".to_string()]),
                egress: Some(rules),
                ingress: None,
            }),
        }
    }
}

/// Why a user's namespace could not be made ready.
#[derive(Debug, thiserror::Error)]
#[error("cannot make {kind} {name} for user {user}")]
pub struct TenancyError {
    pub kind: &'static str,
    pub name: String,
    pub user: String,
    #[source]
    pub source: kube::Error,
}

/// The user namespaces of one platform namespace.
#[derive(Clone)]
pub struct UserNamespaces {
    client: Client,
    platform: String,
    egress: Egress,
    ready: Arc<Mutex<HashSet<String>>>,
}

impl UserNamespaces {
    /// Namespaces whose pods may reach nothing (see [`UserNamespaces::with_egress`]).
    pub fn new(client: Client, platform: String) -> Self {
        UserNamespaces {
            client,
            platform,
            egress: Egress::default(),
            ready: Arc::default(),
        }
    }

    /// Where the pods may connect to.
    pub fn with_egress(mut self, egress: Egress) -> Self {
        self.egress = egress;
        self
    }

    /// Makes `user`'s namespace, service account and role binding exist.
    pub async fn ensure(&self, user: &UserId) -> Result<String, TenancyError> {
        let ns = user_namespace(&self.platform, user);
        if self.ready.lock().is_ok_and(|r| r.contains(&ns)) {
            return Ok(ns);
        }
        let labels = BTreeMap::from([
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_USER.to_string(), user.to_string()),
            (LABEL_PLATFORM.to_string(), self.platform.clone()),
        ]);
        let meta = |name: &str, namespace: Option<&str>| ObjectMeta {
            name: Some(name.to_string()),
            namespace: namespace.map(str::to_string),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        let err = |kind: &'static str, name: &str| {
            let (name, user) = (name.to_string(), user.to_string());
            move |source| TenancyError {
                kind,
                name,
                user,
                source,
            }
        };
        create_missing(
            Api::<Namespace>::all(self.client.clone()),
            &Namespace {
                metadata: meta(&ns, None),
                ..Default::default()
            },
        )
        .await
        .map_err(err("namespace", &ns))?;
        create_missing(
            Api::<ServiceAccount>::namespaced(self.client.clone(), &ns),
            &ServiceAccount {
                metadata: meta(SERVER_SERVICE_ACCOUNT, Some(&ns)),
                automount_service_account_token: Some(false),
                ..Default::default()
            },
        )
        .await
        .map_err(err("service account", SERVER_SERVICE_ACCOUNT))?;
        create_missing(
            Api::<RoleBinding>::namespaced(self.client.clone(), &ns),
            &RoleBinding {
                metadata: meta(USER_CLUSTER_ROLE, Some(&ns)),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".to_string(),
                    kind: "ClusterRole".to_string(),
                    name: USER_CLUSTER_ROLE.to_string(),
                },
                subjects: Some(vec![Subject {
                    api_group: Some("rbac.authorization.k8s.io".to_string()),
                    kind: "User".to_string(),
                    name: user.to_string(),
                    namespace: None,
                }]),
            },
        )
        .await
        .map_err(err("role binding", USER_CLUSTER_ROLE))?;
        create_missing(
            Api::<NetworkPolicy>::namespaced(self.client.clone(), &ns),
            &self.egress.policy(meta(NETWORK_POLICY, Some(&ns))),
        )
        .await
        .map_err(err("network policy", NETWORK_POLICY))?;
        tracing::info!(user = %user, namespace = %ns, "user namespace ready");
        if let Ok(mut r) = self.ready.lock() {
            r.insert(ns.clone());
        }
        Ok(ns)
    }
}

/// Creates `object` unless an object of its name exists (GET first: the orchestrator may
/// lack nothing but `create`, and AlreadyExists from a racing replica is success too).
async fn create_missing<K>(api: Api<K>, object: &K) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    if api.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_reaches_the_orchestrator_and_the_allowed_cidrs_only() {
        let e = Egress::new("https://10.244.0.1:50051", &["10.9.0.0/16".to_string()]);
        assert_eq!(
            e.orchestrator,
            Some((Some("10.244.0.1".to_string()), 50051))
        );
        let p = e.policy(ObjectMeta::default());
        let spec = p.spec.expect("spec");
        assert_eq!(spec.policy_types, Some(vec!["Egress".to_string()]));
        let rules = spec.egress.expect("rules");
        assert_eq!(rules.len(), 2);
        let peer = |r: &NetworkPolicyEgressRule| {
            r.to.as_ref()
                .and_then(|t| t[0].ip_block.as_ref())
                .map(|b| b.cidr.clone())
        };
        assert_eq!(peer(&rules[0]).as_deref(), Some("10.244.0.1/32"));
        assert_eq!(
            rules[0].ports.as_ref().and_then(|p| p[0].port.clone()),
            Some(IntOrString::Int(50051))
        );
        assert_eq!(peer(&rules[1]).as_deref(), Some("10.9.0.0/16"));
        // Nothing configured: no egress at all.
        let none = Egress::default().policy(ObjectMeta::default());
        assert_eq!(none.spec.and_then(|s| s.egress), Some(vec![]));
    }

    #[test]
    fn orchestrator_urls() {
        assert_eq!(
            Egress::new("https://orch.example:8443", &[]).orchestrator,
            Some((None, 8443)),
            "a host name: its port to anywhere"
        );
        assert_eq!(
            Egress::new("https://[fd00::1]:50051", &[]).orchestrator,
            Some((Some("fd00::1".to_string()), 50051))
        );
        assert_eq!(
            Egress::new("http://192.0.2.1", &[]).orchestrator,
            Some((Some("192.0.2.1".to_string()), 80))
        );
        assert_eq!(Egress::new("", &[]).orchestrator, None);
    }
}
