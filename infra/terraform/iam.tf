# Identities: the nodes' role (assumed by the API function with a per-node session policy), the
# edge routers' role and instance profile, and each function's role with exactly the statements
# template.yaml gives it (tests/unit/test_terraform.py compares them statement by statement).

# --- nodes and routers -------------------------------------------------------------------------

data "aws_iam_policy_document" "node_role_trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "AWS"
      identifiers = ["${local.arn_prefix}:iam::${local.account_id}:root"]
    }
  }
}

data "aws_iam_policy_document" "node_role" {
  statement {
    effect    = "Allow"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"]
    resources = [local.node_queues_arn]
  }

  statement {
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.events_queue.arn]
  }
}

resource "aws_iam_role" "node_role" {
  name_prefix          = "${var.name}-node-"
  max_session_duration = 3600
  assume_role_policy   = data.aws_iam_policy_document.node_role_trust.json
}

resource "aws_iam_role_policy" "node_role" {
  name   = "node-queues"
  role   = aws_iam_role.node_role.id
  policy = data.aws_iam_policy_document.node_role.json
}

# Pods get a user's storage through this role, assumed by the functions that send starts (API,
# reaper, events) with a session policy narrowed to that user's prefix (control_plane/storage.py).
data "aws_iam_policy_document" "storage_role_trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "AWS"
      identifiers = ["${local.arn_prefix}:iam::${local.account_id}:root"]
    }
  }
}

data "aws_iam_policy_document" "storage_role" {
  statement {
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.storage_bucket.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["users/*"]
    }
  }

  statement {
    effect    = "Allow"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    resources = ["${aws_s3_bucket.storage_bucket.arn}/users/*"]
  }
}

resource "aws_iam_role" "storage_role" {
  name_prefix          = "${var.name}-storage-"
  max_session_duration = 3600
  assume_role_policy   = data.aws_iam_policy_document.storage_role_trust.json
}

resource "aws_iam_role_policy" "storage_role" {
  name   = "users-storage"
  role   = aws_iam_role.storage_role.id
  policy = data.aws_iam_policy_document.storage_role.json
}

data "aws_iam_policy_document" "router_role_trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "router_role" {
  statement {
    effect    = "Allow"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage"]
    resources = [aws_sqs_queue.router_revocations_queue.arn]
  }
}

resource "aws_iam_role" "router_role" {
  name_prefix        = "${var.name}-router-"
  assume_role_policy = data.aws_iam_policy_document.router_role_trust.json
}

resource "aws_iam_role_policy" "router_role" {
  name   = "router-queues"
  role   = aws_iam_role.router_role.id
  policy = data.aws_iam_policy_document.router_role.json
}

resource "aws_iam_instance_profile" "router_instance_profile" {
  name_prefix = "${var.name}-router-"
  role        = aws_iam_role.router_role.name
}

# --- functions ---------------------------------------------------------------------------------

data "aws_iam_policy_document" "lambda_trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "api_function" {
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DescribeTable"]
    resources = [aws_dynamodb_table.users_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.sessions_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:BatchGetItem"]
    resources = [aws_dynamodb_table.images_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:Query"]
    resources = ["${aws_dynamodb_table.images_table.arn}/index/by-owner"]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchGetItem"]
    resources = [aws_dynamodb_table.instances_table.arn]
  }
  statement {
    effect  = "Allow"
    actions = ["dynamodb:Query"]
    resources = ["${aws_dynamodb_table.instances_table.arn}/index/by-owner",
    "${aws_dynamodb_table.instances_table.arn}/index/by-node"]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query"]
    resources = [aws_dynamodb_table.shares_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:Query"]
    resources = ["${aws_dynamodb_table.shares_table.arn}/index/by-grantee"]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.clusters_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:Query"]
    resources = ["${aws_dynamodb_table.clusters_table.arn}/index/by-kind"]
  }
  statement {
    effect    = "Allow"
    # DeleteItem: a node that just enrolled withdraws (its join failed afterwards).
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.nodes_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:Query"]
    resources = ["${aws_dynamodb_table.nodes_table.arn}/index/by-cluster"]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.tokens_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:Query"]
    resources = ["${aws_dynamodb_table.tokens_table.arn}/index/by-cluster"]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.oauth_clients_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:PutItem", "dynamodb:Scan"]
    resources = [aws_dynamodb_table.revocations_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.revocations_topic.arn]
  }
  statement {
    effect = "Allow"
    actions = ["sqs:CreateQueue", "sqs:TagQueue", "sqs:GetQueueAttributes", "sqs:SendMessage",
    "sqs:DeleteQueue"]
    resources = [local.node_queues_arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["sqs:GetQueueAttributes"]
    resources = [aws_sqs_queue.events_queue.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["sts:AssumeRole"]
    resources = [aws_iam_role.node_role.arn, aws_iam_role.storage_role.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["ssm:GetParameter", "ssm:PutParameter"]
    resources = [local.signing_key_parameter_arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["events:EnableRule"]
    resources = [local.reaper_rule_arn]
  }
}

data "aws_iam_policy_document" "events_function" {
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.instances_table.arn, aws_dynamodb_table.nodes_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:Query"]
    resources = ["${aws_dynamodb_table.instances_table.arn}/index/by-node"]
  }
  # A start the node never got is sent again with the owner's storage (quota, credentials).
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:GetItem"]
    resources = [aws_dynamodb_table.users_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["sts:AssumeRole"]
    resources = [aws_iam_role.storage_role.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.users_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:PutItem"]
    resources = [aws_dynamodb_table.images_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:PutItem"]
    resources = [aws_dynamodb_table.revocations_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:PutItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.oauth_clients_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["ssm:GetParameter"]
    resources = [local.signing_key_parameter_arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.revocations_topic.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [local.node_queues_arn]
  }
}

data "aws_iam_policy_document" "reaper_function" {
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.instances_table.arn]
  }
  statement {
    effect  = "Allow"
    actions = ["dynamodb:Query"]
    resources = ["${aws_dynamodb_table.instances_table.arn}/index/by-node",
    "${aws_dynamodb_table.instances_table.arn}/index/by-transition"]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.nodes_table.arn, aws_dynamodb_table.users_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:GetItem"] # the owner's storage quota, for an instance placed again
    resources = [aws_dynamodb_table.users_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["sts:AssumeRole"] # the owner's storage credentials, likewise
    resources = [aws_iam_role.storage_role.arn]
  }
  statement {
    effect  = "Allow"
    actions = ["dynamodb:Query"]
    resources = ["${aws_dynamodb_table.nodes_table.arn}/index/by-cluster",
    "${aws_dynamodb_table.clusters_table.arn}/index/by-kind"]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:PutItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.oauth_clients_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["dynamodb:PutItem"]
    resources = [aws_dynamodb_table.revocations_table.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.revocations_topic.arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [local.node_queues_arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["ssm:GetParameter"]
    resources = [local.signing_key_parameter_arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["events:EnableRule", "events:DisableRule"]
    resources = [local.reaper_rule_arn]
  }
  statement {
    effect    = "Allow"
    actions   = ["lambda:GetEventSourceMapping", "lambda:UpdateEventSourceMapping"]
    resources = [aws_lambda_event_source_mapping.events_function_events.arn]
  }
}

locals {
  # Function -> its own statements and the AWS managed policies SAM gives it.
  functions = {
    api_function    = { short = "api", policy = data.aws_iam_policy_document.api_function.json, managed = ["service-role/AWSLambdaBasicExecutionRole"] }
    events_function = { short = "events", policy = data.aws_iam_policy_document.events_function.json, managed = ["service-role/AWSLambdaBasicExecutionRole", "service-role/AWSLambdaSQSQueueExecutionRole"] }
    reaper_function = { short = "reaper", policy = data.aws_iam_policy_document.reaper_function.json, managed = ["service-role/AWSLambdaBasicExecutionRole"] }
  }
  managed_attachments = merge([for function, spec in local.functions : {
    for policy in spec.managed : "${function}/${policy}" => { function = function, policy = policy }
  }]...)
}

resource "aws_iam_role" "function" {
  for_each           = local.functions
  name_prefix        = "${var.name}-${each.value.short}-"
  assume_role_policy = data.aws_iam_policy_document.lambda_trust.json
}

resource "aws_iam_role_policy" "function" {
  for_each = local.functions
  name     = "calls"
  role     = aws_iam_role.function[each.key].id
  policy   = each.value.policy
}

resource "aws_iam_role_policy_attachment" "function" {
  for_each   = local.managed_attachments
  role       = aws_iam_role.function[each.value.function].name
  policy_arn = "${local.arn_prefix}:iam::aws:policy/${each.value.policy}"
}
