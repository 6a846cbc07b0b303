#!/usr/bin/env node
// set-from.js -- an E-MailRelay --filter program (Unix flavour of the
// upstream examples/set-from.js): rewrites the "From:" header of the
// content file given as the first argument to a fixed address.
"use strict";
const fs = require("fs");
const content = process.argv[2];
const from = "From: noreply@example.com";
const text = fs.readFileSync(content, "latin1");
const end = text.indexOf("\r\n\r\n");
const head = end < 0 ? text : text.slice(0, end);
const body = end < 0 ? "" : text.slice(end);
const lines = head.split("\r\n");
let seen = false;
const out = lines.map((line) => {
  if (/^from:/i.test(line)) {
    seen = true;
    return from;
  }
  return line;
});
if (!seen) out.push(from);
fs.writeFileSync(content, out.join("\r\n") + body, "latin1"); // in place: the file stays the relay's
process.exit(0);
