variable "name" {
  description = "Prefix of every namespace, interface and process the lab makes (several labs may run side by side with different names)."
  type        = string
  default     = "syl"
  validation {
    condition     = can(regex("^[a-z][a-z0-9]{0,7}$", var.name))
    error_message = "var.name must be 1 to 8 lowercase letters or digits, starting with a letter (it prefixes namespace names)."
  }
}

variable "regions" {
  description = "The regions, in order (each becomes a network namespace with a tunnel gateway, a database server, a hub, spokes and an S3 server, plus a client namespace near it)."
  type        = list(string)
  default     = ["us-east", "eu-west", "ap-south"]
  validation {
    condition     = length(var.regions) >= 2 && length(var.regions) <= 8
    error_message = "var.regions must list between 2 and 8 regions."
  }
  validation {
    condition     = alltrue([for r in var.regions : can(regex("^[a-z]([a-z0-9-]{0,18}[a-z0-9])?$", r))])
    error_message = "var.regions: every region name must be a DNS label of at most 20 characters (lowercase letters, digits and inner hyphens), since it names <region>.api.<zone>."
  }
  validation {
    condition     = length(distinct(var.regions)) == length(var.regions)
    error_message = "var.regions must not list a region twice."
  }
}

variable "primary_region" {
  description = "The region whose database server is the primary (the others stream a replica from it over the tunnel). Default: the first region."
  type        = string
  default     = null
  validation {
    condition     = var.primary_region == null || contains(var.regions, coalesce(var.primary_region, "-"))
    error_message = "var.primary_region must be one of var.regions."
  }
}

variable "rtt_ms" {
  description = "Round-trip times between regions in milliseconds, keyed \"a,b\" (either order). Pairs not listed get default_rtt_ms."
  type        = map(number)
  default = {
    "us-east,eu-west"  = 70
    "us-east,ap-south" = 180
    "eu-west,ap-south" = 120
  }
  validation {
    condition     = alltrue([for k, v in var.rtt_ms : length(split(",", k)) == 2 && v >= 0 && v <= 2000])
    error_message = "var.rtt_ms: keys must be \"a,b\" and values between 0 and 2000 ms."
  }
  validation {
    condition     = alltrue([for k, v in var.rtt_ms : alltrue([for r in split(",", k) : contains(var.regions, r)])])
    error_message = "var.rtt_ms names a region that is not in var.regions (set rtt_ms for your regions)."
  }
}

variable "default_rtt_ms" {
  description = "RTT between two regions that rtt_ms does not list."
  type        = number
  default     = 100
  validation {
    condition     = var.default_rtt_ms >= 0 && var.default_rtt_ms <= 2000
    error_message = "var.default_rtt_ms must be between 0 and 2000."
  }
}

variable "client_rtt_ms" {
  description = "RTT between a client namespace and the region it is near."
  type        = number
  default     = 2
  validation {
    condition     = var.client_rtt_ms >= 0 && var.client_rtt_ms <= 2000
    error_message = "var.client_rtt_ms must be between 0 and 2000."
  }
}

variable "wan_cidr" {
  description = "The emulated internet: region i gets <wan_cidr>.i.1, the client near it <wan_cidr>.(100+i).1."
  type        = string
  default     = "10.240.0.0/16"
  validation {
    condition     = can(cidrhost(var.wan_cidr, 0)) && endswith(var.wan_cidr, "/16")
    error_message = "var.wan_cidr must be an IPv4 /16."
  }
}

variable "private_cidr" {
  description = "The regions' private networks: region i owns <private_cidr>.i.0/24 (its database listens there, reached from other regions only through the tunnel)."
  type        = string
  default     = "172.29.0.0/16"
  validation {
    condition     = can(cidrhost(var.private_cidr, 0)) && endswith(var.private_cidr, "/16")
    error_message = "var.private_cidr must be an IPv4 /16."
  }
}

variable "zone" {
  description = "The steering DNS zone every hub serves (api.<zone> answers the nearest healthy hub)."
  type        = string
  default     = "lab.switchyard.test"
  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]*[a-z0-9])?\\.)+[a-z]{2,}$", var.zone))
    error_message = "var.zone must be a DNS name such as lab.switchyard.test."
  }
}

variable "spokes_per_region" {
  description = "Spokes enrolled in each region (one reusable join token per region)."
  type        = number
  default     = 1
  validation {
    condition     = var.spokes_per_region >= 0 && var.spokes_per_region <= 8 && floor(var.spokes_per_region) == var.spokes_per_region
    error_message = "var.spokes_per_region must be a whole number between 0 and 8."
  }
}

variable "bin_dir" {
  description = "Directory holding the hub, spoke, tunnel and linkemu binaries (e.g. target/release after `cargo build --release --workspace`)."
  type        = string
  validation {
    condition     = startswith(var.bin_dir, "/")
    error_message = "var.bin_dir must be an absolute path."
  }
}

variable "state_dir" {
  description = "Where the lab keeps its keys, data, logs and pid files (created by apply, removed by destroy; must not exist or be an earlier lab's)."
  type        = string
  default     = "/var/tmp/switchyard-lab"
  validation {
    condition     = startswith(var.state_dir, "/") && length(var.state_dir) > 5 && !contains(["/etc", "/usr", "/var", "/tmp", "/root", "/home"], trimsuffix(var.state_dir, "/"))
    error_message = "var.state_dir must be an absolute path of a directory of its own (destroy removes it)."
  }
}

variable "moto_server" {
  description = "The S3-compatible server each region runs (moto's `moto_server`, from PyPI)."
  type        = string
  default     = "moto_server"
}
