#!/usr/bin/env bash
# Start a fedpriv SuperNode (flower-supernode and fedpriv's warm executor) in the foreground:
#
#   deploy/supernode.sh KEYS_DIR --superlink HOST:9092 --partition-id K --num-partitions N \
#       [--data /data/partK.npz] [--insecure]
#
# KEYS_DIR is the device-K/ bundle of `fedpriv keys init` (ca.crt, nodes/node-K.key,
# client.ctx, params.json).
exec "$(dirname "$0")/fedpriv.sh" supernode "$@"
