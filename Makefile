# A local control plane (etcd, kube-apiserver, kube-controller-manager) on 127.0.0.1, built
# from source by e2e/controlplane/build.sh and run by e2e/controlplane/cluster.sh.
CLUSTER_DIR ?= $(CURDIR)/.local/cluster
CONTROLPLANE := $(CURDIR)/e2e/controlplane

.PHONY: controlplane cluster-up cluster-down kubectl

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
	"$$BIN_DIR/kubectl" --kubeconfig "$(CLUSTER_DIR)/kubeconfig" $(ARGS)
