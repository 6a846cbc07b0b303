#!/bin/sh
# Test address verifier: the recipient's local part picks the answer.
rcpt="$1"
local=`echo "$rcpt" | sed -e 's/@.*//'`
case "$local" in
    postmaster) echo "Local Postmaster <postmaster@localhost>" ; echo postmaster ; exit 0 ;;
    Upper*) echo "" ; echo "$rcpt" | tr '[A-Z]' '[a-z]' ; exit 1 ;;
    remote*) echo "" ; echo "$rcpt" ; exit 1 ;;
    empty*) echo "" ; echo "" ; exit 1 ;;
    bad*) echo "invalid mailbox: $rcpt" ; exit 2 ;;
    diag*) echo "no such user" ; echo "looked in /etc/passwd" ; exit 2 ;;
    temp*) echo "mailbox unavailable: $rcpt" ; exit 3 ;;
    abort*) exit 100 ;;
    odd*) echo "odd code" ; exit 7 ;;
    high*) echo "high code" ; exit 101 ;;
    args*) echo "$1|$2|$3|$4|$5|$6|$#" ; exit 2 ;;
    slash*) echo "Name" ; echo "../etc" ; exit 0 ;;
    angle*) echo "" ; echo "x>@y" ; exit 1 ;;
    ctl*) printf 'reason\033[2Jwith\tcontrols\r\n' ; exit 2 ;;
    sleep*) sleep 300 ; exit 1 ;;
    *) echo "unknown" ; exit 2 ;;
esac
