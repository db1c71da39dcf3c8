"""The storage helper: mirrors the user's S3 prefix into the pod volume at /mnt and back."""
