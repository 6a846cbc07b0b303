#!/bin/sh
# address verifier -- reject as invalid (550)
echo invalid mailbox: $1
exit 2
