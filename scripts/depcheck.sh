#!/usr/bin/env bash
# depcheck.sh: the import directions of STYLE.md §1, checked on what each
# package imports (with everything below it; tests not included). Every
# arrow points at the domain: gateway imports no layer of ours and no
# driver; client only gateway; backends never dicomweb, dicomweb never a
# backend. Run by make lint, hence by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
mod=$(go list -m)
drivers='github.com/gin-gonic|github.com/minio|github.com/redis|go.etcd.io/bbolt'
status=0

# forbid PACKAGES PATTERN WHY: fails when PACKAGES import a package whose
# path matches PATTERN.
forbid() {
  local pkgs=$1 pattern=$2 why=$3 bad
  bad=$(go list -deps $pkgs | grep -E "$pattern" || true)
  if [ -n "$bad" ]; then
    echo "depcheck: $pkgs must not import $why, but imports:"
    echo "$bad" | sed 's/^/  /'
    status=1
  fi
}

forbid ./gateway "$drivers|^$mod/(dicomweb|storage|client|cmd|internal)" "a driver or another package of ours (the domain imports nothing of ours)"
forbid ./client "$drivers|^$mod/(dicomweb|storage|cmd|internal)" "a driver or a layer (every layer imports the client)"
forbid ./storage/... "^$mod/(dicomweb|client|cmd)" "the HTTP layer or the client (backends serve the domain)"
forbid ./dicomweb "github.com/minio|github.com/redis|go.etcd.io/bbolt|^$mod/(storage|cmd)" "a storage driver or backend (dicomweb sees the domain's interfaces)"
forbid ./fhir "github.com/minio|github.com/redis|go.etcd.io/bbolt|^$mod/(dicomweb|storage|client|cmd|internal)" "a storage driver or another layer (the FHIR facade sees the domain and the codec; cmd mounts it)"
forbid ./dimse "$drivers|^$mod/(dicomweb|storage|client|cmd|internal)" "a driver or another layer (DIMSE, like DICOMweb, sees the domain and the codec only)"
# The codec is a leaf: the standard library, the DICOM parser and its
# character sets, nothing else (an allow list, so a new dependency is a
# decision, not an accident).
bad=$(go list -deps -f '{{if not .Standard}}{{.ImportPath}}{{end}}' ./dicomcodec |
  grep -vE "^($mod/dicomcodec(/.*)?|github.com/suyashkumar/dicom(/.*)?|golang.org/x/text(/.*)?)\$" || true)
if [ -n "$bad" ]; then
  echo "depcheck: ./dicomcodec imports only the standard library, suyashkumar/dicom and golang.org/x/text, but imports:"
  echo "$bad" | sed 's/^/  /'
  status=1
fi
[ "$status" -eq 0 ] && echo "depcheck: import directions hold"
exit "$status"
