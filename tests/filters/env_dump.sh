#!/bin/sh
# Writes its environment, its arguments and its open descriptors next to the content file.
env > "$1.env"
echo "$0|$1|$2" > "$1.args"
fd0=`readlink /proc/$$/fd/0`
fd1=`readlink /proc/$$/fd/1`
fd2=`readlink /proc/$$/fd/2`
targets=`for f in /proc/$$/fd/*; do readlink "$f"; done | tr '\n' ' '`
echo "$fd0|$fd1|$fd2|$targets" > "$1.fds"
exit 0
