"""S3 volumes as the AWS CLI reaches buckets, through a real mount against moto: each bucket's own region, botocore's
credentials chain with credentials that expire, requester-pays buckets and SSE-KMS. The server's view of each request
is a Proxy's copy of it."""
import datetime
import json
import os
import re
import sys
import textwrap
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import botocore.session
import pytest

from buckets import S3Bucket
from conftest import write_config
from servers import Proxy

pytestmark = pytest.mark.mount

REQUEST = re.compile(rb"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/1\.1\r\n(.*?)\r\n\r\n", re.DOTALL)


def seen(proxy: Proxy) -> list[tuple[str, str, dict[str, str]]]:
    """(method, target, headers) of each request that went through PROXY."""
    return [(method.decode(), target.decode(), {name.strip().lower(): value.strip() for name, _, value in (
        line.decode(errors="replace").partition(":") for line in headers.split(b"\r\n"))})
            for method, target, headers in REQUEST.findall(bytes(proxy.requests))]


def scope(target: str, headers: dict[str, str]) -> list[str]:
    """ACCESS_KEY/DATE/REGION/SERVICE/aws4_request of a request, from its presigned URL or its Authorization."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    if "X-Amz-Credential" in query:
        return query["X-Amz-Credential"][0].split("/")
    return headers["authorization"].split("Credential=")[1].split(",")[0].split("/")


def admin_in(server, region: str):
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=server.url, region_name=region, aws_access_key_id="test", aws_secret_access_key="test")


@pytest.fixture
def proxy(moto):
    relay = Proxy(moto.port, kept=64 * 2**20)  # the parts of a multipart upload, and the requests after them
    yield relay
    relay.close()


@pytest.fixture
def aws_environment(monkeypatch, tmp_path):
    """No credentials or region from the environment or the user's files but those a test puts there."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ENDPOINT_URL_STS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return tmp_path


def volume(workspace, url: str, bucket: str, credentials: str = "key: test, secret: test", extra: str = ""):
    return write_config(workspace, f"""
        cache {{ dir: "{workspace}/cache", block_size: 1MiB, metadata_ttl: 0s }}
        staging {{ write_back: 0, part_size: 5MiB, multipart_threshold: 5MiB }}
        credentials {{ s3: [ {{ bucket: {bucket}, {credentials} }} ] }}
        volumes {{ bucket {{ source: "s3://{bucket}/", endpoint: "{url}", mode: rw, {extra} }} }}
    """)


@pytest.mark.parametrize("configured", [None, "ap-south-1"])
def test_a_bucket_in_another_region_is_signed_for_it_urls_and_sdk_calls_alike(workspace, moto, mount, proxy,
                                                                               aws_environment, configured):
    bucket = f"regional-{uuid.uuid4().hex[:12]}"
    admin = admin_in(moto, "eu-west-1")
    admin.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    admin.put_object(Bucket=bucket, Key="a.txt", Body=b"from eu-west-1")
    region = f", region: {configured}" if configured else ""
    daemon = mount(volume(workspace, proxy.url, bucket, f"key: test, secret: test{region}"), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    assert (root / "a.txt").read_bytes() == b"from eu-west-1"
    (root / "b.txt").write_bytes(b"written")
    assert sorted(os.listdir(root)) == ["a.txt", "b.txt"]
    assert admin.get_object(Bucket=bucket, Key="b.txt")["Body"].read() == b"written"

    (first, _, _), *rest = seen(proxy)
    assert first == "HEAD"  # the bucket's region, asked in the endpoint's
    assert {method for method, _, _ in rest} >= {"GET", "PUT"} and any("list-type=2" in target for _, target, _ in rest)
    assert {scope(target, headers)[2] for _, target, headers in rest} == {"eu-west-1"}
    assert daemon.log().count(f"bucket {bucket} is in eu-west-1") == 1


def credential_process(directory, life: float) -> str:
    """The `credential_process` of a profile: credentials that expire LIFE seconds after each run, with an access key
    of their own, each run a line of DIRECTORY/runs: the key and its expiry."""
    script = directory / "credentials.py"
    script.write_text(textwrap.dedent("""
        import datetime, json, sys
        runs, life = sys.argv[1], float(sys.argv[2])
        with open(runs, "a+") as log:
            log.seek(0)
            key = f"FSMOUNTKEY{len(log.readlines()):04d}"
            expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=life)
            log.write(f"{key} {expiry.timestamp()}\\n")
        print(json.dumps({"Version": 1, "AccessKeyId": key, "SecretAccessKey": "test", "SessionToken": "token-" + key,
                          "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}))
    """))
    return f"{sys.executable} {script} {directory / 'runs'} {life}"


def test_credentials_that_expire_are_refreshed_in_time_once_for_many_requests(workspace, moto, mount, proxy,
                                                                             aws_environment):
    """botocore refreshes credentials 15 minutes before they expire, which would run the process for every signature
    of credentials lasting less: these last 6 s, and the reads and writes go on through more than two of them."""
    life = 6
    (aws_environment / "aws-config").write_text(f"[default]\ncredential_process = {credential_process(aws_environment, life)}\n")
    objects = {f"in/{number:03d}.txt": f"object {number}".encode() for number in range(80)}
    bucket = S3Bucket(moto, objects)
    mount(volume(workspace, proxy.url, bucket.name, "use_credentials_chain: true"), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    start, number = time.monotonic(), 0
    while time.monotonic() - start < 2.2 * life:
        key = f"in/{number:03d}.txt"
        assert (root / key).read_bytes() == objects[key]
        (root / f"out-{number}.txt").write_bytes(b"written")
        assert len(os.listdir(root / "in")) == len(objects)
        number += 1
        time.sleep(0.2)  # the requests spread over the lifetimes of the credentials
    runs = dict(line.split() for line in (aws_environment / "runs").read_text().splitlines())
    assert all(bucket.get(f"out-{written}.txt") == b"written" for written in range(number))

    requests = [(method, target, headers) for method, target, headers in seen(proxy) if method != "HEAD"]
    assert len(requests) >= 3 * number
    assert 3 <= len(runs) <= 2.2 * life / (life / 2) + 2  # about one a half life, not one a request
    used = {scope(target, headers)[0] for _, target, headers in requests}
    assert used == set(runs) or used == set(runs) - {max(runs)}  # the last may have come after the last request
    for _, target, headers in requests:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        if "X-Amz-Expires" in query:  # no URL outlives the credentials it is signed with
            signed = datetime.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(
                tzinfo=datetime.timezone.utc).timestamp()
            assert signed + int(query["X-Amz-Expires"][0]) <= float(runs[scope(target, headers)[0]]) + 1


def test_a_requester_pays_volume_says_so_in_every_request(workspace, moto, mount, proxy):
    bucket = S3Bucket(moto, {"a.txt": b"paid by the reader"})
    mount(volume(workspace, proxy.url, bucket.name, extra="request_payer: requester"), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    assert os.listdir(root) == ["a.txt"]
    assert (root / "a.txt").read_bytes() == b"paid by the reader"
    large = os.urandom(11 * 2**20)
    (root / "large.bin").write_bytes(large)
    (root / "small.txt").write_bytes(b"small")
    os.rename(root / "small.txt", root / "moved.txt")
    assert bucket.get("large.bin") == large and sorted(bucket.keys()) == ["a.txt", "large.bin", "moved.txt"]

    requests = [(method, target, headers) for method, target, headers in seen(proxy)[1:]]  # after the HeadBucket
    kinds = {(method, "list-type=2" in target, "uploadId=" in target) for method, target, _ in requests}
    assert {("GET", True, False), ("GET", False, False), ("PUT", False, False), ("PUT", False, True),
            ("POST", False, False), ("POST", False, True), ("DELETE", False, False)} <= kinds
    assert [target for _, target, headers in requests if headers.get("x-amz-request-payer") != "requester"] == []


def test_sse_kms_in_extra_args_encrypts_single_and_multipart_uploads(workspace, moto, mount):
    key = botocore.session.get_session().create_client(
        "kms", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="test",
        aws_secret_access_key="test").create_key()["KeyMetadata"]["Arn"]
    bucket = S3Bucket(moto)
    extra = f'extra_args {{ ServerSideEncryption: "aws:kms", SSEKMSKeyId: "{key}" }}'
    mount(volume(workspace, moto.url, bucket.name, extra=extra), workspace / "mnt")
    root = workspace / "mnt" / "bucket"
    large = os.urandom(11 * 2**20)
    (root / "large.bin").write_bytes(large)
    (root / "small.txt").write_bytes(b"small")
    assert bucket.get("large.bin") == large and bucket.get("small.txt") == b"small"
    assert moto.requests(f"POST /{bucket}/large.bin?uploads") == 1  # in parts
    for name in ("large.bin", "small.txt"):
        head = bucket.admin.head_object(Bucket=bucket.name, Key=name)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key)


def test_web_identity_credentials_come_from_sts_through_botocores_chain(workspace, moto, mount, proxy, aws_environment,
                                                                        monkeypatch):
    """IRSA's variables: a token file and a role, exchanged at STS (moto's, through the proxy) for credentials."""
    (aws_environment / "token").write_text("a-web-identity-token")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(aws_environment / "token"))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/fsmount-reader")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", proxy.url)
    bucket = S3Bucket(moto, {"a.txt": b"read as the role"})
    mount(volume(workspace, proxy.url, bucket.name, "use_credentials_chain: true"), workspace / "mnt")
    assert (workspace / "mnt" / "bucket" / "a.txt").read_bytes() == b"read as the role"

    assert bytes(proxy.requests).count(b"Action=AssumeRoleWithWebIdentity") == 1
    assert b"WebIdentityToken=a-web-identity-token" in proxy.requests
    s3 = [(target, headers) for method, target, headers in seen(proxy) if method != "POST"]
    assert {target.split("?")[0] for target, _ in s3} >= {f"/{bucket}", f"/{bucket}/a.txt"}
    keys = {scope(target, headers)[0] for target, headers in s3}
    assert len(keys) == 1 and keys.pop().startswith("ASIA")
    assert all("X-Amz-Security-Token=" in target or "x-amz-security-token" in headers for target, headers in s3)


class InstanceMetadata(BaseHTTPRequestHandler):
    """An EC2 instance's metadata service as IMDSv2 serves it: nothing without a session token, got by a PUT."""
    TOKEN = "imds-session-token"
    CREDENTIALS = "/latest/meta-data/iam/security-credentials/"
    gets: list[str] = []

    def do_PUT(self):
        asked = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self.reply(200, self.TOKEN) if asked else self.reply(400)

    def do_GET(self):
        self.gets.append(self.path)
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=6)
        answers = {self.CREDENTIALS: "fsmount-role", self.CREDENTIALS + "fsmount-role": json.dumps({
            "Code": "Success", "AccessKeyId": "ASIAFROMTHEINSTANCE", "SecretAccessKey": "test", "Token": "instance-token",
            "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")})}
        if self.headers.get("X-aws-ec2-metadata-token") != self.TOKEN:
            self.reply(401)
        else:
            self.reply(200, answers[self.path]) if self.path in answers else self.reply(404)

    def reply(self, status: int, body: str = ""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def test_instance_credentials_come_from_imdsv2_through_botocores_chain(workspace, moto, mount, proxy, aws_environment,
                                                                       monkeypatch):
    metadata = ThreadingHTTPServer(("127.0.0.1", 0), InstanceMetadata)
    threading.Thread(target=metadata.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{metadata.server_port}/")
        bucket = S3Bucket(moto, {"a.txt": b"read as the instance"})
        mount(volume(workspace, proxy.url, bucket.name, "use_credentials_chain: true"), workspace / "mnt")
        assert (workspace / "mnt" / "bucket" / "a.txt").read_bytes() == b"read as the instance"
    finally:
        metadata.shutdown()
        metadata.server_close()
    assert InstanceMetadata.CREDENTIALS + "fsmount-role" in InstanceMetadata.gets
    assert {scope(target, headers)[0] for _, target, headers in seen(proxy)} == {"ASIAFROMTHEINSTANCE"}
