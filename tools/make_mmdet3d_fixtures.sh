#!/usr/bin/env bash
# Regenerate the committed OpenMMLab parity fixtures (test/fixtures/mmdet3d/) with the REAL
# mmdet3d 1.4 / mmdet 3.3 forward: centerpoint_pillar_tiny.pt (mmdet3d CenterPoint-pillar) and
# maskrcnn_tiny.pt (mmdet Mask R-CNN, mmdet3d's nuImages base config). One command:
#
#   bash tools/make_mmdet3d_fixtures.sh            # build the side venv (stamped), write fixtures
#   bash tools/make_mmdet3d_fixtures.sh --venv-only  # only build / check the side venv
#
# The side venv is outside the repo (X3KD_MMDET3D_VENV, default <repo>/../mmdet3d_venv) because it
# is ~6 GB and never a dependency of x3kd itself: CI reads the committed fixtures without it.
# What it takes (measured facts in ../shared/ENVIRONMENT.md): mmcv 2.1.0 has no wheel for this
# torch, so it compiles from source (CPU ops only, ~12 min on 2 idle cores) and needs
# "setuptools<81" + wheel + ninja installed first and --no-build-isolation (its setup.py imports
# torch). mmdet3d is installed --no-deps with the runtime packages its model code imports, which
# leaves out open3d / lyft / waymo tooling that only its dataset converters and visualiser use.
#
# Environment knobs:
#   X3KD_MMDET3D_VENV   side venv location (default <repo>/../mmdet3d_venv)
#   X3KD_PYTHON         interpreter that creates it (default python3; must be 3.11 like the main venv)
#   MAX_JOBS            parallel compile jobs for mmcv's ops (default: number of cores)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${X3KD_MMDET3D_VENV:-$(cd "$REPO/.." && pwd)/mmdet3d_venv}"
PY="$VENV/bin/python"
OUT="$REPO/test/fixtures/mmdet3d"
STAMP="$VENV/.x3kd-mmdet3d-venv.ok"
# Pinned on purpose: the fixtures record what THIS mmdet3d / mmdet computes, and the torch pair is
# the one the main venv uses, so the comparison in CI is against the same numerics.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
# Held through every pip call: mmcv 2.1's setup.py imports pkg_resources (gone from setuptools 81),
# and the OpenMMLab packages of this era are built against numpy 1.x (opencv >= 4.12 wants numpy 2).
HOLD=("setuptools<81" "numpy<2" "opencv-python<4.12")
MM_PINS=("mmengine>=0.10,<0.11" mmcv==2.1.0 mmdet==3.3.0 mmdet3d==1.4.0)

export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
log() { printf '[mmdet3d-fixtures %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

build_venv() {
  if [ -f "$STAMP" ] && "$PY" -c "import mmdet3d, mmdet, mmcv.ops" 2>/dev/null; then
    log "side venv $VENV is built (stamp present), skipping"
    return
  fi
  local t0=$SECONDS
  [ -x "$PY" ] || { log "creating $VENV"; "${X3KD_PYTHON:-python3}" -m venv "$VENV"; }
  log "pip: build tools + torch"
  "$PY" -m pip install -q "${HOLD[@]}" wheel ninja
  "$PY" -m pip install -q "${HOLD[@]}" "${TORCH_PINS[@]}"
  "$PY" -m pip install -q "${HOLD[@]}" "${MM_PINS[0]}"
  log "pip: mmcv 2.1.0 from source (MAX_JOBS=$MAX_JOBS; the long step)"
  local t1=$SECONDS
  # mmcv 2.1's setup.py hard-codes -std=c++17 for its CPU ops, but torch 2.14's headers refuse
  # anything below C++20 ("#error C++20 or later compatible compiler is required to use ATen"),
  # so the sdist is unpacked and that one flag raised; nothing else in mmcv changes.
  # The unpacked tree is kept: pip builds a local folder in place, so an interrupted compile
  # resumes from the objects already built (ninja) when this script runs again.
  local src="$VENV/src"
  if [ ! -f "$src/mmcv-2.1.0/.x3kd-patched" ]; then
    rm -rf "$src" && mkdir -p "$src"
    "$PY" -m pip download -q --no-deps --no-binary :all: "${MM_PINS[1]}" -d "$src"
    tar xzf "$src"/mmcv-2.1.0.tar.gz -C "$src"
    sed -i "s/'-std=c++17'/'-std=c++20'/g" "$src/mmcv-2.1.0/setup.py"
    touch "$src/mmcv-2.1.0/.x3kd-patched"
  else
    log "resuming the mmcv build in $src/mmcv-2.1.0"
  fi
  "$PY" -m pip install -v --no-build-isolation "${HOLD[@]}" "$src/mmcv-2.1.0"
  log "mmcv built in $((SECONDS - t1)) s"
  # mmdet / mmdet3d without their dependency lists (which would pull open3d and re-resolve mmcv);
  # these are the packages their model, structure and visualisation imports need.
  "$PY" -m pip install -q --no-deps "${MM_PINS[2]}" "${MM_PINS[3]}"
  "$PY" -m pip install -q "${HOLD[@]}" pycocotools shapely scipy terminaltables numba nuscenes-devkit \
    plyfile trimesh networkx scikit-image matplotlib six
  "$PY" -c "import mmcv.ops, mmdet, mmdet3d; print('mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'mmdet3d', mmdet3d.__version__)"
  touch "$STAMP"
  log "side venv ready in $((SECONDS - t0)) s"
}

build_venv
if [ "${1:-}" = "--venv-only" ]; then exit 0; fi

t0=$SECONDS
mkdir -p "$OUT"
# The fixture writer imports only mmdet3d / mmdet / torch: x3kd is not installed in the side venv,
# so the fixtures cannot be shaped by the code they are meant to check.
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "$PY" "$REPO/tools/mmdet3d_fixtures.py" --out "$OUT"
log "fixtures written to ${OUT#"$REPO"/} in $((SECONDS - t0)) s"
du -sh "$OUT" >&2
