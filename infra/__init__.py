"""Infrastructure: the embedded local stack (infra/local) and Terraform for AWS."""
