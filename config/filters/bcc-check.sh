#!/bin/sh
# bcc-check.sh -- a --filter that rejects messages still carrying a "Bcc:" header
# (the user guide's "Bcc handling": the submitting program should have removed it,
# or a blind-copy recipient would be visible to the others).
# Usage: --filter=/etc/emailrelay/filters/bcc-check.sh   (argument 1 is the content file)
content="$1"
if sed -e '/^\r*$/q' "$content" | grep -qi '^bcc:' ; then
	echo "<<message has a Bcc header>>"
	exit 1
fi
exit 0
