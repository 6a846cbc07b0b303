#!/bin/sh
# ug_bcc-check.sh -- a --filter that rejects messages still carrying a "Bcc:" header
# (the user guide's "Bcc handling": the submitting program should have removed it).
# Usage: --filter=/path/ug_bcc-check.sh   (argument 1 is the content file)
content="$1"
if sed -e '/^\r*$/q' "$content" | grep -qi '^bcc:' ; then
	echo "<<message has a Bcc header>>"
	exit 1
fi
exit 0
