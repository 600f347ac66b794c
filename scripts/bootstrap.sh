#!/usr/bin/env bash
# Create the project's virtualenv and install the locked dependencies (idempotent, offline-friendly).
#
# The lock is installed with uv (pinned in requirements-lock.txt, itself installed by pip): on a clean
# clone uv resolves, downloads and installs the 170-odd wheels in seconds where pip takes minutes. uv
# does not read pip's configuration, so the indexes, find-links, CA bundle and constraints pip is set
# up with here (pip.conf files and PIP_* variables, as `pip config list` shows them) are handed to uv.
# Should uv fail for any reason, pip installs the same lock as before. BOOTSTRAP_INSTALLER=pip forces pip.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.installed-$(cat requirements-lock.txt | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0

pip_install() {
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"
}

# uv's options from pip's configuration, one per line (an environment variable overrides the files,
# [install] overrides [global], as in pip).
uv_options_from_pip_config() {
  .venv/bin/python -m pip config list 2>/dev/null | .venv/bin/python -c '
import shlex, sys
rank = {"global": 0, "install": 1, ":env:": 2}
best = {}
for line in sys.stdin:
    key, sep, value = line.strip().partition("=")
    section, _, name = key.rpartition(".")
    if not sep or section not in rank:
        continue
    value = " ".join(shlex.split(value))
    if name not in best or rank[section] >= best[name][0]:
        best[name] = (rank[section], value)
get = lambda name: best.get(name, (0, ""))[1]
out = []
if get("index-url"):
    out += ["--index-url", get("index-url")]
for url in get("extra-index-url").split():
    out += ["--extra-index-url", url]
for place in get("find-links").split():
    out += ["--find-links", place]
for constraint in get("constraint").split():
    out += ["--constraint", constraint]
if get("no-index").lower() in ("1", "true", "yes", "on"):
    out.append("--no-index")
if get("cert"):
    out += ["--cert", get("cert")]
print("\n".join(out))
'
}

uv_install() {
  local uv_version
  uv_version=$(sed -n 's/^uv==//p' requirements-lock.txt)
  [ -n "$uv_version" ] || return 1
  [ -x .venv/bin/uv ] && .venv/bin/uv --version | grep -qx "uv $uv_version" || pip_install "uv==$uv_version" || return 1
  local options=() cert=""
  mapfile -t options < <(uv_options_from_pip_config)
  if [ "${#options[@]}" -ge 2 ] && [ "${options[-2]}" = "--cert" ]; then
    cert=${options[-1]}
    options=("${options[@]:0:${#options[@]}-2}")
  fi
  # pip looks for each package on every index and takes the best match; uv's default stops at the
  # first index that has the name. The lock pins every version, so pip's rule is the one wanted here.
  env ${cert:+SSL_CERT_FILE="$cert"} UV_LINK_MODE=copy .venv/bin/uv pip install --quiet \
    --python .venv/bin/python --index-strategy unsafe-best-match "${options[@]}" -r requirements-lock.txt
}

if [ "${BOOTSTRAP_INSTALLER:-uv}" = pip ] || ! uv_install; then
  [ "${BOOTSTRAP_INSTALLER:-uv}" = pip ] || echo "bootstrap: uv could not install the lock; installing it with pip" >&2
  pip_install -r requirements-lock.txt
fi
touch "$stamp"
