"""partner_csv: the orders Acme drops as CSV on its SFTP server, copied to the bucket by
sftp-minio-assets and loaded into PostgreSQL file by file (see the README beside it)."""
