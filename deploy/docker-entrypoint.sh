#!/bin/sh
# Container entrypoint: the metrics/health server ("emailrelay metrics") in
# the background, then the relay in the foreground as the container's main
# process (SIGTERM from "docker stop" reaches it and it stops gracefully).
#
# Environment: EMAILRELAY_SPOOL, EMAILRELAY_PORT, EMAILRELAY_METRICS
# (host:port of /metrics and /healthz; empty: none), EMAILRELAY_FORWARD_TO
# (the smarthost; empty: store only).  Arguments are more relay options.
set -eu

spool="${EMAILRELAY_SPOOL:-/var/spool/emailrelay}"
port="${EMAILRELAY_PORT:-2525}"
metrics="${EMAILRELAY_METRICS:-0.0.0.0:9190}"
forward_to="${EMAILRELAY_FORWARD_TO:-}"

set -- --no-daemon --log --no-syslog --remote-clients --port "$port" --spool-dir "$spool" "$@"
if test -n "$forward_to"; then
	set -- --forward-to "$forward_to" --poll 60 --forward-on-disconnect "$@"
fi

if test -n "$metrics"; then
	if test -n "$forward_to"; then
		emailrelay metrics --spool-dir "$spool" --listen "$metrics" --smtp "127.0.0.1:$port" --forwarding &
	else
		emailrelay metrics --spool-dir "$spool" --listen "$metrics" --smtp "127.0.0.1:$port" &
	fi
fi

exec emailrelay "$@"
