#!/usr/bin/python3
"""An existing Nitro Enclaves application in Python: it knows nothing of
Cloister and uses only the standard library, as such programs do on Nitro:
fcntl.ioctl on /dev/nsm with NSM_IOCTL_RAW and hand-written CBOR (Debian's
python3 has no cbor module), and socket.AF_VSOCK.

Protocol (shared with main.go in this directory):
 1. listen on vsock port 5005 and print "EXISTINGAPP READY python";
 2. accept one connection and read one line
    "<nonce hex> <user data hex> <parent port>";
 3. ask the NSM for PCR0, PCR1, PCR2, an attestation document with that
    nonce and user data, and GetRandom;
 4. dial the parent (CID 3) on <parent port>, send
    "hello from existingapp python\\n" and read one line back;
 5. write one JSON line to the accepted connection and exit.
"""

import array
import base64
import fcntl
import json
import os
import socket
import struct

LISTEN_PORT = 5005
PARENT_CID = 3

# include/uapi/linux/nsm.h: NSM_IOCTL_RAW = _IOWR(0x0A, 0, struct nsm_raw),
# struct nsm_raw = two struct nsm_iovec {__u64 addr; __u64 len;}.
NSM_IOCTL_RAW = (3 << 30) | (32 << 16) | (0x0A << 8) | 0
NSM_RESPONSE_MAX_SIZE = 0x3000


# --- CBOR, the little the NSM protocol needs -------------------------------

def cbor_head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError("integer too large")


def cbor_text(s):
    b = s.encode()
    return cbor_head(3, len(b)) + b


def cbor_bytes(b):
    return cbor_head(2, len(b)) + b


def cbor_decode(b, i=0):
    """Decodes one item at b[i:]; returns (value, next index)."""
    major, info = b[i] >> 5, b[i] & 31
    i += 1
    if major == 7:
        simple = {20: False, 21: True, 22: None}
        if info not in simple:
            raise ValueError("unsupported simple value %d" % info)
        return simple[info], i
    if info < 24:
        n = info
    elif info <= 27:
        size = 1 << (info - 24)
        n = int.from_bytes(b[i:i + size], "big")
        i += size
    else:
        raise ValueError("indefinite or reserved length")
    if major == 0:
        return n, i
    if major == 2:
        return bytes(b[i:i + n]), i + n
    if major == 3:
        return bytes(b[i:i + n]).decode(), i + n
    if major == 4:
        items = []
        for _ in range(n):
            v, i = cbor_decode(b, i)
            items.append(v)
        return items, i
    if major == 5:
        m = {}
        for _ in range(n):
            k, i = cbor_decode(b, i)
            v, i = cbor_decode(b, i)
            m[k] = v
        return m, i
    raise ValueError("unsupported major type %d" % major)


# --- /dev/nsm ---------------------------------------------------------------

class NSMError(Exception):
    pass


def nsm_call(fd, request):
    """Sends one CBOR request with NSM_IOCTL_RAW and decodes the answer."""
    req = array.array("B", request)
    resp = array.array("B", bytes(NSM_RESPONSE_MAX_SIZE))
    req_addr, req_len = req.buffer_info()
    resp_addr, resp_len = resp.buffer_info()
    raw = bytearray(struct.pack("<QQQQ", req_addr, req_len, resp_addr, resp_len))
    fcntl.ioctl(fd, NSM_IOCTL_RAW, raw, True)
    n = struct.unpack_from("<Q", raw, 24)[0]
    value, end = cbor_decode(resp.tobytes()[:n])
    if end != n:
        raise NSMError("trailing bytes after the response")
    if isinstance(value, dict) and "Error" in value:
        raise NSMError("NSM error %s" % value["Error"])
    return value


def describe_pcr(fd, index):
    req = cbor_head(5, 1) + cbor_text("DescribePCR") + cbor_head(5, 1) + cbor_text("index") + cbor_head(0, index)
    return nsm_call(fd, req)["DescribePCR"]["data"]


def attestation(fd, nonce, user_data):
    req = (cbor_head(5, 1) + cbor_text("Attestation") + cbor_head(5, 3)
           + cbor_text("user_data") + cbor_bytes(user_data)
           + cbor_text("nonce") + cbor_bytes(nonce)
           + cbor_text("public_key") + b"\xf6")
    return nsm_call(fd, req)["Attestation"]["document"]


def get_random(fd):
    return nsm_call(fd, cbor_text("GetRandom"))["GetRandom"]["random"]


# --- the application --------------------------------------------------------

def read_line(conn):
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode()


def run(conn):
    report = {"lang": "python"}
    fields = read_line(conn).split()
    if len(fields) != 3:
        report["error"] = "want '<nonce hex> <user data hex> <parent port>'"
        return report
    nonce, user_data, port = bytes.fromhex(fields[0]), bytes.fromhex(fields[1]), int(fields[2])
    fd = os.open("/dev/nsm", os.O_RDWR)
    try:
        for i in range(3):
            report["pcr%d" % i] = describe_pcr(fd, i).hex()
        report["document"] = base64.b64encode(attestation(fd, nonce, user_data)).decode()
        report["random"] = get_random(fd).hex()
    finally:
        os.close(fd)
    with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as parent:
        parent.connect((PARENT_CID, port))
        parent.sendall(b"hello from existingapp python\n")
        report["parent_reply"] = read_line(parent).strip()
    return report


def main():
    with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as listener:
        listener.bind((socket.VMADDR_CID_ANY, LISTEN_PORT))
        listener.listen()
        print("EXISTINGAPP READY python", flush=True)
        conn, _ = listener.accept()
        with conn:
            try:
                report = run(conn)
            except Exception as e:  # reported to the test, which shows it
                report = {"lang": "python", "error": "%s: %s" % (type(e).__name__, e)}
            if "error" in report:
                print("existingapp: error:", report["error"], flush=True)
            conn.sendall(json.dumps(report).encode() + b"\n")
    print("EXISTINGAPP DONE", flush=True)


if __name__ == "__main__":
    main()
