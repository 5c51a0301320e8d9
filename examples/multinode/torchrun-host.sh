#!/usr/bin/env bash
# One host's share of a gist run across several machines: run it on every host.
#
#   examples/multinode/torchrun-host.sh HEAD_ADDR HOSTS PROCS_PER_HOST [gist train flags ...]
#
# HEAD_ADDR is the address of the host that holds the rendezvous (any one of
# them; the same on every host), HOSTS how many hosts take part, and
# PROCS_PER_HOST the processes each starts (m = HOSTS x PROCS_PER_HOST). The
# gist train flags follow (--backend dist is added); spell the log flag
# --log-file. Environment: GIST_RDZV_PORT (default 29400), GIST_JOB_ID (the
# same on every host, different for each job; default gist), GIST_LOCAL_ADDR
# (this host's address that the others reach; default: the one the route to
# HEAD_ADDR leaves from), GLOO_SOCKET_IFNAME (default: the interface of that
# address, chosen by gist).
set -euo pipefail
if [[ $# -lt 3 ]]; then
    sed -n '4,6p' "$0" >&2
    exit 2
fi
head_addr=$1 hosts=$2 procs_per_host=$3
shift 3
local_addr=${GIST_LOCAL_ADDR:-$(ip -o route get "$head_addr" 2>/dev/null | sed -n 's/.* src \([0-9a-f.:]*\).*/\1/p')}
local_addr=${local_addr:-$(hostname -I | awk '{print $1}')}
# torchrun guesses whether this host holds the rendezvous from its host name,
# which often resolves to a loopback address: say it instead
is_host=0
[[ $local_addr == "$head_addr" ]] && is_host=1
exec python -m torch.distributed.run \
    --nnodes "$hosts" --nproc-per-node "$procs_per_host" \
    --rdzv-backend c10d --rdzv-endpoint "$head_addr:${GIST_RDZV_PORT:-29400}" \
    --rdzv-id "${GIST_JOB_ID:-gist}" --rdzv-conf "is_host=$is_host" \
    --local-addr "$local_addr" --max-restarts 0 \
    -m gist train --backend dist "$@"
