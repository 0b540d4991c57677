"""fsmount: one FUSE tree over object stores and linked host paths."""
