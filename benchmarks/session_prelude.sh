# Sourced by the per-session GPU scripts (gpu_session5/6/7.sh, gpu_two_lanes.sh) on the device machine: installs the
# carried wheels, lists the GPUs, and defines `q` (drops XLA's and absl's log lines) and B (the carried bench data).
source benchmarks/device_setup.sh || exit 1
export KGPT2_DEVICE_READY=1; nvidia-smi -L
q() { grep --line-buffered -v "^WARNING\|^I0000\|^E0000\|^W0000"; }
B="--shards .bench/shards --tokenizer .bench/tokenizer"
