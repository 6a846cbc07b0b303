#!/bin/sh
# address verifier -- abort
exit 100
