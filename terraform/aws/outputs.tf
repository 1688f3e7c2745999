output "api_url" {
  description = "The steered API: clients use this name; the hubs answer it with the nearest healthy region."
  value       = "${var.api_tls == null ? "http" : "https"}://api.${var.zone}"
}

output "region_api_urls" {
  description = "Each region's own API name (<region>.api.<zone>), by region."
  value       = { for r in keys(var.regions) : r => "${var.api_tls == null ? "http" : "https"}://${r}.api.${var.zone}" }
}

output "hub_addresses" {
  description = "Each region's hub addresses (load balancer Elastic IPs: API, QUIC, DNS), by region."
  value       = local.hub_addresses
}

output "hub_load_balancers" {
  description = "Each region's hub load balancer DNS name, by region."
  value       = { for r, m in local.regions_out : r => m.hub_lb_dns_name }
}

output "name_servers" {
  description = "The steering zone's delegated name servers and their glue addresses."
  value       = module.delegation.glue
}

output "gateway_ips" {
  description = "Each region's tunnel gateway Elastic IP, by region."
  value       = local.gateway_ips
}

output "database_primary" {
  description = "The PostgreSQL primary: region and private address."
  value       = { region = var.primary_region, address = local.facts[var.primary_region].db_address }
}

output "autoscaling_groups" {
  description = "Hub and spoke autoscaling groups, by region."
  value       = { for r, m in local.regions_out : r => { hubs = m.hub_autoscaling_group, spokes = m.spoke_autoscaling_group } }
}

output "meta_token_parameter" {
  description = "Where the primary's first boot stores the Meta API token (SecureString in the primary's AWS region; read it with aws ssm get-parameter --with-decryption)."
  value       = "${var.parameter_prefix}/hub/meta_token"
}

output "ssm_region" {
  description = "The AWS region holding the SSM parameters."
  value       = local.ssm_region
}

output "join_token_parameters" {
  description = "Each region's reusable spoke join token parameter (SecureString), by region."
  value       = { for r in keys(var.regions) : r => "${var.parameter_prefix}/join/${r}" }
}

output "routes" {
  description = "Each region's routes to the other regions (destination, gateway interface), by region."
  value       = { for r, m in local.regions_out : r => m.routes }
}

output "gateway_interfaces" {
  description = "Each region's tunnel gateway network interface, by region."
  value       = { for r, m in local.regions_out : r => m.gateway_network_interface_id }
}

output "ingress" {
  description = "Every ingress rule, by region and role (the gateways' WireGuard rules included)."
  value = { for r, m in local.regions_out : r => merge(m.ingress, {
    gateway = concat(m.ingress.gateway, [
      for k, rule in merge(aws_vpc_security_group_ingress_rule.wireguard_us_east_1, aws_vpc_security_group_ingress_rule.wireguard_us_west_2, aws_vpc_security_group_ingress_rule.wireguard_eu_west_1, aws_vpc_security_group_ingress_rule.wireguard_eu_central_1, aws_vpc_security_group_ingress_rule.wireguard_ap_southeast_1, aws_vpc_security_group_ingress_rule.wireguard_ap_northeast_1) :
      { protocol = rule.ip_protocol, from_port = rule.from_port, to_port = rule.to_port, cidr = rule.cidr_ipv4 } if startswith(k, "${r}-from-")
    ])
  }) }
}

output "hub_listeners" {
  description = "Each region's hub load balancer listeners and health checks, by region."
  value       = { for r, m in local.regions_out : r => m.hub_listeners }
}

output "database_roles" {
  description = "Each region's PostgreSQL role (exactly one primary), by region."
  value       = { for r, m in local.regions_out : r => m.database_role }
}

output "region_aws" {
  description = "Each region's AWS region, by region."
  value       = { for r, v in var.regions : r => v.aws_region }
}

output "region_cidrs" {
  description = "Each region's VPC CIDR, by region."
  value       = { for r, v in var.regions : r => v.cidr }
}

output "zone" {
  description = "The steering zone."
  value       = var.zone
}

output "parent_zone" {
  description = "The zone the steering zone is delegated from."
  value       = var.parent_zone
}

output "iam_policies" {
  description = "Each region's IAM policies (JSON) by role, by region."
  value       = { for r, m in local.regions_out : r => m.iam_policies }
}

output "vpc_ids" {
  description = "Each region's VPC id, by region (for additions such as flow logs)."
  value       = { for r, m in local.regions_out : r => m.vpc_id }
}
