"""Azure volumes with neither key nor SAS: an Azure AD identity (DefaultAzureCredential) gets a token from a local
stand-in for Microsoft's token endpoint, and the store signs its requests with the user delegation key Azurite
hands out for it. Azurite takes bearer tokens over HTTPS only (`--oauth basic`), so it runs with a certificate of
a CA the test makes, as does the token endpoint; the volume's `verify` names that CA for both."""
import base64
import datetime
import json
import ssl
import threading
import time
import urllib.parse
from http.server import ThreadingHTTPServer

import pytest
import trio
import trio_asyncio
import trustme

from conftest import JsonHandler, write_config
from fsmount.credentials import AzureCredentials
from fsmount.stores import azure_ad
from fsmount.stores.aio import TrioStore
from fsmount.stores.azure import AzureStore
from fsmount.stores.base import AccessDenied
from servers import AZURITE_ACCOUNT, AZURITE_KEY, Server

TENANT, CLIENT, OBJECT_ID = "72f988bf-0000-4000-8000-000000000001", "fsmount-test-client", "0b7ec7-1d"
_unique = iter(range(10**6))


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A CA and a certificate for 127.0.0.1 that it signed, as files: ca.pem, cert.pem, key.pem."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(directory / "ca.pem")
    certificate.cert_chain_pems[0].write_to_path(directory / "cert.pem")
    certificate.private_key_pem.write_to_path(directory / "key.pem")
    return directory


@pytest.fixture(scope="module")
def azurite_oauth(tls, tmp_path_factory):
    """Azurite over HTTPS, taking bearer tokens; its log has a line per request, query included."""
    server = Server("azurite", tmp_path_factory.mktemp("azurite-oauth"), "--oauth", "basic",
                    "--cert", str(tls / "cert.pem"), "--key", str(tls / "key.pem"))
    server.url = f"https://127.0.0.1:{server.port}"
    yield server
    server.stop()


def _access_token() -> str:
    """A JWT as Azure AD's would read to Azurite's basic OAuth check (which checks no signature)."""
    def part(claims: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    now = int(time.time())
    return ".".join((part({"alg": "RS256", "typ": "JWT"}),
                     part({"aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{TENANT}/", "iat": now,
                           "nbf": now - 60, "exp": now + 3600, "oid": OBJECT_ID, "tid": TENANT}), "c2lnbmF0dXJl"))


@pytest.fixture
def authority(tls):
    """A token endpoint on 127.0.0.1 over HTTPS, at https://HOST/TENANT/oauth2/v2.0/token as Azure AD's; `grants`
    holds the form of every request it answered, the client secret left out. The secret "wrong" is refused."""
    grants = []

    class Handler(JsonHandler):
        def do_POST(self):
            form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            grants.append({"path": self.path, **{name: values[0] for name, values in form.items() if name != "client_secret"},
                           "had_secret": "client_secret" in form})
            if form.get("client_secret") == ["wrong"]:
                status, answer = 401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret."}
            else:
                status, answer = 200, {"access_token": _access_token(), "expires_in": 3600, "token_type": "Bearer"}
            self.answer(status, answer)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls / "cert.pem", tls / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_port}", grants
    server.shutdown()


@pytest.fixture
def identity(monkeypatch, authority, tmp_path, request):
    """The environment of a service principal (or, parametrized "workload", a workload identity's federated token
    file) whose authority is the local one; DefaultAzureCredential is kept to that one kind, so it never looks for
    a managed identity off this machine."""
    host, grants = authority
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
                 "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", host)
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT)
    if getattr(request, "param", "principal") == "workload":
        (tmp_path / "federated-token").write_text("eyJ.federated.token")
        monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(tmp_path / "federated-token"))
        monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "WorkloadIdentityCredential")
    else:
        monkeypatch.setenv("AZURE_CLIENT_SECRET", "not-a-real-secret")
        monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
    return grants


def _container(server: Server, tls, objects: dict[str, bytes], public: bool = False):
    """A fresh container holding OBJECTS, made with the account key; its admin client."""
    from azure.storage.blob import BlobServiceClient
    admin = BlobServiceClient(f"{server.url}/{AZURITE_ACCOUNT}", connection_verify=str(tls / "ca.pem"),
                              credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})
    container = admin.get_container_client(f"ad-{next(_unique)}")
    container.create_container(public_access="container" if public else None)
    for key, data in objects.items():
        container.upload_blob(key, data)
    return container


def _store(server: Server, tls, container: str, read_only: bool = False) -> TrioStore:
    return TrioStore(AzureStore(AZURITE_ACCOUNT, container, AzureCredentials(AZURITE_ACCOUNT),
                                endpoint=f"{server.url}/{AZURITE_ACCOUNT}", verify=str(tls / "ca.pem"),
                                read_only=read_only))


@pytest.mark.mount
@pytest.mark.parametrize("identity", ["principal", "workload"], indirect=True)
def test_a_volume_without_key_reads_and_writes_as_its_azure_ad_identity(workspace, mount, azurite_oauth, tls, identity):
    container = _container(azurite_oauth, tls, {"data/a.txt": b"read as the identity\n"})
    endpoint = f"{azurite_oauth.url}/{AZURITE_ACCOUNT}"
    mount(write_config(workspace, f"""
        cache {{ dir: "{workspace}/cache" }}
        staging {{ write_back: 0 }}
        credentials {{ azure: [ {{ account_name: {AZURITE_ACCOUNT} }} ] }}
        volumes {{
          ad {{ source: "azure://{AZURITE_ACCOUNT}/{container.container_name}/", endpoint: "{endpoint}",
                verify: "{tls / 'ca.pem'}", mode: rw }}
        }}
    """), workspace / "mnt")
    root = workspace / "mnt" / "ad"
    assert sorted(path.name for path in root.iterdir()) == ["data"]
    assert (root / "data" / "a.txt").read_bytes() == b"read as the identity\n"
    (root / "data" / "b.txt").write_bytes(b"written as the identity\n")
    assert container.download_blob("data/b.txt").readall() == b"written as the identity\n"
    for _ in range(20):
        assert (root / "data" / "b.txt").read_bytes() == b"written as the identity\n"
    name = container.container_name
    assert azurite_oauth.requests("userdelegationkey", "HTTP/1.1\" 200") >= 1
    assert azurite_oauth.requests(f"/{name}", f"skoid={OBJECT_ID}", "sp=racwdl&") >= 2  # the listing, the read
    assert azurite_oauth.requests(f"/{name}", "HTTP/1.1\" 401") + azurite_oauth.requests(f"/{name}", "HTTP/1.1\" 403") == 0
    assert len(identity) == 1, identity  # one token, for every request of the mount
    grant = identity[0]
    assert grant["path"] == f"/{TENANT}/oauth2/v2.0/token" and grant["scope"] == azure_ad.STORAGE_SCOPE
    assert grant["client_id"] == CLIENT and grant["grant_type"] == "client_credentials"
    if grant["had_secret"]:
        assert "client_assertion" not in grant
    else:
        assert grant["client_assertion"] == "eyJ.federated.token"


@pytest.mark.server
async def test_a_read_only_volume_signs_read_and_list_only(azurite_oauth, tls, identity):
    container = _container(azurite_oauth, tls, {"a.txt": b"only read\n"})
    async with trio_asyncio.open_loop():
        store = _store(azurite_oauth, tls, container.container_name, read_only=True)
        await store.open()
        try:
            info = await store.stat("a.txt")
            assert await store.read("a.txt", 0, info.size, info.version) == b"only read\n"
            query = urllib.parse.parse_qs(store.store._sas_query(False))
        finally:
            await store.close()
    assert query["sp"] == ["rl"] and query["skoid"] == [OBJECT_ID] and query["sktid"] == [TENANT]


@pytest.mark.server
async def test_the_user_delegation_key_is_renewed_from_worker_threads_with_the_token_it_has(
        monkeypatch, azurite_oauth, tls, identity):
    """A key due for renewal is not signed with on the event loop: reads go to worker threads, which have the loop
    ask for a new key with the token already held. Here each time: a key of an hour, shorter than the part of a
    key's life the store keeps in reserve for the SASes signed with it, is due as soon as it comes."""
    monkeypatch.setattr(azure_ad, "KEY_LIFETIME", datetime.timedelta(hours=1))
    container = _container(azurite_oauth, tls, {"a.txt": b"renewed\n"})
    before = azurite_oauth.requests("userdelegationkey")
    async with trio_asyncio.open_loop():
        store = _store(azurite_oauth, tls, container.container_name)
        await store.open()
        try:
            assert not store.store.signs_at_once()
            info = await store.stat("a.txt")
            for _ in range(3):
                assert await store.read("a.txt", 0, info.size, info.version) == b"renewed\n"
            assert await trio.to_thread.run_sync(store.store.read_range, "a.txt", 0, 8, info.version) == b"renewed\n"
        finally:
            await store.close()
    assert azurite_oauth.requests("userdelegationkey", "HTTP/1.1\" 200") - before == 5  # at open, and for each read
    assert len(identity) == 1


@pytest.mark.server
async def test_without_an_identity_a_public_container_is_read_anonymously(monkeypatch, azurite_oauth, tls, identity):
    monkeypatch.delenv("AZURE_CLIENT_SECRET")
    container = _container(azurite_oauth, tls, {"a.txt": b"public\n"}, public=True)
    async with trio_asyncio.open_loop():
        store = _store(azurite_oauth, tls, container.container_name)
        await store.open()
        try:
            info = await store.stat("a.txt")
            assert await store.read("a.txt", 0, info.size, info.version) == b"public\n"
            assert store.store._sas_query(False) == ""
        finally:
            await store.close()
    assert identity == []


@pytest.mark.server
async def test_an_identity_that_is_refused_fails_the_volume_rather_than_turning_it_anonymous(
        monkeypatch, azurite_oauth, tls, identity):
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "wrong")
    container = _container(azurite_oauth, tls, {"a.txt": b"private\n"})
    async with trio_asyncio.open_loop():
        store = _store(azurite_oauth, tls, container.container_name)
        try:
            with pytest.raises(AccessDenied, match="EnvironmentCredential.*AADSTS7000215"):
                await store.open()
        finally:
            await store.close()
    assert len(identity) == 1
