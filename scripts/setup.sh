#!/usr/bin/env bash
# Installs what Cocoon needs on a Debian host (only what is missing), then the npm packages, then
# builds the guest agent, kernel, initramfs and root filesystem images (cached after the first run).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(qemu-system-x86 qemu-utils linux-image-amd64 busybox-static e2fsprogs mmdebstrap
          musl-tools gcc make libc6-dev zstd xz-utils socat iproute2 nftables openssl)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "==> npm ci"
  npm ci --no-audit --no-fund
fi

echo "==> building guest artifacts (agent, kernel, initramfs, root filesystems)"
npm run --silent build:guest -- "$@"
