variable "name" {
  description = "Deployment name, prefixed to every resource name."
  type        = string
}

variable "region" {
  description = "Our region name (a DNS label), e.g. us-east."
  type        = string
}

variable "cidr" {
  description = "The region's VPC CIDR, /16 to /24."
  type        = string

  validation {
    condition     = can(cidrsubnet(var.cidr, 4, 15)) && tonumber(split("/", var.cidr)[1]) >= 16 && tonumber(split("/", var.cidr)[1]) <= 24
    error_message = "var.cidr must be an IPv4 CIDR from /16 to /24."
  }
}

variable "azs" {
  description = "Two availability zones (the first one holds the NAT gateway, the tunnel gateway and the database)."
  type        = list(string)

  validation {
    condition     = length(var.azs) == 2
    error_message = "var.azs must name exactly two availability zones."
  }
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
