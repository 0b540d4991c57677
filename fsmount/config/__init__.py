"""The configuration: `schema` (what a config file becomes), `reader` (reading and checking one), `sources` (each kind
of store volume's keys), `hocon` (the HOCON reading they share) and `clearml` (a clearml.conf)."""
from fsmount.config.hocon import ConfigError, ipfs_api_url
from fsmount.config.reader import (DEFAULT_BLOCK_SIZE, DEFAULT_PARALLEL_PARTS, DEFAULT_WRITE_BACK, LINK_MOUNTS_ENV,
                                   load_config, load_publish_target, parse_link_mount)
from fsmount.config.schema import (AzureSource, CacheConfig, Config, GcsSource, IpfsSource, LinkMount, ObjectSource,
                                   PublishTarget, S3Source, StagingConfig, UrlSource, VolumeConfig)
from fsmount.config.sources import IPFS_API_ENV

__all__ = ["ConfigError", "ipfs_api_url", "DEFAULT_BLOCK_SIZE", "DEFAULT_PARALLEL_PARTS", "DEFAULT_WRITE_BACK",
           "LINK_MOUNTS_ENV", "load_config", "load_publish_target", "parse_link_mount", "AzureSource", "CacheConfig",
           "Config", "GcsSource", "IpfsSource", "LinkMount", "ObjectSource", "PublishTarget", "S3Source", "StagingConfig",
           "UrlSource", "VolumeConfig", "IPFS_API_ENV"]
