#!/usr/bin/env bash
# Generates the mesh harness PKI into a directory (default envoy/certs): a CA, the NATS server's
# certificate (the server-side sidecar) and one client certificate per identity in
# envoy/identities.txt, each with its SPIFFE ID as URI SAN, like Istio's workload certificates.
# Private keys are made at run time and never committed. Idempotent: an existing, complete set
# for the same identities is kept.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/certs}
mkdir -p "$out"
cd "$out"

if [[ -f ca.crt && -f .complete ]] && cmp -s .complete "$here/identities.txt"; then
    exit 0
fi
rm -f ./*.crt ./*.key ./*.csr ./*.srl ./*.ext .complete

new_key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null; }

new_key ca
openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/O=natsguard demo/CN=natsguard demo CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.crt 2>/dev/null

# issue NAME SAN: a leaf certificate for both TLS roles (Istio's workload certificates are too).
issue() {
    local name=$1 san=$2
    new_key "$name"
    openssl req -new -key "$name.key" -subj "/O=natsguard demo/CN=$name" -out "$name.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' \
        "$san" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 825 \
        -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}

issue server "URI:spiffe://cluster.local/ns/nats/sa/nats,DNS:nats.nats.svc.cluster.local"
while read -r name spiffe_id _port; do
    [[ -z $name || $name == \#* ]] && continue
    if [[ $spiffe_id == - ]]; then
        issue "$name" "DNS:$name.example"
    else
        issue "$name" "URI:$spiffe_id"
    fi
done < "$here/identities.txt"
rm -f ca.srl
chmod 600 ./*.key
cp "$here/identities.txt" .complete
echo "gen-certs: CA and certificates in $out"
