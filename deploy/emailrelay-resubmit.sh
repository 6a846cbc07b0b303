#!/bin/sh
#
# emailrelay-resubmit.sh
#
# The old user guide's retry script, under its old name: run it
# periodically (cron) to remove the ".bad" suffix from failed messages in
# the spool directory, as long as they have not been retried too many
# times already.  A thin wrapper around emailrelay-resubmit (found next to
# this script, else on the PATH), which does the work; see
# docs/operator-guide.md, "Failed mail".
#
# usage: emailrelay-resubmit.sh [<spool-dir>] [--limit <n>] [--min-age <seconds>] [--dry-run]
#
dir=`dirname "$0"`
if test -x "$dir/emailrelay-resubmit"
then
	exec "$dir/emailrelay-resubmit" "$@"
fi
exec emailrelay-resubmit "$@"
