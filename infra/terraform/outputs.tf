# The same outputs as template.yaml's (docs/deploy.md says what each is for).

output "portal_url" {
  description = "The portal (and API); bootstrap prints it too"
  value       = local.portal_url
}

output "api_endpoint" {
  description = "The HTTP API's own URL (works with or without a custom domain)"
  value       = aws_apigatewayv2_api.http_api.api_endpoint
}

output "portal_domain_target" {
  description = "Point portal_domain here (CNAME, or a Route 53 alias with portal_domain_zone_id)"
  value       = local.has_portal_domain ? aws_apigatewayv2_domain_name.portal_domain_name[0].domain_name_configuration[0].target_domain_name : null
}

output "portal_domain_zone_id" {
  value = local.has_portal_domain ? aws_apigatewayv2_domain_name.portal_domain_name[0].domain_name_configuration[0].hosted_zone_id : null
}

output "api_function_name" {
  description = "What `python -m control_plane bootstrap --function` reads its settings from"
  value       = aws_lambda_function.api_function.function_name
}

output "events_queue_url" {
  value = aws_sqs_queue.events_queue.url
}

output "router_revocations_queue_url" {
  value = aws_sqs_queue.router_revocations_queue.url
}

output "router_instance_profile_arn" {
  description = "Give the edge routers' EC2 instances this profile"
  value       = aws_iam_instance_profile.router_instance_profile.arn
}

output "jwks_url" {
  description = "DIT4C_ROUTER_JWKS_URL of the edge routers"
  value       = "${local.portal_url}/.well-known/jwks.json"
}

output "revocations_url" {
  description = "DIT4C_ROUTER_REVOCATIONS_URL of the edge routers"
  value       = "${local.portal_url}/api/revocations"
}
