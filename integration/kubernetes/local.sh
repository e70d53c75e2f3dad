#!/usr/bin/env bash
# A real single-node Kubernetes (1.20.2, built from Debian's source) for jbazel's tests and
# demo, on a machine without Docker or a registry: etcd + kube-apiserver +
# kube-controller-manager + kube-scheduler + containerd + kubelet + kube-proxy (iptables
# mode, so ClusterIP Services work from the host and from pods) + a CNI bridge.
#
# Usage: local.sh up       start (or check) the cluster; returns once the node is Ready, the
#                            default service account exists and namespace `jbazel` is there.
#                            On a running cluster it converges: starts a missing kube-proxy,
#                            restarts kube-apiserver or kube-proxy alone when this script
#                            now gives them other flags (pods keep running)
#        local.sh down     stop what `up` started (by the process groups in its pid files),
#                            unmount pod volumes and netns under the state dir, drop runtime
#                            state (keeps certificates, etcd data and imported images)
#        local.sh down --purge   the same, then remove the whole state dir
#        local.sh status   print what runs; exit 0 only when the cluster is up
#        local.sh env      print `export KUBECONFIG=...` for eval
#        local.sh user NAME   (idempotent; needs the CA `up` made, not a running cluster)
#                            client credentials of platform user NAME (a lowercase DNS label
#                            of at most 40 characters): pki/users/NAME.{crt,key} (CN=NAME,
#                            O=jbazel:users) and users/NAME.kubeconfig with cert, key and CA
#                            embedded (mode 0600, so it can be copied to a desktop user)
#
# Tenancy `up` also makes: the namespace, ServiceAccount and ClusterRoles of deploy/base/rbac
# (`kubectl apply -k`, the files an operator applies); pki/orchestrator.{crt,key}, the
# orchestrator's serving certificate (signed by the cluster CA; SANs localhost,
# jbazel-orchestrator and its Service names jbazel-orchestrator.jbazel.svc[.cluster.local],
# 127.0.0.1, the Service's fixed ClusterIP from deploy/overlays/local/service.yaml, the pod
# gateway, the host's primary address), also as Secret jbazel/jbazel-orchestrator-tls, and
# the cluster CA as ConfigMap jbazel/jbazel-client-ca (what deploy/overlays/local mounts);
# orchestrator.kubeconfig, the token of ServiceAccount jbazel/jbazel-orchestrator (for
# orchestrators run as host processes); users alice, bob and mallory (`user` above).
#
# Listening: etcd 127.0.0.1:2379 and the kubelet 127.0.0.1:10250 on loopback only; the
# apiserver on every address (https://127.0.0.1:6443 for the host; pods reach it as Service
# kubernetes, 10.96.0.1:443, at the pod gateway), with a host firewall chain that admits it
# only from loopback and the pod bridge. Pods live on bridge jbazel0, 10.244.0.0/24, gateway
# 10.244.0.1 (the host); kube-proxy masquerades only Service traffic that needs it.
# State: /var/lib/jbazel-cluster (JBAZEL_CLUSTER_STATE);
# binaries: /var/cache/jbazel/kubernetes-1.20.2/bin (built on first use, ~4-5 min).
# Processes run in their own sessions (setsid) and outlive the shell that ran `up`.
# Env: JBAZEL_CLUSTER_INSTANCE=N (1-9) a second, separate cluster (state dir
#      /var/lib/jbazel-cluster-N, ports +100*N, pods 10.244.N.0/24 on bridge jbazelN);
#      JBAZEL_CLUSTER_TIMEOUT readiness deadline in s (180); JBAZEL_KUBELET_VERBOSITY (0);
#      JBAZEL_KUBE_PROXY=0|1 run kube-proxy (default 1 for instance 0 only: its iptables
#      chains are host-wide, so one cluster per host has one; a lock refuses a second).
# Not here yet (TODO): a kind path for machines with Docker (kind create cluster with an
# extraMount of the filestore root at the same path, `kind load image-archive` of
# image/build.sh's archive or `kind load docker-image` after building image/Dockerfile).
# Each flag below says why it is there, where it is set.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
K8S_VERSION=${K8S_VERSION:-1.20.2}
UP_TIMEOUT=${JBAZEL_CLUSTER_TIMEOUT:-180}

# JBAZEL_CLUSTER_INSTANCE=N (1-9) runs a second, fully separate cluster beside the main one
# (own state dir, ports +100*N, subnet 10.244.N.0/24, bridge jbazelN, cgroup root): for
# testing this script without disturbing the cluster others use.
INSTANCE=${JBAZEL_CLUSTER_INSTANCE:-0}
[[ $INSTANCE =~ ^[0-9]$ ]] || { echo "JBAZEL_CLUSTER_INSTANCE must be 0-9" >&2; exit 2; }
if ((INSTANCE == 0)); then
    STATE=${JBAZEL_CLUSTER_STATE:-/var/lib/jbazel-cluster}
else
    STATE=${JBAZEL_CLUSTER_STATE:-/var/lib/jbazel-cluster-$INSTANCE}
fi
shift_port() { echo $(($1 + 100 * INSTANCE)); }
ETCD_PORT=$(shift_port 2379)
ETCD_PEER_PORT=$(shift_port 2380)
API_PORT=$(shift_port 6443)
KUBELET_PORT=$(shift_port 10250)
KUBELET_HEALTHZ_PORT=$(shift_port 10248)
CONTROLLER_MANAGER_PORT=$(shift_port 10257)
SCHEDULER_PORT=$(shift_port 10259)
KUBE_PROXY_HEALTHZ_PORT=$(shift_port 10256)
KUBE_PROXY_METRICS_PORT=$(shift_port 10249)
POD_SUBNET=10.244.$INSTANCE.0/24
POD_GATEWAY=10.244.$INSTANCE.1
BRIDGE=jbazel$INSTANCE
# The kubelet owns (and cleans) every pod cgroup under its root: one root per instance.
CGROUP_ROOT=/jbazel$INSTANCE
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
# kube-proxy's iptables chains (KUBE-SERVICES, ...) are host-wide: one cluster per host runs it.
if ((INSTANCE == 0)); then KUBE_PROXY=${JBAZEL_KUBE_PROXY:-1}; else KUBE_PROXY=${JBAZEL_KUBE_PROXY:-0}; fi
[[ $KUBE_PROXY =~ ^[01]$ ]] || { echo "JBAZEL_KUBE_PROXY must be 0 or 1" >&2; exit 2; }
KUBE_PROXY_LOCK=/run/lock/jbazel-kube-proxy.lock
# This instance's own chain in the host's filter INPUT: see host_network.
FIREWALL_CHAIN=JBAZEL-FIREWALL-$INSTANCE
NAMESPACE=jbazel
PAUSE_IMAGE=docker.io/library/jbazel-pause:3.4.1
TEST_NAMESPACE_LABEL=jbazel.dev/test-namespace

PKI=$STATE/pki
RUN=$STATE/run
LOGS=$STATE/logs
CTRD=$STATE/containerd
SOCK=$CTRD/containerd.sock
RUNC_ROOT=$CTRD/runc
KUBELET_DIR=$STATE/kubelet
CNI_CONF=$STATE/cni/net.d
CNI_IPAM=$STATE/cni/ipam
ADMIN_KUBECONFIG=$STATE/admin.kubeconfig
ORCHESTRATOR_KUBECONFIG=$STATE/orchestrator.kubeconfig
ORCHESTRATOR_SA=jbazel-orchestrator
USER_PKI=$PKI/users
USER_KUBECONFIGS=$STATE/users
USER_GROUP=jbazel:users
DEMO_USERS=(alice bob mallory)

# The orchestrator's Service and its fixed ClusterIP, as deploy/overlays/local declares them
# (its serving certificate names both).
ORCHESTRATOR_SERVICE=jbazel-orchestrator
ORCHESTRATOR_SERVICE_IP=$(sed -n 's/^ *clusterIP: *\([0-9.]*\) *$/\1/p' "$REPO/deploy/overlays/local/service.yaml" 2>/dev/null | head -1)
[[ $ORCHESTRATOR_SERVICE_IP =~ ^10\.96\.[0-9]+\.[0-9]+$ ]] ||
    { echo "no clusterIP in 10.96.0.0/16 in $REPO/deploy/overlays/local/service.yaml" >&2; exit 2; }
ORCHESTRATOR_TLS_SECRET=jbazel-orchestrator-tls
CLIENT_CA_CONFIGMAP=jbazel-client-ca

# Start order; `down` stops in reverse (kube-proxy too when this instance does not run one
# now). A running cluster is one whose core components all run (`up` then starts a missing
# kube-proxy alone).
CORE_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet)
ALL_COMPONENTS=("${CORE_COMPONENTS[@]}" kube-proxy)
COMPONENTS=("${CORE_COMPONENTS[@]}")
((KUBE_PROXY == 0)) || COMPONENTS+=(kube-proxy)

log() { printf '[cluster %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------
# Processes: pid files hold "<pid> <starttime>" so a recycled pid is never taken for ours.

starttime() { # field 22 of /proc/PID/stat (after the parenthesised comm)
    local stat fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    read -ra fields <<<"$stat"
    echo "${fields[19]}"
}

pid_of() { # prints the pid of component $1 if it runs (a zombie does not count)
    local f=$RUN/$1.pid pid st
    [[ -f $f ]] || return 1
    read -r pid st <"$f" || return 1
    [[ -n $pid && -d /proc/$pid && $(starttime "$pid") == "$st" ]] || return 1
    gone "$pid" && return 1
    echo "$pid"
}

alive() { pid_of "$1" >/dev/null; }

start() { # start COMPONENT CMD...: own session and process group, log under $LOGS
    local c=$1; shift
    mkdir -p "$RUN" "$LOGS"
    printf '\n===== %s start %s: %s\n' "$c" "$(date -Is)" "$*" >>"$LOGS/$c.log"
    # fd 8 holds the cluster lock: a daemon must not inherit it (it would hold it forever).
    setsid nohup "$@" >>"$LOGS/$c.log" 2>&1 </dev/null 8>&- &
    local pid=$!
    echo "$pid $(starttime "$pid")" >"$RUN/$c.pid"
    printf '%s\n' "$*" >"$RUN/$c.args"
    log "started $c (pid $pid, log $LOGS/$c.log)"
}

gone() { [[ ! -d /proc/$1 ]] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

stop() { # stop COMPONENT [GRACE_S]: TERM its process group, KILL after GRACE_S (15) s
    local c=$1 grace=${2:-15} pid i
    if pid=$(pid_of "$c"); then
        log "stopping $c (pgid $pid)"
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            gone "$pid" && break
            sleep 0.1
        done
        if ! gone "$pid"; then
            log "$c did not stop in $grace s: SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$RUN/$c.pid" "$RUN/$c.args"
}

args_changed() { # args_changed COMPONENT CMD...: it was not started with exactly CMD
    [[ $(cat "$RUN/$1.args" 2>/dev/null) != "${*:2}" ]]
}

log_tail() { # the failing component's own words
    local c=$1
    if [[ -f $LOGS/$c.log ]]; then
        echo "----- last 40 lines of $LOGS/$c.log -----" >&2
        tail -n 40 "$LOGS/$c.log" >&2
        echo "-----" >&2
    fi
}

fail() { # fail COMPONENT MESSAGE
    log "ERROR: $2"
    log_tail "$1"
    exit 1
}

deadline=0
set_deadline() { deadline=$((SECONDS + $1)); }

wait_until() { # wait_until COMPONENT DESCRIPTION CMD...: until CMD succeeds or the deadline
    local c=$1 what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        alive "$c" || fail "$c" "$c exited while waiting for: $what"
        ((SECONDS < deadline)) || fail "$c" "timed out (${UP_TIMEOUT}s) waiting for: $what"
        sleep 0.25
    done
}

kctl() { kubectl --kubeconfig "$ADMIN_KUBECONFIG" --request-timeout=10s "$@"; }

# ---------------------------------------------------------------------------------------
# Node name: the apiserver reaches the kubelet by the node's Hostname address, which must
# resolve to 127.0.0.1 (the kubelet listens on loopback only).

node_name() {
    local h
    h=$(hostname | tr '[:upper:]' '[:lower:]')
    if [[ $(getent ahostsv4 "$h" 2>/dev/null | awk 'NR==1{print $1}') == 127.0.0.1 ]]; then
        echo "$h"
    else
        echo localhost
    fi
}
NODE=$(node_name)

# ---------------------------------------------------------------------------------------
# Certificates (one CA, openssl) and kubeconfigs.

mkcert() { # mkcert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
    local name=$1 subj=$2 eku=$3 san=${4:-}
    [[ -s $PKI/$name.crt && -s $PKI/$name.key ]] && return 0
    local ext
    ext=$(mktemp)
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$eku"
        [[ -n $san ]] && echo "subjectAltName=$san"
    } >"$ext"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
        -out "$PKI/$name.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -CAcreateserial -days 3650 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$ext" "$PKI/$name.csr"
}

make_pki() {
    mkdir -p "$PKI"
    chmod 700 "$PKI"
    if [[ ! -s $PKI/ca.crt || ! -s $PKI/ca.key ]]; then
        log "creating the cluster CA and certificates"
        # Everything signed by (or embedding) an old CA goes with it.
        rm -rf "${PKI:?}"/* "$USER_KUBECONFIGS"
        rm -f "$STATE"/*.kubeconfig
        openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -days 3650 \
            -subj "/CN=jbazel-cluster-ca" -out "$PKI/ca.crt" 2>/dev/null
    fi
    # Node certificates carry the node name: renew them if the hostname changed.
    if [[ $(cat "$PKI/node-name" 2>/dev/null) != "$NODE" ]]; then
        rm -f "$PKI"/kubelet.* "$PKI"/kubelet-client.* "$STATE"/kubelet.kubeconfig
        echo "$NODE" >"$PKI/node-name"
    fi
    mkcert apiserver "/CN=kube-apiserver" serverAuth \
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$SERVICE_IP"
    mkcert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
    mkcert admin "/O=system:masters/CN=jbazel-admin" clientAuth
    mkcert controller-manager "/CN=system:kube-controller-manager" clientAuth
    mkcert scheduler "/CN=system:kube-scheduler" clientAuth
    mkcert kubelet-client "/O=system:nodes/CN=system:node:$NODE" clientAuth
    mkcert kubelet "/CN=$NODE" serverAuth "DNS:$NODE,DNS:localhost,IP:127.0.0.1"
    mkcert kube-proxy "/CN=system:kube-proxy" clientAuth
    if [[ ! -s $PKI/sa.key ]]; then
        openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
        openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    fi
}

make_kubeconfig() { # make_kubeconfig FILE CERT_NAME USER
    local file=$1 cert=$2 user=$3
    [[ -s $file ]] && return 0
    kubectl config --kubeconfig="$file.tmp" set-cluster jbazel --server="https://127.0.0.1:$API_PORT" \
        --certificate-authority="$PKI/ca.crt" --embed-certs=true >/dev/null
    kubectl config --kubeconfig="$file.tmp" set-credentials "$user" \
        --client-certificate="$PKI/$cert.crt" --client-key="$PKI/$cert.key" --embed-certs=true >/dev/null
    kubectl config --kubeconfig="$file.tmp" set-context jbazel --cluster=jbazel --user="$user" \
        --namespace=default >/dev/null
    kubectl config --kubeconfig="$file.tmp" use-context jbazel >/dev/null
    chmod 600 "$file.tmp"
    mv "$file.tmp" "$file"
}

make_kubeconfigs() {
    make_kubeconfig "$ADMIN_KUBECONFIG" admin jbazel-admin
    make_kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager system:kube-controller-manager
    make_kubeconfig "$STATE/scheduler.kubeconfig" scheduler system:kube-scheduler
    make_kubeconfig "$STATE/kubelet.kubeconfig" kubelet-client "system:node:$NODE"
    make_kubeconfig "$STATE/kube-proxy.kubeconfig" kube-proxy system:kube-proxy
}

# ---------------------------------------------------------------------------------------
# Tenancy credentials: the orchestrator's serving certificate and ServiceAccount kubeconfig,
# the RBAC it and the users need, and one client certificate per platform user.

write_kubeconfig() { # write_kubeconfig FILE USER NAMESPACE (token TOKEN | cert CRT KEY)
    # Everything embedded: the file stands alone (it may be copied to a desktop user).
    local file=$1 user=$2 namespace=$3 kind=$4 tmp
    tmp=$(mktemp "$file.XXXXXX")
    {
        echo "# Generated by integration/kubernetes/local.sh: $user on the jbazel test cluster."
        echo "apiVersion: v1"
        echo "kind: Config"
        echo "clusters:"
        echo "- name: jbazel"
        echo "  cluster:"
        echo "    server: https://127.0.0.1:$API_PORT"
        echo "    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")"
        echo "users:"
        echo "- name: $user"
        echo "  user:"
        if [[ $kind == token ]]; then
            echo "    token: $5"
        else
            echo "    client-certificate-data: $(base64 -w0 "$5")"
            echo "    client-key-data: $(base64 -w0 "$6")"
        fi
        echo "contexts:"
        echo "- name: jbazel"
        echo "  context:"
        echo "    cluster: jbazel"
        echo "    user: $user"
        echo "    namespace: $namespace"
        echo "current-context: jbazel"
    } >"$tmp"
    chmod 600 "$tmp"
    if cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1 # unchanged
    fi
    mv "$tmp" "$file"
}

valid_user_name() { # a lowercase DNS label short enough for namespace jbazel-NAME
    [[ ${#1} -le 40 && $1 =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]]
}

make_user() { # make_user NAME: caller validated NAME and holds the cluster lock
    local name=$1 kc=$USER_KUBECONFIGS/$1.kubeconfig
    if [[ -s $kc && -s $USER_PKI/$name.crt && -s $USER_PKI/$name.key ]]; then
        return 0
    fi
    mkdir -p "$USER_PKI" "$USER_KUBECONFIGS"
    chmod 700 "$USER_PKI"
    # Key and certificate first, the kubeconfig (written by rename) last: a present
    # kubeconfig means a complete credential.
    mkcert "users/$name" "/O=$USER_GROUP/CN=$name" clientAuth
    write_kubeconfig "$kc" "$name" "jbazel-$name" cert "$USER_PKI/$name.crt" "$USER_PKI/$name.key" || true
    log "user $name: $kc (CN=$name, O=$USER_GROUP)"
}

cmd_user() {
    local name=${1:-}
    [[ -n $name && $# -eq 1 ]] || die "usage: local.sh user NAME"
    valid_user_name "$name" ||
        die "invalid user name '$name': a lowercase DNS label (a-z, 0-9, '-', starting and ending alphanumeric) of at most 40 characters"
    [[ -d $PKI ]] || die "no cluster CA in $PKI: run integration/kubernetes/local.sh up"
    [[ -x $PKI && -w $PKI ]] || die "cannot use $PKI (the cluster CA key): local.sh user needs root"
    [[ -s $PKI/ca.crt && -s $PKI/ca.key ]] || die "no cluster CA in $PKI: run integration/kubernetes/local.sh up"
    exec 8>>"$STATE/cluster.lock"
    flock 8
    make_user "$name"
}

host_address() { # the primary IPv4 address of the host (on the default route's device), if any
    local dev
    dev=$(ip -4 route show default 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
    [[ -n $dev ]] || return 0
    ip -4 -o addr show dev "$dev" scope global 2>/dev/null | awk '{ sub(/\/.*/, "", $4); print $4; exit }'
}

make_orchestrator_cert() {
    local svc=$ORCHESTRATOR_SERVICE.$NAMESPACE host
    local san="DNS:localhost,DNS:$ORCHESTRATOR_SERVICE,DNS:$svc,DNS:$svc.svc,DNS:$svc.svc.cluster.local"
    san+=",IP:127.0.0.1,IP:$ORCHESTRATOR_SERVICE_IP,IP:$POD_GATEWAY"
    host=$(host_address)
    [[ -n $host && $host != "$POD_GATEWAY" ]] && san+=",IP:$host"
    if [[ $(cat "$PKI/orchestrator.san" 2>/dev/null) != "$san" ]]; then
        rm -f "$PKI/orchestrator.crt" "$PKI/orchestrator.key"
    fi
    if [[ ! -s $PKI/orchestrator.crt ]]; then
        mkcert orchestrator "/CN=jbazel-orchestrator" serverAuth "$san"
        echo "$san" >"$PKI/orchestrator.san"
        log "orchestrator serving certificate: $PKI/orchestrator.crt ($san)"
    fi
}

orchestrator_token_secret() { # the name of the token Secret of the orchestrator's ServiceAccount
    local s
    s=$(kctl -n "$NAMESPACE" get serviceaccount "$ORCHESTRATOR_SA" -o 'jsonpath={.secrets[0].name}' 2>/dev/null) || return 1
    [[ -n $s ]] || return 1
    kctl -n "$NAMESPACE" get secret "$s" -o 'jsonpath={.data.token}' 2>/dev/null | grep -q . || return 1
    echo "$s"
}

orchestrator_authenticated() { # the orchestrator kubeconfig's token is accepted (and RBAC applies)
    [[ $(kubectl --kubeconfig "$ORCHESTRATOR_KUBECONFIG" --request-timeout=10s \
        auth can-i create tokenreviews.authentication.k8s.io 2>/dev/null) == yes ]]
}

make_orchestrator_kubeconfig() { # the ServiceAccount's token (its Secret made by the token controller)
    local attempt secret token
    set_deadline "$UP_TIMEOUT"
    for attempt in 1 2; do
        wait_until kube-controller-manager "the token Secret of ServiceAccount $NAMESPACE/$ORCHESTRATOR_SA" \
            orchestrator_token_secret
        secret=$(orchestrator_token_secret) || die "the token Secret of $NAMESPACE/$ORCHESTRATOR_SA vanished"
        token=$(kctl -n "$NAMESPACE" get secret "$secret" -o 'jsonpath={.data.token}' | base64 -d) ||
            die "cannot read Secret $NAMESPACE/$secret"
        if write_kubeconfig "$ORCHESTRATOR_KUBECONFIG" "system:serviceaccount:$NAMESPACE:$ORCHESTRATOR_SA" \
            "$NAMESPACE" token "$token"; then
            log "orchestrator kubeconfig: $ORCHESTRATOR_KUBECONFIG (ServiceAccount $NAMESPACE/$ORCHESTRATOR_SA)"
        fi
        if ((attempt == 1)); then
            orchestrator_authenticated && return 0
            # A token signed with a service-account key that is gone (new PKI, old etcd): the
            # token controller makes a new Secret when this one is deleted.
            log "the token in Secret $NAMESPACE/$secret is refused: replacing it"
            kctl -n "$NAMESPACE" delete secret "$secret" >/dev/null || die "cannot delete Secret $NAMESPACE/$secret"
        else
            wait_until kube-apiserver "the API server to accept the token of $NAMESPACE/$ORCHESTRATOR_SA" \
                orchestrator_authenticated
        fi
    done
}

apply_quietly() { # apply_quietly WHAT KUBECTL_APPLY_ARGS...: kubectl apply, its output only on failure
    local what=$1 out
    shift
    out=$(kctl apply "$@" 2>&1) || { printf '%s\n' "$out" >&2; fail kube-apiserver "applying $what failed"; }
}

orchestrator_tls_objects() { # the serving key (Secret) and client CA (ConfigMap) deploy/overlays/local mounts
    kctl -n "$NAMESPACE" create secret tls "$ORCHESTRATOR_TLS_SECRET" \
        --cert="$PKI/orchestrator.crt" --key="$PKI/orchestrator.key" --dry-run=client -o yaml
    echo "---"
    kctl -n "$NAMESPACE" create configmap "$CLIENT_CA_CONFIGMAP" \
        --from-file=ca.crt="$PKI/ca.crt" --dry-run=client -o yaml
}

make_tenancy() { # needs the API server and the controller manager (token controller)
    make_orchestrator_cert
    # The namespace, ServiceAccount and ClusterRoles an operator applies, from the same files.
    apply_quietly "the jbazel RBAC objects (deploy/base/rbac)" -k "$REPO/deploy/base/rbac"
    apply_quietly "Secret $ORCHESTRATOR_TLS_SECRET and ConfigMap $CLIENT_CA_CONFIGMAP" \
        -f <(orchestrator_tls_objects)
    make_orchestrator_kubeconfig
    local u
    for u in "${DEMO_USERS[@]}"; do make_user "$u"; done
}

print_credentials() {
    local f u files=("$PKI/ca.crt" "$PKI/orchestrator.crt" "$PKI/orchestrator.key" "$ORCHESTRATOR_KUBECONFIG")
    for u in "${DEMO_USERS[@]}"; do files+=("$USER_KUBECONFIGS/$u.kubeconfig"); done
    for f in "${files[@]}"; do
        if [[ -s $f ]]; then
            printf 'credential %-52s present\n' "$f"
        else
            printf 'credential %-52s missing (local.sh up)\n' "$f"
        fi
    done
}

# ---------------------------------------------------------------------------------------
# Config files.

write_cni_config() { # the pod network; rewritten only when it changed (containerd reloads it)
    local f=$CNI_CONF/10-jbazel.conflist tmp
    mkdir -p "$CNI_CONF"
    tmp=$(mktemp "$f.XXXXXX")
    # hairpinMode: a pod may reach itself through a Service (kube-proxy DNATs it back to the
    # bridge port it came from).
    cat >"$tmp" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "jbazel",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$CNI_IPAM"
      }
    }
  ]
}
EOF
    if cmp -s "$tmp" "$f"; then
        rm -f "$tmp"
    else
        mv "$tmp" "$f"
    fi
}

write_configs() {
    mkdir -p "$CTRD/root" "$CTRD/state" "$RUNC_ROOT" "$CNI_CONF" "$CNI_IPAM" "$KUBELET_DIR"
    cat >"$CTRD/config.toml" <<EOF
# Generated by integration/kubernetes/local.sh; the containerd of the jbazel test cluster.
version = 2
root = "$CTRD/root"
state = "$CTRD/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This VM lacks CAP_SYS_RESOURCE: without this every pod sticks in ContainerCreating.
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUNC_ROOT"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CNI_CONF"
    max_conf_num = 1
EOF

    write_cni_config

    cat >"$STATE/kubelet-config.yaml" <<EOF
# Generated by integration/kubernetes/local.sh.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failSwapOn: false
makeIPTablesUtilChains: false
# Local-only images (no registry) must never be garbage-collected.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
serializeImagePulls: false
# Report status changes (Ready) within 2 s of them, not 10 s.
nodeStatusUpdateFrequency: 2s
resolvConf: /etc/resolv.conf
EOF
}

# ---------------------------------------------------------------------------------------
# Runtime state left by killed processes.

state_mounts() { # mount points under $STATE, deepest first
    awk -v s="$STATE/" 'index($5, s) == 1 { print $5 }' /proc/self/mountinfo |
        sed 's/\\040/ /g' | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2- | uniq
}

unmount_state() {
    local m n=0
    for _ in 1 2 3; do
        while IFS= read -r m; do
            [[ -n $m ]] || continue
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
            n=$((n + 1))
        done < <(state_mounts)
        [[ -z $(state_mounts) ]] && break
    done
    ((n == 0)) || log "unmounted $n mounts under $STATE"
    [[ -z $(state_mounts) ]] || log "warning: mounts left under $STATE: $(state_mounts | tr '\n' ' ')"
}

kill_containers() { # containers and shims of OUR containerd (runc root and socket are ours)
    local id pid n=0
    if [[ -d $RUNC_ROOT/k8s.io ]]; then
        for id in $(runc --root "$RUNC_ROOT/k8s.io" list -q 2>/dev/null); do
            runc --root "$RUNC_ROOT/k8s.io" delete --force "$id" >/dev/null 2>&1 || true
            n=$((n + 1))
        done
    fi
    # Shims outlive containerd by design; ours name our socket on their command line.
    while IFS= read -r pid; do
        [[ $pid != "$$" ]] || continue
        if { tr "\0" " " <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q -- "^[^ ]*containerd-shim.* -address $SOCK"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done < <(grep -lsF -- "$SOCK" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3)
    ((n == 0)) || log "removed $n containers left in $RUNC_ROOT"
}

clean_runtime_state() { # only when none of our components runs
    kill_containers
    unmount_state
    rm -rf "$CTRD/state" "$CNI_IPAM" "$KUBELET_DIR/pods" "$KUBELET_DIR/plugins" \
        "$KUBELET_DIR/plugins_registry" "$KUBELET_DIR/pod-resources" "$KUBELET_DIR"/*_state \
        "$RUNC_ROOT"
}

make_bridge() {
    # The CNI bridge plugin would create it with the first pod; creating it now gives the
    # host its pod-network address (the gateway, where pods reach the orchestrator) before
    # any pod exists. The plugin adopts it as it is.
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge || die "cannot create bridge $BRIDGE"
    fi
    if ! ip -4 addr show dev "$BRIDGE" | grep -q "inet $POD_GATEWAY/"; then
        ip addr add "$POD_GATEWAY/${POD_SUBNET#*/}" dev "$BRIDGE" || die "cannot address bridge $BRIDGE"
    fi
    ip link set "$BRIDGE" up
}

cgroup_mounts() { findmnt -rn -t cgroup,cgroup2 -o TARGET; }

make_cgroup_root() { # the kubelet insists its cgroupRoot exists in every hierarchy
    local m f
    while IFS= read -r m; do
        mkdir -p "$m$CGROUP_ROOT"
        for f in cpuset.cpus cpuset.mems; do # cgroup v1 cpuset children start empty
            if [[ -f $m/$f && -z $(cat "$m$CGROUP_ROOT/$f") ]]; then
                cat "$m/$f" >"$m$CGROUP_ROOT/$f"
            fi
        done
    done < <(cgroup_mounts)
}

remove_cgroup_root() { # empty pod cgroups the kubelet left; busy ones stay
    local m
    while IFS= read -r m; do
        [[ -d $m$CGROUP_ROOT ]] && find "$m$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null
    done < <(cgroup_mounts)
    return 0
}

# ---------------------------------------------------------------------------------------
# Images without a registry.

import_pause_image() {
    if ctr --address "$SOCK" -n k8s.io images ls -q "name==$PAUSE_IMAGE" 2>/dev/null | grep -q .; then
        return 0
    fi
    local work
    work=$(mktemp -d "$STATE/.pause.XXXXXX")
    mkdir -p "$work/rootfs"
    cp "$BIN/pause" "$work/rootfs/pause"
    tar --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -cf "$work/layer.tar" pause
    "$REPO/image/docker-archive.sh" --out "$work/pause.tar" --tag "$PAUSE_IMAGE" \
        --entrypoint '["/pause"]' "$work/layer.tar" >/dev/null
    ctr --address "$SOCK" -n k8s.io images import "$work/pause.tar" >"$LOGS/pause-import.log" 2>&1 ||
        { rm -rf "$work"; fail pause-import "importing the pause image failed"; }
    rm -rf "$work"
    log "imported $PAUSE_IMAGE"
}

# ---------------------------------------------------------------------------------------
# Services: kube-proxy in iptables mode, and what the host must allow for it.

apiserver_command() { # sets APISERVER: the kube-apiserver command line
    # Every address: pods reach it at the pod gateway through Service kubernetes
    # (10.96.0.1:443), which is how in-cluster clients (the orchestrator's Deployment) find
    # it; host_network firewalls it. Its Endpoints are ours (kubernetes_endpoints): the
    # apiserver's own reconciler makes it hang ~15 s at every stop, removing them.
    # shellcheck disable=SC2054 # commas inside flag values (Node,RBAC), not between elements
    APISERVER=("$BIN/kube-apiserver"
        --etcd-servers="http://127.0.0.1:$ETCD_PORT"
        --bind-address=0.0.0.0 --advertise-address="$POD_GATEWAY"
        --secure-port="$API_PORT" --insecure-port=0
        --endpoint-reconciler-type=none
        --client-ca-file="$PKI/ca.crt"
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key"
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt"
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key"
        --kubelet-certificate-authority="$PKI/ca.crt"
        --kubelet-preferred-address-types=Hostname,InternalIP
        --service-account-key-file="$PKI/sa.pub"
        --service-account-signing-key-file="$PKI/sa.key"
        --service-account-issuer=https://kubernetes.default.svc.cluster.local
        --api-audiences=https://kubernetes.default.svc.cluster.local
        --service-cluster-ip-range="$SERVICE_CIDR"
        --allow-privileged=true
        --authorization-mode=Node,RBAC
        --enable-admission-plugins=NodeRestriction
        --profiling=false)
}

kubernetes_endpoints() { # Service default/kubernetes -> the apiserver at the pod gateway
    apply_quietly "the Endpoints of Service default/kubernetes" -f - <<EOF
apiVersion: v1
kind: Endpoints
metadata:
  name: kubernetes
  namespace: default
subsets:
- addresses:
  - ip: $POD_GATEWAY
  ports:
  - name: https
    port: $API_PORT
    protocol: TCP
EOF
}

host_network() { # host settings for the apiserver's address and for Services; idempotent
    # Pod -> ClusterIP -> pod is routed through the host (the CNI bridge plugin sets this
    # too, but only when it adds a pod), and its reply must pass the bridge's netfilter to be
    # un-NATed (kube-proxy only warns when it is off).
    sysctl -qw net.ipv4.ip_forward=1 || die "cannot set net.ipv4.ip_forward=1"
    if [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
        sysctl -qw net.bridge.bridge-nf-call-iptables=1 || die "cannot set net.bridge.bridge-nf-call-iptables=1"
    else
        log "warning: no br_netfilter (modprobe br_netfilter): pod -> Service -> pod replies may be lost"
    fi
    # Our own INPUT chain, rebuilt each time: the apiserver only from loopback and our pod
    # bridge; and, because kube-proxy sets route_localnet=1, no packet to 127.0.0.0/8 from
    # elsewhere (CVE-2020-8558: etcd and the kubelet listen there; the kubelet installs this
    # rule itself only with makeIPTablesUtilChains, which this cluster turns off).
    iptables -w -N "$FIREWALL_CHAIN" 2>/dev/null || iptables -w -F "$FIREWALL_CHAIN" ||
        die "cannot create iptables chain $FIREWALL_CHAIN"
    iptables -w -A "$FIREWALL_CHAIN" -p tcp --dport "$API_PORT" -i lo -j RETURN
    iptables -w -A "$FIREWALL_CHAIN" -p tcp --dport "$API_PORT" -i "$BRIDGE" -j RETURN
    iptables -w -A "$FIREWALL_CHAIN" -p tcp --dport "$API_PORT" -j DROP
    iptables -w -A "$FIREWALL_CHAIN" -d 127.0.0.0/8 ! -s 127.0.0.0/8 \
        -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
    iptables -w -C INPUT -j "$FIREWALL_CHAIN" 2>/dev/null || iptables -w -I INPUT -j "$FIREWALL_CHAIN" ||
        die "cannot add iptables chain $FIREWALL_CHAIN to INPUT"
}

write_kube_proxy_config() { # returns 0 when the file changed
    local f=$STATE/kube-proxy-config.yaml tmp
    tmp=$(mktemp "$f.XXXXXX")
    cat >"$tmp" <<EOF
# Generated by integration/kubernetes/local.sh.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $STATE/kube-proxy.kubeconfig
hostnameOverride: $NODE
# Traffic to a Service from outside the pod network (the host) is masqueraded.
clusterCIDR: $POD_SUBNET
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
# NodePorts only on the host's loopback and the pod gateway, never on its public address.
nodePortAddresses: ["127.0.0.0/8", "$POD_GATEWAY/32"]
# Leave the host's conntrack table size and timeouts as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  syncPeriod: 30s
  minSyncPeriod: 0s
EOF
    if cmp -s "$tmp" "$f"; then
        rm -f "$tmp"
        return 1
    fi
    mv "$tmp" "$f"
}

kube_proxy_synced() { # its rules for Service default/kubernetes are in the nat table
    iptables -w -t nat -S KUBE-SERVICES 2>/dev/null | grep -q 'default/kubernetes:https cluster IP'
}

ensure_kube_proxy() { # start kube-proxy, or restart it when its config or flags changed
    ((KUBE_PROXY)) || return 0
    local changed=0 cmd
    write_kube_proxy_config && changed=1
    # The lock (held for kube-proxy's life) refuses a second kube-proxy on this host.
    cmd=(flock --nonblock --conflict-exit-code 75 "$KUBE_PROXY_LOCK"
        "$BIN/kube-proxy" --config="$STATE/kube-proxy-config.yaml" --v=0)
    if alive kube-proxy; then
        if ((changed == 0)) && ! args_changed kube-proxy "${cmd[@]}"; then
            return 0
        fi
        log "kube-proxy's configuration changed: restarting it"
        stop kube-proxy
    fi
    flock --nonblock "$KUBE_PROXY_LOCK" true ||
        die "another cluster on this host runs kube-proxy (it holds $KUBE_PROXY_LOCK): set JBAZEL_KUBE_PROXY=0 for this one"
    start kube-proxy "${cmd[@]}"
    wait_until kube-proxy "kube-proxy healthz on 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT" \
        curl -fsS "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"
    wait_until kube-proxy "kube-proxy's iptables rules for Service default/kubernetes" kube_proxy_synced
}

# ---------------------------------------------------------------------------------------

any_alive() { local c; for c in "${ALL_COMPONENTS[@]}"; do alive "$c" && return 0; done; return 1; }
all_alive() { local c; for c in "${CORE_COMPONENTS[@]}"; do alive "$c" || return 1; done; }

node_ready() {
    [[ $(kctl get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

cluster_ready() { # node Ready, default service accounts, namespace jbazel
    node_ready && kctl -n default get serviceaccount default >/dev/null 2>&1 &&
        kctl -n "$NAMESPACE" get serviceaccount default >/dev/null 2>&1
}

ensure_namespace() {
    kctl get namespace "$NAMESPACE" >/dev/null 2>&1 || kctl create namespace "$NAMESPACE" >/dev/null
}

forget_stale_objects() {
    # Pods bound to a node that is gone, and namespaces of killed test runs: a fresh start
    # must not resurrect them (the kubelet would restart every pod bound to its node).
    local n
    n=$(kctl get pods --all-namespaces -o name 2>/dev/null | wc -l)
    if ((n > 0)); then
        log "deleting $n stale pods left in etcd"
        kctl delete pods --all --all-namespaces --force --grace-period=0 --wait=false >/dev/null 2>&1 || true
    fi
    kctl delete namespaces -l "$TEST_NAMESPACE_LABEL" --wait=false >/dev/null 2>&1 || true
    # The user namespaces the orchestrator made under those test namespaces (every platform
    # namespace other than the demo's own).
    kctl delete namespaces -l "jbazel.dev/platform-namespace,jbazel.dev/platform-namespace!=$NAMESPACE" \
        --wait=false >/dev/null 2>&1 || true
    kctl delete nodes --all --wait=false >/dev/null 2>&1 || true
}

cmd_up() {
    local t0=$SECONDS
    [[ $(id -u) == 0 ]] || die "local.sh up needs root (containerd, kubelet, mounts)"
    for tool in etcd containerd runc ctr kubectl openssl curl; do
        command -v "$tool" >/dev/null || die "$tool not found: run integration/setup.sh"
    done
    [[ -x /usr/lib/cni/bridge ]] || die "/usr/lib/cni/bridge missing: run integration/setup.sh"
    mkdir -p "$STATE" "$RUN" "$LOGS"
    exec 8>"$STATE/cluster.lock"
    flock 8

    BIN=$("$HERE/build.sh") || die "building Kubernetes $K8S_VERSION failed"
    local built=$SECONDS

    apiserver_command
    if all_alive; then
        set_deadline "$UP_TIMEOUT"
        wait_until kube-apiserver "apiserver /readyz" kctl get --raw /readyz
        host_network
        if args_changed kube-apiserver "${APISERVER[@]}"; then
            # Pods, the kubelet and the controllers keep running; their watches reconnect.
            # With them connected, its graceful stop waits out its 60 s request timeout: all
            # state is in etcd, so 3 s of grace and then SIGKILL.
            log "kube-apiserver runs with other flags than this script gives: restarting it alone"
            stop kube-apiserver 3
            start kube-apiserver "${APISERVER[@]}"
            wait_until kube-apiserver "apiserver /readyz on 127.0.0.1:$API_PORT" kctl get --raw /readyz
        fi
        ensure_namespace
        kubernetes_endpoints
        wait_until kubelet "node $NODE Ready and default service accounts" cluster_ready
        make_pki
        make_kubeconfigs
        write_cni_config
        ensure_kube_proxy
        make_tenancy
        log "cluster already up ($((SECONDS - t0)) s)"
        cmd_status >&2
        return 0
    fi
    if any_alive; then
        log "some components are not running: restarting the cluster"
        stop_all
    fi
    clean_runtime_state
    make_pki
    make_kubeconfigs
    write_configs
    make_cgroup_root
    make_bridge
    host_network
    set_deadline "$UP_TIMEOUT"

    start etcd etcd --name jbazel --data-dir "$STATE/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "jbazel=http://127.0.0.1:$ETCD_PEER_PORT"
    start containerd containerd --config "$CTRD/config.toml"
    wait_until etcd "etcd health on 127.0.0.1:$ETCD_PORT" \
        curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

    start kube-apiserver "${APISERVER[@]}"
    wait_until kube-apiserver "apiserver /readyz on 127.0.0.1:$API_PORT" kctl get --raw /readyz
    forget_stale_objects
    kubernetes_endpoints

    start kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig="$STATE/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 --port=0 --secure-port="$CONTROLLER_MANAGER_PORT" \
        --leader-elect=false \
        --service-account-private-key-file="$PKI/sa.key" \
        --root-ca-file="$PKI/ca.crt" \
        --use-service-account-credentials=true \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --profiling=false
    start kube-scheduler "$BIN/kube-scheduler" \
        --kubeconfig="$STATE/scheduler.kubeconfig" \
        --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
        --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --port=0 --secure-port="$SCHEDULER_PORT" \
        --leader-elect=false --profiling=false

    wait_until containerd "containerd on $SOCK" ctr --address "$SOCK" version
    import_pause_image

    start kubelet "$BIN/kubelet" \
        --config="$STATE/kubelet-config.yaml" \
        --kubeconfig="$STATE/kubelet.kubeconfig" \
        --hostname-override="$NODE" \
        --root-dir="$KUBELET_DIR" \
        --cert-dir="$STATE/kubelet-pki" \
        --container-runtime=remote \
        --container-runtime-endpoint="unix://$SOCK" \
        --pod-infra-container-image="$PAUSE_IMAGE" \
        --v="${JBAZEL_KUBELET_VERBOSITY:-0}"

    ensure_namespace
    wait_until kubelet "kubelet healthz" curl -fsS "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
    wait_until kubelet "node $NODE Ready" node_ready
    wait_until kube-controller-manager "default service accounts in default and $NAMESPACE" cluster_ready
    local proxy_t0=$SECONDS
    ensure_kube_proxy
    ((KUBE_PROXY == 0)) || log "kube-proxy synced in $((SECONDS - proxy_t0)) s"
    make_tenancy
    log "cluster up in $((SECONDS - t0)) s ($((built - t0)) s build check/build, $((SECONDS - built)) s start)"
    cmd_status >&2
}

stop_all() {
    stop kubelet
    kill_containers
    local i
    for ((i = ${#ALL_COMPONENTS[@]} - 1; i >= 0; i--)); do
        stop "${ALL_COMPONENTS[i]}"
    done
}

cmd_down() {
    local purge=0
    [[ ${1:-} == --purge ]] && purge=1
    [[ -d $STATE ]] || { log "nothing to stop ($STATE does not exist)"; return 0; }
    exec 8>"$STATE/cluster.lock"
    flock 8
    stop_all
    clean_runtime_state
    remove_cgroup_root
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link delete "$BRIDGE" || log "warning: could not delete bridge $BRIDGE"
    fi
    if ((purge)); then
        [[ -z $(state_mounts) ]] || die "mounts remain under $STATE; not removing it"
        rm -rf "$STATE"
        log "removed $STATE (binaries stay cached under /var/cache/jbazel)"
    fi
    log "cluster down"
}

cmd_status() {
    local c pid up=1
    for c in "${COMPONENTS[@]}"; do
        if pid=$(pid_of "$c"); then
            printf '%-24s running  pid %s\n' "$c" "$pid"
        else
            printf '%-24s stopped\n' "$c"
            up=0
        fi
    done
    print_credentials
    if ((up)) && [[ -s $ADMIN_KUBECONFIG ]] && cluster_ready; then
        printf 'node %s Ready; namespace %s present\n' "$NODE" "$NAMESPACE"
        printf 'cluster: up (KUBECONFIG=%s, apiserver https://127.0.0.1:%s, pods %s via %s gw %s)\n' \
            "$ADMIN_KUBECONFIG" "$API_PORT" "$POD_SUBNET" "$BRIDGE" "$POD_GATEWAY"
        return 0
    fi
    echo "cluster: down"
    return 3
}

case ${1:-} in
    up) cmd_up ;;
    down) shift; cmd_down "$@" ;;
    status) cmd_status ;;
    env) echo "export KUBECONFIG=$ADMIN_KUBECONFIG" ;;
    user) shift; cmd_user "$@" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
