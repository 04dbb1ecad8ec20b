# Targets that render the install manifest. The top-level Makefile includes this file. Include
# it after the first target there, so that this file's targets do not become the default goal.
#
# Both targets use the kubectl built by e2e/controlplane/build.sh (its embedded kustomize), so
# every machine renders manifests/install.yaml byte for byte alike. The first call builds
# kubectl when it is not cached.
INSTALL_MANIFEST := manifests/install.yaml

.PHONY: install-manifest check-install-manifest

# Renders config/default into $(INSTALL_MANIFEST). A failed render leaves the file unchanged.
install-manifest:
	@kubectl="$$(bash e2e/controlplane/build.sh)/kubectl" && \
	"$$kubectl" kustomize config/default > $(INSTALL_MANIFEST).tmp && \
	mv $(INSTALL_MANIFEST).tmp $(INSTALL_MANIFEST) || \
	{ rm -f $(INSTALL_MANIFEST).tmp; exit 1; }

# Fails when $(INSTALL_MANIFEST) differs from what config/ renders.
check-install-manifest:
	@kubectl="$$(bash e2e/controlplane/build.sh)/kubectl" && \
	rendered=$$(mktemp) && trap 'rm -f "$$rendered"' EXIT && \
	"$$kubectl" kustomize config/default > "$$rendered" && \
	{ diff -u $(INSTALL_MANIFEST) "$$rendered" || \
	{ echo "$(INSTALL_MANIFEST) is stale: run make install-manifest and commit it" >&2; \
	exit 1; }; }
