#!/usr/bin/env bash
# Installs the machine packages the local stack needs (Debian/Ubuntu): Java 17+ and Maven for
# Apache Kafka, the PostgreSQL server, Mosquitto, npm and Chromium (with Korean fonts) for the
# dashboard, and what building TimescaleDB from its source release needs when the server has
# no TimescaleDB (cmake, a C compiler, OpenSSL headers and postgresql-server-dev-<major>).
# Only what is missing is installed.
set -euo pipefail

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  missing+=(mosquitto)
fi
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
# The dashboard: npm installs its chart library (`make dashboard`); its browser tests drive
# headless Chromium.
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-noto-cjk)

install() {
  echo "system packages: installing $*"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo="sudo"
    else
      echo "need root (or sudo) to install: $*" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "$@"
}

if [ ${#missing[@]} -gt 0 ]; then
  install "${missing[@]}"
fi

# TimescaleDB's build tools, for the newest installed server, unless it has TimescaleDB.
major=$(ls -d /usr/lib/postgresql/*/bin/initdb | sed 's|/usr/lib/postgresql/\([0-9]*\)/.*|\1|' | sort -n | tail -1)
build=()
if [ ! -f "/usr/share/postgresql/$major/extension/timescaledb.control" ]; then
  command -v cmake >/dev/null 2>&1 || build+=(cmake)
  command -v cc >/dev/null 2>&1 || build+=(gcc libc6-dev)
  command -v make >/dev/null 2>&1 || build+=(make)
  [ -f /usr/include/openssl/ssl.h ] || build+=(libssl-dev)
  [ -f "/usr/include/postgresql/$major/server/postgres.h" ] || build+=("postgresql-server-dev-$major")
fi
if [ ${#build[@]} -gt 0 ]; then
  # This can upgrade the server package to a newer minor release; `iotmon stack up` restarts
  # a running server of the stack when its binaries changed.
  install "${build[@]}"
fi
if [ ${#missing[@]} -eq 0 ] && [ ${#build[@]} -eq 0 ]; then
  echo "system packages: all present"
fi
# The Debian package may start a system-wide broker on 1883; the stack uses its own port and
# does not depend on it.
