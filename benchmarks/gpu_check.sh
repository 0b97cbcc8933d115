#!/usr/bin/env bash
# The GPU checks in one call: the CUDA tests, GPU sampling overhead, each modality's recipe trained
# on the GPU (digits and video scored), and the dit-train-gpu table. Each check has its own time
# limit and a failing one does not stop the next. Logs and the rewritten docs/benchmarks.md go to
# $OUT (default outputs/gpu).
#
#   bash benchmarks/gpu_check.sh                      # every check
#   VIDEO_STEPS=2000 bash benchmarks/gpu_check.sh tests image text video
#
# Packages the machine lacks (diffusers, importlib_metadata, av) may travel as wheels in .whl/.
set -u
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv > "$OUT/gpu.txt"
python3 -c "import torch, diffusers, accelerate, transformers, av; print('torch', torch.__version__, 'diffusers',
diffusers.__version__, 'accelerate', accelerate.__version__, 'transformers', transformers.__version__)" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, show its tail
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s"
    tail -n "${TAIL:-6}" "$OUT/$name.log"
}

check_tests() { step tests 60 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py; }
check_sampling() { step sampling 70 python3 benchmarks/sampling_overhead.py --device cuda; }
check_image() {
    step image_train 80 accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/image_train.py \
        --output_dir /tmp/gpu-digits --overwrite_output_dir
    step image_eval 40 python3 recipes/image_eval.py --model /tmp/gpu-digits/export
}
check_text() {
    step text_train 60 accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/text_train.py \
        --output_dir /tmp/gpu-text --overwrite_output_dir
}
check_video() {
    local steps=${VIDEO_STEPS:-10000}
    step video_train $((60 + steps / 25)) accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/video_train.py \
        --output_dir /tmp/gpu-video --overwrite_output_dir --max_steps "$steps" --checkpointing_steps "$steps" \
        --validation_steps "$steps"
    step video_eval 40 python3 recipes/video_eval.py --model /tmp/gpu-video/export --settings euler_ancestral:50 \
        --i2v_clips 50
}
check_dit() { TAIL=14 step dit_train 250 python3 benchmarks/dit_train.py --device cuda; }

for check in ${@:-tests sampling image text video dit}; do
    "check_$check"
done
cp docs/benchmarks.md "$OUT/"
