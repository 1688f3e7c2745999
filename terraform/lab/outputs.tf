output "hub_urls" {
  description = "Each region's hub API, reachable from the lab's namespaces (e.g. `ip netns exec <client_netns> curl ...`)."
  value       = { for r, x in local.region : r => "http://${x.wan_addr}:8080" }
}

output "dns_servers" {
  description = "Each region's steering DNS server (every hub serves the zone)."
  value       = { for r, x in local.region : r => x.wan_addr }
}

output "api_name" {
  description = "The name clients resolve: the nearest healthy hub answers."
  value       = "api.${var.zone}"
}

output "meta_token_file" {
  description = "The file holding the Meta API token (mode 0600; not in terraform's state)."
  value       = "${var.state_dir}/secrets/meta.token"
}

output "region_netns" {
  description = "Each region's network namespace (hub, spokes, database, tunnel gateway, S3 server)."
  value       = { for r, x in local.region : r => x.netns }
}

output "client_netns" {
  description = "The client namespace near each region."
  value       = { for r, x in local.region : r => x.client_netns }
}

output "s3_endpoints" {
  description = "Each region's S3-compatible server and its bucket (any access key works)."
  value       = { for r, x in local.region : r => { endpoint = "http://${x.wan_addr}:9000", bucket = "switchyard-${r}" } }
}

output "primary_region" {
  description = "The region holding the database primary."
  value       = local.primary
}

output "state_dir" {
  description = "Keys, data, logs and pid files of the lab (removed by destroy)."
  value       = var.state_dir
}
