# A ROS 2 shell on the venv that tools/setup.sh made (bash):
#
#   source tools/ros_env.sh
#   ros2 launch x3kd_ros detector.launch.py checkpoint:=runs/student_small/last.pt
#   ros2 run x3kd_ros x3kd_detector --ros-args -p checkpoint:=runs/student_small/last.pt ...
#
# It activates the venv (PATH, VIRTUAL_ENV), puts the venv first on AMENT_PREFIX_PATH (the ament
# index ros2 / launch_ros search for x3kd_ros, vision_msgs, ...) and applies the project's network
# rule (x3kd_ros/graph/environment.py): DDS discovery stays on this machine, a ROS_DOMAIN_ID (the one already
# set is kept, else one in 1..101 derived from your user id and this checkout's path, so every
# terminal that sources this file joins the same domain: the graph in one, a replay in another),
# rcl logs under build/ros_log.
# On a full ROS 2 install with a colcon workspace, `source install/setup.bash` is the equivalent.
# Knob: X3KD_VENV (default <repo>/.venv), as for tools/setup.sh.

_x3kd_here="${BASH_SOURCE[0]:-$0}"
_x3kd_repo="$(cd "$(dirname "$_x3kd_here")/.." && pwd)"
_x3kd_venv="${X3KD_VENV:-$_x3kd_repo/.venv}"
if [ ! -x "$_x3kd_venv/bin/python" ]; then
  echo "tools/ros_env.sh: no venv at $_x3kd_venv; run: bash tools/setup.sh" >&2
else
  # shellcheck disable=SC1091
  . "$_x3kd_venv/bin/activate"
  case ":${AMENT_PREFIX_PATH:-}:" in
    *":$_x3kd_venv:"*) ;;
    *) export AMENT_PREFIX_PATH="$_x3kd_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;;
  esac
  export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
  export ROS_LOCALHOST_ONLY=1
  case "${ROS_DOMAIN_ID:-}" in
    ''|*[!0-9]*) export ROS_DOMAIN_ID=$((1 + $(printf '%s:%s' "$(id -u)" "$_x3kd_repo" | cksum | cut -d' ' -f1) % 101)) ;;
  esac
  export ROS_LOG_DIR="${ROS_LOG_DIR:-$_x3kd_repo/build/ros_log}"
  mkdir -p "$ROS_LOG_DIR"
  unset ROS_STATIC_PEERS
  if ! command -v ros2 > /dev/null 2>&1; then
    echo "tools/ros_env.sh: no ros2 command in the venv (the vendored ROS 2 tools were not installed:" \
         "../shared/vendor/ros2 missing when tools/setup.sh ran); x3kd_run_graph starts the graph without it" >&2
  fi
fi
unset _x3kd_here _x3kd_repo _x3kd_venv
