#!/usr/bin/env bash
# GPU checks, run once per session that is lent a GPU (the device tool), as one script:
#   bash tools/gpu_checks.sh            # on the GPU machine; results under $OUT (or ./gpu_out)
# 1. the CUDA-only tests (DepthContextPool on CUDA equals the CPU op and is reproducible);
# 2. tools/bench_bev_pool.py on CUDA (outer product vs depth_context vs cumsum trick);
# 3. tools/bench_student.py on CUDA: training step and inference latency (forward + decoding),
#    fp32 and autocast fp16, for the small, main and nuscenes_r50 students (random weights).
# Needs python3 with torch (CUDA), numpy, pyyaml, opencv; nothing else of the project's set-up.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_LOCALHOST_ONLY=1 ROS_DOMAIN_ID=42 ROS_LOG_DIR=/tmp/roslog
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/machine.txt"
python3 -m pytest -q -p no:cacheprovider test/x3kd_core/ops -k cuda -rs 2>&1 | tee "$OUT/pytest_cuda.txt"
python3 tools/bench_bev_pool.py --device cuda --repeats 20 --cases paper small_s8 \
  --train-configs small main 2>&1 | tee "$OUT/bench_bev_pool_cuda.txt"
for amp in "" "--amp"; do
  python3 tools/bench_student.py --device cuda --configs small main nuscenes_r50 --warmup 5 --steps 30 --bev-pool depth_context \
    --json $amp 2>&1 | tee -a "$OUT/bench_student_cuda.txt"
done
