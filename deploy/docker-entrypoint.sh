#!/bin/sh
# Container entrypoint: the relay, supervised, in the foreground as the
# container's main process (SIGTERM from "docker stop" reaches it and it
# stops gracefully). Its own metrics role (--metrics) serves /metrics and
# /healthz; there is no second background process.
#
# Not an open relay. Clients from non-local addresses (what a published port
# usually brings in) are served only when they must authenticate
# (--server-auth, or EMAILRELAY_SERVER_AUTH) or when EMAILRELAY_OPEN_RELAY=yes
# says that an open relay is meant; --remote-clients given as an argument
# without either is refused before the relay starts.
#
# Environment:
#   EMAILRELAY_SPOOL        the spool directory (default /var/spool/emailrelay)
#   EMAILRELAY_PORT         the SMTP port (default 2525)
#   EMAILRELAY_METRICS      host:port of /metrics and /healthz (default
#                           127.0.0.1:9190, inside the container only; set but
#                           empty: no metrics role)
#   EMAILRELAY_FORWARD_TO   the smarthost (empty: store only)
#   EMAILRELAY_SERVER_AUTH  a secrets file: remote clients must authenticate
#   EMAILRELAY_OPEN_RELAY   yes: serve remote clients without authentication
# Arguments are more relay options.
set -eu

spool="${EMAILRELAY_SPOOL:-/var/spool/emailrelay}"
port="${EMAILRELAY_PORT:-2525}"
metrics="${EMAILRELAY_METRICS-127.0.0.1:9190}"
forward_to="${EMAILRELAY_FORWARD_TO:-}"
server_auth="${EMAILRELAY_SERVER_AUTH:-}"

die() {
	echo "docker-entrypoint: error: $*" >&2
	exit 1
}

case "${EMAILRELAY_OPEN_RELAY:-no}" in
	yes) open_relay=yes ;;
	no | "") open_relay=no ;;
	*) die "EMAILRELAY_OPEN_RELAY must be yes or no, not '${EMAILRELAY_OPEN_RELAY}'" ;;
esac

auth=no
remote=no
for arg in "$@"; do
	case "$arg" in
		--server-auth | --server-auth=* | -S) auth=yes ;;
		--remote-clients | -r) remote=yes ;;
	esac
done
if test -n "$server_auth"; then
	set -- --server-auth "$server_auth" "$@"
	auth=yes
fi

if test "$auth" = yes || test "$open_relay" = yes; then
	if test "$auth" = no; then
		echo "docker-entrypoint: warning: EMAILRELAY_OPEN_RELAY=yes: anybody who reaches port $port can send mail through this relay" >&2
	fi
	if test "$remote" = no; then
		set -- --remote-clients "$@"
	fi
elif test "$remote" = yes; then
	die "--remote-clients without --server-auth makes an open relay: give --server-auth (or EMAILRELAY_SERVER_AUTH), or set EMAILRELAY_OPEN_RELAY=yes if an open relay is meant"
fi

set -- --no-daemon --log --no-syslog --port "$port" --spool-dir "$spool" "$@"
if test -n "$forward_to"; then
	set -- --forward-to "$forward_to" --poll 60 --forward-on-disconnect "$@"
fi
if test -n "$metrics"; then
	set -- --metrics "$metrics" "$@"
fi

exec emailrelay "$@"
