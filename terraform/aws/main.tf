# Switchyard across AWS regions: every region of var.regions gets a VPC, a tunnel gateway, a
# PostgreSQL server (the primary in var.primary_region, a streaming replica elsewhere), hubs
# behind a network load balancer and spokes (modules/region). Here: the shared SSM parameters,
# the delegation of the steering zone, and the plan-time facts every region needs about the
# others.

locals {
  supported_aws_regions = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1", "ap-northeast-1"]

  default_tags = merge(var.tags, { "switchyard:deployment" = var.name })

  # var.regions with defaults resolved, grouped by AWS region (the for_each of each module call).
  settings = {
    for r, v in var.regions : r => merge(v, {
      azs = coalesce(v.azs, ["${v.aws_region}a", "${v.aws_region}b"])
    })
  }
  region_settings = {
    for a in local.supported_aws_regions : a => { for r, v in local.settings : r => v if v.aws_region == a }
  }

  # Fixed private addresses, known at plan time: the gateway is host 10 of the first public
  # subnet, the database host 10 of the first private subnet (see modules/network).
  facts = {
    for r, v in var.regions : r => {
      cidr            = v.cidr
      gateway_address = cidrhost(cidrsubnet(v.cidr, 4, 0), 10)
      db_address      = cidrhost(cidrsubnet(v.cidr, 4, 8), 10)
    }
  }

  ssm_region = var.regions[var.primary_region].aws_region
  account_id = data.aws_caller_identity.this.account_id
  partition  = data.aws_partition.this.partition
  param_arn  = "arn:${local.partition}:ssm:${local.ssm_region}:${local.account_id}:parameter${var.parameter_prefix}"

  # Built from names rather than taken from the resources, so that the regions' IAM policies
  # do not wait for (and, through the peer list, depend on) every other region.
  # Parameters the instances write (secrets and public keys): never created by terraform, so
  # their values never reach the state. Only their ARNs appear here, in IAM policies.
  parameter_arns = {
    tunnel_public_keys   = { for r in keys(var.regions) : r => "${local.param_arn}/tunnel/${r}/public_key" }
    tunnel_peers         = "${local.param_arn}/tunnel/peers"
    db_password          = "${local.param_arn}/db/password"
    replication_password = "${local.param_arn}/db/replication_password"
    master_key           = "${local.param_arn}/hub/master_key"
    meta_token           = "${local.param_arn}/hub/meta_token"
    join                 = { for r in keys(var.regions) : r => "${local.param_arn}/join/${r}" }
    join_expiry          = { for r in keys(var.regions) : r => "${local.param_arn}/join-expiry/${r}" }
    dns                  = "${local.param_arn}/hub/dns"
  }

  # bin_url on S3: every role may read objects below it, nothing else of the bucket.
  bin_s3 = regex("^(?:s3://([^/]+)(/.*)?)?", var.bin_url)
  bin_read_statements = startswith(var.bin_url, "s3://") ? [{
    Sid      = "ReadBinaries"
    Effect   = "Allow"
    Action   = ["s3:GetObject"]
    Resource = ["arn:${local.partition}:s3:::${local.bin_s3[0]}${trimsuffix(coalesce(local.bin_s3[1], "/"), "/")}/*"]
  }] : []

  hub_addresses = { for r, m in local.regions_out : r => m.hub_addresses }

  # The operator's certificate parameters (names and ARNs), when the API is HTTPS.
  api_tls = var.api_tls == null ? null : {
    cert_parameter = var.api_tls.cert_parameter
    key_parameter  = var.api_tls.key_parameter
    arns = [
      "arn:${local.partition}:ssm:${local.ssm_region}:${local.account_id}:parameter${var.api_tls.cert_parameter}",
      "arn:${local.partition}:ssm:${local.ssm_region}:${local.account_id}:parameter${var.api_tls.key_parameter}",
    ]
  }
}

data "aws_caller_identity" "this" {
  provider = aws.control
}

data "aws_partition" "this" {
  provider = aws.control
}

data "aws_route53_zone" "parent" {
  provider     = aws.control
  name         = var.parent_zone
  private_zone = false
}

# The gateways' peer list (not secret): name, CIDR, tunnel address, endpoint. Gateways poll it
# and reload, so adding a region reaches the running gateways without replacing them.
resource "aws_ssm_parameter" "tunnel_peers" {
  provider    = aws.control
  name        = "${var.parameter_prefix}/tunnel/peers"
  description = "Switchyard tunnel gateways (public facts only)"
  # Public facts, but encrypted like every parameter under the prefix: one policy for all.
  type = "SecureString"
  value = jsonencode([for r in sort(keys(var.regions)) : {
    name     = r
    cidr     = var.regions[r].cidr
    address  = local.facts[r].gateway_address
    endpoint = "${local.gateway_ips[r]}:${var.tunnel_port}"
  }])
}

# The steering zone's name servers (not secret): each hub serves ns-<region> records for all.
resource "aws_ssm_parameter" "dns" {
  provider    = aws.control
  name        = "${var.parameter_prefix}/hub/dns"
  description = "Switchyard steering zone name servers (public facts only)"
  type        = "SecureString"
  value = jsonencode({
    zone        = var.zone
    nameservers = [for r in sort(keys(var.regions)) : "ns-${r}"]
    records = flatten([for r in sort(keys(var.regions)) : [
      for ip in local.hub_addresses[r] : { name = "ns-${r}", type = "A", value = ip }
    ]])
  })
}

module "delegation" {
  source         = "../modules/dns_delegation"
  providers      = { aws = aws.control }
  parent_zone_id = data.aws_route53_zone.parent.zone_id
  zone           = var.zone
  name_servers   = local.hub_addresses
}
