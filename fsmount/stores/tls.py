"""What a volume's `verify` means to each HTTP client, and the CA bundles it names by URL (ClearML's form), fetched at start.

`verify` is true (the system's CAs), false (no checks), the path of a CA bundle, or the http(s) URL of one.
A URL is fetched once when the daemon starts, with the system's default checks, and kept under the cache
directory; every client then takes that file as it takes a path.
"""
import hashlib
import os
import ssl
import urllib.parse

import urllib3

from fsmount.stores.base import redact_url

_FETCH_TIMEOUT = urllib3.Timeout(connect=5, read=30)
_FETCH_TRIES = 3  # a CA bundle out of reach stops the mount: a blip of the network should not


def is_url(verify: bool | str) -> bool:
    """Whether VERIFY names its CA bundle by an http(s) URL rather than a path."""
    return isinstance(verify, str) and urllib.parse.urlsplit(verify).scheme in ("http", "https")


def urllib3_tls(verify: bool | str) -> dict:
    """urllib3's TLS options for VERIFY (check certificates, don't, or against this CA bundle)."""
    if verify is False:
        return {"cert_reqs": "CERT_NONE"}
    return {"cert_reqs": "CERT_REQUIRED", **({"ca_certs": verify} if isinstance(verify, str) else {})}


def aiohttp_tls(verify: bool | str) -> ssl.SSLContext | bool:
    """aiohttp's `ssl` for VERIFY: False, the default checks (True), or a context trusting that CA bundle."""
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


def fetch_ca_bundle(url: str, directory: str) -> str:
    """The path of the CA bundle at URL, fetched now into DIRECTORY. ValueError, naming the URL, when it cannot be
    fetched or holds no PEM certificate."""
    shown = redact_url(url)
    try:
        response = urllib3.request("GET", url, timeout=_FETCH_TIMEOUT, retries=urllib3.Retry(_FETCH_TRIES))
    except urllib3.exceptions.HTTPError as error:
        reason = error.reason if isinstance(error, urllib3.exceptions.MaxRetryError) else error
        raise ValueError(f"the CA bundle at {shown} could not be fetched: {reason}") from None
    if response.status != 200:
        raise ValueError(f"the CA bundle at {shown} could not be fetched: the server answered {response.status}")
    text = response.data.decode("ascii", errors="replace")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except ssl.SSLError:
        raise ValueError(f"{shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----): not a CA bundle") from None
    path = os.path.join(directory, f"{hashlib.sha256(url.encode()).hexdigest()}.pem")
    part = f"{path}.{os.getpid()}.part"  # another daemon may share the cache
    try:
        os.makedirs(directory, exist_ok=True)
        with open(part, "w", encoding="ascii", errors="replace") as stream:
            stream.write(text)
        os.replace(part, path)
    except OSError as error:
        raise ValueError(f"the CA bundle at {shown} could not be kept in {directory}: {error.strerror}") from None
    return path
