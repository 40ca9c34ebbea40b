#!/bin/busybox sh
# faas-echo: prints its environment, then serves HTTP on :8080; /cgi-bin/echo echoes the request.
# With a command (the run's `command`), runs that busybox applet instead, e.g. ["sh", "-c", "…"].
# httpd runs as a child so that SIGTERM (PID 1 ignores it by default) stops the container at once.
if [ $# -gt 0 ]; then
  exec /bin/busybox "$@"
fi
echo "faas-echo: environment at start:"
/bin/busybox env | /bin/busybox sort
echo "faas-echo: listening on :8080"
/bin/busybox httpd -f -v -p 8080 -h /www &
child=$!
trap 'kill $child; echo "faas-echo: stopped"; exit 0' TERM INT
wait $child
