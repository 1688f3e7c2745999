# The lab needs no provider: every resource is the built-in terraform_data with local-exec
# provisioners, so `terraform init` works offline.
terraform {
  required_version = ">= 1.6.0"
}
