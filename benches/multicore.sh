#!/usr/bin/env bash
# The multi-core figures of issue 15 (performance round two), for a machine
# with many cores and no Rust toolchain: build here, run there.
#
#   benches/multicore.sh build [BASE_REV]   # here: release bench binaries into .multicore/
#   benches/multicore.sh run [DIVISOR]      # there, from the repository root: the figures
#
# `build` makes `.multicore/bench` from the working tree and, given a
# revision, `.multicore/bench-base` from that revision (a git worktree in
# /tmp), for a before/after pair on the same machine. `run` writes every
# figure to `$OUT/multicore.log` (OUT defaults to /tmp/multicore) as it is
# made, each step under its own time limit, so a step that overruns loses
# only its own figures; DIVISOR divides every size (a dry run here: 20).
# Carry `.multicore/` to the machine (it is git-ignored). About 7 minutes on
# 16 cores at full size; 2 on the 2-core development VM.
set -u
cd "$(dirname "$0")/.."
DIR=.multicore
case "${1:-}" in
build)
    mkdir -p "$DIR"
    cargo build --release --example bench || exit 1
    cp target/release/examples/bench "$DIR/bench"
    if [ -n "${2:-}" ]; then
        rm -rf /tmp/multicore-base
        git worktree add -f --detach /tmp/multicore-base "$2" || exit 1
        (cd /tmp/multicore-base && CARGO_TARGET_DIR=/tmp/multicore-base-target \
            cargo build --release --example bench) || exit 1
        cp /tmp/multicore-base-target/release/examples/bench "$DIR/bench-base"
        git worktree remove --force /tmp/multicore-base
    fi
    ls -l "$DIR"
    ;;
run)
    S=${2:-1}
    OUT=${OUT:-/tmp/multicore}
    mkdir -p "$OUT"
    L=$OUT/multicore.log
    B=$DIR/bench
    {
        date
        nproc
        uname -a
        grep -m1 'model name' /proc/cpuinfo
    } 2>&1 | tee -a "$L"
    step() {
        local name=$1 limit=$2
        shift 2
        echo "=== $name: $* ($(date +%T))" | tee -a "$L"
        # The progress lines (carriage returns) would fill the log.
        timeout "$limit" "$@" 2>&1 | tr '\r' '\n' | grep --line-buffered -v 'rep [0-9]*/[0-9]*,' |
            grep --line-buffered -v '^ *$' | tee -a "$L"
        echo "=== $name: exit ${PIPESTATUS[0]} ($(date +%T))" | tee -a "$L"
    }
    # The peers, one scenario at a time: A 1->1, B 1->10 fanout,
    # C 4->1->4, D request/reply.
    for s in A B C D; do
        step "peers $s" 120 $B peers --only $s --messages $((1000000 / S)) --reps 5
    done
    # Publishers to distinct queues (target: >= 0.75 x P up to 12), and
    # 8 producers -> 1 queue -> 8 consumers beside a raw channel (>= 0.6x).
    for p in 4 8 12; do
        step "scaling $p" 40 $B two-publishers --producers $p --messages $((2000000 / S)) --reps 3
    done
    step "8-1-8" 60 $B direct --producers 8 --consumers 8 --messages $((1000000 / S)) --reps 3
    # Beside a raw channel: direct >= 0.8x, manual ack >= 0.6x, fanout >= 0.85x.
    step "beside raw" 80 $B direct direct-manual fanout --messages $((500000 / S)) --reps 3
    step "rpc" 30 $B rpc --messages $((20000 / S)) --reps 3
    # The same machine's before, if built (an older binary may lack
    # `--only`: then it runs every scenario).
    if [ -x "$DIR/bench-base" ]; then
        step "base peers" 150 "$DIR/bench-base" peers --messages $((1000000 / S)) --reps 3
    fi
    echo "=== done ($(date +%T))" | tee -a "$L"
    ;;
*)
    sed -n '2,17p' "$0"
    exit 2
    ;;
esac
