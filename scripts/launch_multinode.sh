#!/usr/bin/env bash
# Multi-node launch with torchrun: run this script once on every node, with the same settings.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 GPUS_PER_NODE=8 RUN_ID=sft-0612 \
#     scripts/launch_multinode.sh -c configs/sft/komt-llama2-13b-lora.yaml -c configs/strategy/fsdp.yaml
#   (then the same on the second node with NODE_RANK=1)
#
# Environment (all nodes must agree, except NODE_RANK):
#   NNODES         number of nodes (default 1)
#   NODE_RANK      this node's rank, 0 .. NNODES-1 (default 0)
#   MASTER_ADDR    address of node 0, reachable from every node (default 127.0.0.1)
#   MASTER_PORT    free TCP port on node 0 (default 29500)
#   GPUS_PER_NODE  processes per node (default: number of visible GPUs, or 1)
#   RUN_ID         rendezvous id, also the run version runs/<experiment>/run-<RUN_ID> (default: tuneloop)
#   ACCELERATOR    Lightning accelerator (default auto; cpu for a CPU rehearsal)
# Arguments are passed to `tuneloop fit` (recipe, overlays, overrides). The number of nodes and devices
# per node is handed to Lightning, which derives gradient accumulation from the recipe's global batch.
set -euo pipefail
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RUN_ID=${RUN_ID:-tuneloop}
ACCELERATOR=${ACCELERATOR:-auto}
if [ -z "${GPUS_PER_NODE:-}" ]; then
  GPUS_PER_NODE=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$GPUS_PER_NODE" \
  --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" --rdzv-id="$RUN_ID" \
  -m trainer fit "$@" \
  --trainer.num_nodes="$NNODES" --trainer.devices="$GPUS_PER_NODE" --trainer.accelerator="$ACCELERATOR"
