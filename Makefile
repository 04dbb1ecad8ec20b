# Build, test and run storagegrant. `make help` lists the targets.
#
# A local control plane (etcd, kube-apiserver, kube-controller-manager) on 127.0.0.1 is built
# from source by e2e/controlplane/build.sh and run by e2e/controlplane/cluster.sh. Every target
# that talks to a cluster names the local one explicitly; none reads an ambient KUBECONFIG.
CLUSTER_DIR ?= $(CURDIR)/.local/cluster
CONTROLPLANE := $(CURDIR)/e2e/controlplane
LOCAL_KUBECONFIG := $(CLUSTER_DIR)/kubeconfig
CRD := manifests/storagegrant.dev_storagegrants.yaml
# The TiDB Operator CRDs for `make run` and the e2e suite; the real ones when this names
# their folder.
TIDB_CRDS ?= $(CURDIR)/e2e/crds
METRICS_ADDRESS ?= 127.0.0.1:8080

.PHONY: help build test test-unit test-e2e lint crd check-crd run controlplane cluster-up \
	cluster-down kubectl

help:
	@echo "make run          start the local control plane, apply examples/, run the controller"
	@echo "make test         unit tests and the e2e suite on a real API server"
	@echo "make lint         rustfmt, clippy and the generated-CRD check"
	@echo "make crd          regenerate $(CRD)"
	@echo "make install-manifest  regenerate manifests/install.yaml from config/default"
	@echo "make cluster-up | cluster-down | kubectl ARGS=..."

include config/install.mk

build:
	cargo build --workspace

# Unit tests, then the e2e suite; each e2e test binary starts its own control plane.
test: controlplane
	cargo test --workspace --no-fail-fast
	@echo "TiDB Operator CRDs used by the e2e suite: $(TIDB_CRDS)"

test-unit:
	cargo test --workspace --lib --bins --test crd

# The e2e suite alone, against the CRDs in TIDB_CRDS.
test-e2e: controlplane
	STORAGEGRANT_TIDB_CRDS="$(TIDB_CRDS)" cargo test -p storagegrant-e2e --no-fail-fast

lint: check-crd check-install-manifest
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

crd:
	cargo run --quiet -p storagegrant-controller -- crd > $(CRD)

# Fails when the committed CRD differs from what the Rust types generate.
check-crd:
	@cargo run --quiet -p storagegrant-controller -- crd | diff -u $(CRD) - \
		|| { echo "$(CRD) is stale: run make crd and commit it" >&2; exit 1; }

# Starts the local control plane, installs the CRDs, the RBAC and a webhook configuration
# that calls 127.0.0.1:9443, applies examples/ and runs the controller in the foreground as its
# ServiceAccount, serving the webhook. Ctrl-C stops the controller; the
# cluster keeps running until make cluster-down.
run: cluster-up build
	@. "$(CLUSTER_DIR)/cluster.env" && kubectl="$$BIN_DIR/kubectl --kubeconfig $(LOCAL_KUBECONFIG)" && \
	$$kubectl apply --server-side --force-conflicts -f $(CRD) -f "$(TIDB_CRDS)" >/dev/null && \
	$$kubectl wait --for condition=Established --timeout=60s -f $(CRD) -f "$(TIDB_CRDS)" >/dev/null && \
	$$kubectl create namespace storagegrant-system --dry-run=client -o yaml | \
		$$kubectl apply --server-side -f - >/dev/null && \
	$$kubectl apply --server-side -k config/rbac >/dev/null && \
	$$kubectl apply --server-side -f config/webhook/role.yaml -f config/webhook/role_binding.yaml \
		-f config/local/mutating_webhook_configuration.yaml >/dev/null && \
	$$kubectl apply --server-side -f examples/00-namespace.yaml >/dev/null && \
	$$kubectl apply --server-side -f examples/ && \
	token=$$($$kubectl -n storagegrant-system create token storagegrant-controller --duration=24h) && \
	config="$$BIN_DIR/kubectl --kubeconfig $(CLUSTER_DIR)/controller.kubeconfig config" && \
	$$config set-cluster local --server="$$APISERVER_URL" \
		--certificate-authority="$(CLUSTER_DIR)/pki/ca.crt" --embed-certs >/dev/null && \
	$$config set-credentials storagegrant-controller --token="$$token" >/dev/null && \
	$$config set-context local --cluster=local --user=storagegrant-controller >/dev/null && \
	$$config use-context local >/dev/null
	@echo
	@echo "Watch the grant from another terminal:"
	@echo "  make kubectl ARGS='get storagegrants -n tidb-demo -o wide -w'"
	@echo "  make kubectl ARGS='describe storagegrant backup-s3 -n tidb-demo'"
	@echo "Metrics: curl http://$(METRICS_ADDRESS)/metrics"
	@echo
	KUBECONFIG=$(CLUSTER_DIR)/controller.kubeconfig target/debug/storagegrant-controller run \
		--leader-elect=false --metrics-bind-address=$(METRICS_ADDRESS) \
		--webhook-url=https://127.0.0.1:9443 --webhook-bind-address=127.0.0.1:9443 \
		--leader-election-namespace=storagegrant-system

# Builds the control plane binaries unless cached, and prints their directory.
controlplane:
	@"$(CONTROLPLANE)/build.sh"

# Starts the cluster in CLUSTER_DIR, or reuses it if it is healthy, links its kubectl as
# .local/bin/kubectl and prints the admin kubeconfig path.
cluster-up:
	@kubeconfig=$$("$(CONTROLPLANE)/cluster.sh" up "$(CLUSTER_DIR)") && \
	. "$(CLUSTER_DIR)/cluster.env" && \
	mkdir -p "$(CURDIR)/.local/bin" && \
	ln -sfn "$$BIN_DIR/kubectl" "$(CURDIR)/.local/bin/kubectl" && \
	echo "$$kubeconfig"

# Stops the cluster and removes CLUSTER_DIR.
cluster-down:
	@"$(CONTROLPLANE)/cluster.sh" down "$(CLUSTER_DIR)"

# Runs the cluster's kubectl against it, for example: make kubectl ARGS="get ns".
kubectl:
	@test -f "$(CLUSTER_DIR)/cluster.env" || \
		{ echo "no cluster in $(CLUSTER_DIR); run make cluster-up first" >&2; exit 1; }
	@. "$(CLUSTER_DIR)/cluster.env" && \
	"$$BIN_DIR/kubectl" --kubeconfig "$(LOCAL_KUBECONFIG)" $(ARGS)
