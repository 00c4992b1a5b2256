#!/usr/bin/env bash
# The main job (`make demo`): the namespace lab with ricochet-control and its
# socket data plane in the reflector namespace, and ricochet-ping running
# every security mode and extension from the sender namespace, IPv4 and IPv6.
# Prints a results table; the lab and every process it started are removed
# on exit, also on failure.
#
#   scripts/demo.sh              # after `cargo build --release` (make demo does it)
#   COUNT=1000 INTERVAL=100us scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release}
COUNT=${COUNT:-200}
INTERVAL=${INTERVAL:-1ms}
export LAB=${LAB:-rdemo}
NS_S="${LAB}-s" NS_R="${LAB}-r"

for b in ricochet-control ricochet-ping; do
  [ -x "$BIN/$b" ] || { echo "demo: $BIN/$b missing: run 'cargo build --release' (make demo does)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces)" >&2; exit 1; }

work=$(mktemp -d)
ctl_pid=""
cleanup() {
  [ -n "$ctl_pid" ] && kill "$ctl_pid" 2>/dev/null && wait "$ctl_pid" 2>/dev/null || true
  bash scripts/lab.sh down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

bash scripts/lab.sh up
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }

# A fresh shared secret for the demo identity, in a perfSONAR key file (0600).
secret=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
umask 077
printf 'demo\t%s\n' "$secret" > "$work/keys.pfs"
cat > "$work/control.toml" <<TOML
listen = ["[::]:862", "0.0.0.0:862"]
v6only = true
test_ports = "18760-18999"
log_level = "warn"
data_plane = "socket"

[security]
modes = ["unauthenticated", "authenticated", "encrypted", "mixed",
         "individual-session-control", "reflect-octets", "symmetrical-size",
         "dscp-ecn", "ptpv2"]
key_file = "$work/keys.pfs"

[metrics]
listen = "127.0.0.1:9862"
TOML

in_ns "$NS_R" "$BIN/ricochet-control" --config "$work/control.toml" >"$work/control.log" 2>&1 &
ctl_pid=$!
# Bounded wait for the listener (at most 10 s).
for _ in $(seq 100); do
  if in_ns "$NS_S" bash -c 'exec 3<>/dev/tcp/198.18.0.2/862' 2>/dev/null; then break; fi
  kill -0 "$ctl_pid" 2>/dev/null || { cat "$work/control.log" >&2; exit 1; }
  sleep 0.1
done

printf '\n%-34s %-5s %7s %7s %7s %10s %10s %10s %12s\n' \
  "run" "ip" "sent" "recv" "loss" "rtt p50" "rtt p99" "resid p50" "reply DSCP"
fail=0
run() { # name family args...
  local name=$1 fam=$2; shift 2
  local host=198.18.0.2; [ "$fam" = 6 ] && host='[2001:2::2]'
  if ! in_ns "$NS_S" "$BIN/ricochet-ping" -c "$COUNT" -i "$INTERVAL" -u demo -k "$work/keys.pfs" \
       --json "$@" "$host" > "$work/out.json" 2>"$work/err.txt"; then
    echo "demo: '$name' IPv$fam failed:" >&2; cat "$work/err.txt" >&2; fail=1
  fi
  jq -r --arg n "$name" --arg f "v$fam" '
    .sessions[] as $s | [$n, $f, $s.summary.sent, $s.summary.received,
      ($s.summary.loss_ratio * 100 | tostring | .[0:5] + "%"),
      (($s.summary.rtt.p50_ns / 1000 | tostring | .[0:6]) + "us"),
      (($s.summary.rtt.p99_ns / 1000 | tostring | .[0:6]) + "us"),
      (($s.summary.residence.p50_ns / 1000 | tostring | .[0:6]) + "us"),
      ([$s.backward_tos[] | (.[0] / 4 | floor | tostring)] | join(","))]
    | @tsv' "$work/out.json" 2>/dev/null |
  while IFS=$'\t' read -r n f a b c d e g h; do
    printf '%-34s %-5s %7s %7s %7s %10s %10s %10s %12s\n' "$n" "$f" "$a" "$b" "$c" "$d" "$e" "$g" "$h"
  done
}

for fam in 4 6; do
  run "open (mode 1)" $fam -A open
  run "authenticated (mode 2)" $fam -A auth
  run "encrypted (mode 4)" $fam -A enc
  run "mixed (mode 8, RFC 5618)" $fam -A mixed
done
run "enc + 3 sessions + ISC (RFC 5938)" 4 -A enc --sessions 3 --isc
run "auth + reflect octets + symmetrical" 4 -A auth --reflect-octets 8 --symmetrical
run "open + DSCP EF + DSCP/ECN (RFC 7750)" 4 -A open -D EF --dscp-ecn
run "enc + PTP timestamps (RFC 8186)" 6 -A enc --ptp

echo
echo "control-plane metrics (sessions by mode):"
in_ns "$NS_R" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9862; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' \
  | grep -E '^ricochet_control_sessions' | grep -v '^#' | head -20 || true
[ "$fail" = 0 ] || { echo "demo: some runs failed; control log:" >&2; cat "$work/control.log" >&2; exit 1; }
echo "demo: every mode reflected"
