#!/bin/sh
# spamassassin.sh -- an E-MailRelay filter that marks spam (the guide's example).
#
#   emailrelay --as-server --filter /etc/emailrelay/filters/spamassassin.sh
#   emailrelay ... --client-filter /etc/emailrelay/filters/spamassassin.sh   (check when forwarding)
#
# The relay runs it with the content file and the envelope file as arguments
# (absolute paths).  The content is piped through "spamassassin --local",
# carriage returns taken off on the way in and put back on the way out, and
# the result replaces the content file.  Exit 0: the message goes on, marked
# (X-Spam-Flag, X-Spam-Status headers) if it looks like spam.
#
# For a spamd server use the built-in "--filter spam-edit:127.0.0.1:783"
# instead: no program to run per message.

content="$1"
tmp="$content.spamassassin.$$.tmp"
trap 'rm -f "$tmp"' EXIT HUP INT TERM

if awk '{sub("\r$","");print}' "$content" | spamassassin --local | awk '{print $0 "\r"}' > "$tmp"
then
	# same file, new content: keep the owner and mode the relay gave it
	cat "$tmp" > "$content"
fi
exit 0
