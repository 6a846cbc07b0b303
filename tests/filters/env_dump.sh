#!/bin/sh
# Writes its environment, its arguments and its open descriptors next to the content file.
env > "$1.env"
echo "$0|$1|$2" > "$1.args"
ls /proc/$$/fd > "$1.fds" 2>/dev/null
exit 0
