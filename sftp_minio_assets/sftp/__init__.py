"""The SFTP transport: connections, the session pool and budget, listings and reads."""
