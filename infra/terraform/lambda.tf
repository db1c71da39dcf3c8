# The three functions from build/lambda.zip (`make package`), their logs, the events queue's
# trigger and the reaper's schedule: as template.yaml's Globals.Function, Environment and Events
# say.

locals {
  runtime       = "python3.13"
  architectures = ["arm64"]
  memory_size   = 512
}

resource "aws_cloudwatch_log_group" "function" {
  #checkov:skip=CKV_AWS_158:encrypted by CloudWatch's own key; a customer key costs $1/month idle
  for_each          = toset(["ApiFunction", "EventsFunction", "ReaperFunction"])
  name              = "/aws/lambda/${var.name}-${each.key}"
  retention_in_days = var.log_retention_days
}

resource "aws_lambda_function" "api_function" {
  #checkov:skip=CKV_AWS_115:reserved concurrency cannot be set on accounts at the default limit; the API's stage throttles instead
  #checkov:skip=CKV_AWS_116:invoked synchronously by API Gateway: there is no async event to keep
  #checkov:skip=CKV_AWS_117:calls only AWS APIs; a VPC would need NAT or endpoints billed by the hour
  #checkov:skip=CKV_AWS_173:the environment is encrypted at rest with the AWS managed key; a customer key costs $1/month idle
  #checkov:skip=CKV_AWS_272:the artifact is built and deployed by the same admin; no signing profile
  function_name    = "${var.name}-ApiFunction"
  role             = aws_iam_role.function["api_function"].arn
  handler          = "control_plane.app.app"
  runtime          = local.runtime
  architectures    = local.architectures
  memory_size      = local.memory_size
  timeout          = 29
  filename         = local.lambda_zip
  source_code_hash = filebase64sha256(local.lambda_zip)

  environment {
    variables = local.environment
  }

  tracing_config { # Lambda's default, as the template leaves it
    mode = "PassThrough"
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.function["ApiFunction"].name
  }
}

resource "aws_lambda_function" "events_function" {
  #checkov:skip=CKV_AWS_115:reserved concurrency cannot be set on accounts at the default limit; the event source mapping bounds it
  #checkov:skip=CKV_AWS_116:invoked by the SQS event source mapping: the events queue has its own dead-letter queue
  #checkov:skip=CKV_AWS_117:calls only AWS APIs; a VPC would need NAT or endpoints billed by the hour
  #checkov:skip=CKV_AWS_173:the environment is encrypted at rest with the AWS managed key; a customer key costs $1/month idle
  #checkov:skip=CKV_AWS_272:the artifact is built and deployed by the same admin; no signing profile
  function_name    = "${var.name}-EventsFunction"
  role             = aws_iam_role.function["events_function"].arn
  handler          = "control_plane.app.on_event"
  runtime          = local.runtime
  architectures    = local.architectures
  memory_size      = local.memory_size
  timeout          = 29
  filename         = local.lambda_zip
  source_code_hash = filebase64sha256(local.lambda_zip)

  environment {
    variables = local.environment
  }

  tracing_config { # Lambda's default, as the template leaves it
    mode = "PassThrough"
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.function["EventsFunction"].name
  }
}

resource "aws_lambda_function" "reaper_function" {
  #checkov:skip=CKV_AWS_115:reserved concurrency cannot be set on accounts at the default limit; one run a minute
  #checkov:skip=CKV_AWS_116:a failed scheduled run is simply the next minute's run; nothing to keep
  #checkov:skip=CKV_AWS_117:calls only AWS APIs; a VPC would need NAT or endpoints billed by the hour
  #checkov:skip=CKV_AWS_173:the environment is encrypted at rest with the AWS managed key; a customer key costs $1/month idle
  #checkov:skip=CKV_AWS_272:the artifact is built and deployed by the same admin; no signing profile
  function_name    = "${var.name}-ReaperFunction"
  role             = aws_iam_role.function["reaper_function"].arn
  handler          = "control_plane.app.reap"
  runtime          = local.runtime
  architectures    = local.architectures
  memory_size      = local.memory_size
  timeout          = 120
  filename         = local.lambda_zip
  source_code_hash = filebase64sha256(local.lambda_zip)

  environment {
    variables = merge(local.environment, local.reaper_environment)
  }

  tracing_config { # Lambda's default, as the template leaves it
    mode = "PassThrough"
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.function["ReaperFunction"].name
  }
}

# The events trigger and the reaper's schedule start on; the reaper turns both off while nothing
# runs and the API turns them on again (control_plane/standby.py): Terraform leaves that to them.
resource "aws_lambda_event_source_mapping" "events_function_events" {
  event_source_arn        = aws_sqs_queue.events_queue.arn
  function_name           = aws_lambda_function.events_function.arn
  batch_size              = 10
  function_response_types = ["ReportBatchItemFailures"]
  enabled                 = true

  lifecycle {
    ignore_changes = [enabled]
  }
}

resource "aws_cloudwatch_event_rule" "reaper_function_every_minute" {
  name                = local.reaper_rule
  schedule_expression = "rate(1 minute)"
  state               = "ENABLED"

  lifecycle {
    ignore_changes = [state]
  }
}

resource "aws_cloudwatch_event_target" "reaper_function_every_minute" {
  rule = aws_cloudwatch_event_rule.reaper_function_every_minute.name
  arn  = aws_lambda_function.reaper_function.arn
}

resource "aws_lambda_permission" "reaper_function_every_minute" {
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.reaper_function.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.reaper_function_every_minute.arn
}
