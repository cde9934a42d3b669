#!/usr/bin/env bash
# bench.sh [FLAGS]: builds bin/gateway, then runs cmd/bench through
# scripts/testenv.sh (fresh Redis + MinIO on loopback), which measures the
# gateway (embedded default, and on Redis + MinIO) side by side with Orthanc
# and its DICOMweb plugin on the same synthetic data, and prints one markdown
# table per part with gateway/orthanc ratios. FLAGS go to cmd/bench, e.g.
#   scripts/bench.sh -small                 # 1–2 minutes
#   scripts/bench.sh -out bench.md          # about 20 minutes
# go run ./cmd/bench -h lists them all.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
ORTHANC=${ORTHANC:-/usr/sbin/Orthanc}
if [ ! -x "$ORTHANC" ] || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
  echo "bench: Orthanc with its DICOMweb plugin is needed: apt-get install orthanc orthanc-dicomweb" >&2
  exit 1
fi
"$GO" build -o bin/gateway ./cmd/gateway
scripts/testenv.sh "$GO" run ./cmd/bench -gateway bin/gateway -orthanc "$ORTHANC" "$@"
