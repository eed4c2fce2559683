#!/usr/bin/env bash
# Installs what leoam needs on a Debian 12 machine with Node 20, and only what is missing:
# Debian packages (Mesa 25's lavapipe from bookworm-backports for WebGPU on the CPU,
# nats-server unless LEOAM_NEED_NATS=0; with LEOAM_NEED_TEST_TOOLS=1, as scripts/test.sh
# sets, also gcc and libnats-dev for the C client test and systemd for systemd-analyze) and,
# unless LEOAM_SKIP_NPM=1, the npm packages of
# package-lock.json. Sourced by scripts/demo.sh and scripts/test.sh; says what it does,
# and stops with a clear message when a step fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '[leoam setup] %s\n' "$*" >&2; }
fail() { printf '[leoam setup] FAILED: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_node() {
  command -v node >/dev/null || fail "node is not installed (Node.js >= 20 is required)"
  local major; major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 20 ] || fail "Node.js >= 20 is required, found $(node --version)"
}

# Mesa >= 24 (Debian 12's Mesa 22 is refused by Dawn): lavapipe lives in mesa-vulkan-drivers.
mesa_ok() {
  local v; v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
  [ -n "$v" ] && dpkg --compare-versions "$v" ge 24 && [ -n "$(ls /usr/share/vulkan/icd.d/lvp_icd*.json 2>/dev/null)" ] \
    && ldconfig -p | grep -q 'libvulkan.so.1'
}

add_backports() {
  local src=/etc/apt/sources.list.d/debian.sources
  if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then return; fi
  if [ -f "$src" ]; then
    say "adding bookworm-backports to the Suites of $src"
    # Only the stanza whose Suites has plain 'bookworm' (not bookworm-security).
    $SUDO sed -i -E '/^Suites:/{/(^|[[:space:]])bookworm([[:space:]]|$)/s/$/ bookworm-backports/}' "$src"
  elif [ -f /etc/apt/sources.list ]; then
    local line; line=$(grep -E '^deb [^ ]+ bookworm main' /etc/apt/sources.list | head -n1 || true)
    [ -n "$line" ] || fail "no Debian bookworm apt source found to extend with bookworm-backports"
    say "adding bookworm-backports beside: $line"
    echo "${line/ bookworm / bookworm-backports }" | $SUDO tee -a /etc/apt/sources.list >/dev/null
  else
    fail "no apt source file found (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)"
  fi
}

apt_updated=0
apt_update() {
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    $SUDO apt-get update -qq || fail "apt-get update"
    apt_updated=1
  fi
}

ensure_debian() {
  command -v apt-get >/dev/null || { say "no apt-get: skipping Debian packages"; return; }
  if ! mesa_ok; then
    add_backports
    apt_update
    say "installing mesa-vulkan-drivers (lavapipe) and libvulkan1 from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
      mesa-vulkan-drivers libvulkan1 >/dev/null || fail "apt-get install mesa-vulkan-drivers from bookworm-backports"
    mesa_ok || fail "mesa-vulkan-drivers >= 24 with lavapipe is still missing after install"
  fi
  if [ "${LEOAM_NEED_NATS:-1}" = 1 ] && ! command -v nats-server >/dev/null; then
    apt_update
    say "installing nats-server"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null || fail "apt-get install nats-server"
  fi
  # The tests' C client (test/clients/generate.c) is built with gcc against the NATS C client.
  if [ "${LEOAM_NEED_TEST_TOOLS:-0}" = 1 ]; then
    if ! dpkg-query -W -f='${Status}' libnats-dev 2>/dev/null | grep -q 'install ok installed'; then
      apt_update
      say "installing libnats-dev (the NATS C client, for the C client test)"
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libnats-dev >/dev/null || fail "apt-get install libnats-dev"
    fi
    # test/deploy.test.ts checks deploy/leoam.service with `systemd-analyze verify`, which
    # needs no running systemd (the package installs fine in a container).
    if ! command -v systemd-analyze >/dev/null; then
      apt_update
      say "installing systemd (for systemd-analyze verify of deploy/leoam.service)"
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends systemd >/dev/null || fail "apt-get install systemd"
    fi
    if ! command -v gcc >/dev/null; then
      apt_update
      say "installing gcc (for the C client test)"
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gcc >/dev/null || fail "apt-get install gcc"
    fi
  fi
}

ensure_npm() {
  # deploy/install.sh installs the production packages itself (npm ci --omit=dev).
  if [ "${LEOAM_SKIP_NPM:-0}" = 1 ]; then return; fi
  # Installed packages are stamped with the lockfile's hash, not compared by time: a checkout
  # touches package-lock.json's mtime (a git worktree sharing node_modules would reinstall it
  # under the other checkout's feet) without changing what it locks.
  local want stamp=node_modules/.leoam-lock.sha256
  want=$(sha256sum package-lock.json | cut -d' ' -f1)
  if [ -d node_modules ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  # Installed before the stamp existed and not older than the lockfile: stamp it as it is.
  if [ -d node_modules ] && [ ! -f "$stamp" ] && [ -f node_modules/.package-lock.json ] \
    && [ ! package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "$want" > "$stamp"
    return
  fi
  say "installing npm packages (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error || fail "npm ci"
  echo "$want" > "$stamp"
}

need_node
ensure_debian
ensure_npm
