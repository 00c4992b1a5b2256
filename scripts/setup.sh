#!/usr/bin/env bash
# Installs everything Ricochet needs on a fresh Debian 12 (bookworm) machine to
# build, test and run the lab demo. Idempotent and quiet: a second run changes
# nothing and prints one line. Run as root (it installs packages and mounts bpffs).
#
#   scripts/setup.sh            # everything: build, tests, demo
#   scripts/setup.sh --check    # only report what is missing, exit 1 if anything is
set -euo pipefail

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

# Build: clang-19 compiles the XDP program (BTF, -target bpf); libelf, zlib and
# pkg-config build the vendored libbpf that libbpf-rs links.
# Tests and lab: iproute2 (netns, veth), tcpdump/tshark (captures), ethtool
# (offload settings on veth), bpftool (inspecting pinned maps), util-linux (nsenter).
# IKEv2 interop: strongSwan's charon and swanctl (the ike crate's tests run one
# charon per lab namespace; kernel-libipsec comes with libcharon-extra-plugins),
# nftables for the NAT those tests put in front of one side.
APT_PACKAGES=(
  clang-19 llvm-19 libelf-dev zlib1g-dev pkg-config make gcc libc6-dev linux-libc-dev
  iproute2 iputils-ping tcpdump tshark ethtool bpftool util-linux procps jq fonts-dejavu-core
  strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins
  libstrongswan-standard-plugins nftables
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$check_only" = 1 ]; then
    echo "setup: missing packages: ${missing[*]}" >&2
    exit 1
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "setup: packages missing (${missing[*]}); run this script as root" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer no without a prompt.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust components used by `make test` (formatting and lints).
if command -v rustup >/dev/null 2>&1; then
  installed=$(rustup component list --installed 2>/dev/null || true)
  for c in rustfmt clippy; do
    if ! grep -q "^$c" <<<"$installed"; then
      [ "$check_only" = 1 ] && { echo "setup: missing rustup component $c" >&2; exit 1; }
      rustup component add "$c" >/dev/null
    fi
  done
elif ! command -v cargo >/dev/null 2>&1; then
  echo "setup: no Rust toolchain found; install rustup (https://rustup.rs) and rerun" >&2
  exit 1
fi

# bpffs: pinned maps live under /sys/fs/bpf/ricochet*.
if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
  [ "$check_only" = 1 ] && { echo "setup: /sys/fs/bpf is not mounted" >&2; exit 1; }
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi

echo "setup: ok"
