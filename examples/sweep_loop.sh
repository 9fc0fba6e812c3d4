#!/bin/bash
# Runs every point of a sweep as its own process (e.g. on a machine where each point should start fresh),
# then merges the finished points into one report:  examples/sweep_loop.sh pooling /tmp/cnnjax/pooling
set -euo pipefail
experiment=$1
workdir=$2
shift 2
n=$(python launch.py --experiment="$experiment" --list_points "$@" | wc -l)
for ((i = 0; i < n; i++)); do
  python launch.py --experiment="$experiment" --workdir="$workdir" --sweep_index="$i" "$@"
done
python launch.py --experiment="$experiment" --workdir="$workdir" --report_only "$@"
