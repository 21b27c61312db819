#!/bin/bash
# Container health check: GET /healthz on cc-gateway's admin listener, healthy only on a 200.
# Usage: cc-gateway-healthcheck [HOST:PORT]   (default 127.0.0.1:9091; [::1]:9091 for IPv6)
# bash's /dev/tcp instead of curl or wget, which the slim runtime image does not have.
set -u
addr="${1:-127.0.0.1:9091}"
port="${addr##*:}"
host="${addr%:*}"
host="${host#[}"
host="${host%]}"
# Docker's --timeout also bounds the whole check; this keeps a stuck read from outliving it
exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$addr" >&3 || exit 1
IFS= read -r -t 2 status <&3 || exit 1
case "$status" in
  "HTTP/1.1 200 "*) exit 0 ;;
  *) echo "cc-gateway-healthcheck: $addr: ${status%$'\r'}" >&2; exit 1 ;;
esac
