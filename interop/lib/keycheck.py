"""Checks on key documents, run with the Synapse venv's python (signedjson).

  keycheck.py server DOC NAME KEYFILE
      DOC is Synapse's GET /_matrix/key/v2/server answer: server_name is NAME,
      verify_keys are exactly the keys of KEYFILE (Synapse's NAME.signing.key),
      the self-signature verifies, valid_until_ts is in the future.
  keycheck.py notary DOC ORIGIN ORIGIN_KEYFILE NOTARY NOTARY_KEYFILE [FRESH_MS]
      DOC is a notary's /_matrix/key/v2/query answer: one entry for ORIGIN
      with ORIGIN_KEYFILE's keys, signed by ORIGIN and by NOTARY. With
      FRESH_MS, the entry's valid_until_ts must be at least FRESH_MS (a key
      document the origin signed after a given time, not an older cached one).
  keycheck.py empty DOC
      DOC is a notary answer with no server_keys.
  keycheck.py homeport DOC NAME KEYFILE VIA [NOTARY]
      DOC is `homeport keys --json`: ok true, server_name NAME, via VIA,
      notary NOTARY (or null), the key ids and keys are KEYFILE's, each ok.

Prints one line (the detail for the scenario table); exit 0 pass, 1 fail.
"""

import json
import sys
import time

from signedjson.key import (
    encode_verify_key_base64,
    get_verify_key,
    read_signing_keys,
)
from signedjson.sign import SignatureVerifyException, verify_signed_json


class Fail(Exception):
    pass


def load(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except ValueError as e:
        raise Fail(f"not JSON ({e}): {text[:200]!r}")


def file_keys(path):
    """{key_id: VerifyKey} from a Synapse signing key file."""
    with open(path, encoding="utf-8") as f:
        keys = read_signing_keys(f)
    out = {}
    for sk in keys:
        vk = get_verify_key(sk)
        out[f"{sk.alg}:{sk.version}"] = vk
    if not out:
        raise Fail(f"no keys in {path}")
    return out


def b64(vk):
    return encode_verify_key_base64(vk)


def verify(doc, name, keys, what):
    sigs = doc.get("signatures", {}).get(name)
    if not sigs:
        raise Fail(f"{what}: no signature by {name} (signers: {sorted(doc.get('signatures', {}))})")
    for key_id in sigs:
        vk = keys.get(key_id)
        if vk is None:
            continue
        try:
            verify_signed_json(doc, name, vk)
        except SignatureVerifyException as e:
            raise Fail(f"{what}: signature by {name} {key_id} does not verify: {e}")
        return key_id
    raise Fail(f"{what}: {name} signed with {sorted(sigs)}, none of {sorted(keys)}")


def hours_left(ts):
    return (ts / 1000 - time.time()) / 3600


def check_server_doc(doc, name, keys, what):
    if doc.get("server_name") != name:
        raise Fail(f"{what}: server_name {doc.get('server_name')!r}, want {name!r}")
    vks = doc.get("verify_keys", {})
    if set(vks) != set(keys):
        raise Fail(f"{what}: verify_keys {sorted(vks)}, key file has {sorted(keys)}")
    for key_id, vk in keys.items():
        got = vks[key_id].get("key", "").rstrip("=")
        if got != b64(vk):
            raise Fail(f"{what}: {key_id} is {got}, key file says {b64(vk)}")
    vu = doc.get("valid_until_ts")
    if not isinstance(vu, int) or hours_left(vu) <= 0:
        raise Fail(f"{what}: valid_until_ts {vu!r} is not in the future")
    return vu


def cmd_server(doc_path, name, keyfile):
    doc = load(doc_path)
    keys = file_keys(keyfile)
    vu = check_server_doc(doc, name, keys, name)
    kid = verify(doc, name, keys, name)
    old = sorted(doc.get("old_verify_keys", {}))
    return (f"{kid} self-signed, valid_until_ts +{hours_left(vu):.1f}h"
            f", old_verify_keys {old}")


def cmd_notary(doc_path, origin, origin_keyfile, notary, notary_keyfile, fresh_ms=None):
    doc = load(doc_path)
    entries = doc.get("server_keys")
    if not isinstance(entries, list):
        raise Fail(f"no server_keys list: {json.dumps(doc)[:200]}")
    mine = [e for e in entries if e.get("server_name") == origin]
    if len(mine) != 1:
        raise Fail(f"{len(mine)} entries for {origin} among {len(entries)}")
    entry = mine[0]
    okeys = file_keys(origin_keyfile)
    nkeys = file_keys(notary_keyfile)
    vu = check_server_doc(entry, origin, okeys, f"{origin} via {notary}")
    okid = verify(entry, origin, okeys, f"{origin} via {notary}")
    nkid = verify(entry, notary, nkeys, f"{origin} via {notary}")
    if fresh_ms is not None and vu < int(fresh_ms):
        raise Fail(f"{origin} via {notary}: valid_until_ts {vu} < {fresh_ms}: "
                   f"a cached key document, not a fresh fetch")
    signers = sorted(entry.get("signatures", {}))
    return (f"{origin} {okid} signed by {signers} ({origin} {okid}, {notary} {nkid} verified)"
            f", valid_until_ts +{hours_left(vu):.1f}h")


def cmd_empty(doc_path):
    doc = load(doc_path)
    if doc.get("server_keys") != []:
        raise Fail(f"want server_keys [], got {json.dumps(doc)[:200]}")
    return "server_keys: [] (200)"


def cmd_homeport(doc_path, name, keyfile, via, notary=None):
    doc = load(doc_path)
    keys = file_keys(keyfile)
    if doc.get("server_name") != name:
        raise Fail(f"server_name {doc.get('server_name')!r}, want {name!r}")
    if doc.get("ok") is not True:
        raise Fail(f"ok is {doc.get('ok')!r}; problems {doc.get('problems')}")
    if doc.get("via") != via:
        raise Fail(f"via {doc.get('via')!r}, want {via!r}")
    if doc.get("notary") != notary:
        raise Fail(f"notary {doc.get('notary')!r}, want {notary!r}")
    listed = doc.get("keys")
    if not isinstance(listed, list):
        raise Fail(f"keys is not a list: {listed!r}")
    ids = [k.get("key_id") for k in listed]
    if sorted(ids) != sorted(keys):
        raise Fail(f"key ids {ids}, Synapse's key file has {sorted(keys)}")
    for k in listed:
        want = b64(keys[k["key_id"]])
        if str(k.get("key", "")).rstrip("=") != want:
            raise Fail(f"{k['key_id']}: key {k.get('key')!r}, key file says {want}")
        if k.get("ok") is not True:
            raise Fail(f"{k['key_id']}: ok {k.get('ok')!r}")
    return f"ok, via {via}, keys {ids}, problems {doc.get('problems')}"


def main(argv):
    cmds = {"server": cmd_server, "notary": cmd_notary, "empty": cmd_empty,
            "homeport": cmd_homeport}
    if len(argv) < 2 or argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(cmds[argv[1]](*argv[2:]))
        return 0
    except Fail as e:
        print(e)
        return 1
    except (OSError, KeyError, TypeError, AttributeError, ValueError) as e:
        print(f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
