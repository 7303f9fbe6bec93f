# shellcheck shell=bash
# A throwaway test CA and leaf certificates, made with openssl (ECDSA P-256).
#
#   ca_init DIR [LABEL]              DIR/ca.key, DIR/ca.crt; sets INTEROP_CA_DIR
#   ca_leaf DIR NAME SAN...          DIR/NAME.key, DIR/NAME.crt signed by DIR's CA;
#                                    SAN items are openssl's: DNS:hs1.test IP:127.0.0.61
#
# Everything is valid for 30 days from now.

ca_init() {
  local dir=$1 label=${2:-test CA}
  mkdir -p "$dir"
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -days 30 \
    -subj "/CN=homeport interop $label $(date -u +%Y%m%dT%H%M%S)" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null ||
    die "openssl: cannot make the test CA in $dir"
  INTEROP_CA_DIR=$dir
  export INTEROP_CA_DIR
}

ca_leaf() {
  local dir=$1 name=$2 san
  shift 2
  (($# > 0)) || die "ca_leaf $name: at least one SAN (DNS:name or IP:addr)"
  san=$(IFS=,; printf '%s' "$*")
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$name" 2>/dev/null ||
    die "openssl: cannot make the key and CSR for $name"
  cat >"$dir/$name.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=$san
EOF
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 12)" -days 30 -extfile "$dir/$name.ext" \
    -out "$dir/$name.crt" 2>/dev/null ||
    die "openssl: cannot sign the certificate for $name"
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}
