#!/bin/sh
# Test filter (not from the guide): "Subject: exit N" chooses the exit code
# and "Subject: exit N say TEXT" prints TEXT (with \n as line breaks) first.
content="$1"
subject="`sed -n -e '/^Subject: /{s/^Subject: //;s/\r$//;p;q}' \"$content\"`"
code="`printf '%s\\n' \"$subject\" | sed -n -e 's/^exit \([0-9]*\).*/\1/p'`"
say="`printf '%s\\n' \"$subject\" | sed -n -e 's/^exit [0-9]* say //p'`"
test -n "$say" && printf "$say\n"
exit "${code:-0}"
