#!/bin/sh
# route-by-domain.sh -- an E-MailRelay filter that picks the next hop per
# recipient domain by setting the envelope's ForwardTo field.
#
#   emailrelay --as-server --forward-to smarthost:25 --poll 60 \
#       --filter /etc/emailrelay/filters/route-by-domain.sh
#
# Mail whose first remote recipient is in example.org goes to
# mx.example.org:25; everything else to the --forward-to server.  Edit the
# "case" below.  (With one recipient domain per message; the built-in
# "split:" filter separates messages by domain first.)

envelope="$2"
rcpt=$(sed -n 's/^X-MailRelay-To-Remote: *\(.*\)\r$/\1/p' "$envelope" | head -n 1)
domain=$(echo "$rcpt" | sed 's/.*@//' | tr 'A-Z' 'a-z')

case "$domain" in
	example.org) hop="mx.example.org:25" ;;
	*) exit 0 ;;
esac

tmp="$envelope.route.$$.tmp"
sed "s/^X-MailRelay-ForwardTo: .*\r\$/X-MailRelay-ForwardTo: $hop\r/" "$envelope" > "$tmp" &&
	cat "$tmp" > "$envelope"
rm -f "$tmp"
exit 0
