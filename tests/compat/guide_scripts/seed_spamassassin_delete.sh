#!/bin/sh
awk '{sub("\r$","");print}' "${1}" | spamassassin --local --exit-code > /dev/null
if test $? -ne 0
then
	# spam...
	content="${1}"
	envelope="`echo \"${content}\" | sed 's/content/envelope.new/'`"
	rm -f "${envelope}" "${content}"
	exit 100 # <= tell E-MailRelay that the files are gone
fi
exit 0
