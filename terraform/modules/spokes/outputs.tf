output "autoscaling_group_name" {
  description = "The spokes' autoscaling group."
  value       = aws_autoscaling_group.this.name
}

output "security_group_id" {
  description = "The spokes' security group."
  value       = aws_security_group.this.id
}

output "ingress" {
  description = "The security group's ingress rules (protocol, ports, source)."
  value       = [for r in aws_vpc_security_group_ingress_rule.this : { protocol = r.ip_protocol, from_port = r.from_port, to_port = r.to_port, cidr = r.cidr_ipv4 }]
}

output "policy" {
  description = "The role's IAM policy (JSON): the parameters it may read or write."
  value       = aws_iam_role_policy.this.policy
}
