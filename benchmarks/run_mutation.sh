#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the core modules against the fast tests, on a private clone so the
# working tree is never mutated. Report and triage: benchmarks/results/mutation.md.
#
#   pip install -c .ci/constraints.txt mutmut==3.8.1        # into the project's venv (never a runtime dep)
#   benchmarks/run_mutation.sh [WORKDIR] [CAP_SECONDS_PER_GROUP]
#
# One group of functions at a time, each under a wall-clock cap (a group stopped by its cap keeps the
# results it has); pin it to one core on a shared machine: taskset -c 1 benchmarks/run_mutation.sh
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d)/mut}"
CAP="${2:-540}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
CHILDREN="${CHILDREN:-1}"
[ -d "$WORK" ] || git clone -q "$REPO" "$WORK"
cd "$WORK"
grep -q '^\[tool.mutmut\]' pyproject.toml || cat >> pyproject.toml <<'EOF'

[tool.mutmut]
source_paths = ["src/"]
only_mutate = ["src/napari_vdir/core/request.py", "src/napari_vdir/core/layout.py", "src/napari_vdir/core/intensity.py", "src/napari_vdir/core/inference.py", "src/napari_vdir/core/weights.py", "src/napari_vdir/cli.py", "src/napari_vdir/core/lazy.py"]
also_copy = ["models/", "README.md", "benchmarks/", "training/", "examples/"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xvfb", "-o", "addopts=", "-q", "-m", "not slow and not gui"]
pytest_add_cli_args_test_selection = ["tests/core/test_restore_values.py", "tests/cli/test_cli_values.py", "tests/core/test_restore.py", "tests/core/test_weights_format.py", "tests/cli/test_cli.py", "tests/core/test_restore_dask.py", "tests/core/test_shipped_models.py", "-k", "not paper_size and not distributed and not readme and not python_dash_m"]
timeout_multiplier = 3.0
EOF
run() {
  echo "=== $(date +%T) $*"
  OMP_NUM_THREADS=1 PYTHONPATH=src timeout -s INT -k 20 "$CAP" "$PYTHON" -m mutmut run --max-children "$CHILDREN" "$@" >/dev/null 2>&1 || true
}
run "napari_vdir.core.inference.xǁPlaneRestorerǁrestore_plane*" "napari_vdir.core.inference.x_tile_margin*" \
    "napari_vdir.core.inference.x__forward*" "napari_vdir.core.inference.x__inverse*" "napari_vdir.core.inference.x_plan_tiles*"
run "napari_vdir.core.intensity.xǁIntensityǁ*" "napari_vdir.core.layout.xǁLayoutǁ*" "napari_vdir.core.layout.x_check_image*" \
    "napari_vdir.core.request.x__steer_degradation*" "napari_vdir.core.intensity.x_resolve_range*"
run "napari_vdir.core.weights.x_check_tensors*" "napari_vdir.core.weights.x_load_weights*" "napari_vdir.core.weights.xǁModelInfoǁfrom_metadata*"
run "napari_vdir.cli.x_plan_outputs*" "napari_vdir.cli.x_cmd_restore*"
run "napari_vdir.core.lazy.x_spatial_chunks*" "napari_vdir.core.lazy.x_restore_dask*"
echo "=== results (killed mutants are not listed; 'not checked' = not reached within the caps)"
"$PYTHON" -m mutmut results --all true 2>/dev/null | awk -F': ' '/napari_vdir/ {split($1, a, "."); n[a[2] " " $NF]++} END {for (k in n) print n[k], k}' | sort -k2
