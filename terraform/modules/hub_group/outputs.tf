output "addresses" {
  description = "The load balancer's Elastic IPs: API, QUIC and the steering DNS of this region."
  value       = [for az in var.azs : aws_eip.lb[az].public_ip]
}

output "lb_dns_name" {
  description = "The load balancer's DNS name."
  value       = aws_lb.this.dns_name
}

output "lb_arn" {
  description = "The load balancer."
  value       = aws_lb.this.arn
}

output "autoscaling_group_name" {
  description = "The hubs' autoscaling group."
  value       = aws_autoscaling_group.this.name
}

output "target_group_arns" {
  description = "Target groups by service (api, quic, dns)."
  value       = { for k, tg in aws_lb_target_group.this : k => tg.arn }
}

output "security_group_id" {
  description = "The hubs' security group."
  value       = aws_security_group.this.id
}

output "ingress" {
  description = "The security group's ingress rules (protocol, ports, source)."
  value       = [for r in aws_vpc_security_group_ingress_rule.this : { protocol = r.ip_protocol, from_port = r.from_port, to_port = r.to_port, cidr = r.cidr_ipv4 }]
}

output "listeners" {
  description = "The load balancer's listeners and their target groups' health checks, by service."
  value = { for k, l in aws_lb_listener.this : k => {
    protocol     = l.protocol
    port         = l.port
    target_port  = aws_lb_target_group.this[k].port
    health_check = one(aws_lb_target_group.this[k].health_check)
  } }
}

output "policy" {
  description = "The role's IAM policy (JSON): the parameters it may read or write."
  value       = aws_iam_role_policy.this.policy
}
