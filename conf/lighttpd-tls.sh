#!/bin/sh
# HTTPS at the door, for conf/lighttpd.conf and conf/lighttpd-sockproxy.conf: each runs
# this with include_shell, and it prints nothing unless RELAY_TLS_CERT is set. Then
# lighttpd serves HTTPS (instead of HTTP) on RELAY_HTTP_ADDR:RELAY_HTTP_PORT:
#   RELAY_TLS_CERT  PEM certificate chain, leaf first (e.g. fullchain.pem)
#   RELAY_TLS_KEY   its PEM private key                              [RELAY_TLS_CERT]
# Relative paths resolve against the directory lighttpd starts in, as the others do.
# Needs Debian's lighttpd-mod-openssl. relayd behind it is unchanged: it speaks plain
# HTTP on its Unix socket, which only lighttpd reaches.
[ -n "${RELAY_TLS_CERT:-}" ] || exit 0
path() {
    case $1 in
        /*) printf '"%s"' "$1" ;;
        *) printf 'var.CWD + "/%s"' "$1" ;;
    esac
}
cat <<EOF
server.modules += ( "mod_openssl" )
ssl.engine = "enable"
ssl.pemfile = $(path "$RELAY_TLS_CERT")
ssl.privkey = $(path "${RELAY_TLS_KEY:-$RELAY_TLS_CERT}")
# TLS 1.2 and 1.3 only; OpenSSL's strong default ciphers
ssl.openssl.ssl-conf-cmd = ( "MinProtocol" => "TLSv1.2" )
EOF
