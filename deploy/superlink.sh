#!/usr/bin/env bash
# Start the fedpriv SuperLink (Flower's Fleet, Control and Runtime APIs on one port, TLS and
# registered-SuperNode authentication) in the foreground:
#
#   deploy/superlink.sh KEYS_DIR [--host 0.0.0.0] [--port 9093] [--database state.db] [--insecure]
#
# KEYS_DIR is what `fedpriv keys init` wrote (ca.crt, server.pem, server.key, nodes/*.pub).
exec "$(dirname "$0")/fedpriv.sh" superlink "$@"
