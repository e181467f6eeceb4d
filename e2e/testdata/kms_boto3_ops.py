"""Every key-service operation and its error codes, driven by boto3.

Usage: python3 kms_boto3_ops.py ENDPOINT

Credentials come from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION). Each check calls the service
through an unmodified boto3 KMS client. Operations that the installed
botocore predates (Debian's python3-botocore lacks DeriveSharedSecret,
ListKeyRotations and RotateKeyOnDemand) are sent through botocore's own
SigV4 signer and HTTP session with the same JSON body, and reported in
"raw_operations". The script prints one JSON object: the names of the checks
that passed, the failures with their reason, and the operations used; it
exits 1 on any failure.
"""

import base64
import hashlib
import json
import sys

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.exceptions

ENDPOINT = sys.argv[1]
CLIENT = boto3.client(
    "kms",
    endpoint_url=ENDPOINT,
    config=botocore.config.Config(retries={"total_max_attempts": 1}),
)
SESSION = boto3.session.Session()
RESULT = {"passed": [], "failed": [], "operations": [], "raw_operations": [], "client_refused": []}


class APIError(Exception):
    def __init__(self, code, message):
        super().__init__("%s: %s" % (code, message))
        self.code = code


def _blobs(value):
    """JSON-encodes bytes as base64, as botocore does for blob members."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _blobs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blobs(v) for v in value]
    return value


def _raw(op, params):
    creds = SESSION.get_credentials().get_frozen_credentials()
    body = json.dumps(_blobs(params)).encode()
    req = botocore.awsrequest.AWSRequest(
        method="POST",
        url=ENDPOINT + "/",
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService." + op},
    )
    botocore.auth.SigV4Auth(creds, "kms", SESSION.region_name or "us-east-1").add_auth(req)
    resp = botocore.httpsession.URLLib3Session().send(req.prepare())
    out = json.loads(resp.content or b"{}")
    if resp.status_code != 200:
        raise APIError(out.get("__type", "?"), out.get("message") or out.get("Message"))
    return out


def call(op, **params):
    """Calls op with boto3 (or signed raw JSON when botocore lacks it)."""
    name = "".join("_" + c.lower() if c.isupper() else c for c in op).lstrip("_")
    if op not in RESULT["operations"]:
        RESULT["operations"].append(op)
    if op in CLIENT.meta.service_model.operation_names:
        try:
            return getattr(CLIENT, name)(**params)
        except botocore.exceptions.ClientError as e:
            raise APIError(e.response["Error"]["Code"], e.response["Error"].get("Message"))
        except botocore.exceptions.ParamValidationError:
            # botocore refuses the value (or does not know the member)
            # before sending: send it anyway, the service must refuse it.
            RESULT["client_refused"].append(op)
    if op not in RESULT["raw_operations"]:
        RESULT["raw_operations"].append(op)
    out = _raw(op, params)
    for k in ("SharedSecret", "CiphertextForRecipient", "PublicKey"):
        if k in out:
            out[k] = base64.b64decode(out[k])
    return out


def check(name, fn):
    try:
        fn()
        RESULT["passed"].append(name)
    except Exception as e:  # report every failure, botocore's or ours
        RESULT["failed"].append({"check": name, "error": "%s: %s" % (type(e).__name__, e)})


def expect(code, op, **params):
    try:
        call(op, **params)
    except APIError as e:
        if e.code != code:
            raise AssertionError("%s answered %s, want %s" % (op, e, code))
        return
    raise AssertionError("%s succeeded, want %s" % (op, code))


def assert_eq(got, want, what):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def key(spec="SYMMETRIC_DEFAULT", usage=None, **kw):
    params = {"KeySpec": spec}
    if usage:
        params["KeyUsage"] = usage
    params.update(kw)
    return call("CreateKey", **params)["KeyMetadata"]


def symmetric():
    k = key(Description="boto3", Tags=[{"TagKey": "suite", "TagValue": "boto3"}])
    kid = k["KeyId"]
    assert_eq(k["EncryptionAlgorithms"], ["SYMMETRIC_DEFAULT"], "EncryptionAlgorithms")
    assert_eq(call("DescribeKey", KeyId=kid)["KeyMetadata"]["Description"], "boto3", "DescribeKey")
    assert kid in [x["KeyId"] for x in call("ListKeys", Limit=1000)["Keys"]], "ListKeys misses the key"
    ec = {"app": "boto3"}
    blob = call("Encrypt", KeyId=kid, Plaintext=b"secret", EncryptionContext=ec)["CiphertextBlob"]
    assert_eq(call("Decrypt", CiphertextBlob=blob, EncryptionContext=ec)["Plaintext"], b"secret", "Decrypt")
    expect("InvalidCiphertextException", "Decrypt", CiphertextBlob=blob, EncryptionContext={"app": "other"})
    k2 = key()["KeyId"]
    expect("IncorrectKeyException", "Decrypt", CiphertextBlob=blob, EncryptionContext=ec, KeyId=k2)
    re = call("ReEncrypt", CiphertextBlob=blob, SourceEncryptionContext=ec, DestinationKeyId=k2)["CiphertextBlob"]
    assert_eq(call("Decrypt", CiphertextBlob=re)["Plaintext"], b"secret", "after ReEncrypt")
    dk = call("GenerateDataKey", KeyId=kid, KeySpec="AES_256")
    assert_eq(call("Decrypt", CiphertextBlob=dk["CiphertextBlob"])["Plaintext"], dk["Plaintext"], "data key")
    assert "Plaintext" not in call("GenerateDataKeyWithoutPlaintext", KeyId=kid, NumberOfBytes=16)
    assert_eq(len(call("GenerateRandom", NumberOfBytes=48)["Plaintext"]), 48, "GenerateRandom")
    expect("ValidationException", "GenerateDataKey", KeyId=kid)
    expect("DryRunOperationException", "Encrypt", KeyId=kid, Plaintext=b"x", DryRun=True)
    expect("NotFoundException", "DescribeKey", KeyId="alias/does-not-exist")


def policies_and_rotation():
    kid = key()["KeyId"]
    pol = json.loads(call("GetKeyPolicy", KeyId=kid, PolicyName="default")["Policy"])
    call("PutKeyPolicy", KeyId=kid, PolicyName="default", Policy=json.dumps(pol))
    assert_eq(call("ListKeyPolicies", KeyId=kid)["PolicyNames"], ["default"], "ListKeyPolicies")
    expect("MalformedPolicyDocumentException", "PutKeyPolicy", KeyId=kid, PolicyName="default", Policy="{}")
    call("EnableKeyRotation", KeyId=kid, RotationPeriodInDays=90)
    assert call("GetKeyRotationStatus", KeyId=kid)["KeyRotationEnabled"]
    call("RotateKeyOnDemand", KeyId=kid)
    rot = call("ListKeyRotations", KeyId=kid)["Rotations"]
    assert_eq([r["RotationType"] for r in rot], ["ON_DEMAND"], "ListKeyRotations")
    call("DisableKeyRotation", KeyId=kid)
    assert not call("GetKeyRotationStatus", KeyId=kid)["KeyRotationEnabled"]
    expect("ValidationException", "EnableKeyRotation", KeyId=kid, RotationPeriodInDays=5)
    mac = key("HMAC_256", "GENERATE_VERIFY_MAC")["KeyId"]
    expect("UnsupportedOperationException", "EnableKeyRotation", KeyId=mac)


def aliases_tags_descriptions():
    a, b = key()["KeyId"], key()["KeyId"]
    call("CreateAlias", AliasName="alias/boto3-moving", TargetKeyId=a)
    expect("AlreadyExistsException", "CreateAlias", AliasName="alias/boto3-moving", TargetKeyId=b)
    call("UpdateAlias", AliasName="alias/boto3-moving", TargetKeyId=b)
    assert_eq(call("DescribeKey", KeyId="alias/boto3-moving")["KeyMetadata"]["KeyId"], b, "UpdateAlias")
    aliases = call("ListAliases", KeyId=b)["Aliases"]
    assert_eq([x["AliasName"] for x in aliases], ["alias/boto3-moving"], "ListAliases")
    mac = key("HMAC_256", "GENERATE_VERIFY_MAC")["KeyId"]
    expect("ValidationException", "UpdateAlias", AliasName="alias/boto3-moving", TargetKeyId=mac)
    expect("NotFoundException", "UpdateAlias", AliasName="alias/boto3-none", TargetKeyId=a)
    call("DeleteAlias", AliasName="alias/boto3-moving")
    call("TagResource", KeyId=a, Tags=[{"TagKey": "team", "TagValue": "x"}, {"TagKey": "env", "TagValue": "dev"}])
    call("UntagResource", KeyId=a, TagKeys=["env"])
    assert_eq(call("ListResourceTags", KeyId=a)["Tags"], [{"TagKey": "team", "TagValue": "x"}], "ListResourceTags")
    expect("TagException", "TagResource", KeyId=a, Tags=[{"TagKey": "aws:reserved", "TagValue": "x"}])
    call("UpdateKeyDescription", KeyId=a, Description="described by boto3")
    assert_eq(call("DescribeKey", KeyId=a)["KeyMetadata"]["Description"], "described by boto3", "UpdateKeyDescription")


def lifecycle():
    kid = key()["KeyId"]
    call("DisableKey", KeyId=kid)
    expect("DisabledException", "Encrypt", KeyId=kid, Plaintext=b"x")
    call("EnableKey", KeyId=kid)
    d = call("ScheduleKeyDeletion", KeyId=kid, PendingWindowInDays=7)
    assert_eq(d["KeyState"], "PendingDeletion", "ScheduleKeyDeletion")
    expect("KMSInvalidStateException", "Encrypt", KeyId=kid, Plaintext=b"x")
    expect("ValidationException", "ScheduleKeyDeletion", KeyId=key()["KeyId"], PendingWindowInDays=3)
    call("CancelKeyDeletion", KeyId=kid)
    assert_eq(call("DescribeKey", KeyId=kid)["KeyMetadata"]["KeyState"], "Disabled", "after CancelKeyDeletion")


SIGNING = [
    ("ECC_NIST_P256", "ECDSA_SHA_256", hashlib.sha256),
    ("ECC_NIST_P384", "ECDSA_SHA_384", hashlib.sha384),
    ("ECC_NIST_P521", "ECDSA_SHA_512", hashlib.sha512),
    ("ECC_SECG_P256K1", "ECDSA_SHA_256", hashlib.sha256),
    ("RSA_2048", "RSASSA_PSS_SHA_256", hashlib.sha256),
    ("RSA_2048", "RSASSA_PSS_SHA_384", hashlib.sha384),
    ("RSA_2048", "RSASSA_PSS_SHA_512", hashlib.sha512),
    ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256", hashlib.sha256),
    ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_384", hashlib.sha384),
    ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_512", hashlib.sha512),
]


def signing():
    keys = {}
    msg = b"signed by boto3"
    for spec, alg, h in SIGNING:
        if spec not in keys:
            keys[spec] = key(spec, "SIGN_VERIFY")["KeyId"]
            pk = call("GetPublicKey", KeyId=keys[spec])
            assert_eq(pk["KeyUsage"], "SIGN_VERIFY", "GetPublicKey KeyUsage")
            assert pk["PublicKey"][:1] == b"\x30", "PublicKey is not DER"
        kid = keys[spec]
        for mtype, m in (("RAW", msg), ("DIGEST", h(msg).digest())):
            sig = call("Sign", KeyId=kid, Message=m, MessageType=mtype, SigningAlgorithm=alg)["Signature"]
            ok = call("Verify", KeyId=kid, Message=m, MessageType=mtype, SigningAlgorithm=alg, Signature=sig)
            assert ok["SignatureValid"], "%s %s %s does not verify" % (spec, alg, mtype)
            expect("KMSInvalidSignatureException", "Verify", KeyId=kid, Message=m + b"!" if mtype == "RAW" else bytes(len(m)),
                   MessageType=mtype, SigningAlgorithm=alg, Signature=sig)
    p256 = keys["ECC_NIST_P256"]
    expect("InvalidKeyUsageException", "Sign", KeyId=p256, Message=msg, SigningAlgorithm="ECDSA_SHA_384")
    expect("ValidationException", "Sign", KeyId=p256, Message=b"short", MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256")
    expect("ValidationException", "Sign", KeyId=p256, Message=bytes(4097), SigningAlgorithm="ECDSA_SHA_256")
    expect("InvalidKeyUsageException", "Sign", KeyId=key()["KeyId"], Message=msg, SigningAlgorithm="ECDSA_SHA_256")
    expect("UnsupportedOperationException", "GetPublicKey", KeyId=key()["KeyId"])


def asymmetric_encryption():
    kid = key("RSA_3072", "ENCRYPT_DECRYPT")["KeyId"]
    for alg in ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"):
        blob = call("Encrypt", KeyId=kid, Plaintext=b"rsa", EncryptionAlgorithm=alg)["CiphertextBlob"]
        out = call("Decrypt", KeyId=kid, CiphertextBlob=blob, EncryptionAlgorithm=alg)
        assert_eq((out["Plaintext"], out["EncryptionAlgorithm"]), (b"rsa", alg), "RSA Decrypt")
    expect("InvalidKeyUsageException", "Encrypt", KeyId=kid, Plaintext=b"x")
    expect("ValidationException", "Encrypt", KeyId=kid, Plaintext=bytes(400), EncryptionAlgorithm="RSAES_OAEP_SHA_256")


def macs():
    for spec, alg in (("HMAC_224", "HMAC_SHA_224"), ("HMAC_256", "HMAC_SHA_256"), ("HMAC_384", "HMAC_SHA_384"), ("HMAC_512", "HMAC_SHA_512")):
        k = key(spec, "GENERATE_VERIFY_MAC")
        assert_eq(k["MacAlgorithms"], [alg], "MacAlgorithms")
        mac = call("GenerateMac", KeyId=k["KeyId"], Message=b"m", MacAlgorithm=alg)["Mac"]
        assert call("VerifyMac", KeyId=k["KeyId"], Message=b"m", MacAlgorithm=alg, Mac=mac)["MacValid"]
        expect("KMSInvalidMacException", "VerifyMac", KeyId=k["KeyId"], Message=b"n", MacAlgorithm=alg, Mac=mac)
    expect("InvalidKeyUsageException", "GenerateMac", KeyId=k["KeyId"], Message=b"m", MacAlgorithm="HMAC_SHA_256")
    expect("ValidationException", "CreateKey", KeySpec="HMAC_256")


def key_pairs_and_agreement():
    kid = key()["KeyId"]
    for spec in ("RSA_2048", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1"):
        out = call("GenerateDataKeyPair", KeyId=kid, KeyPairSpec=spec)
        back = call("Decrypt", CiphertextBlob=out["PrivateKeyCiphertextBlob"])["Plaintext"]
        assert_eq(back, out["PrivateKeyPlaintext"], spec + " private key")
    out = call("GenerateDataKeyPairWithoutPlaintext", KeyId=kid, KeyPairSpec="ECC_NIST_P256")
    assert "PrivateKeyPlaintext" not in out and out["PublicKey"], "WithoutPlaintext"
    expect("ValidationException", "GenerateDataKeyPair", KeyId=kid, KeyPairSpec="RSA_1024")
    # ECDH is symmetric: A with B's public key equals B with A's.
    for spec in ("ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521"):
        a, b = key(spec, "KEY_AGREEMENT")["KeyId"], key(spec, "KEY_AGREEMENT")["KeyId"]
        pa, pb = call("GetPublicKey", KeyId=a)["PublicKey"], call("GetPublicKey", KeyId=b)["PublicKey"]
        sab = call("DeriveSharedSecret", KeyId=a, KeyAgreementAlgorithm="ECDH", PublicKey=pb)["SharedSecret"]
        sba = call("DeriveSharedSecret", KeyId=b, KeyAgreementAlgorithm="ECDH", PublicKey=pa)["SharedSecret"]
        assert sab == sba and len(sab) > 0, spec + " shared secrets differ"
    expect("InvalidKeyUsageException", "DeriveSharedSecret", KeyId=key("ECC_NIST_P256", "SIGN_VERIFY")["KeyId"],
           KeyAgreementAlgorithm="ECDH", PublicKey=pa)


def grants():
    kid = key()["KeyId"]
    grantee = "arn:aws:iam::111122223333:role/boto3-grantee"
    g = call("CreateGrant", KeyId=kid, GranteePrincipal=grantee, RetiringPrincipal=grantee, Name="boto3",
             Operations=["Decrypt", "Encrypt"], Constraints={"EncryptionContextSubset": {"app": "boto3"}})
    listed = call("ListGrants", KeyId=kid)["Grants"]
    assert_eq([x["GrantId"] for x in listed], [g["GrantId"]], "ListGrants")
    assert_eq(listed[0]["Constraints"], {"EncryptionContextSubset": {"app": "boto3"}}, "grant constraints")
    assert_eq([x["GrantId"] for x in call("ListRetirableGrants", RetiringPrincipal=grantee)["Grants"]], [g["GrantId"]], "ListRetirableGrants")
    call("Encrypt", KeyId=kid, Plaintext=b"x", GrantTokens=[g["GrantToken"]])
    expect("InvalidGrantTokenException", "Encrypt", KeyId=kid, Plaintext=b"x", GrantTokens=["not-a-token"])
    expect("ValidationException", "CreateGrant", KeyId=kid, GranteePrincipal=grantee, Operations=["Sign"])
    call("RevokeGrant", KeyId=kid, GrantId=g["GrantId"])
    expect("NotFoundException", "RevokeGrant", KeyId=kid, GrantId=g["GrantId"])
    expect("InvalidGrantIdException", "RevokeGrant", KeyId=kid, GrantId="short")
    g2 = call("CreateGrant", KeyId=kid, GranteePrincipal=grantee, Operations=["Decrypt"])
    expect("AccessDeniedException", "RetireGrant", GrantToken=g2["GrantToken"])


def unknown_member():
    try:
        _raw("CreateKey", {"Description": "x", "NotAMember": 1})
    except APIError as e:
        assert_eq(e.code, "ValidationException", "unknown member")
        return
    raise AssertionError("an unknown member was accepted")


for name, fn in [
    ("symmetric", symmetric),
    ("policies and rotation", policies_and_rotation),
    ("lifecycle", lifecycle),
    ("aliases, tags, descriptions", aliases_tags_descriptions),
    ("signing", signing),
    ("asymmetric encryption", asymmetric_encryption),
    ("MACs", macs),
    ("key pairs and key agreement", key_pairs_and_agreement),
    ("grants", grants),
    ("unknown member", unknown_member),
]:
    check(name, fn)
RESULT["botocore"] = botocore.__version__
print(json.dumps(RESULT))
sys.exit(1 if RESULT["failed"] else 0)
