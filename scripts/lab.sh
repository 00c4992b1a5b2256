#!/usr/bin/env bash
# The namespace lab: two network namespaces joined by a veth pair.
#
#   scripts/lab.sh up      # create (idempotent)
#   scripts/lab.sh down    # delete everything it created
#   scripts/lab.sh status  # show addresses
#   scripts/lab.sh env     # print the lab's variables (for `eval`)
#
# Addresses come only from the benchmarking ranges: 198.18.0.0/15 and
# 2001:2::/48 (RFC 2544 / RFC 5180). Nothing is routed outside the pair.
#
#   sender side   ns ${LAB}-s  veth ${LAB}s  198.18.0.1/24  2001:2::1/64
#   reflector     ns ${LAB}-r  veth ${LAB}r  198.18.0.2/24  2001:2::2/64
#
# LAB (default "rcl") names the namespaces and interfaces, so several labs
# (one per test) can coexist; keep it at most 8 characters. Enter a namespace
# with `nsenter --net=/run/netns/NAME` rather than `ip netns exec`, which
# remounts /sys and hides bpffs.
set -euo pipefail

LAB=${LAB:-rcl}
NS_S="${LAB}-s"
NS_R="${LAB}-r"
IF_S="${LAB}s"
IF_R="${LAB}r"
V4_S=198.18.0.1
V4_R=198.18.0.2
V6_S=2001:2::1
V6_R=2001:2::2

[ "${#LAB}" -le 8 ] || { echo "lab: LAB must be at most 8 characters" >&2; exit 2; }

in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }

up() {
  if ip netns list | grep -qw "$NS_S" && ip netns list | grep -qw "$NS_R"; then
    return 0
  fi
  down >/dev/null 2>&1 || true
  ip netns add "$NS_S"
  ip netns add "$NS_R"
  ip link add "$IF_S" netns "$NS_S" type veth peer name "$IF_R" netns "$NS_R"
  for side in S R; do
    local ns if v4 v6
    if [ $side = S ]; then ns=$NS_S if=$IF_S v4=$V4_S v6=$V6_S; else ns=$NS_R if=$IF_R v4=$V4_R v6=$V6_R; fi
    in_ns "$ns" ip link set lo up
    in_ns "$ns" ip addr add "$v4/24" dev "$if"
    in_ns "$ns" ip -6 addr add "$v6/64" dev "$if" nodad
    # Locally generated packets cross a veth with their checksum not yet
    # filled in (TX offload); XDP programs see them before any NIC would
    # fill it. Compute checksums in software so the lab looks like a wire.
    in_ns "$ns" ethtool -K "$if" tx off >/dev/null
    in_ns "$ns" ip link set "$if" up
  done
}

down() {
  ip netns del "$NS_S" 2>/dev/null || true
  ip netns del "$NS_R" 2>/dev/null || true
}

case "${1:-}" in
  up) up; echo "lab $LAB up: $NS_S ($V4_S, $V6_S) <-> $NS_R ($V4_R, $V6_R)" ;;
  down) down; echo "lab $LAB down" ;;
  status)
    for ns in "$NS_S" "$NS_R"; do echo "== $ns"; in_ns "$ns" ip -br addr 2>/dev/null || echo "(absent)"; done ;;
  env)
    cat <<VARS
LAB=$LAB NS_S=$NS_S NS_R=$NS_R IF_S=$IF_S IF_R=$IF_R V4_S=$V4_S V4_R=$V4_R V6_S=$V6_S V6_R=$V6_R
VARS
    ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
