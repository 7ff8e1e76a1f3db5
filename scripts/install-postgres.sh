#!/bin/sh
# Make sure PostgreSQL's server binaries are installed for the tests, which start their own
# throwaway server (initdb + pg_ctl in a temp dir, as the postgres user when run as root).
# Debian's `postgresql` package, as root with apt. It also creates a system cluster, which
# nothing here starts or uses.
set -e
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "postgresql: $(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"; exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "installing Debian's postgresql package"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && exit 0
fi
echo "PostgreSQL's server binaries are missing: install your system's postgresql package" \
     "(the tests look in /usr/lib/postgresql/<version>/bin)" >&2
exit 1
