"""Volumes: a store or a host directory seen as a tree."""
