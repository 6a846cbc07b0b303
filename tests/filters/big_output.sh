#!/bin/sh
# Writes a reason line and then 10 MB to stdout, then rejects.
echo "<<too much>>"
head -c 10000000 /dev/zero | tr '\000' 'x'
echo
echo "<<never seen>>"
exit 1
