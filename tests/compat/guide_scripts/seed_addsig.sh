#!/bin/sh
# seed guide "Running E-MailRelay": the "addsig" pre-processor of
#   emailrelay --as-proxy smarthost:smtp --filter $HOME/bin/addsig --spool-dir $HOME/tmp
# appends a signature to the message body (the content file, CRLF lines)
printf -- '-- \r\nsent through the seed guide proxy\r\n' >> "$1"
exit 0
