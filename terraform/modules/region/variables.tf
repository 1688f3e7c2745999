variable "name" {
  description = "Deployment name, prefixed to every resource name."
  type        = string
}

variable "region" {
  description = "This region's name (a key of the root's var.regions)."
  type        = string
}

variable "settings" {
  description = "This region's entry of the root's var.regions, with defaults filled in and azs resolved."
  type = object({
    aws_region            = string
    cidr                  = string
    azs                   = list(string)
    ami                   = optional(string)
    gateway_instance_type = string
    db_instance_type      = string
    db_volume_gb          = number
    hub_instance_type     = string
    hub_count             = number
    spoke_instance_type   = string
    spoke_count           = number
    spoke_volume_gb       = number
  })
}

variable "primary_region" {
  description = "The region holding the PostgreSQL primary."
  type        = string
}

variable "all" {
  description = "Every region's plan-time facts, by name: CIDR and the fixed private addresses of its gateway and database."
  type = map(object({
    cidr            = string
    gateway_address = string
    db_address      = string
  }))
}

variable "zone" {
  description = "The steering zone."
  type        = string
}

variable "tunnel_port" {
  description = "WireGuard UDP port of every gateway."
  type        = number
}

variable "join_uses" {
  description = "Uses of each region's reusable join token."
  type        = number
}

variable "bin_url" {
  description = "Where user_data downloads the binaries and switchyard-boot.tar.gz."
  type        = string
}

variable "bin_read_statements" {
  description = "IAM statements granting read of bin_url when it is on S3 (empty otherwise)."
  type        = list(any)
}

variable "parameter_prefix" {
  description = "SSM Parameter Store prefix."
  type        = string
}

variable "ssm_region" {
  description = "AWS region holding the parameters."
  type        = string
}

variable "parameter_arns" {
  description = "ARNs of the SSM parameters, by purpose."
  type = object({
    tunnel_public_keys   = map(string)
    tunnel_peers         = string
    db_password          = string
    replication_password = string
    master_key           = string
    meta_token           = string
    join                 = map(string)
    join_expiry          = map(string)
    dns                  = string
  })
}

variable "detailed_monitoring" {
  description = "One-minute CloudWatch metrics on every instance (charged)."
  type        = bool
  default     = false
}

variable "api_tls" {
  description = "HTTPS on the API: the certificate and key parameter names and their ARNs; null for plain HTTP."
  type = object({
    cert_parameter = string
    key_parameter  = string
    arns           = list(string)
  })
  default = null
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
