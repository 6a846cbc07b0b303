#!/bin/sh
# "@app/myfilter" of the reference guide ("Filters"): not printed in the guide;
# adds a header naming the envelope file it was given, so the test can see
# that it ran with the content and envelope paths.
content="$1"
envelope="$2"
tmp="$content.tmp"
{ printf 'X-Filtered-Envelope: %s\r\n' "`basename \"$envelope\"`"; cat "$content"; } > "$tmp" && mv "$tmp" "$content"
exit 0
