#!/bin/sh
tmp="/tmp/`basename $0`.$$.tmp"
awk '{sub("\r$","");print}' "${1}" | spamassassin --local | awk '{print $0 "\r"}' > $tmp && mv $tmp "${1}"
rm -f $tmp 2>/dev/null
exit 0
