#!/bin/sh
# Rejects with a temporary code, a reason, and a second (log-only) diagnostic line.
echo "some chatter first"
echo "[[452 mailbox full]]"
echo "<<quota exceeded for user 42>>"
echo "<<a third line is ignored>>"
exit 2
