#!/usr/bin/env bash
# End-to-end demonstration of homeport's signing tools: generate a Synapse
# format key, sign a document as a server, verify it, then show that a
# tampered copy is rejected.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${HOMEPORT_BIN:-target/debug/homeport}
[ -x "$bin" ] || cargo build -q -p homeport
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

"$bin" keygen --version a_demo -o "$dir/example.org.signing.key" 2> "$dir/keygen.log"
cat "$dir/keygen.log"
public=$(sed -n 's/.*(public key \([^)]*\)).*/\1/p' "$dir/keygen.log")

echo '{"server_name": "example.org", "valid_until_ts": 1e12, "hello": "world"}' > "$dir/doc.json"
echo "canonical:  $("$bin" canonical-json "$dir/doc.json")"
"$bin" sign-json --key "$dir/example.org.signing.key" --server-name example.org "$dir/doc.json" > "$dir/signed.json"
echo "signed:     $(cat "$dir/signed.json")"

"$bin" verify-json --server-name example.org --key-id ed25519:a_demo --public-key "$public" "$dir/signed.json"
echo "verify:     valid (exit 0)"

sed 's/world/mars/' "$dir/signed.json" > "$dir/tampered.json"
if "$bin" verify-json --server-name example.org --key-id ed25519:a_demo --public-key "$public" "$dir/tampered.json" 2> "$dir/err"; then
  echo "tampered document verified: this is a bug" >&2
  exit 1
fi
echo "tampered:   rejected: $(cat "$dir/err")"
