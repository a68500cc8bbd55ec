# Sourced by the scripts that install what they miss: `apt_install PACKAGE...`
# installs the Debian packages given (none: nothing), through sudo when not root.
apt_install() {
  (($#)) || return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: $*" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}
