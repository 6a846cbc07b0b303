#!/bin/sh
# filter.sh
content="$1"
envelope="$2"
ip="`sed -n -e '/MailRelay-Client:/{p;q}' \"$envelope\"`"
if test "$ip" = "192.168.0.2"
then
    rm -f "$envelope" "$content"
    exit 100 # <= cancel further processing
fi
exit 0
