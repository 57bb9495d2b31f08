#!/bin/sh
# The researcher's side of a desktop, in its own container beside the display's: once the
# display's X11 socket appears in the shared folder, the openbox window manager and a
# terminal on it. The session ends when the display does (the pod restarts it).
set -eu

: "${DISPLAY_NUMBER:=1}"
socket="/tmp/.X11-unix/X$DISPLAY_NUMBER"
export DISPLAY=":$DISPLAY_NUMBER"

i=0
while [ ! -S "$socket" ]; do
  i=$((i + 1))
  if [ "$i" -gt 300 ]; then
    echo "start-session: the display did not start" >&2
    exit 1
  fi
  sleep 0.1
done

# The window manager comes back if the researcher quits it, while the display answers.
while xdpyinfo >/dev/null 2>&1; do
  openbox-session || true
  sleep 1
done
echo "start-session: the display ended" >&2
exit 1
