variable "name" {
  description = "Deployment name, prefixed to every resource name."
  type        = string
}

variable "region" {
  description = "Our region name (a DNS label)."
  type        = string
}

variable "vpc_id" {
  description = "The region's VPC."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets for the spokes."
  type        = list(string)
}

variable "client_cidrs" {
  description = "Networks allowed to the data/relay port, by region name (every region's CIDR)."
  type        = map(string)
}

variable "data_port" {
  description = "The spokes' data endpoint (TCP) and relay (UDP) port."
  type        = number
  default     = 8443
}

variable "instance_type" {
  description = "Spoke instance type (network throughput follows vCPUs: prefer fewer, larger spokes)."
  type        = string
}

variable "volume_size_gb" {
  description = "Root volume size (scratch space)."
  type        = number
  default     = 32
}

variable "min_size" {
  description = "Fewest spokes."
  type        = number
}

variable "max_size" {
  description = "Most spokes."
  type        = number
}

variable "desired_capacity" {
  description = "Spokes to run."
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

variable "join_parameter_arn" {
  description = "The region's join token parameter (read only)."
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
