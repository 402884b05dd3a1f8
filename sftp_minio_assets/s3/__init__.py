"""The S3 store: one bucket, its objects and multipart uploads."""
