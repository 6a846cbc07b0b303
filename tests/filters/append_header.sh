#!/bin/sh
# Adds a header line at the top of the content (a chain step).
content="$1"
tmp="$content.edit.$$"
{ printf 'X-Chain: %s\r\n' "`basename $0`"; cat "$content"; } > "$tmp" && cat "$tmp" > "$content"
rm -f "$tmp"
exit 0
