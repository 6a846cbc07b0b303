#!/bin/sh
# "myverifier" of the reference guide ("Address verifiers"): not printed in
# the guide; records its command line (one argument a line) next to itself
# and accepts the address as remote.
printf '%s\n' "$@" > "$0.args"
echo ""
echo "$1"
exit 1
