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
//! The orchestrator's own rights for this are create on namespaces, serviceaccounts and
//! rolebindings, and `bind` on that one ClusterRole (it does not hold the role's verbs
//! itself). Namespaces seen to exist are remembered, so only a user's first spawn per
//! orchestrator process pays three GETs.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, Resource};
use proto::names::UserId;
use serde::de::DeserializeOwned;

use super::manifest::{
    user_namespace, LABEL_MANAGED_BY, LABEL_USER, MANAGED_BY, SERVER_SERVICE_ACCOUNT,
};

/// The ClusterRole bound to each user in their namespace (made by the platform's install).
pub const USER_CLUSTER_ROLE: &str = "jbazel-user";
/// Label of a user namespace (and of its pods): the platform namespace it belongs to.
pub const LABEL_PLATFORM_NAMESPACE: &str = super::manifest::LABEL_PLATFORM;

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
    ready: Arc<Mutex<HashSet<String>>>,
}

impl UserNamespaces {
    pub fn new(client: Client, platform: String) -> Self {
        UserNamespaces {
            client,
            platform,
            ready: Arc::default(),
        }
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
            (LABEL_PLATFORM_NAMESPACE.to_string(), self.platform.clone()),
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
