#!/usr/bin/env bash
# Checks the StorageGrant health script in argocd-cm-health.yaml against every sample listed
# in testdata/expected.yaml, with harness.lua. Needs lua5.4 or lua5.3 and python3 with PyYAML
# (Debian: apt-get install lua5.4 python3-yaml). Prints one line per sample, then
# "N passed, M failed", and exits non-zero when a sample fails.
set -euo pipefail

script_dir=$(cd "$(dirname "$0")" && pwd)

lua=$(command -v lua5.4 || command -v lua5.3 || true)
if [ -z "$lua" ]; then
  echo "test.sh: lua5.4 or lua5.3 not found; install one (apt-get install lua5.4)" >&2
  exit 2
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "test.sh: python3 with PyYAML not found; install it (apt-get install python3-yaml)" >&2
  exit 2
fi

work_dir=$(mktemp -d)
trap 'rm -rf "$work_dir"' EXIT

# Extracts the script from the ConfigMap, and turns expected.yaml and the samples it names
# into one Lua table literal.
python3 - "$script_dir" "$work_dir" <<'PYTHON'
import datetime
import sys

import yaml

script_dir, work_dir = sys.argv[1], sys.argv[2]
key = "resource.customizations.health.storagegrant.dev_StorageGrant"


def lua(value):
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime.datetime):
        value = value.isoformat()
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return '"' + escaped + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua(item) for item in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua(k)}] = {lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot convert {type(value).__name__} to Lua")


with open(f"{script_dir}/argocd-cm-health.yaml") as file:
    config_map = yaml.safe_load(file)
with open(f"{work_dir}/health.lua", "w") as file:
    file.write(config_map["data"][key])

with open(f"{script_dir}/testdata/expected.yaml") as file:
    tests = yaml.safe_load(file)["tests"]
cases = []
for test in tests:
    with open(f"{script_dir}/testdata/{test['inputPath']}") as file:
        obj = yaml.safe_load(file)
    health = test["healthStatus"]
    cases.append({"name": test["inputPath"], "obj": obj, "status": health["status"],
                  "message": health.get("message", "")})
with open(f"{work_dir}/cases.lua", "w") as file:
    file.write("return " + lua(cases) + "\n")
PYTHON

# Every sample in testdata/ must be listed in expected.yaml, so none is silently skipped.
for sample in "$script_dir"/testdata/*.yaml; do
  name=$(basename "$sample")
  [ "$name" = expected.yaml ] && continue
  if ! grep -q "inputPath: $name\$" "$script_dir/testdata/expected.yaml"; then
    echo "test.sh: testdata/$name is not listed in testdata/expected.yaml" >&2
    exit 1
  fi
done

"$lua" "$script_dir/harness.lua" "$work_dir/health.lua" "$work_dir/cases.lua"
