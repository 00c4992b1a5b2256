#!/usr/bin/env bash
# The main job: the namespace-lab demo. Until the control server and the
# client land (issue 3), it proves what exists: the protocol library decodes
# and verifies real perfSONAR sessions in every security mode.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== Ricochet demo: protocol library against real perfSONAR traffic"
cargo test -q --release -p ricochet-protocol --test perfsonar_interop -- --nocapture
