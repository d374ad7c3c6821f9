#!/usr/bin/env bash
# One idempotent set-up step for x3kd on a fresh machine (Debian 12, python3.11, no ROS install):
#   1. <repo>/.venv            created with `python3 -m venv` if missing
#   2. tools/requirements.txt  pip-installed, skipped while a stamp holding its hash is current
#   3. vision_msgs, tf2_msgs   built from interfaces/<pkg> with plain cmake into the venv,
#                              only when the venv cannot import it (or our own build is stale)
#   4. ROS 2 tooling           launch, launch_ros, ros2cli (+ verbs), rosidl_runtime_py, message_filters,
#                              composition_interfaces from ../shared/vendor/ros2 (X3KD_ROS_VENDOR) when
#                              that folder exists (skipped with a log line otherwise); stamped
#   5. this repo               `pip install -e . --no-deps`, skipped while current; then the ament
#                              layout a colcon install has: share/x3kd_ros/{package.xml,launch,config},
#                              lib/x3kd_ros/<console scripts> (where `ros2 run` / launch_ros look)
# A second run with nothing changed takes seconds. Safe under CI=true (never prompts).
#
# Environment knobs:
#   X3KD_VENV      venv location (default <repo>/.venv)
#   X3KD_PYTHON    interpreter used to create the venv (default python3)
#   X3KD_JOBS      parallel compile jobs for vision_msgs (default: number of cores)
#   X3KD_ROS_VENDOR  folder of the vendored ROS 2 tool sources (default <repo>/../shared/vendor/ros2)
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

build_interface() {  # $1 = package name, $2 = its source folder (default interfaces/<pkg>)
  local pkg="$1" src="${2:-$REPO/interfaces/$1}" bld="$REPO/build/$1" n
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

# ---------------------------------------------------------------- 4. ROS 2 tooling (vendored sources)
# `ros2 launch` / `ros2 run` / `ros2 topic`, launch_ros and message_filters are not on the package
# index; ../shared/vendor/ros2 holds their unmodified upstream sources (README there). They are
# tooling and test dependencies: without that folder the set-up goes on and the tests that need
# them skip, saying so.
VENDOR="${X3KD_ROS_VENDOR:-$REPO/../shared/vendor/ros2}"
ROS_TOOLS_STAMP="$VENV/.x3kd-ros2-tools.sha256"
ROS_TOOL_PKGS=(launch launch_xml launch_yaml launch_ros ros2cli ros2pkg ros2node ros2topic ros2run ros2param
               ros2service ros2interface ros2launch rosidl_runtime_py)
ros_tools_importable() {
  (cd / && "$PY" -c 'import launch.launch_description, launch_ros.actions, ros2launch, ros2cli.cli, ros2run, ros2topic
import rosidl_runtime_py, message_filters
from composition_interfaces.srv import LoadNode
from rclpy.type_support import check_for_type_support
check_for_type_support(LoadNode)') 2>/dev/null
}
if [ ! -d "$VENDOR" ]; then
  log "no vendored ROS 2 tool sources at $VENDOR: skipping the ros2 launch / ros2 run tooling (the tests that need it skip)"
else
  VENDOR="$(cd "$VENDOR" && pwd)"
  tools_hash="$( (for f in "$VENDOR"/*.tar.gz; do echo "$(basename "$f") $(sha256sum < "$f")"; done
                  echo "$py_version") | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$ROS_TOOLS_STAMP" 2>/dev/null || true)" = "$tools_hash" ] && ros_tools_importable; then
    log "ROS 2 tooling current (stamp), nothing to install"
  else
    log "installing the ROS 2 tooling from $VENDOR (first time: about 2 minutes)"
    t0=$SECONDS
    src_root="$REPO/build/ros2_vendor"
    rm -rf "$src_root"
    mkdir -p "$src_root"
    for archive in "$VENDOR"/*.tar.gz; do tar -xzf "$archive" -C "$src_root"; done
    tools_log="$REPO/build/pip-ros2-tools.log"
    "$PY" -m pip install osrf-pycommon argcomplete psutil importlib-metadata > "$tools_log" 2>&1 \
      || { tail -40 "$tools_log" >&2; die "pip install of the ROS 2 tools' PyPI dependencies failed (log: $tools_log)"; }
    # --no-deps: their ROS dependencies (rclpy, ament_index_python, ...) are the wheels of step 2.
    "$PY" -m pip install --no-deps --no-build-isolation "${ROS_TOOL_PKGS[@]/#/$src_root/}" >> "$tools_log" 2>&1 \
      || { tail -40 "$tools_log" >&2; die "pip install of the vendored ROS 2 tools failed (log: $tools_log)"; }
    # launch_ros imports composition_interfaces (services): built like the message packages.
    build_interface composition_interfaces "$src_root/composition_interfaces"
    # message_filters: one module behind an old catkin-style setup.py; copied into site-packages.
    site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    rm -rf "$site/message_filters"
    cp -r "$src_root/message_filters/src/message_filters" "$site/message_filters"
    ros_tools_importable || die "the ROS 2 tooling does not import after installing it (log: $tools_log)"
    echo "$tools_hash" > "$ROS_TOOLS_STAMP"
    log "ROS 2 tooling installed in $((SECONDS - t0)) s"
  fi
fi

# ---------------------------------------------------------------- 5. this repo, editable
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

# An editable wheel carries no data_files, so give the venv the layout a colcon install has, with
# links into the checkout (edits show up live). ament_index_python then finds the package with
# AMENT_PREFIX_PATH=$VENV (tools/ros_env.sh sets it):
# - share/x3kd_ros/launch is a real folder of per-file links: ros2launch finds launch files with
#   os.walk, which does not enter a symlinked folder;
# - lib/x3kd_ros/<exe> for every console script: launch_ros and `ros2 run` look there, not in bin/.
share="$VENV/share/x3kd_ros"
mkdir -p "$share" "$VENV/share/ament_index/resource_index/packages"
: > "$VENV/share/ament_index/resource_index/packages/x3kd_ros"
ln -sfn "$REPO/package.xml" "$share/package.xml"
ln -sfn "$REPO/config" "$share/config"
if [ -L "$share/launch" ]; then rm -f "$share/launch"; fi
mkdir -p "$share/launch"
find "$share/launch" -maxdepth 1 -type l -delete
for file in "$REPO"/launch/*.py; do
  if [ -f "$file" ]; then ln -s "$file" "$share/launch/$(basename "$file")"; fi
done
libexec="$VENV/lib/x3kd_ros"
mkdir -p "$libexec"
find "$libexec" -maxdepth 1 -type l -delete
"$PY" - "$VENV/bin" "$libexec" <<'EOF'
import importlib.metadata, os, sys
bin_dir, libexec = sys.argv[1:]
names = sorted(ep.name for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.dist is not None and ep.dist.name == "x3kd_ros")
missing = [n for n in names if not os.path.isfile(os.path.join(bin_dir, n))]
if not names or missing:
    sys.exit(f"console scripts of x3kd_ros missing in {bin_dir}: {missing or 'all'}")
for name in names:
    os.symlink(os.path.join(bin_dir, name), os.path.join(libexec, name))
EOF

log "ready: $PY"
