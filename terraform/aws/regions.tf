# One module call per supported AWS region, each over the regions of var.regions placed there
# (for_each: an AWS region may hold none, one or several of our regions).

module "us_east_1" {
  source    = "../modules/region"
  for_each  = local.region_settings["us-east-1"]
  providers = { aws = aws.us_east_1 }

  name                = var.name
  region              = each.key
  settings            = each.value
  primary_region      = var.primary_region
  all                 = local.facts
  zone                = var.zone
  tunnel_port         = var.tunnel_port
  join_uses           = var.join_uses
  bin_url             = var.bin_url
  bin_read_statements = local.bin_read_statements
  parameter_prefix    = var.parameter_prefix
  ssm_region          = local.ssm_region
  parameter_arns      = local.parameter_arns
  detailed_monitoring = var.detailed_monitoring
  api_tls             = local.api_tls
}

module "us_west_2" {
  source    = "../modules/region"
  for_each  = local.region_settings["us-west-2"]
  providers = { aws = aws.us_west_2 }

  name                = var.name
  region              = each.key
  settings            = each.value
  primary_region      = var.primary_region
  all                 = local.facts
  zone                = var.zone
  tunnel_port         = var.tunnel_port
  join_uses           = var.join_uses
  bin_url             = var.bin_url
  bin_read_statements = local.bin_read_statements
  parameter_prefix    = var.parameter_prefix
  ssm_region          = local.ssm_region
  parameter_arns      = local.parameter_arns
  detailed_monitoring = var.detailed_monitoring
  api_tls             = local.api_tls
}

module "eu_west_1" {
  source    = "../modules/region"
  for_each  = local.region_settings["eu-west-1"]
  providers = { aws = aws.eu_west_1 }

  name                = var.name
  region              = each.key
  settings            = each.value
  primary_region      = var.primary_region
  all                 = local.facts
  zone                = var.zone
  tunnel_port         = var.tunnel_port
  join_uses           = var.join_uses
  bin_url             = var.bin_url
  bin_read_statements = local.bin_read_statements
  parameter_prefix    = var.parameter_prefix
  ssm_region          = local.ssm_region
  parameter_arns      = local.parameter_arns
  detailed_monitoring = var.detailed_monitoring
  api_tls             = local.api_tls
}

module "eu_central_1" {
  source    = "../modules/region"
  for_each  = local.region_settings["eu-central-1"]
  providers = { aws = aws.eu_central_1 }

  name                = var.name
  region              = each.key
  settings            = each.value
  primary_region      = var.primary_region
  all                 = local.facts
  zone                = var.zone
  tunnel_port         = var.tunnel_port
  join_uses           = var.join_uses
  bin_url             = var.bin_url
  bin_read_statements = local.bin_read_statements
  parameter_prefix    = var.parameter_prefix
  ssm_region          = local.ssm_region
  parameter_arns      = local.parameter_arns
  detailed_monitoring = var.detailed_monitoring
  api_tls             = local.api_tls
}

module "ap_southeast_1" {
  source    = "../modules/region"
  for_each  = local.region_settings["ap-southeast-1"]
  providers = { aws = aws.ap_southeast_1 }

  name                = var.name
  region              = each.key
  settings            = each.value
  primary_region      = var.primary_region
  all                 = local.facts
  zone                = var.zone
  tunnel_port         = var.tunnel_port
  join_uses           = var.join_uses
  bin_url             = var.bin_url
  bin_read_statements = local.bin_read_statements
  parameter_prefix    = var.parameter_prefix
  ssm_region          = local.ssm_region
  parameter_arns      = local.parameter_arns
  detailed_monitoring = var.detailed_monitoring
  api_tls             = local.api_tls
}

module "ap_northeast_1" {
  source    = "../modules/region"
  for_each  = local.region_settings["ap-northeast-1"]
  providers = { aws = aws.ap_northeast_1 }

  name                = var.name
  region              = each.key
  settings            = each.value
  primary_region      = var.primary_region
  all                 = local.facts
  zone                = var.zone
  tunnel_port         = var.tunnel_port
  join_uses           = var.join_uses
  bin_url             = var.bin_url
  bin_read_statements = local.bin_read_statements
  parameter_prefix    = var.parameter_prefix
  ssm_region          = local.ssm_region
  parameter_arns      = local.parameter_arns
  detailed_monitoring = var.detailed_monitoring
  api_tls             = local.api_tls
}

# WireGuard into each gateway from the other gateways' Elastic IPs only (/32), one rule per
# peer. These live here rather than in the region module: a region's rules need the other
# regions' addresses, and modules that took each other's outputs as inputs would form a cycle.

resource "aws_vpc_security_group_ingress_rule" "wireguard_us_east_1" {
  provider          = aws.us_east_1
  for_each          = local.wireguard_rules["us-east-1"]
  security_group_id = module.us_east_1[each.value.region].gateway_security_group_id
  description       = "WireGuard from the ${each.value.peer} gateway"
  ip_protocol       = "udp"
  from_port         = var.tunnel_port
  to_port           = var.tunnel_port
  cidr_ipv4         = "${local.gateway_ips[each.value.peer]}/32"
}

resource "aws_vpc_security_group_ingress_rule" "wireguard_us_west_2" {
  provider          = aws.us_west_2
  for_each          = local.wireguard_rules["us-west-2"]
  security_group_id = module.us_west_2[each.value.region].gateway_security_group_id
  description       = "WireGuard from the ${each.value.peer} gateway"
  ip_protocol       = "udp"
  from_port         = var.tunnel_port
  to_port           = var.tunnel_port
  cidr_ipv4         = "${local.gateway_ips[each.value.peer]}/32"
}

resource "aws_vpc_security_group_ingress_rule" "wireguard_eu_west_1" {
  provider          = aws.eu_west_1
  for_each          = local.wireguard_rules["eu-west-1"]
  security_group_id = module.eu_west_1[each.value.region].gateway_security_group_id
  description       = "WireGuard from the ${each.value.peer} gateway"
  ip_protocol       = "udp"
  from_port         = var.tunnel_port
  to_port           = var.tunnel_port
  cidr_ipv4         = "${local.gateway_ips[each.value.peer]}/32"
}

resource "aws_vpc_security_group_ingress_rule" "wireguard_eu_central_1" {
  provider          = aws.eu_central_1
  for_each          = local.wireguard_rules["eu-central-1"]
  security_group_id = module.eu_central_1[each.value.region].gateway_security_group_id
  description       = "WireGuard from the ${each.value.peer} gateway"
  ip_protocol       = "udp"
  from_port         = var.tunnel_port
  to_port           = var.tunnel_port
  cidr_ipv4         = "${local.gateway_ips[each.value.peer]}/32"
}

resource "aws_vpc_security_group_ingress_rule" "wireguard_ap_southeast_1" {
  provider          = aws.ap_southeast_1
  for_each          = local.wireguard_rules["ap-southeast-1"]
  security_group_id = module.ap_southeast_1[each.value.region].gateway_security_group_id
  description       = "WireGuard from the ${each.value.peer} gateway"
  ip_protocol       = "udp"
  from_port         = var.tunnel_port
  to_port           = var.tunnel_port
  cidr_ipv4         = "${local.gateway_ips[each.value.peer]}/32"
}

resource "aws_vpc_security_group_ingress_rule" "wireguard_ap_northeast_1" {
  provider          = aws.ap_northeast_1
  for_each          = local.wireguard_rules["ap-northeast-1"]
  security_group_id = module.ap_northeast_1[each.value.region].gateway_security_group_id
  description       = "WireGuard from the ${each.value.peer} gateway"
  ip_protocol       = "udp"
  from_port         = var.tunnel_port
  to_port           = var.tunnel_port
  cidr_ipv4         = "${local.gateway_ips[each.value.peer]}/32"
}

locals {
  wireguard_rules = {
    for a in local.supported_aws_regions : a => merge([
      for r, v in local.region_settings[a] : {
        for p in keys(var.regions) : "${r}-from-${p}" => { region = r, peer = p } if p != r
      }
    ]...)
  }

  # Every region's module outputs, by region name, whichever AWS region holds it.
  regions_out = merge(module.us_east_1, module.us_west_2, module.eu_west_1, module.eu_central_1, module.ap_southeast_1, module.ap_northeast_1)
  gateway_ips = merge(
    { for r, m in module.us_east_1 : r => m.gateway_public_ip },
    { for r, m in module.us_west_2 : r => m.gateway_public_ip },
    { for r, m in module.eu_west_1 : r => m.gateway_public_ip },
    { for r, m in module.eu_central_1 : r => m.gateway_public_ip },
    { for r, m in module.ap_southeast_1 : r => m.gateway_public_ip },
    { for r, m in module.ap_northeast_1 : r => m.gateway_public_ip },
  )
}
