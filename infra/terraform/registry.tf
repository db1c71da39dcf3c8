# The image server's storage and identity (template.yaml: RegistryBucket, RegistryRole,
# RegistryInstanceProfile). Saved images live in the bucket, written by Distribution
# (docker-registry) with token authentication by the portal; docs/deploy.md.

resource "aws_s3_bucket" "registry_bucket" {
  #checkov:skip=CKV_AWS_18:access logs would be a second bucket billed for every layer pulled
  #checkov:skip=CKV_AWS_21:layers are content-addressed and never rewritten; deletes are the garbage collection's
  #checkov:skip=CKV_AWS_144:one region by design; replication doubles the storage bill
  #checkov:skip=CKV_AWS_145:SSE-S3 (AES256); a customer KMS key costs $1/month idle plus per request
  #checkov:skip=CKV2_AWS_62:nothing consumes bucket events
  #checkov:skip=CKV2_AWS_61:saved images live until their owner deletes them (then the registry's garbage collection)
  bucket_prefix = "${var.name}-registry-"
}

resource "aws_s3_bucket_public_access_block" "registry_bucket" {
  bucket                  = aws_s3_bucket.registry_bucket.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "registry_bucket" {
  bucket = aws_s3_bucket.registry_bucket.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

data "aws_iam_policy_document" "registry_role_trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# What Distribution's S3 driver calls, on its bucket only.
data "aws_iam_policy_document" "registry_role" {
  statement {
    effect    = "Allow"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
    resources = [aws_s3_bucket.registry_bucket.arn]
  }
  statement {
    effect = "Allow"
    actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
    "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.registry_bucket.arn}/*"]
  }
}

resource "aws_iam_role" "registry_role" {
  name_prefix        = "${var.name}-registry-"
  assume_role_policy = data.aws_iam_policy_document.registry_role_trust.json
}

resource "aws_iam_role_policy" "registry_role" {
  name   = "registry-storage"
  role   = aws_iam_role.registry_role.id
  policy = data.aws_iam_policy_document.registry_role.json
}

resource "aws_iam_instance_profile" "registry_instance_profile" {
  name_prefix = "${var.name}-registry-"
  role        = aws_iam_role.registry_role.name
}
