#!/bin/sh
# seed guide "Running as a POP server" / "Usage patterns": a --filter that moves
# each new message into the --pop-by-name sub-directory named after the user
# in its "To:" header, and tells E-MailRelay it is gone (exit 100)
content="$1"
envelope="$2"
user=`sed -n 's/^To: *\([A-Za-z0-9]*\)@.*/\1/p' "$content" | head -n 1`
test -n "$user" || exit 0
spool=`dirname "$content"`
mkdir -p "$spool/$user"
name=`basename "$content" .content`
mv "$content" "$spool/$user/$name.content" || exit 1
mv "$envelope" "$spool/$user/$name.envelope" || exit 1
exit 100
