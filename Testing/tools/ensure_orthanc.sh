#!/usr/bin/env bash
# Install Orthanc (Debian package "orthanc") for the PACS integration tests (Testing/node) when it is missing and
# this machine allows it: root with apt-get, as on CI. Idempotent. The package's own service is neither started
# (policy-rc.d during the install) nor enabled: the tests start Orthanc themselves, on loopback, with a generated
# configuration. Where Orthanc cannot be had, this prints one line and the tests use pynetdicom's storage SCP.
set -u

if command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "Orthanc not installed and apt-get as root not available: the PACS tests run against pynetdicom's storage SCP"
  exit 0
fi

log=$(mktemp)
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q orthanc >"$log" 2>&1; then
  apt-get update -q >>"$log" 2>&1 && apt-get install -y -q orthanc >>"$log" 2>&1
fi
[ "$created_policy" = 1 ] && rm -f "$policy"
if command -v systemctl >/dev/null 2>&1; then systemctl disable orthanc >/dev/null 2>&1 || true; fi
if command -v update-rc.d >/dev/null 2>&1; then update-rc.d orthanc disable >/dev/null 2>&1 || true; fi

if [ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null 2>&1; then
  echo "installed Orthanc ($(/usr/sbin/Orthanc --version 2>/dev/null | head -n 1)) for the PACS tests; its service is not enabled"
else
  echo "could not install Orthanc ($(tail -n 1 "$log")): the PACS tests run against pynetdicom's storage SCP"
fi
rm -f "$log"
exit 0
