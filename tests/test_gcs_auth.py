"""A GCS volume with a service account key: the daemon gets its token from the key's token_uri (a local stand-in
for Google's OAuth server) and every request to the store carries it; over HTTPS, the volume's `verify` reaches
both."""
import errno
import json
import os
import re
import urllib.parse

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from buckets import GcsBucket
from conftest import TOKEN, write_config
from servers import Proxy, TlsRelay

pytestmark = pytest.mark.mount


def service_account_key(token_uri: str) -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return {"type": "service_account", "project_id": "test", "private_key_id": "1", "private_key": pem.decode(),
            "client_email": "fsmount@test.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri}


def test_every_request_carries_the_token_of_the_service_account_key(workspace, fake_gcs, mount, token_server):
    token_uri, grants = token_server
    bucket = GcsBucket(fake_gcs, {"data/a.txt": b"through the key\n"})
    (workspace / "key.json").write_text(json.dumps(service_account_key(token_uri)))
    proxy = Proxy(fake_gcs.port)
    try:
        mount(write_config(workspace, f"""
            cache {{ dir: "{workspace}/cache" }}
            staging {{ write_back: 0 }}
            credentials {{ gcs: [ {{ bucket: {bucket}, project: test, credentials_json: "{workspace}/key.json" }} ] }}
            volumes {{ gcs {{ source: "gs://{bucket}/", endpoint: "{proxy.url}", mode: rw }} }}
        """), workspace / "mnt")
        root = workspace / "mnt" / "gcs"
        assert (root / "data" / "a.txt").read_bytes() == b"through the key\n"
        (root / "data" / "b.txt").write_bytes(b"written with the key\n")
        assert bucket.get("data/b.txt") == b"written with the key\n"
        sent = bytes(proxy.requests)
    finally:
        proxy.close()
    request_lines = re.findall(rb"(?:GET|POST|PUT|DELETE) /\S* HTTP/1\.1\r\n", sent)
    assert len(request_lines) >= 3  # a listing, a read, an upload
    assert len(re.findall(rf"authorization: Bearer {TOKEN}\r\n".encode(), sent, re.IGNORECASE)) == len(request_lines)
    assert len(grants) == 1 and grants[0]["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]


@pytest.mark.expect_log(
    r"WARNING urllib3\.connectionpool: Retrying \(Retry\(total=\d, .*\)\) after connection broken by 'SSLError\(SSLCertVerificationError\(1, '\[SSL: CERTIFICATE_VERIFY_FAILED\] certificate verify failed: ",
    r"WARNING fsmount\.fs\.operations: lookup failed: \[Errno 5\] getting a token for volume-\d+: certificate verify failed: ",
)
def test_verify_reaches_the_token_requests_and_the_store_over_https(workspace, fake_gcs, mount, token_server, private_ca):
    """The untrusted volume reaches the store over plain http: only its token request meets a certificate."""
    token_uri, grants = token_server
    bucket = GcsBucket(fake_gcs, {"data/a.txt": b"over https\n"})
    relays = [TlsRelay(port, private_ca.server) for port in (urllib.parse.urlsplit(token_uri).port, fake_gcs.port)]
    token, api = relays
    (workspace / "key.json").write_text(json.dumps(service_account_key(f"{token.url}/token")))
    try:
        daemon = mount(write_config(workspace, f"""
            cache {{ dir: "{workspace}/cache" }}
            staging {{ write_back: 0 }}
            credentials {{ gcs: [ {{ bucket: {bucket}, project: test, credentials_json: "{workspace}/key.json" }} ] }}
            volumes {{
                untrusted {{ source: "gs://{bucket}/", endpoint: "{fake_gcs.url}" }}
                trusted {{ source: "gs://{bucket}/", endpoint: "{api.url}", verify: "{private_ca.pem}", mode: rw }}
            }}
        """), workspace / "mnt")
        with pytest.raises(OSError) as error:
            (workspace / "mnt" / "untrusted" / "data" / "a.txt").read_bytes()
        assert error.value.errno == errno.EIO
        assert f"getting a token for {bucket}: certificate verify failed: unable to get local issuer" in daemon.log()
        root = workspace / "mnt" / "trusted"
        assert (root / "data" / "a.txt").read_bytes() == b"over https\n"
        (root / "data" / "b.txt").write_bytes(b"written over https\n")
        assert sorted(os.listdir(root / "data")) == ["a.txt", "b.txt"]
    finally:
        for relay in relays:
            relay.close()
    assert bucket.get("data/b.txt") == b"written over https\n"
    assert len(grants) == 1
