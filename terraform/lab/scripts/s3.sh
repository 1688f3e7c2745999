#!/usr/bin/env bash
# The region's S3-compatible server (moto) on the region's public address, with one bucket.
# Environment: STATE, REGION, NETNS, ADDR, PORT, BUCKET, MOTO_SERVER (up); REGION (down).
export LAB_WHAT=s3
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"
need STATE REGION

up() {
  need NETNS ADDR PORT BUCKET MOTO_SERVER
  cleanup_on_failure down
  local moto=()
  if command -v "$MOTO_SERVER" >/dev/null; then
    moto=("$(command -v "$MOTO_SERVER")")
  elif [ "$MOTO_SERVER" = moto_server ] && python3 -c 'import moto.server' 2>/dev/null; then
    # Installed as a module without its console script on PATH.
    moto=("$(command -v python3)" -m moto.server)
  else
    die "$MOTO_SERVER is not installed (pip install 'moto[server]')"
  fi
  start_daemon "s3-$REGION" "$NETNS" "${moto[@]}" -H "$ADDR" -p "$PORT"
  wait_daemon 60 "s3-$REGION" http_ok "$NETNS" "http://$ADDR:$PORT/moto-api/"
  in_ns "$NETNS" curl -fsS -o /dev/null -X PUT "http://$ADDR:$PORT/$BUCKET" ||
    die "creating bucket $BUCKET failed"
}

down() {
  stop_daemon "s3-$REGION" 5
}

case "${1:-}" in
up) up ;;
down) down ;;
*) die "usage: s3.sh up|down" ;;
esac
