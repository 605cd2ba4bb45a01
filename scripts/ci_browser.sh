#!/bin/sh
# Install Debian's Chromium and its chromedriver for the real-browser tests
# (goldleaves/tests/test_browser.py, marker "browser"), if missing. Selenium drives the
# system browser through the system driver: no browser build is downloaded.
# Needs root or passwordless sudo.
set -eu
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "chromium: $(chromium --version 2>/dev/null | head -1), $(chromedriver --version | head -1) already installed"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
echo "chromium installed: $(chromium --version 2>/dev/null | head -1), $(chromedriver --version | head -1)"
