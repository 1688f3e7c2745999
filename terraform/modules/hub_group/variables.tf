variable "name" {
  description = "Deployment name, prefixed to every resource name."
  type        = string
}

variable "region" {
  description = "Our region name (a DNS label)."
  type        = string
}

variable "zone" {
  description = "The steering zone the hubs serve (api.<zone>, <region>.api.<zone>)."
  type        = string
}

variable "vpc_id" {
  description = "The region's VPC."
  type        = string
}

variable "azs" {
  description = "The availability zones of the subnets, in order."
  type        = list(string)
}

variable "public_subnet_ids" {
  description = "Public subnets for the load balancer, in the order of azs."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets for the hubs."
  type        = list(string)
}

variable "api_port" {
  description = "The load balancer's plain-HTTP API port (the hubs listen on 8080); with tls, 443 → 8443."
  type        = number
  default     = 80
}

variable "database_hosts" {
  description = "Every PostgreSQL server's private address, primary first (database.url lists them all so hubs find a promoted replica)."
  type        = list(string)
}

variable "replica_host" {
  description = "This region's replica (database.replica_url); null in the primary's region."
  type        = string
  default     = null
}

variable "instance_type" {
  description = "Hub instance type."
  type        = string
}

variable "min_size" {
  description = "Fewest hubs."
  type        = number
}

variable "max_size" {
  description = "Most hubs."
  type        = number
}

variable "desired_capacity" {
  description = "Hubs to run."
  type        = number
}

variable "deletion_protection" {
  description = "Deletion protection on the load balancer."
  type        = bool
  default     = false
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
  description = "The database password and master key parameters (read only)."
  type        = list(string)
}

variable "dns_parameter_arn" {
  description = "The parameter with every region's name server addresses (read only)."
  type        = string
}

variable "detailed_monitoring" {
  description = "One-minute CloudWatch metrics (charged); basic five-minute metrics otherwise."
  type        = bool
  default     = false
}

variable "tls" {
  description = "HTTPS on the API (the hubs terminate TLS on 8443, the load balancer listens on 443): the certificate and key parameter names and their ARNs; null for plain HTTP on api_port → 8080."
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
