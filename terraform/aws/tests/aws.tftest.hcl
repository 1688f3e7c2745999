# Plan-time checks of terraform/aws with a mocked AWS provider (no network, no credentials):
# bad input refused with messages naming the variable, routes between every pair of regions
# through the local gateway's interface, security groups opening only the named ports, the
# load balancer's /readyz health checks, the delegation pointing at the hubs, one primary.

mock_provider "aws" {
  alias  = "control"
  source = "./tests/mocks"
}

mock_provider "aws" {
  alias  = "us_east_1"
  source = "./tests/mocks"
}

mock_provider "aws" {
  alias  = "us_west_2"
  source = "./tests/mocks"
}

mock_provider "aws" {
  alias  = "eu_west_1"
  source = "./tests/mocks"
}

mock_provider "aws" {
  alias  = "eu_central_1"
  source = "./tests/mocks"
}

mock_provider "aws" {
  alias  = "ap_southeast_1"
  source = "./tests/mocks"
}

mock_provider "aws" {
  alias  = "ap_northeast_1"
  source = "./tests/mocks"
}

override_resource {
  target = module.us_east_1["us-east"].module.gateway.aws_instance.this
  values = { primary_network_interface_id = "eni-0aaaaaaaaaaaaaaa1", id = "i-01111111111111111" }
}

override_resource {
  target = module.us_east_1["us-east"].module.gateway.aws_eip.this
  values = { public_ip = "198.51.100.11", id = "eipalloc-01111111111111111" }
}

override_resource {
  target = module.us_east_1["us-east"].module.hubs.aws_eip.lb
  values = { public_ip = "203.0.113.21", id = "eipalloc-02121212121212121" }
}

override_resource {
  target = module.eu_west_1["eu-west"].module.gateway.aws_instance.this
  values = { primary_network_interface_id = "eni-0bbbbbbbbbbbbbbb2", id = "i-01212121212121212" }
}

override_resource {
  target = module.eu_west_1["eu-west"].module.gateway.aws_eip.this
  values = { public_ip = "198.51.100.12", id = "eipalloc-01212121212121212" }
}

override_resource {
  target = module.eu_west_1["eu-west"].module.hubs.aws_eip.lb
  values = { public_ip = "203.0.113.22", id = "eipalloc-02222222222222222" }
}

override_resource {
  target = module.ap_southeast_1["ap-south"].module.gateway.aws_instance.this
  values = { primary_network_interface_id = "eni-0ccccccccccccccc3", id = "i-01313131313131313" }
}

override_resource {
  target = module.ap_southeast_1["ap-south"].module.gateway.aws_eip.this
  values = { public_ip = "198.51.100.13", id = "eipalloc-01313131313131313" }
}

override_resource {
  target = module.ap_southeast_1["ap-south"].module.hubs.aws_eip.lb
  values = { public_ip = "203.0.113.23", id = "eipalloc-02323232323232323" }
}

variables {
  regions = {
    us-east  = { aws_region = "us-east-1", cidr = "10.10.0.0/16", ami = "ami-0123456789abcdef0" }
    eu-west  = { aws_region = "eu-west-1", cidr = "10.20.0.0/16", ami = "ami-0123456789abcdef0" }
    ap-south = { aws_region = "ap-southeast-1", cidr = "10.30.0.0/20", ami = "ami-0123456789abcdef0" }
  }
  primary_region = "eu-west"
  parent_zone    = "example.com"
  zone           = "sy.example.com"
  bin_url        = "https://downloads.example.com/switchyard/v1"
}

# One apply (against the mocks) checked from every side; the plan runs below check refusals.
run "topology" {
  command = apply

  # ---- every region routes to every other through its gateway

  # Both route tables of each region carry one route per other region, to the local gateway's
  # interface (the overrides give each region's gateway a distinct interface id).
  assert {
    condition = alltrue(flatten([
      for r, routes in output.routes : [
        length(routes) == 2 * (length(var.regions) - 1),
        alltrue([for p, v in var.regions : length([for k, rt in routes : k if rt.destination == v.cidr && rt.network_interface_id == output.gateway_interfaces[r]]) == 2 if p != r]),
        alltrue([for k, rt in routes : rt.destination != var.regions[r].cidr]),
      ]
    ]))
    error_message = "routes are not one per other region and table through the local gateway: ${jsonencode(output.routes)}"
  }

  assert {
    condition     = output.gateway_interfaces == { "us-east" = "eni-0aaaaaaaaaaaaaaa1", "eu-west" = "eni-0bbbbbbbbbbbbbbb2", "ap-south" = "eni-0ccccccccccccccc3" }
    error_message = "gateway interfaces are not the overridden per-region ones: ${jsonencode(output.gateway_interfaces)}"
  }

  # ---- security groups open only the named ports

  # Hubs: API 8080/tcp, QUIC 7443/udp, DNS 53/udp+tcp, nothing else.
  assert {
    condition = alltrue([for r, g in output.ingress :
      toset([for i in g.hub : "${i.protocol}/${i.from_port}-${i.to_port}/${i.cidr}"]) == toset(["tcp/8080-8080/0.0.0.0/0", "udp/7443-7443/0.0.0.0/0", "udp/53-53/0.0.0.0/0", "tcp/53-53/0.0.0.0/0"])
    ])
    error_message = "hub ingress is not exactly API, QUIC and DNS: ${jsonencode({ for r, g in output.ingress : r => g.hub })}"
  }

  # Gateways: WireGuard only from the other gateways' Elastic IPs (/32), plus the forwarded
  # PostgreSQL and spoke ports from the local VPC.
  assert {
    condition = alltrue([for r, g in output.ingress :
      toset([for i in g.gateway : "${i.protocol}/${i.from_port}-${i.to_port}/${i.cidr}"]) == toset(concat(
        [for p, ip in output.gateway_ips : "udp/51820-51820/${ip}/32" if p != r],
        ["tcp/5432-5432/${var.regions[r].cidr}", "tcp/8443-8443/${var.regions[r].cidr}", "udp/8443-8443/${var.regions[r].cidr}"],
      ))
    ])
    error_message = "gateway ingress is not WireGuard from the peers plus the forwarded ports: ${jsonencode({ for r, g in output.ingress : r => g.gateway })}"
  }

  # Databases: 5432 from the regions' networks; spokes: 8443 tcp+udp from them.
  assert {
    condition = alltrue([for r, g in output.ingress :
      toset([for i in g.database : "${i.protocol}/${i.from_port}-${i.to_port}/${i.cidr}"]) == toset([for v in values(var.regions) : "tcp/5432-5432/${v.cidr}"]) &&
      toset([for i in g.spoke : "${i.protocol}/${i.from_port}-${i.to_port}/${i.cidr}"]) == toset(flatten([for v in values(var.regions) : ["tcp/8443-8443/${v.cidr}", "udp/8443-8443/${v.cidr}"]]))
    ])
    error_message = "database or spoke ingress is not the named ports from the regions' networks"
  }

  # ---- load balancer health checks readyz

  assert {
    condition = alltrue(flatten([for r, ls in output.hub_listeners : [
      for k, l in ls : l.health_check.protocol == "HTTP" && l.health_check.path == "/readyz" && l.health_check.port == "8080"
    ]]))
    error_message = "a target group does not health-check HTTP /readyz on 8080: ${jsonencode(output.hub_listeners)}"
  }

  assert {
    condition = alltrue([for r, ls in output.hub_listeners :
      ls.api.protocol == "TCP" && ls.api.port == 80 && ls.api.target_port == 8080 &&
      ls.quic.protocol == "UDP" && ls.quic.port == 7443 &&
      ls.dns.protocol == "TCP_UDP" && ls.dns.port == 53
    ])
    error_message = "listeners are not API/TCP 80→8080, QUIC/UDP 7443, DNS/TCP_UDP 53: ${jsonencode(output.hub_listeners)}"
  }

  # ---- delegation points at the hubs

  assert {
    condition     = toset(module.delegation.name_servers) == toset(["ns-ap-south.sy.example.com", "ns-eu-west.sy.example.com", "ns-us-east.sy.example.com"])
    error_message = "the NS record does not name one server per region: ${jsonencode(module.delegation.name_servers)}"
  }

  assert {
    condition = jsonencode({ for k, v in output.name_servers : k => sort(tolist(v)) }) == jsonencode({
      "ns-us-east.sy.example.com"  = ["203.0.113.21"]
      "ns-eu-west.sy.example.com"  = ["203.0.113.22"]
      "ns-ap-south.sy.example.com" = ["203.0.113.23"]
    })
    error_message = "glue records do not hold each region's hub addresses: ${jsonencode(output.name_servers)}"
  }

  assert {
    condition     = output.hub_addresses["eu-west"] == ["203.0.113.22", "203.0.113.22"]
    error_message = "eu-west's hub addresses are not its load balancer's Elastic IPs: ${jsonencode(output.hub_addresses)}"
  }

  # ---- least privilege: each role names only its own parameters, never a wildcard
  assert {
    condition = alltrue(flatten([for r, ps in output.iam_policies : [
      for role, p in ps : [for st in jsondecode(p).Statement : alltrue([for x in flatten([st.Action, st.Resource]) : !strcontains(x, "*")])]
    ]]))
    error_message = "a policy has a wildcard action or resource: ${jsonencode(output.iam_policies)}"
  }

  assert {
    condition = alltrue([for r in keys(var.regions) : jsondecode(output.iam_policies[r].spoke).Statement == [{
      Sid      = "JoinToken"
      Effect   = "Allow"
      Action   = ["ssm:GetParameter"]
      Resource = ["arn:aws:ssm:eu-west-1:123456789012:parameter/switchyard/join/${r}"]
    }]])
    error_message = "a spoke may do more than read its region's join token: ${jsonencode({ for r, ps in output.iam_policies : r => ps.spoke })}"
  }

  assert {
    condition = alltrue([for r in keys(var.regions) : toset(flatten([
      for st in jsondecode(output.iam_policies[r].tunnel).Statement : [for res in st.Resource : "${join("+", st.Action)} ${res}"]
      ])) == toset(concat(
      ["ssm:PutParameter+ssm:GetParameter arn:aws:ssm:eu-west-1:123456789012:parameter/switchyard/tunnel/${r}/public_key"],
      ["ssm:GetParameter arn:aws:ssm:eu-west-1:123456789012:parameter/switchyard/tunnel/peers"],
      [for p in keys(var.regions) : "ssm:GetParameter arn:aws:ssm:eu-west-1:123456789012:parameter/switchyard/tunnel/${p}/public_key" if p != r],
    ))])
    error_message = "a gateway may do more than publish its key and read its peers': ${jsonencode({ for r, ps in output.iam_policies : r => ps.tunnel })}"
  }

  assert {
    condition = alltrue([for r in keys(var.regions) : toset(flatten([
      for st in jsondecode(output.iam_policies[r].hub).Statement : [for res in st.Resource : "${join("+", st.Action)} ${res}"]
    ])) == toset([for n in ["db/password", "hub/master_key", "hub/dns"] : "ssm:GetParameter arn:aws:ssm:eu-west-1:123456789012:parameter/switchyard/${n}"])])
    error_message = "a hub may do more than read the database password, the master key and the DNS facts"
  }

  assert {
    condition = alltrue([for r in keys(var.regions) : r == "eu-west" || toset(flatten([
      for st in jsondecode(output.iam_policies[r].db).Statement : [for res in st.Resource : "${join("+", st.Action)} ${res}"]
    ])) == toset(["ssm:GetParameter arn:aws:ssm:eu-west-1:123456789012:parameter/switchyard/db/replication_password"])])
    error_message = "a replica may do more than read the replication password"
  }

  # ---- exactly one primary

  assert {
    condition     = [for r, role in output.database_roles : r if role == "primary"] == ["eu-west"]
    error_message = "not exactly one primary, in eu-west: ${jsonencode(output.database_roles)}"
  }

  assert {
    condition     = output.database_primary == { region = "eu-west", address = "10.20.128.10" }
    error_message = "the primary's address is not host 10 of eu-west's first private subnet"
  }
}

run "overlapping_cidrs_are_refused" {
  command = plan
  variables {
    regions = {
      us-east = { aws_region = "us-east-1", cidr = "10.10.0.0/16" }
      eu-west = { aws_region = "eu-west-1", cidr = "10.10.128.0/20" }
    }
    primary_region = "us-east"
  }
  expect_failures = [var.regions]
}

run "primary_not_in_the_map_is_refused" {
  command = plan
  variables {
    primary_region = "mars"
  }
  expect_failures = [var.primary_region]
}

run "fewer_than_two_regions_are_refused" {
  command = plan
  variables {
    regions = {
      us-east = { aws_region = "us-east-1", cidr = "10.10.0.0/16" }
    }
    primary_region = "us-east"
  }
  expect_failures = [var.regions]
}

run "a_region_name_that_is_not_a_dns_label_is_refused" {
  command = plan
  variables {
    regions = {
      us-east   = { aws_region = "us-east-1", cidr = "10.10.0.0/16" }
      "EU_West" = { aws_region = "eu-west-1", cidr = "10.20.0.0/16" }
    }
    primary_region = "us-east"
  }
  expect_failures = [var.regions]
}

# HTTPS on the API: the load balancer listens on 443 and passes TCP to the hubs' 8443, every
# target group checks HTTPS /readyz there, 8080 is closed, and hubs may read the two
# certificate parameters.
run "api_over_https" {
  command = plan
  variables {
    api_tls = {
      cert_parameter = "/switchyard/tls/cert"
      key_parameter  = "/switchyard/tls/key"
    }
  }

  assert {
    condition = alltrue(flatten([for r, ls in output.hub_listeners : [
      ls.api.protocol == "TCP" && ls.api.port == 443 && ls.api.target_port == 8443,
      [for k, l in ls : l.health_check.protocol == "HTTPS" && l.health_check.path == "/readyz" && l.health_check.port == "8443"],
    ]]))
    error_message = "HTTPS listeners or health checks are wrong: ${jsonencode(output.hub_listeners)}"
  }

  assert {
    condition = alltrue([for r, g in output.ingress :
      toset([for i in g.hub : "${i.protocol}/${i.from_port}-${i.to_port}/${i.cidr}"]) == toset(["tcp/8443-8443/0.0.0.0/0", "udp/7443-7443/0.0.0.0/0", "udp/53-53/0.0.0.0/0", "tcp/53-53/0.0.0.0/0"])
    ])
    error_message = "hub ingress with HTTPS is not exactly 8443, QUIC and DNS"
  }

  assert {
    condition = alltrue([for r in keys(var.regions) : toset(flatten([
      for st in jsondecode(output.iam_policies[r].hub).Statement : [for res in st.Resource : res]
    ])) == toset([for n in ["db/password", "hub/master_key", "hub/dns", "tls/cert", "tls/key"] : "arn:aws:ssm:eu-west-1:123456789012:parameter/switchyard/${n}"])])
    error_message = "hubs with HTTPS may not read exactly the secrets, DNS facts and certificate parameters"
  }

  assert {
    condition     = output.api_url == "https://api.sy.example.com"
    error_message = "api_url is not https"
  }
}

run "api_tls_parameter_names_are_checked" {
  command = plan
  variables {
    api_tls = {
      cert_parameter = "tls cert"
      key_parameter  = "/switchyard/tls/key"
    }
  }
  expect_failures = [var.api_tls]
}
