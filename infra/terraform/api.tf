# The HTTP API in front of the API function: one catch-all route (the app resolves its own
# routes: control_plane/gateway.py) on the $default stage, so the portal is at the root of the
# URL; with portal_domain, at the root of https://<portal_domain>.

resource "aws_apigatewayv2_api" "http_api" {
  name          = "${var.name}-portal"
  protocol_type = "HTTP"
}

resource "aws_apigatewayv2_integration" "http_api_integration" {
  api_id                 = aws_apigatewayv2_api.http_api.id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_function.api_function.arn
  payload_format_version = "1.0" # Chalice's event and response shape
  timeout_milliseconds   = 29000
}

resource "aws_apigatewayv2_route" "http_api_route" {
  #checkov:skip=CKV_AWS_309:the app authenticates every request itself (session cookie, node JWT, OAuth2 client)
  api_id    = aws_apigatewayv2_api.http_api.id
  route_key = "$default"
  target    = "integrations/${aws_apigatewayv2_integration.http_api_integration.id}"
}

resource "aws_cloudwatch_log_group" "http_api_access_logs" {
  #checkov:skip=CKV_AWS_158:encrypted by CloudWatch's own key; a customer key costs $1/month idle
  name              = "/aws/apigateway/${var.name}-portal"
  retention_in_days = var.log_retention_days
}

resource "aws_apigatewayv2_stage" "http_api_stage" {
  api_id      = aws_apigatewayv2_api.http_api.id
  name        = "$default"
  auto_deploy = true

  # A ceiling on what a flood of requests can cost (Lambda + DynamoDB per request).
  default_route_settings {
    throttling_burst_limit = 100
    throttling_rate_limit  = 50
  }

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.http_api_access_logs.arn
    format = jsonencode({
      requestId = "$context.requestId", ip = "$context.identity.sourceIp",
      method    = "$context.httpMethod", path = "$context.path", status = "$context.status",
      latencyMs = "$context.responseLatency", error = "$context.integrationErrorMessage"
    })
  }
}

resource "aws_lambda_permission" "api_invoke_permission" {
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.api_function.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.http_api.execution_arn}/*"
}

resource "aws_apigatewayv2_domain_name" "portal_domain_name" {
  count       = local.has_portal_domain ? 1 : 0
  domain_name = var.portal_domain

  domain_name_configuration {
    certificate_arn = var.portal_certificate_arn
    endpoint_type   = "REGIONAL"
    security_policy = "TLS_1_2"
  }
}

resource "aws_apigatewayv2_api_mapping" "portal_api_mapping" {
  count       = local.has_portal_domain ? 1 : 0
  api_id      = aws_apigatewayv2_api.http_api.id
  domain_name = aws_apigatewayv2_domain_name.portal_domain_name[0].id
  stage       = aws_apigatewayv2_stage.http_api_stage.id
}
