#!/bin/sh
# seed guide "Usage patterns": simple routing by a --filter that moves the
# message files into the spool directory of another E-MailRelay process
# (named by the file "route-to" next to the first spool), then exits 100
content="$1"
envelope="$2"
spool=`dirname "$content"`
target=`cat "$spool/../route-to"`
name=`basename "$content" .content`
cp "$content" "$target/$name.content" || exit 1
cp "$envelope" "$target/$name.envelope.new" || exit 1
mv "$target/$name.envelope.new" "$target/$name.envelope" || exit 1
rm -f "$content" "$envelope"
exit 100
