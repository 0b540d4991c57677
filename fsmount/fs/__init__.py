"""The FUSE face: pyfuse3 handlers, the inode table and the namespace."""
