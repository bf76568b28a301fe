#!/usr/bin/env bash
# Generates the Python modules (messages, type stubs, gRPC stubs) for every proto under
# flywheel/. Usage: generate.sh [OUTPUT_DIR]   (default: gen/python next to this script)
# The interpreter is $PYTHON (default: python); it must have grpcio-tools installed.
# The output folder is deleted and recreated, and files are compiled in a fixed (C-locale
# sorted) order, so two runs give byte-identical output. No __init__.py files are written:
# `flywheel` and its sub-packages are implicit namespace packages.
set -euo pipefail

proto_dir="$(cd "$(dirname "$0")" && pwd)"
out_dir="${1:-${proto_dir}/gen/python}"
python="${PYTHON:-python}"

if [[ -z "${out_dir}" || "${out_dir}" == "/" ]]; then
  echo "generate.sh: refusing to use '${out_dir}' as the output folder" >&2
  exit 2
fi

# Paths relative to proto_dir, so the descriptors record `flywheel/<area>/v1/<file>.proto`.
mapfile -t protos < <(cd "${proto_dir}" && find flywheel -name '*.proto' -type f | LC_ALL=C sort)
if [[ ${#protos[@]} -eq 0 ]]; then
  echo "generate.sh: no .proto files under ${proto_dir}/flywheel" >&2
  exit 1
fi

rm -rf "${out_dir}"
mkdir -p "${out_dir}"
out_dir="$(cd "${out_dir}" && pwd)"

# grpc_tools.protoc adds the include path of the well-known types (google/protobuf/*.proto).
(cd "${proto_dir}" && "${python}" -m grpc_tools.protoc \
  -I . \
  --python_out="${out_dir}" \
  --pyi_out="${out_dir}" \
  --grpc_python_out="${out_dir}" \
  "${protos[@]}")

# PEP 561 marker for each generated package, so type checkers read the .pyi stubs.
find "${out_dir}/flywheel" -type d -name 'v1' -exec touch {}/py.typed \;

echo "generated ${#protos[@]} proto files into ${out_dir}"
