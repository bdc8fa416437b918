#!/usr/bin/env bash
# Start a fedpriv SuperNode (flower-supernode and fedpriv's warm executor) in the foreground:
#
#   deploy/supernode.sh KEYS_DIR --superlink HOST:9093 --partition-id K --num-partitions N \
#       [--data /data/partK.npz] [--insecure]
#
# KEYS_DIR on a device holds only ca.crt, nodes/node-K.key and (for crypto=ckks) client.ctx.
exec "$(dirname "$0")/fedpriv.sh" supernode "$@"
