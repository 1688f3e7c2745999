output "name_servers" {
  description = "The delegated name servers' names."
  value       = aws_route53_record.ns.records
}

output "glue" {
  description = "Glue records: name server name → addresses."
  value       = { for r, rec in aws_route53_record.glue : rec.name => rec.records }
}
