#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kubectl from the wrapper modules
# beside this script, once per (Kubernetes, etcd, Go) version triple, and prints the
# directory that holds the binaries. A later call with the same versions only prints it.
#
# STORAGEGRANT_CACHE overrides the cache root (default: ~/.cache/storagegrant).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-buildvcs=false

module_version() { # module_version DIR MODULE
  (cd "$1" && go list -m -f '{{.Version}}' "$2")
}

kube_version=$(module_version "$here/kubernetes" k8s.io/kubernetes)
etcd_version=$(module_version "$here/etcd" go.etcd.io/etcd/server/v3)
go_version=$(go env GOVERSION)
cache_root=${STORAGEGRANT_CACHE:-$HOME/.cache/storagegrant}
bin_dir="$cache_root/controlplane/kube-${kube_version}_etcd-${etcd_version}_${go_version}/bin"

binaries=(etcd kube-apiserver kube-controller-manager kubectl)
missing=()
for binary in "${binaries[@]}"; do
  [ -x "$bin_dir/$binary" ] || missing+=("$binary")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$bin_dir"
  exit 0
fi

mkdir -p "$bin_dir"
build_dir=$(mktemp -d "$bin_dir/.build.XXXXXX")
trap 'rm -rf "$build_dir"' EXIT

# Version variables that kube's own build sets, so that `--version` and the discovery
# endpoint report the release rather than v0.0.0.
kube_pkg=k8s.io/component-base/version
client_pkg=k8s.io/client-go/pkg/version
kube_ldflags="-s -w"
for pkg in "$kube_pkg" "$client_pkg"; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitTreeState=clean"
  kube_ldflags+=" -X $pkg.gitMajor=$(echo "${kube_version#v}" | cut -d. -f1)"
  kube_ldflags+=" -X $pkg.gitMinor=$(echo "${kube_version#v}" | cut -d. -f2)"
done

for binary in "${missing[@]}"; do
  echo "Building $binary ($kube_version, etcd $etcd_version, $go_version) into $bin_dir" >&2
  case "$binary" in
    etcd)
      (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$build_dir/etcd" \
        go.etcd.io/etcd/server/v3)
      ;;
    *)
      (cd "$here/kubernetes" && go build -trimpath -ldflags "$kube_ldflags" \
        -o "$build_dir/$binary" "k8s.io/kubernetes/cmd/$binary")
      ;;
  esac
  # Moved into place only when complete, so an interrupted build never leaves a binary
  # that looks finished.
  mv "$build_dir/$binary" "$bin_dir/$binary"
done

echo "$bin_dir"
