# Sourced by scripts/test.sh and scripts/chaos.sh: start the platform when it
# is not running, with two-minute certificates and one-minute credential
# leases, and stop it on exit only if this script started it. The caller sets
# $root and $name (the make target, for messages).
py="$root/.state/venv/bin/python"
launcher=("$py" -m aiswa_mesh.launcher)

started=0
if ! "${launcher[@]}" status >/dev/null 2>&1; then
  # Two-minute certificates rotate about once a minute, so the suite runs
  # across rotations and tests/integration/test_rotation.py can watch them.
  # One-minute credential leases renew about every 20 s and are replaced
  # before two minutes (tests/integration/test_credentials.py).
  AISWA_CERT_TTL=${AISWA_CERT_TTL:-2m} AISWA_CRED_TTL=${AISWA_CRED_TTL:-1m} \
    AISWA_CRED_MAX_TTL=${AISWA_CRED_MAX_TTL:-2m} "${launcher[@]}" up
  started=1
fi
cleanup() {
  local status=$?
  if [[ $started == 1 ]]; then
    "${launcher[@]}" down
    # `down` must remove every namespace and link that `up` created.
    left=$(ip -o netns list 2>/dev/null | grep -o '^aiswa-[a-z]*' || true)
    left+=$(ip -o link show 2>/dev/null | grep -o ' aiswa[0-9a-z-]*@\| aiswa0:' || true)
    left+=$(nft list tables 2>/dev/null | grep -o 'aiswa_aiswa0' || true)
    if [[ -n $left ]]; then
      echo "make $name: \`make down\` left pods behind: $left" >&2
      status=1
    fi
  fi
  exit $status
}
trap cleanup EXIT
