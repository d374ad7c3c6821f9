#!/usr/bin/env bash
# One idempotent set-up step for x3kd on a fresh machine (Debian 12, python3.11, no ROS install):
#   1. <repo>/.venv            created with `python3 -m venv` if missing
#   2. tools/requirements.txt  pip-installed, skipped while a stamp holding its hash is current
#   3. vision_msgs, tf2_msgs   built from interfaces/<pkg> with plain cmake into the venv,
#                              only when the venv cannot import it (or our own build is stale)
#   4. this repo               `pip install -e . --no-deps`, skipped while current
# A second run with nothing changed takes seconds. Safe under CI=true (never prompts).
#
# Environment knobs:
#   X3KD_VENV      venv location (default <repo>/.venv)
#   X3KD_PYTHON    interpreter used to create the venv (default python3)
#   X3KD_JOBS      parallel compile jobs for vision_msgs (default: number of cores)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${X3KD_VENV:-$REPO/.venv}"
PY="$VENV/bin/python"
REQ="$REPO/tools/requirements.txt"
JOBS="${X3KD_JOBS:-$(nproc)}"
# Stamps live inside the venv: a new venv starts with none, so it is always filled.
PIP_STAMP="$VENV/.x3kd-requirements.sha256"
REPO_STAMP="$VENV/.x3kd-editable.sha256"

export PIP_NO_INPUT=1
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_PROGRESS_BAR=off

log() { printf '[setup %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Hash of file contents (and of extra strings) so a stamp changes exactly when its inputs do.
content_hash() {
  local f
  for f in "$@"; do
    if [ -f "$f" ]; then echo "== ${f#"$REPO"/}"; cat "$f"; fi
  done | sha256sum | cut -d' ' -f1
}

# ---------------------------------------------------------------- 1. venv
if [ ! -x "$PY" ]; then
  log "creating venv at $VENV"
  "${X3KD_PYTHON:-python3}" -m venv "$VENV"
fi
py_version="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$py_version" = "3.11" ] || log "warning: venv python is $py_version; the ROS 2 wheels are built for 3.11"

# ---------------------------------------------------------------- 2. pip requirements
want="$( (content_hash "$REQ"; echo "$py_version") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$PIP_STAMP" 2>/dev/null || true)" = "$want" ]; then
  log "requirements unchanged (stamp current), skipping pip"
else
  log "pip install -r tools/requirements.txt (first time: a few minutes)"
  t0=$SECONDS
  "$PY" -m pip install -r "$REQ"
  echo "$want" > "$PIP_STAMP"
  log "pip done in $((SECONDS - t0)) s"
fi

# ---------------------------------------------------------------- 3. interface packages
# vision_msgs and tf2_msgs have no PyPI wheel: each is built from interfaces/<pkg> when the venv
# cannot load it. Loading the type support (not just the Python module) proves the compiled
# libraries are there.
interface_importable() {  # $1 = "pkg.msg:Type"
  "$PY" - "$1" <<'EOF' 2>/dev/null
import importlib, sys
module, name = sys.argv[1].split(":")
from rclpy.type_support import check_for_type_support
check_for_type_support(getattr(importlib.import_module(module), name))
EOF
}

# The ROS wheels export CMake files that still name the Python of the machine that built them
# (/opt/python/cp311-cp311/...); CMake refuses to configure against non-existent include dirs,
# so point them at this venv's Python and numpy headers. Idempotent: patched files no longer match.
patch_wheel_cmake_paths() {
  "$PY" - "$VENV" <<'EOF'
import pathlib, re, sys, sysconfig
import numpy
venv = pathlib.Path(sys.argv[1])
py_inc = sysconfig.get_paths()["include"]
np_inc = numpy.get_include()
if not pathlib.Path(py_inc, "Python.h").is_file():
    sys.exit(f"Python headers missing at {py_inc} (on Debian: apt-get install python3.11-dev)")
numpy_re = re.compile(r"/opt/python/cp311-cp311/lib/python3\.11/site-packages/numpy/(?:_core|core)/include")
python_re = re.compile(r"/opt/python/cp311-cp311/include/python3\.11")
patched = 0
for path in (venv / "share").rglob("*.cmake"):
    text = path.read_text()
    if "/opt/python/cp311-cp311" not in text:
        continue
    new = python_re.sub(py_inc, numpy_re.sub(np_inc, text))
    if "/opt/python/cp311-cp311" in new:
        sys.exit(f"{path}: unexpected wheel-build path left after patching")
    path.write_text(new)
    patched += 1
print(patched)
EOF
}

build_interface() {  # $1 = package name under interfaces/
  local pkg="$1" src="$REPO/interfaces/$1" bld="$REPO/build/$1" n
  n="$(patch_wheel_cmake_paths)"
  log "patched wheel-build paths in $n exported .cmake files"
  log "building $pkg (cmake, $JOBS jobs; about a minute)"
  local t0=$SECONDS
  # A stale cache from another venv location would point CMake at the wrong prefix.
  rm -rf "$bld"
  # PATH: generator scripts call `python3`/`rosidl` and must get the venv's.
  AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" cmake -S "$src" -B "$bld" \
    -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release > "$bld.configure.log" 2>&1 \
    || { tail -40 "$bld.configure.log" >&2; die "cmake configure of $pkg failed (log: $bld.configure.log)"; }
  AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH" cmake --build "$bld" -j"$JOBS" > "$bld.build.log" 2>&1 \
    || { tail -40 "$bld.build.log" >&2; die "cmake build of $pkg failed (log: $bld.build.log)"; }
  AMENT_PREFIX_PATH="$VENV" cmake --install "$bld" > "$bld.install.log" 2>&1 \
    || { tail -40 "$bld.install.log" >&2; die "cmake install of $pkg failed (log: $bld.install.log)"; }
  log "$pkg built and installed in $((SECONDS - t0)) s"
}

mkdir -p "$REPO/build"
for spec in "vision_msgs:vision_msgs.msg:Detection3DArray" "tf2_msgs:tf2_msgs.msg:TFMessage"; do
  pkg="${spec%%:*}"
  probe="${spec#*:}"
  src="$REPO/interfaces/$pkg"
  stamp="$VENV/.x3kd-$pkg.sha256"
  msg_hash="$(content_hash "$src/CMakeLists.txt" "$src/package.xml" "$src"/msg/*.msg)"
  if ! interface_importable "$probe"; then
    build_interface "$pkg"
    interface_importable "$probe" || die "$pkg still not importable after the build"
    echo "$msg_hash" > "$stamp"
  elif [ -f "$stamp" ] && [ "$(cat "$stamp")" != "$msg_hash" ]; then
    # Only our own build carries a stamp; a package from a real ROS 2 install is left alone.
    log "interfaces/$pkg changed since it was built, rebuilding"
    build_interface "$pkg"
    echo "$msg_hash" > "$stamp"
  else
    log "$pkg importable, nothing to build"
  fi
done

# ---------------------------------------------------------------- 4. this repo, editable
repo_hash="$( (content_hash "$REPO/setup.py" "$REPO/setup.cfg" "$REPO/package.xml"; echo "$REPO") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$REPO_STAMP" 2>/dev/null || true)" = "$repo_hash" ] \
   && "$PY" -c 'import x3kd_core, x3kd_ros' 2>/dev/null; then
  log "x3kd editable install current"
else
  log "pip install -e . (no deps)"
  # No build isolation: nothing to fetch, setuptools comes from requirements.txt.
  "$PY" -m pip install --no-deps --no-build-isolation -e "$REPO" > "$REPO/build/pip-editable.log" 2>&1 \
    || { tail -40 "$REPO/build/pip-editable.log" >&2; die "pip install -e . failed"; }
  echo "$repo_hash" > "$REPO_STAMP"
fi

# An editable wheel carries no data_files, so give the venv the share/ layout a colcon install
# has, as links into the checkout (edits show up live): ament_index_python's
# get_package_share_directory('x3kd_ros') then works with AMENT_PREFIX_PATH=$VENV.
share="$VENV/share/x3kd_ros"
mkdir -p "$share" "$VENV/share/ament_index/resource_index/packages"
: > "$VENV/share/ament_index/resource_index/packages/x3kd_ros"
for item in package.xml launch config; do
  if [ -e "$REPO/$item" ]; then ln -sfn "$REPO/$item" "$share/$item"; fi
done

log "ready: $PY"
