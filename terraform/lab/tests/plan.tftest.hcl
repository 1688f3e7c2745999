# Plan-time checks of the lab (offline, nothing is created): the topology it would build and
# the inputs it refuses, each refusal naming the variable.

variables {
  bin_dir   = "/opt/switchyard/bin"
  state_dir = "/var/tmp/switchyard-lab-test"
}

run "three_regions_one_primary_two_replicas" {
  command = plan

  assert {
    condition     = length(terraform_data.hub) == 3 && length(terraform_data.tunnel) == 3 && length(terraform_data.s3) == 3
    error_message = "every region gets a hub, a tunnel gateway and an S3 server"
  }
  assert {
    condition     = length(terraform_data.postgres_replica) == 2 && !contains(keys(terraform_data.postgres_replica), "us-east")
    error_message = "a replica in every region but the primary's"
  }
  assert {
    condition     = output.primary_region == "us-east"
    error_message = "the first region holds the primary by default"
  }
  # A replica region's hub writes to the primary's private address (through the tunnel; the
  # other servers are listed for failover) and reads its own replica.
  assert {
    condition = (
      yamldecode(terraform_data.hub["eu-west"].triggers_replace.config).database.url == "postgres://__DB_USERINFO__@172.29.1.1:5432,172.29.2.1:5432,172.29.3.1:5432/switchyard"
      && yamldecode(terraform_data.hub["eu-west"].triggers_replace.config).database.replica_url == "postgres://__DB_USERINFO__@172.29.2.1:5432/switchyard"
      && !can(yamldecode(terraform_data.hub["us-east"].triggers_replace.config).database.replica_url)
    )
    error_message = "hubs: primary by private address, the local replica where there is one"
  }
  # Each gateway routes every other region's private network to that region's gateway.
  assert {
    condition = alltrue([for r, t in terraform_data.tunnel : length(yamldecode(t.triggers_replace.config).peers) == 2 && alltrue([
      for p in yamldecode(t.triggers_replace.config).peers : contains(p.allowed_ips, cidrsubnet("172.29.0.0/16", 8, index(["us-east", "eu-west", "ap-south"], p.name) + 1))
    ])])
    error_message = "every gateway peers with every other region's"
  }
  # The WAN emulator gets the RTT matrix (either key order) and the clients' RTTs.
  assert {
    condition = contains([for e in jsondecode(terraform_data.network.triggers_replace.spec).rtt_ms : e.ms if e.a == "us-east" && e.b == "ap-south"], 180) && contains(
      [for e in jsondecode(terraform_data.network.triggers_replace.spec).rtt_ms : e.ms if e.a == "eu-west-client" && e.b == "eu-west"], 2
    )
    error_message = "RTT matrix"
  }
  assert {
    condition     = length(distinct([for r, x in local.region : x.wan_net])) == 3 && length(distinct([for r, x in local.region : x.private_net])) == 3
    error_message = "each region has its own networks"
  }
}

run "primary_elsewhere" {
  command = plan
  variables {
    primary_region = "eu-west"
  }
  assert {
    condition     = length(terraform_data.postgres_replica) == 2 && !contains(keys(terraform_data.postgres_replica), "eu-west")
    error_message = "the replicas follow the primary"
  }
}

run "one_region_is_refused" {
  command = plan
  variables {
    regions = ["us-east"]
    rtt_ms  = {}
  }
  expect_failures = [var.regions]
}

run "a_region_that_is_not_a_dns_label_is_refused" {
  command = plan
  variables {
    regions = ["us_east", "eu-west"]
    rtt_ms  = {}
  }
  expect_failures = [var.regions]
}

run "a_primary_not_in_the_regions_is_refused" {
  command = plan
  variables {
    primary_region = "mars"
  }
  expect_failures = [var.primary_region]
}

run "an_rtt_for_an_unknown_region_is_refused" {
  command = plan
  variables {
    rtt_ms = { "us-east,mars" = 10 }
  }
  expect_failures = [var.rtt_ms]
}

run "a_relative_state_dir_is_refused" {
  command = plan
  variables {
    state_dir = "lab-state"
  }
  expect_failures = [var.state_dir]
}

run "a_fraction_of_a_spoke_is_refused" {
  command = plan
  variables {
    spokes_per_region = 1.5
  }
  expect_failures = [var.spokes_per_region]
}
