"""Repeated boto3 Decrypt calls against Cloister's key service.

Usage: python3 kms_boto3.py ENDPOINT COUNT

Credentials come from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION). The script creates a key,
encrypts a plaintext, then decrypts the same ciphertext COUNT times in a
tight loop with one unmodified client, as an application decrypting the same
secret twice does. boto3 signs identical requests made within one second
identically (X-Amz-Date has one-second resolution), so several of these
requests carry the same signature. It prints one JSON object: the decrypted
plaintexts' agreement, the number of decrypts and of distinct signatures, or
the first error; it exits 1 on any error.
"""

import json
import sys

import boto3
import botocore.config


def main():
    endpoint, count = sys.argv[1], int(sys.argv[2])
    client = boto3.client(
        "kms",
        endpoint_url=endpoint,
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )
    signatures = []

    def record(request, **_):
        auth = request.headers.get("Authorization", b"")
        if isinstance(auth, bytes):
            auth = auth.decode()
        signatures.append(auth.rpartition("Signature=")[2])

    client.meta.events.register("before-send.kms.Decrypt", record)
    key_id = client.create_key(Description="boto3 repeated decrypt")["KeyMetadata"]["KeyId"]
    plaintext = b"decrypted twice within one second"
    blob = client.encrypt(KeyId=key_id, Plaintext=plaintext)["CiphertextBlob"]
    result = {"decrypts": 0}
    try:
        for _ in range(count):
            out = client.decrypt(CiphertextBlob=blob)
            if out["Plaintext"] != plaintext or out["KeyId"].rpartition("/")[2] != key_id:
                raise RuntimeError("Decrypt returned %r for key %s" % (out["Plaintext"], out["KeyId"]))
            result["decrypts"] += 1
    except Exception as e:  # report any failure, botocore's or ours
        result["error"] = "%s: %s" % (type(e).__name__, e)
    result["distinct_signatures"] = len(set(signatures))
    print(json.dumps(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
