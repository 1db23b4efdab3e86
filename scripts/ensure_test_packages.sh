#!/usr/bin/env bash
# Install the Debian packages the test suite needs, when they are missing.
#
#   openssh-server  /usr/sbin/sshd: tests/conftest.py's `sshd` fixture starts a private one
#   acl             setfacl: lets that fixture's throwaway user reach a Python under /root
#   chromium        /usr/bin/chromium: the dashboard's end-to-end tests drive it with Playwright
#                   (never `playwright install`); fonts-dejavu-core gives its pages real glyphs
#
# When everything is present this does nothing (no root, no network needed). Otherwise it
# runs, as root, `apt-get update` once and `apt-get install --no-install-recommends`. No
# system sshd service is started or enabled: a policy-rc.d that forbids service starts is in
# place during the install, the ssh service is disabled afterwards, and a system sshd that
# was started anyway is stopped.
set -euo pipefail

PACKAGES=(openssh-server acl chromium fonts-dejavu-core)

installed() {
  local status
  status="$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)"
  [[ "$status" == "install ok installed" ]]
}

missing=()
for package in "${PACKAGES[@]}"; do
  if ! installed "$package"; then
    missing+=("$package")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing packages (${missing[*]}) and no apt-get to install them" >&2
  exit 1
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "error: missing packages (${missing[*]}); run this script as root to install them:" >&2
  echo "  sudo $0" >&2
  exit 1
fi

# The pid of a system sshd (one we did not start), if any is running.
system_sshd_pids() {
  local pid exe
  for pid in /proc/[0-9]*; do
    pid="${pid#/proc/}"
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    [[ "$exe" == /usr/sbin/sshd ]] || continue
    # A system daemon: its parent is init (or it wrote the system pid file).
    if [[ "$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || true)" == 1 ]] ||
      [[ -r /run/sshd.pid && "$(cat /run/sshd.pid 2>/dev/null || true)" == "$pid" ]]; then
      echo "$pid"
    fi
  done
}
before="$(system_sshd_pids | tr '\n' ' ')"

# Forbid service starts from maintainer scripts for the length of the install.
policy=/usr/sbin/policy-rc.d
backup=""
if [[ -e "$policy" ]]; then
  backup="$(mktemp /usr/sbin/policy-rc.d.ensure-test-packages.XXXXXX)"
  cp -p "$policy" "$backup"
fi
restore_policy() {
  if [[ -n "$backup" ]]; then
    mv -f "$backup" "$policy"
  else
    rm -f "$policy"
  fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# written by %s for the length of an install\nexit 101\n' "$0" >"$policy"
chmod 0755 "$policy"

export DEBIAN_FRONTEND=noninteractive
echo "installing ${missing[*]} (test dependencies)" >&2
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2

restore_policy
trap - EXIT

# Not enabled at boot either (sysvinit links, systemd units).
if installed openssh-server; then
  update-rc.d ssh disable >/dev/null 2>&1 || true
  if command -v deb-systemd-helper >/dev/null 2>&1; then
    deb-systemd-helper disable ssh.service ssh.socket >/dev/null 2>&1 || true
  fi
fi

# A system sshd that appeared during the install: stop exactly that daemon.
for pid in $(system_sshd_pids); do
  case " $before " in
    *" $pid "*) continue ;;
  esac
  echo "stopping the system sshd (pid $pid) the package started" >&2
  kill "$pid" 2>/dev/null || true
done

for package in "${missing[@]}"; do
  if ! installed "$package"; then
    echo "error: $package did not install" >&2
    exit 1
  fi
done
echo "installed ${missing[*]}" >&2
