#!/bin/sh
# Installs the Debian packages the tests use, only when they are missing:
# swaks, postfix (for smtp-source / smtp-sink), mpop, fetchmail, openssl,
# spamd (SpamAssassin, for the spam: filter test), logrotate, iproute2 and
# libio-socket-inet6-perl (swaks over IPv6).
# Postfix is installed without configuration and is never started by this script.
set -e
missing=""
command -v swaks >/dev/null 2>&1 || missing="$missing swaks"
command -v smtp-source >/dev/null 2>&1 || missing="$missing postfix"
command -v mpop >/dev/null 2>&1 || missing="$missing mpop"
command -v fetchmail >/dev/null 2>&1 || missing="$missing fetchmail"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v spamd >/dev/null 2>&1 || missing="$missing spamd"
command -v logrotate >/dev/null 2>&1 || missing="$missing logrotate"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
# swaks talks IPv6 (the tests' ::1 clients) only with IO::Socket::INET6
perl -MIO::Socket::INET6 -e 1 >/dev/null 2>&1 || missing="$missing libio-socket-inet6-perl"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-system-packages: need root to install:$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
