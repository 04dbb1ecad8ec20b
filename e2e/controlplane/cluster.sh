#!/usr/bin/env bash
# Runs a local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on
# 127.0.0.1 with all of its state in one directory. The flags follow how controller-runtime's
# envtest starts etcd and kube-apiserver. The controller-manager adds garbage collection,
# namespace deletion and ServiceAccounts. No scheduler or kubelet runs, so no Pod ever starts.
#
# Usage:
#   cluster.sh up DIR      Start a cluster in DIR (created if absent), or reuse the healthy
#                          cluster already there. The last line of stdout is the absolute path
#                          of the admin kubeconfig; progress messages go to stderr.
#   cluster.sh down DIR    Stop the cluster and remove DIR. Succeeds if DIR does not exist.
#   cluster.sh status DIR  Print the kubeconfig path and exit 0 if the cluster is healthy,
#                          else exit 1.
#
# If STORAGEGRANT_CLUSTER_OWNER_PID is set when `up` starts a cluster, a detached watchdog
# runs the teardown of `down` once that process has exited. Another `up` with an owner on the
# same running cluster adds its owner, and the cluster stops when every owner has exited. A
# cluster started without an owner runs until `down`, and later owners do not change that.
#
# Files in DIR: kubeconfig (admin, user "admin" in group system:masters), cluster.env
# (KUBECONFIG, APISERVER_URL, ETCD_URL, AUDIT_LOG, BIN_DIR, SA_SIGNING_KEY as shell
# assignments), audit.log (write requests at level Metadata), pki/, etcd/ (data), a .log and
# a .pid file per process, and owners and watchdog.{log,pid} when an owner is set.
set -euo pipefail

script=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
here=$(dirname "$script")

# Seconds to wait for each step before `up` fails. They leave a wide margin: on a 2-core
# machine that was compiling at the same time, the whole cluster was ready in about 5 s.
readonly etcd_timeout=60 apiserver_timeout=90 namespace_timeout=30 serviceaccount_timeout=60
readonly stop_timeout=10 start_attempts=3
# Processes in the order they are stopped.
readonly components=(kube-controller-manager kube-apiserver etcd)
# Present in every directory that this script created, so that `down` never removes
# a directory that contains anything else.
readonly marker=.storagegrant-cluster

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

usage() {
  cat >&2 <<'EOF'
usage: cluster.sh up DIR | down DIR | status DIR
  up      start a local control plane in DIR, or reuse a healthy one; prints the kubeconfig path
  down    stop the control plane in DIR and remove DIR
  status  print the kubeconfig path and exit 0 if the control plane in DIR is healthy
EOF
  exit 2
}

require_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool not found in PATH; install it and retry"
  done
}

# --- Processes -------------------------------------------------------------------------------

# Prints the start time of process PID (field 22 of /proc/PID/stat, in clock ticks since
# boot), which distinguishes a running process from a later one that reuses its pid.
process_start_time() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  read -ra fields <<<"${stat##*) }"
  echo "${fields[19]}"
}

# Succeeds if PID is alive and its command line names a path in $dir, so that a stale pid
# file never leads to signalling an unrelated process that reused the pid. A zombie has an
# empty command line and counts as exited.
is_cluster_process() {
  local pid=$1 cmdline
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ "$cmdline " == *"$dir/"* || "$cmdline " == *" $dir "* ]]
}

read_pid() { cat "$dir/$1.pid" 2>/dev/null || true; }

# Starts a process in its own session with stdin from /dev/null and output appended to
# DIR/NAME.log, so that it outlives the calling shell, and records its pid in DIR/NAME.pid.
# It does not inherit fd 3 (the caller's stdout in `up`) or fd 9 (the directory lock),
# because it would keep the caller's pipe open or the lock taken for as long as it runs.
start_detached() {
  local name=$1
  shift
  setsid "$@" </dev/null >>"$dir/$name.log" 2>&1 3>&- 9<&- &
  echo $! >"$dir/$name.pid"
}

# Sends SIGTERM to the process named in DIR/NAME.pid, then SIGKILL if it is still running
# after $stop_timeout seconds, and removes the pid file.
stop_process() {
  local name=$1 pid deadline
  pid=$(read_pid "$name")
  if is_cluster_process "$pid"; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + stop_timeout))
    while is_cluster_process "$pid" && ((SECONDS < deadline)); do
      sleep 0.2
    done
    if is_cluster_process "$pid"; then
      log "$name (pid $pid) still running ${stop_timeout}s after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while is_cluster_process "$pid"; do
        sleep 0.1
      done
    fi
  fi
  rm -f "$dir/$name.pid"
}

# Stops the watchdog (unless this process is the watchdog) and every component.
stop_all() {
  if [ "$(read_pid watchdog)" != "$$" ]; then
    stop_process watchdog
  fi
  local name
  for name in "${components[@]}"; do
    stop_process "$name"
  done
}

# --- Directory and lock ----------------------------------------------------------------------

# Takes an exclusive lock on DIR (on fd 9) that every `up`, `down` and watchdog teardown
# holds, so that concurrent calls on one DIR run one after another. Fails if DIR is absent.
lock_dir() {
  while true; do
    exec 9<"$dir" || return 1
    if ! flock -n 9; then
      log "waiting for another cluster.sh call on $dir to finish"
      flock 9
    fi
    # A `down` that held the lock may have removed DIR meanwhile, leaving this lock on a
    # deleted directory.
    if [ -d "$dir" ] && [ "$(stat -c %d:%i "$dir")" = "$(stat -L -c %d:%i /proc/$$/fd/9)" ]; then
      return 0
    fi
    exec 9<&-
    [ -d "$dir" ] || return 1
  done
}

is_cluster_dir() { [ -f "$dir/$marker" ]; }

# Succeeds if DIR contains no files at all.
is_empty_dir() { [ -z "$(find "$dir" -mindepth 1 -maxdepth 1 -print -quit)" ]; }

# Prints the value of KEY from DIR/cluster.env.
read_env() {
  [ -f "$dir/cluster.env" ] || return 1
  # shellcheck disable=SC1091
  (. "$dir/cluster.env" && printf '%s' "${!1}")
}

# --- API requests ----------------------------------------------------------------------------

# Prints the body of a GET to the API server at PATH with the admin client certificate.
# Fails on a connection error or a status of 400 or above.
apiserver_get() {
  local pki=$dir/pki
  curl --fail --silent --show-error --noproxy '*' --max-time 5 \
    --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "$apiserver_url$1"
}

apiserver_ready() { [ "$(apiserver_get /readyz 2>/dev/null)" = ok ]; }

api_object_exists() { apiserver_get "$1" >/dev/null 2>&1; }

etcd_healthy() {
  curl --silent --noproxy '*' --max-time 5 "$etcd_url/health" 2>/dev/null |
    grep -q '"health":"true"'
}

# Succeeds if every component of the cluster in DIR runs and /readyz returns ok. On failure
# prints the reason to stderr.
cluster_healthy() {
  if [ ! -f "$dir/cluster.env" ]; then
    log "no cluster in $dir"
    return 1
  fi
  local name
  for name in "${components[@]}"; do
    if ! is_cluster_process "$(read_pid "$name")"; then
      log "$name of the cluster in $dir is not running"
      return 1
    fi
  done
  apiserver_url=$(read_env APISERVER_URL) || return 1
  if ! apiserver_ready; then
    log "$apiserver_url/readyz did not return ok"
    return 1
  fi
}

# --- Owners and watchdog ---------------------------------------------------------------------

# Succeeds if any process listed in DIR/owners (lines of "pid start-time") is still running.
any_owner_alive() {
  local pid start
  [ -f "$dir/owners" ] || return 1
  while read -r pid start; do
    if [ "$(process_start_time "$pid" || true)" = "$start" ]; then
      return 0
    fi
  done <"$dir/owners"
  return 1
}

# Adds the process $owner_pid to DIR/owners and starts the watchdog unless it runs already.
add_owner() {
  echo "$owner_pid $owner_start_time" >>"$dir/owners"
  if is_cluster_process "$(read_pid watchdog)"; then
    return 0
  fi
  log "starting watchdog: the cluster stops once process $owner_pid has exited"
  start_detached watchdog "$script" watch "$dir"
}

# Runs as the detached watchdog: polls the owners each second, and once none is left runs
# the teardown of `down` while holding the lock, so that an `up` adding an owner meanwhile
# is not lost.
cmd_watch() {
  while true; do
    while any_owner_alive; do
      sleep 1
    done
    lock_dir || exit 0
    if any_owner_alive; then
      exec 9<&-
      continue
    fi
    log "every owner has exited; stopping the cluster in $dir"
    stop_all
    rm -rf "$dir"
    exit 0
  done
}

# --- Certificates and configuration ----------------------------------------------------------

new_rsa_key() {
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null
}

# Creates pki/NAME.key and pki/NAME.crt, signed by the CA, with SUBJECT and the extensions
# of SECTION in pki/openssl.cnf.
new_signed_cert() {
  local pki=$dir/pki name=$1 subject=$2 section=$3
  new_rsa_key "$pki/$name.key"
  openssl req -new -config "$pki/openssl.cnf" -key "$pki/$name.key" -subj "$subject" \
    -out "$pki/$name.csr"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 \
    -extfile "$pki/openssl.cnf" -extensions "$section" -out "$pki/$name.crt" 2>/dev/null
  rm "$pki/$name.csr"
}

# Writes a throw-away CA, the API server's serving certificate, client certificates for the
# admin and the controller-manager, and the key pair that signs ServiceAccount tokens.
create_pki() {
  local pki=$dir/pki
  mkdir -p "$pki"
  # webpki, the verifier behind rustls, matches the host only against subjectAltName, never
  # the subject CN, and checks basicConstraints and extendedKeyUsage.
  cat >"$pki/openssl.cnf" <<'EOF'
[req]
distinguished_name = subject
prompt = no

[subject]

[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
EOF
  new_rsa_key "$pki/ca.key"
  openssl req -x509 -new -config "$pki/openssl.cnf" -extensions ca -key "$pki/ca.key" \
    -subj "/CN=storagegrant-local-ca" -set_serial "0x$(openssl rand -hex 16)" -days 365 \
    -out "$pki/ca.crt"
  new_signed_cert apiserver "/CN=kube-apiserver" server
  # The API server maps a client certificate's CN to the user name and each O to a group.
  new_signed_cert admin "/O=system:masters/CN=admin" client
  # The controllers run with the controller-manager's own credentials
  # (--use-service-account-credentials=false). The bootstrap ClusterRole
  # system:kube-controller-manager of Kubernetes v1.36 lets that user list and watch every
  # resource but delete only Secrets. The garbage collector and the namespace controller
  # delete objects of every kind, so the certificate adds the group system:masters.
  new_signed_cert kube-controller-manager \
    "/O=system:masters/CN=system:kube-controller-manager" client
  new_rsa_key "$pki/service-account.key"
  openssl pkey -in "$pki/service-account.key" -pubout -out "$pki/service-account.pub"
}

# Writes a kubeconfig for USER with the CA and the client certificate pki/NAME.{crt,key}
# embedded, so that the file works when copied elsewhere.
write_kubeconfig() {
  local file=$1 user=$2 name=$3 pki=$dir/pki
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: storagegrant-local
  cluster:
    server: $apiserver_url
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$name.crt")
    client-key-data: $(base64 -w0 <"$pki/$name.key")
contexts:
- name: storagegrant-local
  context:
    cluster: storagegrant-local
    user: $user
current-context: storagegrant-local
EOF
}

write_audit_policy() {
  cat >"$dir/audit-policy.yaml" <<'EOF'
# One event per write request, at the end of the request, with metadata but no bodies.
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages:
- RequestReceived
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
EOF
}

# --- Start-up --------------------------------------------------------------------------------

free_port() {
  python3 -c '
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])'
}

launch_etcd() {
  local peer_port client_port
  client_port=$(free_port)
  peer_port=$(free_port)
  while [ "$peer_port" = "$client_port" ]; do
    peer_port=$(free_port)
  done
  etcd_url=http://127.0.0.1:$client_port
  # A failed attempt leaves a member directory that records the old peer port.
  rm -rf "$dir/etcd"
  log "starting etcd on $etcd_url"
  start_detached etcd "$bin_dir/etcd" \
    --name=default \
    --data-dir="$dir/etcd" \
    --listen-client-urls="$etcd_url" \
    --advertise-client-urls="$etcd_url" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="default=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync
}

launch_apiserver() {
  local port pki=$dir/pki
  port=$(free_port)
  apiserver_url=https://127.0.0.1:$port
  log "starting kube-apiserver on $apiserver_url"
  # --endpoint-reconciler-type=none: the default reconciler publishes the advertise address
  # as the endpoint of the "kubernetes" Service, which rejects a loopback address and logs
  # an error every 10 s. Nothing here runs in a Pod, so nothing needs that endpoint.
  start_detached kube-apiserver "$bin_dir/kube-apiserver" \
    --etcd-servers="$etcd_url" \
    --bind-address=127.0.0.1 \
    --secure-port="$port" \
    --advertise-address=127.0.0.1 \
    --cert-dir="$pki" \
    --tls-cert-file="$pki/apiserver.crt" \
    --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --authorization-mode=RBAC \
    --service-account-issuer=https://localhost \
    --service-account-key-file="$pki/service-account.pub" \
    --service-account-signing-key-file="$pki/service-account.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --audit-policy-file="$dir/audit-policy.yaml" \
    --audit-log-path="$dir/audit.log" \
    --audit-log-format=json \
    --audit-log-mode=blocking \
    --audit-log-maxsize=0 \
    --audit-log-maxage=0 \
    --audit-log-maxbackup=0
}

launch_controller_manager() {
  local pki=$dir/pki
  log "starting kube-controller-manager"
  # --secure-port=0 turns off its HTTPS endpoint, so it listens on no port.
  start_detached kube-controller-manager "$bin_dir/kube-controller-manager" \
    --kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --controllers=garbagecollector,namespace,serviceaccount,serviceaccount-token \
    --service-account-private-key-file="$pki/service-account.key" \
    --root-ca-file="$pki/ca.crt" \
    --leader-elect=false \
    --secure-port=0 \
    --use-service-account-credentials=false
}

# Polls CHECK every half second until it succeeds. Returns 1 after TIMEOUT seconds and 2 as
# soon as process PID has exited.
wait_until() {
  local pid=$1 timeout=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@"; do
    is_cluster_process "$pid" || return 2
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

log_size() { stat -c %s "$dir/$1.log" 2>/dev/null || echo 0; }

# Fails `up` with MESSAGE and the last lines that process NAME logged since byte OFFSET.
fail_start() {
  local name=$1 message=$2 offset=$3
  log "$name $message; last lines of $dir/$name.log:"
  tail -c "+$((offset + 1))" "$dir/$name.log" | tail -n 20 >&2
  die "$name failed to start"
}

# Starts component NAME with LAUNCH and waits up to TIMEOUT seconds for READY. Retries with
# new ports when the process exits because a port was taken between choosing and binding it.
start_component() {
  local name=$1 launch=$2 ready=$3 timeout=$4 attempt offset status
  for ((attempt = 1; attempt <= start_attempts; attempt++)); do
    offset=$(log_size "$name")
    "$launch"
    status=0
    wait_until "$(read_pid "$name")" "$timeout" "$ready" || status=$?
    case $status in
    0)
      log "$name is ready"
      return 0
      ;;
    1) fail_start "$name" "not ready after ${timeout}s" "$offset" ;;
    esac
    if tail -c "+$((offset + 1))" "$dir/$name.log" | grep -q 'address already in use'; then
      log "$name exited because its port was taken; retrying with new ports"
      continue
    fi
    fail_start "$name" "exited during start-up" "$offset"
  done
  die "$name failed to start: its port was already in use in each of $start_attempts attempts"
}

# Waits up to TIMEOUT seconds until the object at API PATH exists, while process NAME runs.
wait_for_object() {
  local name=$1 path=$2 timeout=$3 status=0
  wait_until "$(read_pid "$name")" "$timeout" api_object_exists "$path" || status=$?
  case $status in
  1) fail_start "$name" "running, but $path does not exist after ${timeout}s" 0 ;;
  2) fail_start "$name" "exited during start-up" 0 ;;
  esac
}

write_cluster_env() {
  {
    printf 'KUBECONFIG=%q\n' "$dir/kubeconfig"
    printf 'APISERVER_URL=%q\n' "$apiserver_url"
    printf 'ETCD_URL=%q\n' "$etcd_url"
    printf 'AUDIT_LOG=%q\n' "$dir/audit.log"
    printf 'BIN_DIR=%q\n' "$bin_dir"
    printf 'SA_SIGNING_KEY=%q\n' "$dir/pki/service-account.key"
  } >"$dir/cluster.env.tmp"
  # cluster.env appears only complete, because `status` reads it to find the API server.
  mv "$dir/cluster.env.tmp" "$dir/cluster.env"
}

# Stops whatever a failed `up` started. The logs stay in DIR, and the next `up` removes them.
cleanup_failed_up() {
  local name
  for name in "${components[@]}"; do
    stop_process "$name"
  done
  log "start-up failed; logs are in $dir"
}

start_cluster() {
  trap cleanup_failed_up EXIT
  trap 'exit 130' INT TERM

  bin_dir=$("$here/build.sh" | tail -n 1) || die "$here/build.sh failed; see its output above"
  [ -x "$bin_dir/kube-apiserver" ] || die "build.sh printed $bin_dir, which has no kube-apiserver"

  create_pki
  write_audit_policy
  start_component etcd launch_etcd etcd_healthy "$etcd_timeout"
  start_component kube-apiserver launch_apiserver apiserver_ready "$apiserver_timeout"
  wait_for_object kube-apiserver /api/v1/namespaces/default "$namespace_timeout"
  write_kubeconfig "$dir/kubeconfig" admin admin
  write_kubeconfig "$dir/kube-controller-manager.kubeconfig" \
    system:kube-controller-manager kube-controller-manager
  launch_controller_manager
  # The ServiceAccount controller creates the default ServiceAccount, so its appearance
  # shows that the controller-manager runs.
  wait_for_object kube-controller-manager \
    /api/v1/namespaces/default/serviceaccounts/default "$serviceaccount_timeout"
  log "kube-controller-manager is ready"
  write_cluster_env
  trap - EXIT INT TERM
}

# --- Commands --------------------------------------------------------------------------------

cmd_up() {
  require_tools curl flock openssl python3 setsid
  # From here on stdout carries only the kubeconfig path, written to fd 3 at the end, so any
  # other output of a command goes to stderr.
  exec 3>&1 1>&2
  umask 077

  owner_pid=${STORAGEGRANT_CLUSTER_OWNER_PID:-}
  if [ -n "$owner_pid" ]; then
    owner_start_time=$(process_start_time "$owner_pid") ||
      die "STORAGEGRANT_CLUSTER_OWNER_PID=$owner_pid is not a running process"
  fi

  mkdir -p "$dir"
  lock_dir || die "$dir was removed while waiting for its lock; retry"

  if is_cluster_dir && [ -f "$dir/cluster.env" ] && cluster_healthy; then
    log "cluster in $dir is already running"
    if [ -n "$owner_pid" ]; then
      if [ -f "$dir/owners" ]; then
        add_owner
      else
        log "the cluster was started without STORAGEGRANT_CLUSTER_OWNER_PID, so it keeps" \
          "running after process $owner_pid exits"
      fi
    elif [ -f "$dir/owners" ]; then
      log "note: this cluster stops once the processes in $dir/owners have exited"
    fi
    echo "$dir/kubeconfig" >&3
    return 0
  fi

  if is_cluster_dir; then
    log "removing the stopped or unhealthy cluster in $dir"
    stop_all
    find "$dir" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
  elif ! is_empty_dir; then
    die "$dir is not empty and was not created by cluster.sh; pass a new or empty directory"
  fi
  touch "$dir/$marker"

  start_cluster
  if [ -n "$owner_pid" ]; then
    add_owner
  fi
  log "cluster is running; kubeconfig: $dir/kubeconfig"
  echo "$dir/kubeconfig" >&3
}

cmd_down() {
  [ -e "$dir" ] || return 0
  [ -d "$dir" ] || die "$dir is not a directory"
  if ! is_cluster_dir; then
    is_empty_dir || die "$dir was not created by cluster.sh (no $marker file); not removing it"
    rmdir "$dir"
    return 0
  fi
  lock_dir || return 0
  stop_all
  rm -rf "$dir"
  log "stopped the cluster and removed $dir"
}

cmd_status() {
  [ -d "$dir" ] || {
    log "no cluster in $dir"
    exit 1
  }
  cluster_healthy || exit 1
  echo "$dir/kubeconfig"
}

[ $# -eq 2 ] || usage
[ -n "$2" ] || usage
dir=$(realpath -m "$2")
[ "$dir" != / ] || die "/ is not a valid cluster directory; pass a dedicated directory"
apiserver_url=
etcd_url=
bin_dir=

case $1 in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
watch) cmd_watch ;; # internal: the watchdog that `up` starts
*) usage ;;
esac
