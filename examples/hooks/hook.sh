#!/bin/sh
# One HTTP request on stdin (nc -e), one answer on stdout. Records "<METHOD> <path> <body>".
read -r method target _
length=0
while read -r header; do
  header=$(printf '%s' "$header" | tr -d '\r')
  [ -z "$header" ] && break
  case "$header" in
    [Cc]ontent-[Ll]ength:*) length=$(printf '%s' "${header#*:}" | tr -dc '0-9') ;;
  esac
done
body=$(head -c "${length:-0}")
printf '%s %s %s\n' "$method" "$target" "$body" >> /srv/www/hooks.log
printf 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n'
