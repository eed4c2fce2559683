#!/usr/bin/env bash
# Installs leoam as a systemd service on Debian 12 (README "Deployment (systemd)"):
#   1. the Debian packages it needs (scripts/ensure-deps.sh: lavapipe, nats-server)
#   2. the checkout copied to PREFIX (/opt/leoam; --link makes a symlink instead) and
#      `npm ci --omit=dev` there when its node_modules is missing or older than the lock file
#   3. the system user and group `leoam` (home /var/lib/leoam, no shell, no login)
#   4. /etc/leoam (0750 root:leoam) and a default /etc/leoam/config.json (0640 root:leoam),
#      kept as it is when it exists; checked against the schema either way
#   5. the unit /etc/systemd/system/leoam.service and its drop-in leoam.service.d/memory.conf:
#      MemoryMax = host_kv_budget + the weights' size + 1 GiB (deploy/memory-max.ts)
#   6. systemctl daemon-reload, enable, and restart (skipped with --no-start, or when systemd
#      is not running)
# Idempotent: run it again after changing the checkout or the config. --dry-run prints the
# steps (each command prefixed with "+") and changes nothing.
set -euo pipefail
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

DRY=0 LINK=0 START=1 PREFIX=/opt/leoam ETC=/etc/leoam UNIT_DIR=/etc/systemd/system
usage() { echo "usage: deploy/install.sh [--dry-run] [--link] [--no-start] [--prefix DIR]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --link) LINK=1 ;;
    --no-start) START=0 ;;
    --prefix) [ $# -ge 2 ] || usage; PREFIX=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) usage ;;
  esac
  shift
done

say() { printf '[leoam install] %s\n' "$*" >&2; }
fail() { printf '[leoam install] FAILED: %s\n' "$*" >&2; exit 1; }
# Every change goes through run: printed, and done unless --dry-run.
run() { printf '+ %s\n' "$*"; [ "$DRY" = 1 ] || "$@"; }
# write_file PATH MODE OWNER:GROUP < content
write_file() {
  local content; content=$(cat)
  printf '+ write %s (mode %s, %s):\n%s\n' "$1" "$2" "$3" "$(sed 's/^/    /' <<<"$content")"
  [ "$DRY" = 1 ] && return
  local tmp; tmp=$(mktemp "$(dirname "$1")/.leoam.XXXXXX")
  printf '%s\n' "$content" >"$tmp"
  chmod "$2" "$tmp" && chown "$3" "$tmp" && mv -f "$tmp" "$1"
}

[ "$DRY" = 1 ] || [ "$(id -u)" = 0 ] || fail "run as root (or with --dry-run to see the steps)"
NODE=$(command -v node) || fail "node is not installed (Node.js >= 20)"
say "installing leoam from $SRC into $PREFIX$([ "$DRY" = 1 ] && echo ' (dry run: nothing is changed)')"

say "1. Debian packages (only what is missing)"
if [ "$DRY" = 1 ]; then printf '+ LEOAM_SKIP_NPM=1 bash %s/scripts/ensure-deps.sh\n' "$SRC"
else LEOAM_SKIP_NPM=1 bash "$SRC/scripts/ensure-deps.sh" || fail "scripts/ensure-deps.sh"; fi

say "2. the program in $PREFIX"
if [ "$SRC" = "$(readlink -f "$PREFIX" 2>/dev/null || true)" ]; then
  say "   $PREFIX is this checkout: nothing to copy"
elif [ "$LINK" = 1 ]; then
  [ -L "$PREFIX" ] || [ ! -e "$PREFIX" ] || fail "$PREFIX exists and is not a symlink (remove it, or install without --link)"
  run ln -sfnT "$SRC" "$PREFIX"
else
  [ ! -L "$PREFIX" ] || run rm "$PREFIX"
  run mkdir -p "$PREFIX"
  # node_modules is installed below for production; .git and local caches stay behind.
  printf '+ tar -C %s --exclude=./node_modules --exclude=./.git -cf - . | tar -C %s -xf -\n' "$SRC" "$PREFIX"
  [ "$DRY" = 1 ] || tar -C "$SRC" --exclude=./node_modules --exclude=./.git --exclude=./.gpu --exclude=./.bench-bundle -cf - . \
    | tar -C "$PREFIX" --no-same-owner -xf - || fail "copying $SRC to $PREFIX"
  run chown -R root:root "$PREFIX"
fi
if [ ! -d "$PREFIX/node_modules" ] || [ "$PREFIX/package-lock.json" -nt "$PREFIX/node_modules/.package-lock.json" ]; then
  run npm --prefix "$PREFIX" ci --omit=dev --no-audit --no-fund --loglevel=error
else
  say "   $PREFIX/node_modules is up to date"
fi

say "3. the system user leoam"
if getent passwd leoam >/dev/null; then say "   user leoam exists"
else run useradd --system --user-group --home-dir /var/lib/leoam --no-create-home --shell /usr/sbin/nologin leoam; fi
# The unit's SupplementaryGroups: a missing group would stop the service from starting.
for g in render video; do getent group "$g" >/dev/null || run groupadd --system "$g"; done

say "4. the configuration in $ETC"
run install -d -m 0750 -o root -g leoam "$ETC"
CONFIG="$ETC/config.json"
USERS_LINE=""
[ -f "$ETC/users.json" ] && USERS_LINE=$'\n'"  \"users\": \"$ETC/users.json\","
if [ -f "$CONFIG" ]; then
  say "   $CONFIG exists: kept"
  run chown root:leoam "$CONFIG"
  run chmod 0640 "$CONFIG"
  CHECK=$CONFIG
else
  CHECK=$(mktemp); trap 'rm -f "$CHECK"' EXIT
  cat >"$CHECK" <<EOF
{
  "kv_dir": "/var/lib/leoam/kv",
  "nats_port": 4222,${USERS_LINE}
  "kv_policy": "full",
  "host_kv_budget": "256MiB",
  "queue": 64,
  "drain_timeout": 30000,
  "device": "auto"
}
EOF
  write_file "$CONFIG" 0640 root:leoam <"$CHECK"
fi
if [ -f "$ETC/users.json" ]; then
  run chown root:leoam "$ETC/users.json"; run chmod 0640 "$ETC/users.json"
else
  say "   access control is off: write $ETC/users.json (0640 root:leoam; README \"Access control\") and add \"users\": \"$ETC/users.json\" to $CONFIG"
fi
# (The bundled model's weights are the same in $SRC and $PREFIX; $SRC's exist even in a dry run.)
MEMORY_MAX=$(cd "$SRC" && "$NODE" --import tsx deploy/memory-max.ts "$CHECK" "$SRC/models/tiny-leo-14m") \
  || fail "MemoryMax from $CONFIG (fix the file: schema protocol/schema/ServeConfig.json)"

say "5. the unit (MemoryMax=$MEMORY_MAX)"
sed -e "s|/usr/bin/node|$NODE|" -e "s|/opt/leoam|$PREFIX|g" "$SRC/deploy/leoam.service" | write_file "$UNIT_DIR/leoam.service" 0644 root:root
run mkdir -p "$UNIT_DIR/leoam.service.d"
write_file "$UNIT_DIR/leoam.service.d/memory.conf" 0644 root:root <<EOF
# Written by deploy/install.sh from $CONFIG: host_kv_budget + weights + 1 GiB margin.
[Service]
MemoryMax=$MEMORY_MAX
EOF

say "6. the service"
if [ -d /run/systemd/system ] || [ "$DRY" = 1 ]; then
  run systemctl daemon-reload
  run systemctl enable leoam.service
  if [ "$START" = 1 ]; then run systemctl restart leoam.service; else say "   --no-start: start it with systemctl start leoam"; fi
  say "done: systemctl status leoam; journalctl -u leoam -o cat (JSON lines); leoam stats --nats-url nats://127.0.0.1:4222"
else
  say "systemd is not running here: the unit is installed but not enabled (run systemctl enable --now leoam where it runs)"
fi
