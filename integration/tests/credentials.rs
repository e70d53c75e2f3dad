//! The tenancy credentials `integration/kubernetes/local.sh up` makes, checked against the
//! real API server: who each credential authenticates as, and what RBAC lets it do.
//!
//! Needs the local cluster (`integration/kubernetes/local.sh up`, as root). Namespace
//! `jbazel-bob` and its RoleBinding of ClusterRole `jbazel-user` to bob are created when
//! missing (what the orchestrator does for a user) and left in place.

use std::path::Path;

use integration::credentials::{self, UserCredential};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

const BOB_NAMESPACE: &str = "jbazel-bob";

async fn client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", kubeconfig.display()));
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", kubeconfig.display()));
    Client::try_from(config).unwrap_or_else(|e| panic!("client of {}: {e}", kubeconfig.display()))
}

async fn admin() -> Client {
    client(&credentials::admin_kubeconfig()).await
}

async fn user(name: &str) -> (UserCredential, Client) {
    let cred = credentials::user_credential(name).unwrap_or_else(|e| {
        panic!(
            "credential of {name}: {}",
            proto::error_chain::ErrorChain(&e)
        )
    });
    let client = client(&cred.kubeconfig).await;
    (cred, client)
}

/// The HTTP status of a failed call (panics on success or a non-API error).
fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("{what}: expected an API error, got {other:?}"),
    }
}

async fn list_pods(client: &Client, namespace: &str) -> Result<usize, kube::Error> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map(|l| l.items.len())
}

/// What the API server's authorizer says the client may do (SelfSubjectAccessReview).
async fn may(
    client: &Client,
    verb: &str,
    resource: &str,
    subresource: Option<&str>,
    ns: &str,
) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                subresource: subresource.map(Into::into),
                namespace: Some(ns.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap_or_else(|e| panic!("SelfSubjectAccessReview {verb} {resource}: {e}"));
    answer.status.map(|s| s.allowed).unwrap_or(false)
}

/// RoleBinding `name` of ClusterRole `role` to user `user`.
fn user_binding(name: &str, role: &str, user: &str) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: user.into(),
            ..Default::default()
        }]),
    }
}

/// Namespace jbazel-bob with bob bound to ClusterRole jbazel-user in it, as the orchestrator
/// makes a user's namespace (created as admin when missing; concurrent runs tolerated).
async fn bob_namespace() {
    let admin = admin().await;
    let pp = PostParams::default();
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(BOB_NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(admin.clone()).create(&pp, &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create namespace {BOB_NAMESPACE}: {e}"),
    }
    let binding = user_binding("jbazel-user", "jbazel-user", "bob");
    match Api::<RoleBinding>::namespaced(admin, BOB_NAMESPACE)
        .create(&pp, &binding)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create RoleBinding {BOB_NAMESPACE}/jbazel-user: {e}"),
    }
}

#[tokio::test]
async fn a_user_kubeconfig_authenticates_as_that_user_and_sees_nothing_by_default() {
    let (cred, alice) = user("alice").await;
    assert_eq!(cred.user, "alice");
    let status = refused(
        "alice lists pods in jbazel",
        list_pods(&alice, "jbazel").await,
    );
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status.message.contains("User \"alice\""),
        "{}",
        status.message
    );
    // No cluster-wide binding: a namespace the orchestrator never bound for her is closed
    // too (jbazel-alice itself may be bound already, by the demo or an earlier run).
    let unbound = format!("jbazel-unbound-{}", std::process::id());
    let status = refused(
        "alice lists pods in a namespace of nobody",
        list_pods(&alice, &unbound).await,
    );
    assert_eq!(status.code, 403, "{status:?}");
}

#[tokio::test]
async fn the_user_role_works_in_the_users_own_namespace_only() {
    bob_namespace().await;
    let (_, bob) = user("bob").await;
    let (_, alice) = user("alice").await;
    let (_, mallory) = user("mallory").await;

    list_pods(&bob, BOB_NAMESPACE)
        .await
        .expect("bob lists pods in his own namespace");
    for (name, other) in [("alice", &alice), ("mallory", &mallory)] {
        let status = refused(
            &format!("{name} lists pods in {BOB_NAMESPACE}"),
            list_pods(other, BOB_NAMESPACE).await,
        );
        assert_eq!(status.code, 403, "{status:?}");
        assert!(
            status.message.contains(&format!("User \"{name}\"")),
            "{}",
            status.message
        );
    }
    let status = refused("bob lists pods in jbazel", list_pods(&bob, "jbazel").await);
    assert_eq!(status.code, 403, "{status:?}");

    // Exactly jbazel-user's rules in his namespace: read pods, their logs, port-forward; no exec.
    assert!(may(&bob, "watch", "pods", None, BOB_NAMESPACE).await);
    assert!(may(&bob, "get", "pods", Some("log"), BOB_NAMESPACE).await);
    assert!(may(&bob, "create", "pods", Some("portforward"), BOB_NAMESPACE).await);
    assert!(!may(&bob, "create", "pods", Some("exec"), BOB_NAMESPACE).await);
    assert!(!may(&bob, "create", "pods", None, BOB_NAMESPACE).await);
    assert!(!may(&bob, "delete", "pods", None, BOB_NAMESPACE).await);
    assert!(!may(&alice, "create", "pods", Some("portforward"), BOB_NAMESPACE).await);
}

#[tokio::test]
async fn a_new_user_is_made_on_demand_even_by_concurrent_callers() {
    let name = format!("storm-{}", std::process::id() % 1000);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let name = name.clone();
            std::thread::spawn(move || credentials::user_credential(&name))
        })
        .collect();
    let creds: Vec<UserCredential> = handles
        .into_iter()
        .map(|h| {
            h.join()
                .expect("thread")
                .unwrap_or_else(|e| panic!("{}", proto::error_chain::ErrorChain(&e)))
        })
        .collect();
    assert!(creds.windows(2).all(|w| w[0] == w[1]));
    let (_, c) = user(&name).await;
    let status = refused(
        "new user lists pods in jbazel",
        list_pods(&c, "jbazel").await,
    );
    assert!(
        status.message.contains(&format!("User \"{name}\"")),
        "{}",
        status.message
    );

    let err = credentials::user_credential("Not_A_Label").expect_err("invalid name");
    assert!(err.to_string().contains("Not_A_Label"), "{err}");

    // A throwaway user: do not leave its files behind (alice, bob and mallory stay).
    let cred = &creds[0];
    for path in [&cred.kubeconfig, &cred.cert_pem, &cred.key_pem] {
        std::fs::remove_file(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
}

#[tokio::test]
async fn the_orchestrator_reviews_tokens_but_cannot_exec() {
    let path = credentials::orchestrator_kubeconfig().expect("orchestrator kubeconfig");
    let orchestrator = client(&path).await;

    // Its own token, read as admin from the ServiceAccount's Secret.
    let admin = admin().await;
    let sa = Api::<ServiceAccount>::namespaced(admin.clone(), "jbazel")
        .get("jbazel-orchestrator")
        .await
        .expect("ServiceAccount jbazel/jbazel-orchestrator");
    let secret_name = sa
        .secrets
        .and_then(|s| s.into_iter().next())
        .and_then(|r| r.name)
        .expect("token Secret of the ServiceAccount");
    let secret = Api::<Secret>::namespaced(admin, "jbazel")
        .get(&secret_name)
        .await
        .expect("token Secret");
    let token = secret
        .data
        .and_then(|d| d.get("token").cloned())
        .map(|b| String::from_utf8(b.0).expect("utf-8 token"))
        .expect("token in the Secret");

    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<TokenReview>::all(orchestrator.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("the orchestrator creates a TokenReview");
    let status = answer.status.expect("TokenReview status");
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(
        status.user.and_then(|u| u.username).as_deref(),
        Some("system:serviceaccount:jbazel:jbazel-orchestrator")
    );

    // It may bind jbazel-user in a user's namespace and nothing else (RBAC escalation check;
    // a dry run goes through authorization and admission but stores nothing).
    bob_namespace().await;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let bindings = Api::<RoleBinding>::namespaced(orchestrator.clone(), BOB_NAMESPACE);
    bindings
        .create(
            &dry_run,
            &user_binding("dry-run-user", "jbazel-user", "bob"),
        )
        .await
        .expect("the orchestrator binds jbazel-user in a user namespace");
    let status = refused(
        "the orchestrator binds ClusterRole admin",
        bindings
            .create(&dry_run, &user_binding("dry-run-admin", "admin", "bob"))
            .await,
    );
    assert_eq!(status.code, 403, "{status:?}");

    assert!(may(&orchestrator, "create", "pods", None, "jbazel").await);
    assert!(may(&orchestrator, "create", "namespaces", None, "").await);
    assert!(!may(&orchestrator, "create", "pods", Some("exec"), "jbazel").await);
    assert!(!may(&orchestrator, "create", "pods", Some("exec"), BOB_NAMESPACE).await);
    assert!(!may(&orchestrator, "get", "secrets", None, "jbazel").await);
    assert!(!may(&orchestrator, "update", "pods", None, "jbazel").await);
}

#[tokio::test]
async fn expired_and_foreign_ca_credentials_are_refused() {
    let (expired, _dir1) = credentials::expired_credential("alice")
        .unwrap_or_else(|e| panic!("{}", proto::error_chain::ErrorChain(&e)));
    let (foreign, _dir2) = credentials::foreign_ca_credential("alice")
        .unwrap_or_else(|e| panic!("{}", proto::error_chain::ErrorChain(&e)));
    for cred in [&expired, &foreign] {
        let c = client(&cred.kubeconfig).await;
        let status = refused(
            &format!("{}", cred.kubeconfig.display()),
            list_pods(&c, "jbazel").await,
        );
        assert_eq!(
            status.code,
            401,
            "{}: {status:?}",
            cred.kubeconfig.display()
        );
    }
}
