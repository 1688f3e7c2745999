variable "parent_zone_id" {
  description = "The Route 53 hosted zone the steering zone is delegated from."
  type        = string
}

variable "zone" {
  description = "The steering zone (a subdomain of the parent zone), e.g. sy.example.com."
  type        = string
}

variable "name_servers" {
  description = "Each region's name server addresses (its hubs' load balancer Elastic IPs), by region name."
  type        = map(list(string))
}

variable "ttl" {
  description = "TTL of the delegation and glue records, in seconds."
  type        = number
  default     = 300
}
