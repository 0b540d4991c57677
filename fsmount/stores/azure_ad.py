"""Azure AD for AzureStore: DefaultAzureCredential's identity and the user delegation key its SASes are signed with.

With no account key and no SAS, the store asks the service for a user delegation key (Get User Delegation
Key, with the identity's bearer token) and signs container SASes with it as it would with an account key;
they grant what the identity's roles grant, and no more than the SAS says. azure-identity is imported
here, and this module only for such volumes.

The key is asked for on the event loop, through the SDK's aio client and its token policy (one token a
token lifetime, whatever the number of requests). Worker threads that find it due wait for that; the loop
never does: it signs with the key it has, which is renewed well before it expires.
"""
import asyncio
import concurrent.futures
import datetime
import logging
import threading
import time

from azure.core.exceptions import AzureError, ClientAuthenticationError
from azure.storage.blob import UserDelegationKey
from azure.storage.blob.aio import BlobServiceClient

from fsmount.stores.base import AccessDenied, Unavailable

log = logging.getLogger(__name__)

STORAGE_SCOPE = "https://storage.azure.com/.default"
KEY_LIFETIME = datetime.timedelta(days=1)  # the service allows up to 7
_CLOCK_SKEW = datetime.timedelta(minutes=5)  # the key starts this much before now, for a server clock behind ours
_RENEW_WAIT = 120  # seconds a worker thread waits for the loop to renew the key


def default_credential(verify: bool | str):
    """DefaultAzureCredential (aio): a service principal from AZURE_CLIENT_ID, AZURE_TENANT_ID and
    AZURE_CLIENT_SECRET (or a certificate), workload identity, a managed identity, the Azure CLI's login. VERIFY:
    the volume's TLS verification, for the token requests too."""
    from azure.identity.aio import DefaultAzureCredential
    return DefaultAzureCredential(connection_verify=verify)


async def first_identity(chain, container: str):
    """The first of CHAIN's credentials (DefaultAzureCredential's, in its order) that is there and gets a token,
    which it then holds; None when none is there: CONTAINER is read anonymously (a public container). One that is
    there but refused, or cannot be reached, fails the store's open (the mount) rather than turning it anonymous."""
    from azure.identity import CredentialUnavailableError

    for credential in chain.credentials:
        try:
            await credential.get_token(STORAGE_SCOPE)
            return credential
        except CredentialUnavailableError:
            continue
        except ClientAuthenticationError as error:
            raise AccessDenied(f"Azure AD ({type(credential).__name__}): {_one_line(error)}") from None
        except AzureError as error:
            raise Unavailable(f"Azure AD ({type(credential).__name__}): {_one_line(error)}") from None
    log.info("no Azure AD identity here; container %s is read anonymously", container)
    return None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300]


class UserDelegation:
    """The current user delegation key of SERVICE's identity, renewed once less than RESERVE of it remains
    (RESERVE: the longest a SAS signed with it may still be used)."""

    def __init__(self, service: BlobServiceClient, reserve: datetime.timedelta):
        self._service = service
        self._reserve = reserve
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._renewing = asyncio.Lock()
        self._key: tuple[float, UserDelegationKey] | None = None  # (renew after, on the monotonic clock; the key)

    @property
    def key(self) -> UserDelegationKey:
        return self._key[1]

    def due(self) -> bool:
        return self._key is None or self._key[0] < time.monotonic()

    async def renew(self, seen: tuple | None = None):
        """A new key, unless another caller renewed the one it saw (SEEN; None: unless it is not due)."""
        async with self._renewing:
            if not (self.due() if seen is None else self._key is seen):
                return
            now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
            key = await self._service.get_user_delegation_key(now - _CLOCK_SKEW, now + KEY_LIFETIME)
            self._key = (time.monotonic() + (KEY_LIFETIME - self._reserve).total_seconds(), key)

    def ready(self, fresh: bool):
        """Before signing from any thread. FRESH: a SAS signed with the key was refused, so it is renewed: at
        once from a worker thread; from the loop, by the next request, which then goes to a worker thread."""
        if threading.get_ident() == self._loop_thread:
            if fresh and self._key is not None:
                self._key = (-1.0, self._key[1])
            return
        if fresh or self.due():
            renewal = asyncio.run_coroutine_threadsafe(self.renew(self._key), self._loop)
            try:
                renewal.result(timeout=_RENEW_WAIT)
            except concurrent.futures.TimeoutError:
                renewal.cancel()
                raise Unavailable("renewing the user delegation key: no answer") from None
