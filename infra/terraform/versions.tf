# Terraform and the AWS provider this module is written and checked against
# (tests/unit/test_terraform.py parses it; checkov checks it: make checkov).
terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }
}
