#!/bin/sh
# The display of one researcher's desktop, in a container of its own: Xvnc on the VNC port
# with VNC authentication, and nothing else. The session (images/desktop/start-session.sh)
# runs in another container and shares only the X11 socket folder, read-only, so nothing it
# runs can reach the VNC password, replace the server or change what it sends. The clipboard
# goes one way only, decided here on the server: -SendCutText=0 (nothing is copied out),
# -AcceptCutText=1 (the researcher can paste in), and an X client may change nothing but the
# desktop's name (-AllowOverride=desktop), so `vncconfig -set SendCutText=1` does nothing.
set -eu

: "${VNC_PORT:=5901}"
: "${VNC_GEOMETRY:=1600x900}"
: "${VNC_DEPTH:=24}"
: "${VNC_PASSWORD_FILE:=/var/run/vre/vnc/password}"
: "${DISPLAY_NUMBER:=1}"

if [ ! -r "$VNC_PASSWORD_FILE" ]; then
  echo "start-display: no VNC password at $VNC_PASSWORD_FILE" >&2
  exit 2
fi

run_dir="$(mktemp -d /tmp/display.XXXXXX)"
# TigerVNC's password file, made from the plain password the platform hands over.
vncpasswd -f < "$VNC_PASSWORD_FILE" > "$run_dir/passwd"
chmod 0600 "$run_dir/passwd"

Xvnc ":$DISPLAY_NUMBER" \
  -rfbport "$VNC_PORT" \
  -SecurityTypes VncAuth -PasswordFile "$run_dir/passwd" \
  -SendCutText=0 -SendPrimary=0 -AcceptCutText=1 -AllowOverride=desktop \
  -geometry "$VNC_GEOMETRY" -depth "$VNC_DEPTH" \
  -nolisten tcp -AlwaysShared=0 -DisconnectClients=1 &
xvnc=$!
trap 'kill "$xvnc" 2>/dev/null || true' INT TERM
trap 'kill "$xvnc" 2>/dev/null || true; rm -rf "$run_dir"' EXIT
wait "$xvnc"
