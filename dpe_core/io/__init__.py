"""Photo and storage IO (fsspec-based)."""
