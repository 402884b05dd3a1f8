"""The byte path: SFTP reads, decryption, compression, hashing and the upload."""
