#!/bin/sh
# Install PgBouncer for the live leak test (tenancy/tests/test_live_leaks.py), if missing.
# The test starts and stops its own pgbouncer with its own config in a temp dir; this only
# installs the binary (Debian/Ubuntu package "pgbouncer"). Needs root or passwordless sudo.
set -eu
if command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; then
    echo "pgbouncer: $( (command -v pgbouncer || echo /usr/sbin/pgbouncer) ) already installed"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq pgbouncer
# The Debian package starts a system pgbouncer on 6432; the test does not need it.
$SUDO systemctl disable --now pgbouncer >/dev/null 2>&1 || $SUDO service pgbouncer stop >/dev/null 2>&1 || true
echo "pgbouncer installed: $(/usr/sbin/pgbouncer --version | head -1)"
