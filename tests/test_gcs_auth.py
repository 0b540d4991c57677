"""A GCS volume with a service account key: the daemon gets its token from the key's token_uri (a local stand-in
for Google's OAuth server) and every request to the store carries it."""
import json
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from buckets import GcsBucket
from conftest import TOKEN, write_config
from servers import Proxy


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
