"""Which credentials a bucket gets: the `credentials` lists of the config, ClearML-style."""
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
