#!/bin/sh
# spamassassin-discard.sh -- an E-MailRelay filter that throws spam away
# (the guide's second SpamAssassin example).
#
#   emailrelay --as-server --filter /etc/emailrelay/filters/spamassassin-discard.sh
#
# "spamassassin --exit-code" exits non-zero for spam.  Then the filter
# deletes the message's two files and exits 100, which tells the relay that
# the filter took care of the message (the client still gets its "250": a
# silent discard).  To reject spam instead, so that the sending client sees
# an error, print a reason between << and >> and exit 1:
#
#     echo "<<550 5.7.1 message looks like spam>>" ; exit 1

content="$1"
envelope="$2"
if test -z "$envelope"; then
	# the seed guide's way: the envelope of a message being stored is <id>.envelope.new
	envelope=$(echo "$content" | sed 's/content$/envelope.new/')
fi

if awk '{sub("\r$","");print}' "$content" | spamassassin --local --exit-code > /dev/null
then
	exit 0 # not spam
fi
# spam...
rm -f "$envelope" "$content"
exit 100 # <= tell E-MailRelay that the files are gone
