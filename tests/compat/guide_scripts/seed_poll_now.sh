#!/bin/sh
# seed guide "Usage patterns": a --filter that makes forwarding happen as soon
# as a new message is received, by exiting with 103 (here only for messages
# whose subject is "now", so that a test can compare with exit 0)
if grep -q '^Subject: now' "$1"
then
	exit 103
fi
exit 0
