#!/bin/sh
# Test filter: behaves as the content's "Subject:" line says.
#   Subject: exit <n>          exit with <n>
#   X-Say: <text>              (any number) printed on stdout, in order, before exiting
content="$1"
code=`sed -n -e 's/^Subject: exit \([0-9]*\).*/\1/p' "$content" | head -n 1`
sed -n -e 's/^X-Say: \(.*\)$/\1/p' "$content" | tr -d '\r'
exit "${code:-0}"
