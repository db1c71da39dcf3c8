# SQS and SNS: the events queue (nodes and routers -> the events function) with its dead-letter
# queue, the dead-letter queue of the per-node command queues, and the revocations fan-out.

resource "aws_sqs_queue" "events_dlq" {
  name                      = "${var.name}-EventsDLQ"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "events_queue" {
  name                       = "${var.name}-EventsQueue"
  visibility_timeout_seconds = 180
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.events_dlq.arn
    maxReceiveCount     = 5
  })
}

resource "aws_sqs_queue" "node_commands_dlq" {
  name                      = "${var.name}-NodeCommandsDLQ"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

resource "aws_sns_topic" "revocations_topic" {
  name              = "${var.name}-RevocationsTopic"
  kms_master_key_id = "alias/aws/sns" # the AWS managed key: encrypted at rest, nothing billed
}

# The queue of the first edge router; add one queue + subscription per further router.
resource "aws_sqs_queue" "router_revocations_queue" {
  name                      = "${var.name}-RouterRevocationsQueue"
  message_retention_seconds = 3600
  sqs_managed_sse_enabled   = true
}

resource "aws_sns_topic_subscription" "router_revocations_subscription" {
  topic_arn            = aws_sns_topic.revocations_topic.arn
  protocol             = "sqs"
  endpoint             = aws_sqs_queue.router_revocations_queue.arn
  raw_message_delivery = true
}

data "aws_iam_policy_document" "router_revocations_queue_policy" {
  statement {
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.router_revocations_queue.arn]

    principals {
      type        = "Service"
      identifiers = ["sns.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_sns_topic.revocations_topic.arn]
    }
  }
}

resource "aws_sqs_queue_policy" "router_revocations_queue_policy" {
  queue_url = aws_sqs_queue.router_revocations_queue.id
  policy    = data.aws_iam_policy_document.router_revocations_queue_policy.json
}
