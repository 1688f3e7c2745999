output "private_ip" {
  description = "The server's private address."
  value       = aws_instance.this.private_ip
}

output "instance_id" {
  description = "The database instance."
  value       = aws_instance.this.id
}

output "security_group_id" {
  description = "The database's security group."
  value       = aws_security_group.this.id
}

output "role" {
  description = "primary or replica."
  value       = var.role
}

output "ingress" {
  description = "The security group's ingress rules (protocol, ports, source)."
  value       = [for r in aws_vpc_security_group_ingress_rule.postgres : { protocol = r.ip_protocol, from_port = r.from_port, to_port = r.to_port, cidr = r.cidr_ipv4 }]
}

output "policy" {
  description = "The role's IAM policy (JSON): the parameters it may read or write."
  value       = aws_iam_role_policy.this.policy
}
