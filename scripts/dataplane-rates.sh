#!/usr/bin/env bash
# By-hand rate check of one data path in the namespace lab: ricochet-ping
# sends two seconds of packets at each interval given and prints sent,
# received, loss (forward/backward), the achieved rate and the reflector's
# residence time T3 - T2 (p50/p99, ns) and the round trip without it.
#
#   scripts/dataplane-rates.sh xdp-open|afxdp-auth|afxdp-enc|socket [INTERVAL...]
#
# Needs root and release binaries (cargo build --release; CARGO_TARGET_DIR
# is honoured). LAB (default "rates") names the lab; REFLECTOR_ARGS adds
# ricochet-reflector options (default "--cores 1"). The lab and everything
# started here are removed on exit.
set -euo pipefail
P=${1:?usage: $0 xdp-open|afxdp-auth|afxdp-enc|socket [INTERVAL...]}; shift
IVS=${*:-100us 50us 20us 10us 5us}
case $P in xdp-open|socket) mode=open;; afxdp-auth) mode=auth;; afxdp-enc) mode=enc;;
  *) echo "unknown path $P" >&2; exit 2;; esac
export LAB=${LAB:-rates}
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$HERE/target}/release
for b in ricochet-reflector ricochet-control ricochet-ping; do
  [ -x "$BIN/$b" ] || { echo "$BIN/$b missing: run cargo build --release" >&2; exit 2; }
done
D=$(mktemp -d /tmp/ricochet-rates.XXXXXX)
PINS_R=/sys/fs/bpf/$LAB-r PINS_S=/sys/fs/bpf/$LAB-s
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  bash "$HERE/scripts/lab.sh" down >/dev/null
  rm -rf "$PINS_R" "$PINS_S"
  # The reflector's exit report: XDP counters (drops by reason) and pollers.
  [ -s "$D/xdp.out" ] && grep -v ' 0$' "$D/xdp.out" | sed 's/^/# reflector: /'
  echo "logs and JSON reports: $D" >&2
}
trap cleanup EXIT
bash "$HERE/scripts/lab.sh" up >/dev/null
NS_S=--net=/run/netns/$LAB-s NS_R=--net=/run/netns/$LAB-r
in_s() { nsenter "$NS_S" "$@"; }
in_r() { nsenter "$NS_R" "$@"; }
# Daemons are started with nsenter itself (it execs the binary), never
# through a function: `f &` forks a subshell whose PID is not the daemon's.
wait_for() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout: $1" >&2; cat "$1" >&2; exit 1; }
printf 'lab\t%s\n' "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" > "$D/keys.pfs"; chmod 600 "$D/keys.pfs"
if [ "$P" = socket ]; then
  dp='data_plane = "socket"'
else
  nsenter "$NS_S" "$BIN/ricochet-reflector" --iface "${LAB}s" --pin-dir "$PINS_S" --no-pollers >"$D/pass.out" 2>"$D/pass.err" & pids+=($!)
  # shellcheck disable=SC2086
  nsenter "$NS_R" "$BIN/ricochet-reflector" --iface "${LAB}r" --pin-dir "$PINS_R" ${REFLECTOR_ARGS---cores 1} >"$D/xdp.out" 2>"$D/xdp.err" & pids+=($!)
  wait_for "$D/pass.err" "attached to"; wait_for "$D/xdp.err" "attached to"
  dp=$(printf 'data_plane = "bpf"\n[bpf]\npin_dir = "%s"\nregistry = "%s/sessions"' "$PINS_R" "$D")
fi
cat > "$D/control.toml" <<CFG
listen = ["0.0.0.0:862"]
log_level = "warn"
$dp
[security]
modes = ["unauthenticated", "authenticated", "encrypted"]
key_file = "$D/keys.pfs"
# No per-session reflection ceiling: the default (100 kpps, burst 1000)
# would be what is measured, not the path.
[rate_limit]
pps = 0
[metrics]
enabled = false
CFG
nsenter "$NS_R" "$BIN/ricochet-control" --config "$D/control.toml" >"$D/control.out" 2>"$D/control.err" & pids+=($!)
for _ in $(seq 200); do in_s bash -c 'exec 3<>/dev/tcp/198.18.0.2/862' 2>/dev/null && break; sleep 0.05; done
echo "# $P ($mode) load: $(cut -d' ' -f1-3 /proc/loadavg)"
for iv in $IVS; do
  ns=$(case $iv in *ns) echo "${iv%ns}";; *us) echo "$(( ${iv%us} * 1000 ))";; *ms) echo "$(( ${iv%ms} * 1000000 ))";; esac)
  count=$(( 2000000000 / ns ))
  out="$D/ping-$iv.json"
  in_s "$BIN/ricochet-ping" -u lab -k "$D/keys.pfs" -A "$mode" -c "$count" -i "$iv" --timeout 1s --json 198.18.0.2 >"$out" 2>"$D/ping-$iv.err" || true
  # Where losses happen: the reflector veth's receive queue drops (XDP ring
  # full) and XDP_TX errors, cumulative.
  drops=$(in_r ethtool -S "${LAB}r" | awk '/rx_queue_0_drops|xdp_tx_errors|xdp_drops/ {printf "%s%s", sep, $1 $2; sep=" "}')
  jq -r --arg iv "$iv" --arg drops "$drops" '.sessions[0] | "\($iv) sent=\(.summary.sent) received=\(.summary.received) lost=\(.summary.lost) (fwd \(.summary.lost_forward), bwd \(.summary.lost_backward)) pps=\(.sending.achieved_pps // .achieved_pps | floor) residence_p50=\(.summary.residence.p50_ns) p99=\(.summary.residence.p99_ns) rtt_p50=\(.summary.rtt.p50_ns) p99=\(.summary.rtt.p99_ns) veth_r: \($drops)"' "$out"
done
