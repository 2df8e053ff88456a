"""Device meshes, logical-axis sharding rules and global-array helpers (see mesh.py)."""
