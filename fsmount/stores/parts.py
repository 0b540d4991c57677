"""The sizes of uploads' parts: each store's own, used unless the config names one, the least S3 takes and the grain GCS wants."""

PART_SIZE = 8 * 2**20  # every store's but GCS's
# GCS's parts go one after another, each a round trip: fewer, larger ones (rclone sends 16 MiB).
GCS_PART_SIZE = 32 * 2**20
SMALLEST_PART = 5 * 2**20  # S3's least part size but for the last
PART_GRAIN = 256 * 2**10  # GCS's resumable uploads take parts in multiples of it, but for the last
