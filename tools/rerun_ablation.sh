#!/usr/bin/env bash
# The X3KD ablation on another synthetic world, from an empty folder to the report (issue 12).
#
#   bash tools/rerun_ablation.sh --world config/data/synthetic_main.yaml --seed 7 --out /tmp/world7
#
# Five steps, each one x3kd command, printed before it runs (so the sequence can be run by hand):
#   1. x3kd data synth          the world (--world YAML, --seed N overrides its seed)
#   2. x3kd train (LiDAR)       the LiDAR teacher on that world   (skipped with --lidar-teacher PT)
#   3. x3kd train (inst. seg.)  the X-IS teacher on that world    (skipped with --instance-seg-teacher PT)
#   4. x3kd ablate              the plan's runs, every one pointed at that world, those teachers
#                               and a teacher cache under --out (--set data.dataroot=... etc.)
#   5. x3kd ablate --report     report.{md,json,png} in <out>/results (BENCHMARKS.md untouched)
# A step whose output exists is not repeated (a teacher's result file marks it finished; ablation
# runs with a result file are skipped), so an interrupted sequence is resumed by running it again.
#
# Options: --world YAML, --out DIR (required); --seed N; --plan YAML (config/ablation/x3kd_main.yaml);
# --lidar-experiment YAML (config/train/lidar_main.yaml); --instance-seg-experiment YAML
# (config/train/instance_seg_small.yaml); --lidar-teacher PT / --instance-seg-teacher PT (use these
# checkpoints instead of training); --teacher-set KEY=VALUE (both teacher trainings; repeatable);
# --set KEY=VALUE (every ablation run; repeatable); --variants A,B; --seeds 0,1; --jobs N; --device D.
# X3KD=<command> chooses the x3kd executable (default: x3kd on PATH, else .venv/bin/x3kd).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
world="" out="" seed="" plan="$here/config/ablation/x3kd_main.yaml"
lidar_exp="$here/config/train/lidar_main.yaml" is_exp="$here/config/train/instance_seg_small.yaml"
lidar_pt="" is_pt="" teacher_sets=() run_sets=() ablate_opts=()
usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --world) world=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --plan) plan=$2; shift 2 ;;
    --lidar-experiment) lidar_exp=$2; shift 2 ;;
    --instance-seg-experiment) is_exp=$2; shift 2 ;;
    --lidar-teacher) lidar_pt=$2; shift 2 ;;
    --instance-seg-teacher) is_pt=$2; shift 2 ;;
    --teacher-set) teacher_sets+=(--set "$2"); shift 2 ;;
    --set) run_sets+=(--set "$2"); shift 2 ;;
    --variants|--seeds|--jobs|--device) ablate_opts+=("$1" "$2"); shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "rerun_ablation.sh: unknown option $1" >&2; usage ;;
  esac
done
[[ -n "$world" && -n "$out" ]] || { echo "rerun_ablation.sh: --world and --out are required" >&2; usage; }
[[ -f "$world" ]] || { echo "rerun_ablation.sh: --world $world: no such file" >&2; exit 2; }
[[ -f "$plan" ]] || { echo "rerun_ablation.sh: --plan $plan: no such file" >&2; exit 2; }
if [[ -z "${X3KD:-}" ]]; then
  if command -v x3kd >/dev/null; then X3KD=x3kd; else X3KD="$here/.venv/bin/x3kd"; fi
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
step() { echo "+ $*" >&2; "$@"; }

# 1. the world
if [[ ! -f "$out/world/synth_config.yaml" ]]; then
  step $X3KD data synth --config "$world" --out "$out/world" ${seed:+--seed "$seed"}
fi
# 2. and 3. the teachers
train_teacher() {  # name experiment
  if [[ ! -f "$out/teachers/$1.json" ]]; then
    step $X3KD train --experiment "$2" --out "$out/teachers/$1" --set data.dataroot="$out/world" \
      ${teacher_sets[@]+"${teacher_sets[@]}"} --resume --result "$out/teachers/$1.json"
  fi
}
if [[ -z "$lidar_pt" ]]; then train_teacher lidar "$lidar_exp"; lidar_pt="$out/teachers/lidar/last.pt"; fi
if [[ -z "$is_pt" ]]; then train_teacher instance_seg "$is_exp"; is_pt="$out/teachers/instance_seg/last.pt"; fi
# 4. the runs, 5. the report
plan_opts=(--plan "$plan" --results "$out/results" --runs "$out/runs")
step $X3KD ablate "${plan_opts[@]}" --set data.dataroot="$out/world" --set teachers.lidar="$lidar_pt" \
  --set teachers.instance_seg="$is_pt" --set teachers.cache="$out/teacher_cache" \
  ${run_sets[@]+"${run_sets[@]}"} ${ablate_opts[@]+"${ablate_opts[@]}"}
step $X3KD ablate "${plan_opts[@]}" --report --benchmarks none
