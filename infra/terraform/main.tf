# What every part refers to: names, ARNs of the resources made at run time, the functions'
# environment (the names of template.yaml's Globals; docs/contracts.md).

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  lambda_zip        = coalesce(var.lambda_zip, "${path.module}/../../build/lambda.zip")
  has_portal_domain = var.portal_domain != "" && var.portal_certificate_arn != ""
  portal_url = (var.portal_url != "" ? var.portal_url
    : local.has_portal_domain ? "https://${var.portal_domain}"
  : aws_apigatewayv2_api.http_api.api_endpoint)

  arn_prefix = "arn:${data.aws_partition.current.partition}"
  region     = data.aws_region.current.region
  account_id = data.aws_caller_identity.current.account_id

  # Per-node command queues are made at enrolment, with this prefix.
  node_queue_prefix         = "${var.name}-node-"
  node_queues_arn           = "${local.arn_prefix}:sqs:${local.region}:${local.account_id}:${local.node_queue_prefix}*"
  signing_key_parameter     = "/${var.name}/signing-keys"
  signing_key_parameter_arn = "${local.arn_prefix}:ssm:${local.region}:${local.account_id}:parameter${local.signing_key_parameter}"
  # The reaper's schedule: switched off while nothing runs (control_plane/standby.py).
  reaper_rule     = "${var.name}-reaper"
  reaper_rule_arn = "${local.arn_prefix}:events:${local.region}:${local.account_id}:rule/${local.reaper_rule}"

  environment = {
    DIT4C_PORTAL_URL               = local.portal_url
    DIT4C_ROUTER_DOMAIN            = var.router_domain
    DIT4C_ROUTER_SCHEME            = var.router_scheme
    DIT4C_ROUTER_TUNNEL_URLS       = join(",", var.router_tunnel_urls)
    DIT4C_MAX_RUNNING_PER_USER     = tostring(var.max_running_instances_per_user)
    DIT4C_LOGIN_PROVIDERS          = var.login_providers
    DIT4C_USERS_TABLE              = aws_dynamodb_table.users_table.name
    DIT4C_SESSIONS_TABLE           = aws_dynamodb_table.sessions_table.name
    DIT4C_IMAGES_TABLE             = aws_dynamodb_table.images_table.name
    DIT4C_INSTANCES_TABLE          = aws_dynamodb_table.instances_table.name
    DIT4C_SHARES_TABLE             = aws_dynamodb_table.shares_table.name
    DIT4C_CLUSTERS_TABLE           = aws_dynamodb_table.clusters_table.name
    DIT4C_NODES_TABLE              = aws_dynamodb_table.nodes_table.name
    DIT4C_TOKENS_TABLE             = aws_dynamodb_table.tokens_table.name
    DIT4C_OAUTH_CLIENTS_TABLE      = aws_dynamodb_table.oauth_clients_table.name
    DIT4C_REVOCATIONS_TABLE        = aws_dynamodb_table.revocations_table.name
    DIT4C_EVENTS_QUEUE_URL         = aws_sqs_queue.events_queue.url
    DIT4C_EVENTS_QUEUE_ARN         = aws_sqs_queue.events_queue.arn
    DIT4C_NODE_COMMANDS_DLQ_ARN    = aws_sqs_queue.node_commands_dlq.arn
    DIT4C_NODE_QUEUE_PREFIX        = local.node_queue_prefix
    DIT4C_NODE_ROLE_ARN            = aws_iam_role.node_role.arn
    DIT4C_REVOCATIONS_TOPIC_ARN    = aws_sns_topic.revocations_topic.arn
    DIT4C_SIGNING_KEY_PARAMETER    = local.signing_key_parameter
    DIT4C_STORAGE_BUCKET           = aws_s3_bucket.storage_bucket.bucket
    DIT4C_STORAGE_ROLE_ARN         = aws_iam_role.storage_role.arn
    DIT4C_STORAGE_QUOTA_MB         = tostring(var.storage_quota_mb)
    DIT4C_REAPER_RULE              = local.reaper_rule
  }

  # The reaper's own: the events trigger it switches with its schedule.
  reaper_environment = {
    DIT4C_EVENTS_MAPPING = aws_lambda_event_source_mapping.events_function_events.uuid
  }
}
