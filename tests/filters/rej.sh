#!/bin/sh
# The filter of the upstream fixture: reject with a 550 and a reason.
echo "<<550 not today>>"
exit 1
