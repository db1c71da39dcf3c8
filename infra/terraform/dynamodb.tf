# DynamoDB: the same tables, keys, indexes, TTL and recovery as template.yaml.

resource "aws_dynamodb_table" "users_table" {
  #checkov:skip=CKV_AWS_119:encrypted with the AWS owned key; a customer key costs $1/month idle
  name         = "${var.name}-UsersTable"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "username"

  attribute {
    name = "username"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }
}

resource "aws_dynamodb_table" "sessions_table" {
  #checkov:skip=CKV_AWS_28:short-lived records that expire (TTL); nothing to recover
  #checkov:skip=CKV_AWS_119:encrypted with the AWS owned key; a customer key costs $1/month idle
  name         = "${var.name}-SessionsTable"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "session_id"

  attribute {
    name = "session_id"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = false
  }
}

resource "aws_dynamodb_table" "images_table" {
  #checkov:skip=CKV_AWS_119:encrypted with the AWS owned key; a customer key costs $1/month idle
  name         = "${var.name}-ImagesTable"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "image_id"

  attribute {
    name = "image_id"
    type = "S"
  }

  attribute {
    name = "owner"
    type = "S"
  }

  attribute {
    name = "created_at"
    type = "S"
  }

  global_secondary_index {
    name            = "by-owner"
    hash_key        = "owner"
    range_key       = "created_at"
    projection_type = "ALL"
  }

  point_in_time_recovery {
    enabled = true
  }
}

resource "aws_dynamodb_table" "instances_table" {
  #checkov:skip=CKV_AWS_119:encrypted with the AWS owned key; a customer key costs $1/month idle
  name         = "${var.name}-InstancesTable"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "instance_id"

  attribute {
    name = "instance_id"
    type = "S"
  }

  attribute {
    name = "owner"
    type = "S"
  }

  attribute {
    name = "created_at"
    type = "S"
  }

  attribute {
    name = "node_id"
    type = "S"
  }

  attribute {
    name = "transition"
    type = "S"
  }

  attribute {
    name = "transition_deadline"
    type = "S"
  }

  global_secondary_index {
    name            = "by-owner"
    hash_key        = "owner"
    range_key       = "created_at"
    projection_type = "ALL"
  }

  global_secondary_index {
    name            = "by-node"
    hash_key        = "node_id"
    range_key       = "instance_id"
    projection_type = "ALL"
  }

  global_secondary_index {
    name            = "by-transition"
    hash_key        = "transition"
    range_key       = "transition_deadline"
    projection_type = "KEYS_ONLY"
  }

  point_in_time_recovery {
    enabled = true
  }
}

resource "aws_dynamodb_table" "shares_table" {
  #checkov:skip=CKV_AWS_119:encrypted with the AWS owned key; a customer key costs $1/month idle
  name         = "${var.name}-SharesTable"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "resource"
  range_key    = "grantee"

  attribute {
    name = "resource"
    type = "S"
  }

  attribute {
    name = "grantee"
    type = "S"
  }

  global_secondary_index {
    name            = "by-grantee"
    hash_key        = "grantee"
    range_key       = "resource"
    projection_type = "ALL"
  }

  point_in_time_recovery {
    enabled = true
  }
}

resource "aws_dynamodb_table" "clusters_table" {
  #checkov:skip=CKV_AWS_119:encrypted with the AWS owned key; a customer key costs $1/month idle
  name         = "${var.name}-ClustersTable"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "cluster_id"

  attribute {
    name = "cluster_id"
    type = "S"
  }

  attribute {
    name = "kind"
    type = "S"
  }

  attribute {
    name = "created_at"
    type = "S"
  }

  global_secondary_index {
    name            = "by-kind"
    hash_key        = "kind"
    range_key       = "created_at"
    projection_type = "ALL"
  }

  point_in_time_recovery {
    enabled = true
  }
}

resource "aws_dynamodb_table" "nodes_table" {
  #checkov:skip=CKV_AWS_119:encrypted with the AWS owned key; a customer key costs $1/month idle
  name         = "${var.name}-NodesTable"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "node_id"

  attribute {
    name = "node_id"
    type = "S"
  }

  attribute {
    name = "cluster_id"
    type = "S"
  }

  global_secondary_index {
    name            = "by-cluster"
    hash_key        = "cluster_id"
    range_key       = "node_id"
    projection_type = "ALL"
  }

  point_in_time_recovery {
    enabled = true
  }
}

resource "aws_dynamodb_table" "tokens_table" {
  #checkov:skip=CKV_AWS_28:short-lived records that expire (TTL); nothing to recover
  #checkov:skip=CKV_AWS_119:encrypted with the AWS owned key; a customer key costs $1/month idle
  name         = "${var.name}-TokensTable"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "token_key"

  attribute {
    name = "token_key"
    type = "S"
  }

  attribute {
    name = "cluster_id"
    type = "S"
  }

  # Sparse: only join tokens carry cluster_id (the admins' list of unused join tokens).
  global_secondary_index {
    name            = "by-cluster"
    hash_key        = "cluster_id"
    projection_type = "ALL"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = false
  }
}

resource "aws_dynamodb_table" "revocations_table" {
  #checkov:skip=CKV_AWS_28:entries expire within about an hour (TTL); nothing to recover
  #checkov:skip=CKV_AWS_119:encrypted with the AWS owned key; a customer key costs $1/month idle
  name         = "${var.name}-RevocationsTable"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "hostname"

  attribute {
    name = "hostname"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = false
  }
}

resource "aws_dynamodb_table" "oauth_clients_table" {
  #checkov:skip=CKV_AWS_119:encrypted with the AWS owned key; a customer key costs $1/month idle
  name         = "${var.name}-OAuthClientsTable"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "client_id"

  attribute {
    name = "client_id"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }
}
