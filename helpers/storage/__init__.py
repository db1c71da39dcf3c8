"""The storage helper: the user's S3 prefix as a file system at /mnt/storage (FUSE)."""
