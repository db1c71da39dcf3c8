# S3: users' persistent storage (the storage helper mirrors a prefix per user).

resource "aws_s3_bucket" "storage_bucket" {
  #checkov:skip=CKV_AWS_18:access logs would be a second bucket billed for every sync
  #checkov:skip=CKV_AWS_21:the storage helper rewrites files every sync: versions would grow without end
  #checkov:skip=CKV_AWS_144:one region by design; replication doubles the storage bill
  #checkov:skip=CKV_AWS_145:SSE-S3 (AES256); a customer KMS key costs $1/month idle plus per request
  #checkov:skip=CKV2_AWS_62:nothing consumes bucket events
  #checkov:skip=CKV2_AWS_61:users' files have no lifetime of their own
  bucket_prefix = "${var.name}-storage-"
}

resource "aws_s3_bucket_public_access_block" "storage_bucket" {
  bucket                  = aws_s3_bucket.storage_bucket.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "storage_bucket" {
  bucket = aws_s3_bucket.storage_bucket.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}
