"""Which credentials a bucket or container gets: the `credentials` lists of the config, ClearML-style, and the environment."""
import urllib.parse
from dataclasses import dataclass, field


@dataclass(frozen=True)
class S3Credentials:
    bucket: str | None = None
    host: str | None = None  # "host:port" of a non-AWS endpoint
    key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    region: str | None = None
    secure: bool = True
    verify: bool | str = True
    use_credentials_chain: bool = False
    multipart: bool = True  # False: every upload is one PUT, whatever its size (up to S3's 5 GiB)
    extra_args: dict[str, str] = field(default_factory=dict, compare=False)  # a volume's own extra_args add to these


def choose_s3_credentials(entries: list[S3Credentials], bucket: str, host: str | None) -> S3Credentials:
    """The most specific entry: for this bucket (on this host, if the entry names one), then for
    this host, then one that names neither; with none, botocore's own chain decides."""
    def fits(entry: S3Credentials) -> bool:
        return entry.host is None or entry.host == host

    for wanted in (lambda e: e.bucket == bucket and fits(e),
                   lambda e: e.bucket is None and e.host is not None and e.host == host,
                   lambda e: e.bucket is None and e.host is None):
        for entry in entries:
            if wanted(entry):
                return entry
    return S3Credentials(use_credentials_chain=True)


@dataclass(frozen=True)
class AzureCredentials:
    account_name: str | None = None
    container: str | None = None
    account_key: str | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)
    endpoint: str | None = None  # the account's blob service URL, when a connection string names one


def parse_connection_string(text: str) -> AzureCredentials:
    """Azure's `Name=value;...` connection string, read by the Azure SDK as it reads one (so
    `UseDevelopmentStorage=true` is Azurite's account on 127.0.0.1:10000): the account, its key or SAS, and
    its blob endpoint."""
    from azure.storage.blob import BlobServiceClient  # the SDK's import is heavy; only Azure configs pay it

    try:
        client = BlobServiceClient.from_connection_string(text)
    except ValueError as error:
        raise ValueError(f"not a connection string the Azure SDK takes ({error})") from None
    url = urllib.parse.urlsplit(client.url)
    return AzureCredentials(account_name=client.account_name, account_key=getattr(client.credential, "account_key", None),
                            sas_token=url.query or None,
                            endpoint=urllib.parse.urlunsplit(url._replace(query="")).rstrip("/"))


def azure_environment_credentials(environ) -> AzureCredentials | None:
    """AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN."""
    if environ.get("AZURE_STORAGE_CONNECTION_STRING"):
        return parse_connection_string(environ["AZURE_STORAGE_CONNECTION_STRING"])
    if environ.get("AZURE_STORAGE_ACCOUNT"):
        return AzureCredentials(account_name=environ["AZURE_STORAGE_ACCOUNT"], account_key=environ.get("AZURE_STORAGE_KEY"),
                                sas_token=environ.get("AZURE_STORAGE_SAS_TOKEN"))
    return None


def choose_azure_credentials(entries: list[AzureCredentials], account: str | None, container: str) -> AzureCredentials | None:
    """The most specific entry: for this container (in this account, if the source names one), then
    for this account, then one that names neither; None when nothing fits."""
    def fits(entry: AzureCredentials) -> bool:
        return account is None or entry.account_name in (None, account)

    for wanted in (lambda e: e.container == container and fits(e),
                   lambda e: e.container is None and account is not None and e.account_name == account,
                   lambda e: e.container is None and (account is None or e.account_name is None)):
        for entry in entries:
            if wanted(entry):
                return entry
    return None


@dataclass(frozen=True)
class GcsCredentials:
    bucket: str | None = None
    subdir: str | None = None  # the entry is for keys under this prefix of the bucket
    project: str | None = None
    info: dict | None = field(default=None, repr=False)  # the service account's (or user's) JSON key, decoded
    use_default_chain: bool = False  # GOOGLE_APPLICATION_CREDENTIALS, gcloud's login, the metadata server


def choose_gcs_credentials(entries: list[GcsCredentials], bucket: str, prefix: str) -> GcsCredentials:
    """The entry for this bucket whose subdir holds PREFIX (the longest), then the bucket's entry without
    a subdir, then one that names no bucket; with none, Google's default chain decides."""
    def holds(entry: GcsCredentials) -> bool:
        subdir = entry.subdir.strip("/")
        return prefix == subdir or prefix.startswith(subdir + "/")

    in_subdirs = [entry for entry in entries if entry.bucket == bucket and entry.subdir and holds(entry)]
    if in_subdirs:
        return max(in_subdirs, key=lambda entry: len(entry.subdir.strip("/")))
    for wanted in (lambda e: e.bucket == bucket and not e.subdir, lambda e: e.bucket is None):
        for entry in entries:
            if wanted(entry):
                return entry
    return GcsCredentials(bucket=bucket, use_default_chain=True)
