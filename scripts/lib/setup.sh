# Shared setup for scripts/up.sh and scripts/test.sh: system packages, virtualenv, Python packages.
# Sourced, not run. Installs with apt only as root; otherwise names what is missing.

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=""
apt_install() {
    if [ "$(id -u)" != "0" ]; then
        die "missing system packages: $* (install them with: sudo apt-get install $*)"
    fi
    command -v apt-get >/dev/null || die "missing system packages: $* (no apt-get here: install them by hand)"
    if [ -z "$APT_UPDATED" ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

ensure_python() {
    PYTHON=${PYTHON:-python3}
    command -v "$PYTHON" >/dev/null || apt_install python3 python3-venv
    "$PYTHON" - <<'PY' || die "Python 3.11 or newer is needed (found $("$PYTHON" --version 2>&1))"
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
}

ensure_mosquitto() {
    local missing=()
    have mosquitto || missing+=(mosquitto)
    { have mosquitto_pub && have mosquitto_sub && have mosquitto_rr; } || missing+=(mosquitto-clients)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

ensure_venv() {
    local extras="${1:-}"
    local stamp=".venv/.installed-${extras:-run}"
    local spec="."
    if [ -n "$extras" ]; then spec=".[${extras}]"; fi
    if [ ! -x .venv/bin/python ]; then
        log "creating .venv"
        "$PYTHON" -m venv .venv
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        log "installing Python packages (${spec})"
        .venv/bin/python -m pip install -q --upgrade pip >/dev/null
        .venv/bin/python -m pip install -q -e "${spec}"
        touch "$stamp"
    fi
}

# Tools the tests drive: Prometheus (promtool and the server), Node.js for the AsyncAPI parser,
# debootstrap for the Debian root the newest Home Assistant runs in (tests/support/homeassistant.py).
ensure_test_tools() {
    local missing=()
    { have promtool && have prometheus; } || missing+=(prometheus)
    { have node && have npm; } || missing+=(nodejs npm)
    have debootstrap || missing+=(debootstrap)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# The compose test (tests/deploy/test_compose_podman.py): rootful podman with netavark, aardvark-dns
# (service names resolve) and runc, iptables for its networks, debootstrap for the local
# stand-in base images (no registry needed). podman-compose comes with the `test` extra.
ensure_compose_tools() {
    local missing=() pkg
    for pkg in podman iptables netavark aardvark-dns runc debootstrap; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# The PostgreSQL half of the suite needs a server: the one at LIFEOPS_TEST_PG_URL (default
# postgresql://postgres@127.0.0.1:5432/postgres) or Debian's binaries to start a private one.
ensure_postgres_for_tests() {
    if .venv/bin/python - <<'PY'
import asyncio, os, sys
import asyncpg
url = os.environ.get("LIFEOPS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
async def probe():
    conn = await asyncpg.connect(url, timeout=3)
    await conn.close()
try:
    asyncio.run(probe())
except Exception:
    sys.exit(1)
PY
    then
        return
    fi
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        apt_install postgresql
    fi
}
