# Delegates the steering zone from its parent Route 53 zone to the hubs: one name server per
# region (ns-<region>.<zone>) with glue A records holding that region's load balancer
# addresses, where the hubs answer DNS on UDP and TCP 53.

resource "aws_route53_record" "ns" {
  zone_id = var.parent_zone_id
  name    = var.zone
  type    = "NS"
  ttl     = var.ttl
  records = [for r in sort(keys(var.name_servers)) : "ns-${r}.${var.zone}"]
}

resource "aws_route53_record" "glue" {
  for_each = var.name_servers
  zone_id  = var.parent_zone_id
  name     = "ns-${each.key}.${var.zone}"
  type     = "A"
  ttl      = var.ttl
  records  = each.value
}
