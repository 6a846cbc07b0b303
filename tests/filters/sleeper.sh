#!/bin/sh
# Runs far longer than any test's --filter-timeout, with a grandchild process whose
# pid it writes to "<content>.pid" first; both must be killed with the process group.
sleep 300 &
echo $! > "$1.pid"
sleep 300
exit 0
