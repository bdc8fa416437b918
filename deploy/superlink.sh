#!/usr/bin/env bash
# Start the fedpriv SuperLink in the foreground: flower-superlink on 127.0.0.1 (Control and
# ServerAppIO, port 9093) and nginx serving only the Fleet API to devices (port 9092), TLS
# and registered-SuperNode authentication:
#
#   deploy/superlink.sh KEYS_DIR [--host 0.0.0.0] [--port 9092] [--api-port 9093] \
#       [--database state.db] [--insecure]
#
# KEYS_DIR is the superlink/ bundle of `fedpriv keys init` (ca.crt, server.pem, server.key,
# nodes/*.pub, server.ctx). nginx must be installed (Debian: nginx-light).
exec "$(dirname "$0")/fedpriv.sh" superlink "$@"
