variable "name" {
  description = "Deployment name, prefixed to every resource name."
  type        = string
}

variable "region" {
  description = "Our region name (a DNS label)."
  type        = string
}

variable "role" {
  description = "primary or replica."
  type        = string

  validation {
    condition     = contains(["primary", "replica"], var.role)
    error_message = "var.role must be primary or replica."
  }
}

variable "vpc_id" {
  description = "The region's VPC."
  type        = string
}

variable "subnet_id" {
  description = "A private subnet."
  type        = string
}

variable "private_ip" {
  description = "The server's fixed private address (hubs and replicas are configured with it)."
  type        = string
}

variable "primary_address" {
  description = "The primary's private address (a replica streams from it over the tunnel); null on the primary."
  type        = string
  default     = null
}

variable "client_cidrs" {
  description = "Networks allowed to port 5432, by region name (every region's CIDR)."
  type        = map(string)
}

variable "join_uses" {
  description = "Uses of each region's join token (primary only)."
  type        = number
  default     = 100
}

variable "instance_type" {
  description = "Database instance type."
  type        = string
}

variable "volume_size_gb" {
  description = "Root volume size (the data directory lives on it)."
  type        = number
}

variable "ami" {
  description = "Debian 12 AMI."
  type        = string
}

variable "bin_url" {
  description = "Where user_data downloads the binaries and switchyard-boot.tar.gz."
  type        = string
}

variable "bin_read_statements" {
  description = "IAM statements granting read of bin_url when it is on S3 (empty otherwise)."
  type        = list(any)
  default     = []
}

variable "parameter_prefix" {
  description = "SSM Parameter Store prefix, e.g. /switchyard."
  type        = string
}

variable "ssm_region" {
  description = "AWS region holding the parameters."
  type        = string
}

variable "secret_parameter_arns" {
  description = "Parameters this server may use: all bootstrap secrets and join tokens with their expiry (primary, read and write) or the replication password (replica, read)."
  type        = list(string)
}

variable "detailed_monitoring" {
  description = "One-minute CloudWatch metrics (charged); basic five-minute metrics otherwise."
  type        = bool
  default     = false
}

variable "read_parameter_arns" {
  description = "Parameters this server only reads (the primary: the peer list, for the region names)."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
