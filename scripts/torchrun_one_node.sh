#!/usr/bin/env bash
# Supernet training on one machine with torchrun: one process per GPU (NCCL), DDP set up by
# `nat2 train-supernet` itself from torchrun's RANK / WORLD_SIZE / LOCAL_RANK.
#
#   NPROC=4 CONFIG=configs/cifar10.yaml scripts/torchrun_one_node.sh [nat2 options]
#
# Extra arguments go to `nat2 train-supernet`, e.g.
#   --resume                   continue an interrupted run from the last checkpoints of its run
#                              directory (a finished phase is skipped, an unfinished one restarts
#                              from its last epoch). Without --resume, a run directory that already
#                              holds supernet results is an error; with it, the config must be
#                              the run's own (only train.device / num_workers / eval_batch_size
#                              may change).
#   --set run.dir=runs/my-run  where checkpoints, logs and metrics go (default runs/<config name>)
#   --set train.device=cpu     CPU processes talking over gloo instead of GPUs over NCCL (testing
#                              DDP without GPUs; set NPROC to at most the number of cores and
#                              OMP_NUM_THREADS so that NPROC x threads does not exceed them).
#
# train.lr values are for a global batch of train.reference_batch; they are scaled linearly to
# train.batch_size x NPROC, so changing NPROC keeps the schedule comparable.
set -euo pipefail

exec torchrun --standalone --nproc-per-node="${NPROC:-4}" \
    -m nat2 train-supernet "${CONFIG:-configs/cifar10.yaml}" "$@"
