"""sftp-minio-assets: SFTP servers into MinIO, each file exactly once, one partition per file."""
