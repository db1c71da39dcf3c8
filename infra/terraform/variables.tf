# The same settings as template.yaml's Parameters (docs/deploy.md, "Deploy with Terraform").

variable "name" {
  description = "Prefix of every resource's name, like a CloudFormation stack name"
  type        = string
  default     = "dit4c"

  validation {
    # IAM role name prefixes are at most 38 characters: "<name>-events-" must fit.
    condition     = can(regex("^[a-z][a-z0-9-]{0,23}$", var.name))
    error_message = "name: lower-case letters, digits and '-', starting with a letter, at most 24."
  }
}

variable "portal_url" {
  description = "Public URL of the portal when something else serves it (a proxy). Empty: https://<portal_domain> when set, else the HTTP API's own URL"
  type        = string
  default     = ""
}

variable "portal_domain" {
  description = "Custom domain of the portal, e.g. dit4c.example.org (empty for none)"
  type        = string
  default     = ""
}

variable "portal_certificate_arn" {
  description = "ACM certificate of portal_domain, in this region (needed with it)"
  type        = string
  default     = ""

  validation {
    condition     = var.portal_certificate_arn == "" || can(regex("^arn:aws[a-z-]*:acm:", var.portal_certificate_arn))
    error_message = "portal_certificate_arn must be an ACM certificate ARN."
  }
}

variable "router_domain" {
  description = "Routing domain of the edge routers; instance ID is served at ID.<router_domain>"
  type        = string
}

variable "router_scheme" {
  description = "Scheme browsers use to reach instances through the edge routers"
  type        = string
  default     = "https"

  validation {
    condition     = contains(["http", "https"], var.router_scheme)
    error_message = "router_scheme must be http or https."
  }
}

variable "router_tunnel_urls" {
  description = "Tunnel endpoints (wss://...) of every edge router; listener helpers dial all"
  type        = list(string)
}

variable "max_running_instances_per_user" {
  description = "Live instances one user may have at once"
  type        = number
  default     = 4

  validation {
    condition     = var.max_running_instances_per_user >= 1
    error_message = "max_running_instances_per_user must be at least 1."
  }
}

variable "storage_quota_mb" {
  description = "Each user's storage quota (MB) unless an admin sets their own"
  type        = number
  default     = 10240

  validation {
    condition     = var.storage_quota_mb >= 0
    error_message = "storage_quota_mb must be at least 0."
  }
}

variable "login_providers" {
  description = "JSON list of identity providers (docs/control-plane.md); \"[]\": local accounts only"
  type        = string
  default     = "[]"
  sensitive   = true
}

variable "lambda_zip" {
  description = "The artifact `make package` builds; default: build/lambda.zip of this checkout"
  type        = string
  default     = null
}

variable "log_retention_days" {
  description = "How long the functions' and the API's logs are kept"
  type        = number
  default     = 365
}
