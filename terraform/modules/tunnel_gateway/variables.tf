variable "name" {
  description = "Deployment name, prefixed to every resource name."
  type        = string
}

variable "region" {
  description = "Our region name (a DNS label)."
  type        = string
}

variable "cidr" {
  description = "This region's VPC CIDR (the source of forwarded traffic)."
  type        = string
}

variable "vpc_id" {
  description = "The region's VPC."
  type        = string
}

variable "subnet_id" {
  description = "A public subnet for the gateway."
  type        = string
}

variable "private_ip" {
  description = "The gateway's fixed private address in subnet_id."
  type        = string
}

variable "route_table_ids" {
  description = "Route tables (by a static key) that get a route to every peer CIDR through the gateway."
  type        = map(string)
}

variable "peer_cidrs" {
  description = "The other regions' CIDRs, by region name."
  type        = map(string)
}

variable "listen_port" {
  description = "The WireGuard UDP port."
  type        = number
  default     = 51820
}

variable "forwarded_ports" {
  description = "Ports (protocol tcp or udp) that hosts of this VPC may send across the tunnel."
  type        = list(object({ protocol = string, port = number }))
}

variable "instance_type" {
  description = "Gateway instance type (throughput follows vCPUs)."
  type        = string
}

variable "ami" {
  description = "Debian 12 AMI."
  type        = string
}

variable "bin_url" {
  description = "Where user_data downloads the binaries and switchyard-boot.tar.gz (https:// or s3://)."
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

variable "public_key_parameter_arn" {
  description = "ARN of this gateway's public key parameter (it writes it)."
  type        = string
}

variable "peer_public_key_parameter_arns" {
  description = "ARNs of the other gateways' public key parameters (it reads them)."
  type        = map(string)
}

variable "peers_parameter_arn" {
  description = "ARN of the peer list parameter (names, CIDRs, transit addresses, endpoints)."
  type        = string
}

variable "detailed_monitoring" {
  description = "One-minute CloudWatch metrics (charged); basic five-minute metrics otherwise."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
