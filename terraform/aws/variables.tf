variable "name" {
  description = "Deployment name: prefix of resource names and a tag."
  type        = string
  default     = "switchyard"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,10}$", var.name))
    error_message = "var.name must be 1 to 11 characters: lowercase letters, digits and '-', starting with a letter."
  }
}

variable "regions" {
  description = <<-EOT
    The regions, by our region name (a DNS label: it becomes <region>.api.<zone>): the AWS
    region, the VPC CIDR (/16 to /24, no two overlapping) and sizes. At least two.
  EOT
  type = map(object({
    aws_region            = string
    cidr                  = string
    azs                   = optional(list(string))
    ami                   = optional(string)
    gateway_instance_type = optional(string, "c7i.large")
    db_instance_type      = optional(string, "r7i.large")
    db_volume_gb          = optional(number, 100)
    hub_instance_type     = optional(string, "c7i.large")
    hub_count             = optional(number, 2)
    spoke_instance_type   = optional(string, "c7i.2xlarge")
    spoke_count           = optional(number, 2)
    spoke_volume_gb       = optional(number, 32)
  }))

  validation {
    condition     = length(var.regions) >= 2
    error_message = "var.regions must hold at least two regions (it has ${length(var.regions)}): the network links regions."
  }

  validation {
    condition     = alltrue([for r in keys(var.regions) : can(regex("^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$", r))])
    error_message = "var.regions: every region name must be a DNS label (lowercase letters, digits, '-', not at either end) of at most 20 characters; not: ${join(", ", [for r in keys(var.regions) : jsonencode(r) if !can(regex("^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$", r))])}."
  }

  validation {
    condition     = alltrue([for r, v in var.regions : contains(["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1", "ap-northeast-1"], v.aws_region)])
    error_message = "var.regions: aws_region must be one of us-east-1, us-west-2, eu-west-1, eu-central-1, ap-southeast-1, ap-northeast-1 (terraform/README.md: adding an AWS region); not: ${join(", ", [for r, v in var.regions : "${r} (${v.aws_region})" if !contains(["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1", "ap-northeast-1"], v.aws_region)])}."
  }

  validation {
    condition     = alltrue([for r, v in var.regions : can(cidrhost(v.cidr, 0)) && can(regex("^[0-9.]+/(1[6-9]|2[0-4])$", v.cidr)) && try(cidrhost(v.cidr, 0) == split("/", v.cidr)[0], false)])
    error_message = "var.regions: every cidr must be an IPv4 network from /16 to /24 written with its network address; not: ${join(", ", [for r, v in var.regions : "${r} (${v.cidr})" if !(can(cidrhost(v.cidr, 0)) && can(regex("^[0-9.]+/(1[6-9]|2[0-4])$", v.cidr)) && try(cidrhost(v.cidr, 0) == split("/", v.cidr)[0], false))])}."
  }

  # Two networks overlap when each starts before the other ends (addresses as numbers).
  validation {
    condition = length(flatten([
      for i, a in keys(var.regions) : [
        for j, b in keys(var.regions) : [a, b] if i < j && try(
          sum([for k, o in split(".", cidrhost(var.regions[a].cidr, 0)) : tonumber(o) * pow(256, 3 - k)]) < sum([for k, o in split(".", cidrhost(var.regions[b].cidr, 0)) : tonumber(o) * pow(256, 3 - k)]) + pow(2, 32 - tonumber(split("/", var.regions[b].cidr)[1])) &&
          sum([for k, o in split(".", cidrhost(var.regions[b].cidr, 0)) : tonumber(o) * pow(256, 3 - k)]) < sum([for k, o in split(".", cidrhost(var.regions[a].cidr, 0)) : tonumber(o) * pow(256, 3 - k)]) + pow(2, 32 - tonumber(split("/", var.regions[a].cidr)[1])),
        false)
      ]
    ])) == 0
    error_message = "var.regions: region CIDRs must not overlap: ${join("; ", flatten([
      for i, a in keys(var.regions) : [
        for j, b in keys(var.regions) : "${a} (${var.regions[a].cidr}) overlaps ${b} (${var.regions[b].cidr})" if i < j && try(
          sum([for k, o in split(".", cidrhost(var.regions[a].cidr, 0)) : tonumber(o) * pow(256, 3 - k)]) < sum([for k, o in split(".", cidrhost(var.regions[b].cidr, 0)) : tonumber(o) * pow(256, 3 - k)]) + pow(2, 32 - tonumber(split("/", var.regions[b].cidr)[1])) &&
          sum([for k, o in split(".", cidrhost(var.regions[b].cidr, 0)) : tonumber(o) * pow(256, 3 - k)]) < sum([for k, o in split(".", cidrhost(var.regions[a].cidr, 0)) : tonumber(o) * pow(256, 3 - k)]) + pow(2, 32 - tonumber(split("/", var.regions[a].cidr)[1])),
        false)
      ]
    ]))}."
  }

  validation {
    condition     = alltrue([for r, v in var.regions : v.hub_count >= 1 && v.spoke_count >= 0 && v.db_volume_gb >= 20])
    error_message = "var.regions: every region needs hub_count >= 1, spoke_count >= 0 and db_volume_gb >= 20."
  }
}

variable "primary_region" {
  description = "The region (a key of var.regions) holding the PostgreSQL primary."
  type        = string

  validation {
    condition     = contains(keys(var.regions), var.primary_region)
    error_message = "var.primary_region ${jsonencode(var.primary_region)} is not a region of var.regions (${join(", ", keys(var.regions))})."
  }
}

variable "parent_zone" {
  description = "The public Route 53 hosted zone (name) the steering zone is delegated from, e.g. example.com."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.parent_zone))
    error_message = "var.parent_zone must be a DNS name without the trailing dot, e.g. example.com."
  }
}

variable "zone" {
  description = "The steering zone the hubs serve, a subdomain of parent_zone, e.g. sy.example.com (clients use api.<zone>)."
  type        = string

  validation {
    condition     = endswith(var.zone, ".${var.parent_zone}") && can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.zone))
    error_message = "var.zone must be a DNS name under var.parent_zone (${var.parent_zone}), e.g. sy.${var.parent_zone}."
  }
}

variable "bin_url" {
  description = "Where instances download hub, spoke, tunnel and switchyard-boot.tar.gz at first boot: https://... or s3://bucket/path (instances get read access to that path)."
  type        = string

  validation {
    condition     = can(regex("^(https://[^ ]+|s3://[a-z0-9.-]+(/[^ ]*)?)$", var.bin_url)) && !endswith(var.bin_url, "/")
    error_message = "var.bin_url must be https://... or s3://bucket/path, without a trailing slash."
  }
}

variable "parameter_prefix" {
  description = "SSM Parameter Store path under which instances exchange keys and secrets (in the primary's AWS region)."
  type        = string
  default     = "/switchyard"

  validation {
    condition     = can(regex("^(/[A-Za-z0-9_.-]+)+$", var.parameter_prefix))
    error_message = "var.parameter_prefix must be a path like /switchyard (no trailing slash)."
  }
}

variable "tunnel_port" {
  description = "The gateways' WireGuard UDP port."
  type        = number
  default     = 51820
}

variable "join_uses" {
  description = "How many spokes each region's reusable join token may enroll (it also expires after 30 days; README: rotating)."
  type        = number
  default     = 100

  validation {
    condition     = var.join_uses >= 1
    error_message = "var.join_uses must be at least 1."
  }
}

variable "api_tls" {
  description = <<-EOT
    HTTPS on the API: the names of two SSM SecureString parameters in the primary's AWS region
    (you create them, e.g. from certbot's Route 53 DNS challenge) holding a PEM certificate
    chain valid for api.<zone> and *.api.<zone>, and its private key. Hubs read them at boot and
    every hour (a changed certificate is reloaded without a restart). null: plain HTTP on 80.
  EOT
  type = object({
    cert_parameter = string
    key_parameter  = string
  })
  default = null

  validation {
    condition     = var.api_tls == null || alltrue([for n in [try(var.api_tls.cert_parameter, ""), try(var.api_tls.key_parameter, "")] : can(regex("^(/[A-Za-z0-9_.-]+)+$", n))])
    error_message = "var.api_tls: cert_parameter and key_parameter must be parameter paths like /switchyard/tls/cert."
  }
}

variable "detailed_monitoring" {
  description = "One-minute CloudWatch metrics on every instance (charged); basic five-minute metrics otherwise."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
