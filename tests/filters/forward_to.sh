#!/bin/sh
# Sets the envelope's ForwardTo to "routed.example" by rewriting the file in place
# (keeping its inode, as a client filter must for the forwarder's lock).
envelope="$2"
tmp="$envelope.edit.$$"
sed -e 's/^X-MailRelay-ForwardTo: .*\r$/X-MailRelay-ForwardTo: routed.example\r/' "$envelope" > "$tmp" &&
cat "$tmp" > "$envelope"
rm -f "$tmp"
exit 0
