"""The block cache on local disk, shared by every object volume."""
