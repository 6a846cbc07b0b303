#!/bin/sh
# Accepts after one second (for the parallelism test).
sleep 1
exit 0
