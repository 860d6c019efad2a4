# Prints lighttpd's proxy settings for conf/lighttpd-balance.conf: one backend per
# socket in RELAY_SOCKETS (space-separated), each relative path joined to var.CWD.
set -eu
sockets=${RELAY_SOCKETS:-var/run/relay1.sock var/run/relay2.sock var/run/relay3.sock}
printf 'proxy.balance = "least-connection"\n'
printf 'proxy.server := ( "/" => ( '
for p in $sockets; do
  case $p in
    /*) printf '( "socket" => "%s", ' "$p" ;;
    *) printf '( "socket" => var.CWD + "/%s", ' "$p" ;;
  esac
  # as in lighttpd.conf; a socket that refuses is skipped for disable-time seconds
  printf '"read-timeout" => 120, "connect-timeout" => 5, "disable-time" => 1 ), '
done
printf ') )\n'
