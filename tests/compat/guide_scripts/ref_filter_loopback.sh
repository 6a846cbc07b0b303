#!/bin/sh
# filter.sh from the reference guide ("Filters"), adapted: the test client
# connects from 127.0.0.1, not 192.168.0.2, and the sed expression prints only
# the field's value (the guide's prints the whole "X-MailRelay-Client: ..."
# line with its CR, which can never equal a bare address).
content="$1"
envelope="$2"
ip="`sed -n -e '/MailRelay-Client:/{s/^X-MailRelay-Client: *//;s/\r$//;p;q}' \"$envelope\"`"
if test "$ip" = "127.0.0.1"
then
    rm -f "$envelope" "$content"
    exit 100 # <= cancel further processing
fi
exit 0
