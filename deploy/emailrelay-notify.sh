#!/bin/sh
#
# emailrelay-notify.sh
#
# The old user guide's failed-mail script, under its old name: run it
# periodically (cron, as root) to 'bounce' failed e-mails back to their
# senders' in-trays.  The old script handed a notification to procmail for
# local delivery; this one runs emailrelay-bounce (found next to this
# script, else on the PATH), which puts an RFC 3464 delivery status
# notification for each failed message into the spool, with the null
# sender, for the relay to deliver.  The failed message is kept (marked as
# bounced, so it is bounced only once); see docs/operator-guide.md,
# "Failed mail".  For a report instead of bounces use emailrelay-notify.
#
# usage: emailrelay-notify.sh [<spool-dir>] [emailrelay-bounce options]
#
dir=`dirname "$0"`
if test -x "$dir/emailrelay-bounce"
then
	exec "$dir/emailrelay-bounce" --keep "$@"
fi
exec emailrelay-bounce --keep "$@"
