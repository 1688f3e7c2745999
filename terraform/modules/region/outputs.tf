output "gateway_public_ip" {
  description = "The tunnel gateway's Elastic IP."
  value       = module.gateway.public_ip
}

output "gateway_security_group_id" {
  description = "The gateway's security group (the root adds the WireGuard rules from the other gateways)."
  value       = module.gateway.security_group_id
}

output "gateway_network_interface_id" {
  description = "The gateway's interface (target of the routes to the other regions)."
  value       = module.gateway.network_interface_id
}

output "hub_addresses" {
  description = "The hubs' load balancer Elastic IPs (API, QUIC, DNS)."
  value       = module.hubs.addresses
}

output "hub_lb_dns_name" {
  description = "The hubs' load balancer DNS name."
  value       = module.hubs.lb_dns_name
}

output "hub_autoscaling_group" {
  description = "The hubs' autoscaling group."
  value       = module.hubs.autoscaling_group_name
}

output "spoke_autoscaling_group" {
  description = "The spokes' autoscaling group."
  value       = module.spokes.autoscaling_group_name
}

output "vpc_id" {
  description = "The region's VPC."
  value       = module.network.vpc_id
}

output "database_instance_id" {
  description = "The PostgreSQL instance."
  value       = module.database.instance_id
}

output "routes" {
  description = "The routes to the other regions through the gateway."
  value       = module.gateway.routes
}

output "ingress" {
  description = "Ingress rules made by this module, by role (the gateway's WireGuard rules are the root's)."
  value = {
    gateway  = module.gateway.ingress
    database = module.database.ingress
    hub      = module.hubs.ingress
    spoke    = module.spokes.ingress
  }
}

output "hub_listeners" {
  description = "The hubs' load balancer listeners and health checks, by service."
  value       = module.hubs.listeners
}

output "database_role" {
  description = "primary or replica."
  value       = module.database.role
}

output "iam_policies" {
  description = "Each role's IAM policy (JSON), by role: tunnel, db, hub, spoke."
  value = {
    tunnel = module.gateway.policy
    db     = module.database.policy
    hub    = module.hubs.policy
    spoke  = module.spokes.policy
  }
}
