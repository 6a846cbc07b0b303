#!/bin/sh
# seed guide "Preventing open mail relay": an address verifier that accepts
# local users from anyone, and remote addresses only from clients that
# authenticated (not from those exempted by "NONE server *.*.*.* x")
# args: recipient from ip:port domain mechanism name
case "$1" in
	*@local.example)
		echo "Local User"
		echo "`echo "$1" | sed 's/@.*//'`"
		exit 0
		;;
esac
case "$5" in
	"" | none | NONE)
		echo "no relaying for unauthenticated clients"
		exit 2
		;;
esac
echo ""
echo "$1"
exit 1
