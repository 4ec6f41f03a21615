"""Object storage behind one small interface (a local folder by default; S3/MinIO comes later)."""
