//! The local cluster and the pod image, for real: pods with the project image start on this
//! node, see a hostPath directory, reach the host at the bridge gateway, are reachable from
//! the host (probes, TCP), and go away when deleted.
//!
//! Needs `integration/kubernetes/local.sh up && image/build.sh` first; fails (never skips)
//! when the cluster or the image is missing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, HostPathVolumeSource, Pod, PodSpec, Probe, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{AttachParams, ObjectMeta, PostParams};
use tokio::io::AsyncReadExt;

use integration::kubernetes::{
    delete_pod_and_wait, describe_pod, wait_for_pod, Cluster, PodGoal, DEFAULT_KUBECONFIG, IMAGE,
    POD_GATEWAY,
};

const START_DEADLINE: Duration = Duration::from_secs(60);

fn pod(name: &str, command: Vec<String>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "jbazel-cluster-test".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(0),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "main".into(),
                image: Some(IMAGE.into()),
                image_pull_policy: Some("Never".into()),
                command: Some(command),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

#[tokio::test]
async fn image_runs_to_completion_and_sees_a_host_path_volume() {
    let cluster = Cluster::connect().await.expect("the cluster must be up");
    let ns = cluster
        .test_namespace("cluster-hostpath")
        .await
        .expect("test namespace");
    let pods = ns.pods();

    let dir = tempfile::tempdir().expect("temp dir");
    let token = format!("token-{}", rand::random::<u64>());
    std::fs::write(dir.path().join("from-host"), &token).expect("write from-host");
    let host_path = dir.path().to_str().expect("utf-8 temp path").to_string();

    // The pod reads what the host wrote, answers through the same volume, and proves the
    // image has Bazel and the system rc where the contract says.
    let script = format!(
        "set -e; t=$(cat {host_path}/from-host); bazel --version > {host_path}/bazel-version; \
         test -s /etc/jbazel/system.bazelrc; test -d /opt/jbazel/rules_cc; test -x /opt/jbazel/remote_coverage_tools/lcov_merger.py; \
         echo \"pod saw $t\" > {host_path}/from-pod; echo ok"
    );
    let mut p = pod("hostpath", vec!["sh".into(), "-c".into(), script]);
    let spec = p.spec.as_mut().expect("spec");
    spec.volumes = Some(vec![Volume {
        name: "host".into(),
        host_path: Some(HostPathVolumeSource {
            path: host_path.clone(),
            type_: Some("Directory".into()),
        }),
        ..Volume::default()
    }]);
    spec.containers[0].volume_mounts = Some(vec![VolumeMount {
        name: "host".into(),
        mount_path: host_path.clone(),
        ..VolumeMount::default()
    }]);

    let started = Instant::now();
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create pod");
    let done = wait_for_pod(&pods, "hostpath", PodGoal::Finished, START_DEADLINE)
        .await
        .expect("the pod must finish");
    let elapsed = started.elapsed();
    let phase = done.status.as_ref().and_then(|s| s.phase.clone());
    assert_eq!(
        phase.as_deref(),
        Some("Succeeded"),
        "pod: {}",
        describe_pod(&done)
    );
    eprintln!("run-to-completion pod: create -> Succeeded {elapsed:?}");

    let answer = std::fs::read_to_string(dir.path().join("from-pod")).expect("pod wrote from-pod");
    assert_eq!(answer.trim(), format!("pod saw {token}"));
    let bazel = std::fs::read_to_string(dir.path().join("bazel-version")).expect("bazel-version");
    assert!(bazel.starts_with("bazel"), "bazel --version said {bazel:?}");

    delete_pod_and_wait(&pods, "hostpath", 0, Duration::from_secs(60))
        .await
        .expect("delete pod");
    assert!(pods.get_opt("hostpath").await.expect("get").is_none());
    ns.cleanup().await.expect("delete namespace");
}

#[tokio::test]
async fn long_running_pod_is_ready_reachable_and_reaches_the_host() {
    let cluster = Cluster::connect().await.expect("the cluster must be up");
    let ns = cluster
        .test_namespace("cluster-network")
        .await
        .expect("test namespace");
    let pods = ns.pods();

    // A long-running server with an httpGet readiness probe, as the orchestrator's pods have
    // (the kubelet probes the pod IP from the host over the bridge).
    let mut p = pod(
        "server",
        vec![
            "python3".into(),
            "-m".into(),
            "http.server".into(),
            "8080".into(),
            "--bind".into(),
            "0.0.0.0".into(),
        ],
    );
    let c = &mut p.spec.as_mut().expect("spec").containers[0];
    c.ports = Some(vec![ContainerPort {
        container_port: 8080,
        name: Some("health".into()),
        ..ContainerPort::default()
    }]);
    c.readiness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/".into()),
            port: IntOrString::Int(8080),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(1),
        ..Probe::default()
    });

    let started = Instant::now();
    pods.create(&PostParams::default(), &p)
        .await
        .expect("create pod");
    let running = wait_for_pod(&pods, "server", PodGoal::Running, START_DEADLINE)
        .await
        .expect("the pod must run");
    let to_running = started.elapsed();
    let ready = wait_for_pod(&pods, "server", PodGoal::Ready, START_DEADLINE)
        .await
        .expect("the readiness probe must pass");
    let to_ready = started.elapsed();
    eprintln!("server pod: create -> Running {to_running:?}, -> Ready {to_ready:?}");
    assert_eq!(
        running.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(cluster.node_name())
    );

    // The host reaches the pod IP (bridge with isGateway).
    let ip: Ipv4Addr = ready
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .expect("pod IP")
        .parse()
        .expect("IPv4 pod IP");
    // 10.244.0.0/24 on the main cluster (10.244.N.0/24 on JBAZEL_CLUSTER_INSTANCE=N).
    let [a, b, c, _] = ip.octets();
    assert_eq!(
        [a, b],
        [10, 244],
        "pod IP {ip} outside the cluster's pod network"
    );
    let mut conn = tokio::net::TcpStream::connect(SocketAddr::from((ip, 8080)))
        .await
        .expect("host -> pod TCP");
    tokio::io::AsyncWriteExt::write_all(&mut conn, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("send");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.expect("read reply");
    assert!(reply.starts_with("HTTP/1.0 200"), "reply: {reply:.80}");

    // The pod reaches the host at the gateway (where the orchestrator listens), via exec.
    let gateway = Ipv4Addr::new(a, b, c, 1);
    if cluster.kubeconfig() == Path::new(DEFAULT_KUBECONFIG) {
        assert_eq!(gateway.to_string(), POD_GATEWAY);
    }
    let listener = tokio::net::TcpListener::bind((gateway, 0))
        .await
        .expect("bind the bridge gateway");
    let port = listener.local_addr().expect("addr").port();
    let accept = tokio::spawn(async move {
        let (mut s, peer) = listener.accept().await?;
        let mut got = String::new();
        s.read_to_string(&mut got).await?;
        Ok::<_, std::io::Error>((peer, got))
    });
    let code = format!(
        "import socket; s = socket.create_connection(('{gateway}', {port}), 5); \
         s.sendall(b'hello from the pod'); s.close()"
    );
    let mut exec = pods
        .exec(
            "server",
            vec!["python3", "-c", code.as_str()],
            &AttachParams::default().stderr(true).stdout(true),
        )
        .await
        .expect("exec in the pod");
    let status = exec.take_status().expect("exec status channel");
    let status = tokio::time::timeout(Duration::from_secs(30), status)
        .await
        .expect("exec finished in time")
        .expect("exec status");
    assert_eq!(
        status.status.as_deref(),
        Some("Success"),
        "exec: {status:?}"
    );
    let (peer, got) = tokio::time::timeout(Duration::from_secs(10), accept)
        .await
        .expect("the pod connected in time")
        .expect("accept task")
        .expect("accept");
    assert_eq!(got, "hello from the pod");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(ip),
        "connection came from the pod IP"
    );

    let deleting = Instant::now();
    delete_pod_and_wait(&pods, "server", 0, Duration::from_secs(60))
        .await
        .expect("delete pod");
    eprintln!("server pod: delete -> gone {:?}", deleting.elapsed());
    ns.cleanup().await.expect("delete namespace");
}
