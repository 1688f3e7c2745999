output "public_ip" {
  description = "The gateway's Elastic IP (its peers' endpoint)."
  value       = aws_eip.this.public_ip
}

output "network_interface_id" {
  description = "The interface every route to another region points at."
  value       = aws_instance.this.primary_network_interface_id
}

output "instance_id" {
  description = "The gateway instance."
  value       = aws_instance.this.id
}

output "security_group_id" {
  description = "The gateway's security group."
  value       = aws_security_group.this.id
}

output "routes" {
  description = "The routes to the other regions: destination and target interface, by table-peer."
  value       = { for k, r in aws_route.to_peer : k => { route_table_id = r.route_table_id, destination = r.destination_cidr_block, network_interface_id = r.network_interface_id } }
}

output "ingress" {
  description = "The security group's ingress rules made here (protocol, ports, source)."
  value       = [for r in aws_vpc_security_group_ingress_rule.forwarded : { protocol = r.ip_protocol, from_port = r.from_port, to_port = r.to_port, cidr = r.cidr_ipv4 }]
}

output "policy" {
  description = "The role's IAM policy (JSON): the parameters it may read or write."
  value       = aws_iam_role_policy.this.policy
}
