#!/bin/sh
# Starts one researcher's desktop: Xvnc on the VNC port with VNC authentication, and the
# openbox window manager on its display. The clipboard goes one way only, decided here on
# the server and not left to the viewer: -SendCutText=0 (nothing is copied out of the
# desktop), -AcceptCutText=1 (the researcher can paste in).
set -eu

: "${VNC_PORT:=5901}"
: "${VNC_GEOMETRY:=1600x900}"
: "${VNC_DEPTH:=24}"
: "${VNC_PASSWORD_FILE:=/var/run/vre/vnc/password}"
: "${DISPLAY_NUMBER:=1}"

if [ ! -r "$VNC_PASSWORD_FILE" ]; then
  echo "start-desktop: no VNC password at $VNC_PASSWORD_FILE" >&2
  exit 2
fi

run_dir="$(mktemp -d /tmp/desktop.XXXXXX)"
# TigerVNC's password file, made from the plain password the platform hands over.
vncpasswd -f < "$VNC_PASSWORD_FILE" > "$run_dir/passwd"
chmod 0600 "$run_dir/passwd"

Xvnc ":$DISPLAY_NUMBER" \
  -rfbport "$VNC_PORT" \
  -SecurityTypes VncAuth -PasswordFile "$run_dir/passwd" \
  -SendCutText=0 -AcceptCutText=1 \
  -geometry "$VNC_GEOMETRY" -depth "$VNC_DEPTH" \
  -nolisten tcp -AlwaysShared=0 -DisconnectClients=1 &
xvnc=$!
trap 'kill "$xvnc" 2>/dev/null || true' INT TERM
trap 'kill "$xvnc" 2>/dev/null || true; rm -rf "$run_dir"' EXIT

# Wait for the display before starting the window manager on it.
i=0
while [ ! -S "/tmp/.X11-unix/X$DISPLAY_NUMBER" ]; do
  i=$((i + 1))
  if [ "$i" -gt 100 ] || ! kill -0 "$xvnc" 2>/dev/null; then
    echo "start-desktop: Xvnc did not start" >&2
    exit 1
  fi
  sleep 0.1
done

# The window manager comes back if the researcher quits it; the desktop ends with Xvnc.
(
  while kill -0 "$xvnc" 2>/dev/null; do
    DISPLAY=":$DISPLAY_NUMBER" openbox-session || true
    sleep 1
  done
) &

wait "$xvnc"
