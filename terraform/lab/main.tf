# The Switchyard network on one Linux host (run as root): every region is a network namespace
# joined to the others by the userspace WAN emulator with the RTT matrix; a tunnel gateway per
# region links the regions' private networks; PostgreSQL's primary runs in one region and a
# streaming replica in each other, replicating over the tunnel; every region runs a hub (API,
# QUIC for spokes, steering DNS), spokes enrolled with a reusable join token and an S3 server;
# a client namespace sits near each region. Built-in terraform_data + local-exec only: no
# provider to download. Secrets (database password, master key, WireGuard private keys, the
# Meta token, join tokens) are made by the scripts on the host and never enter the state.
#
# Destroy-time provisioners may only use `self`, so each resource carries what its destroy
# needs in triggers_replace.

locals {
  primary = coalesce(var.primary_region, var.regions[0])
  scripts = abspath("${path.module}/scripts")

  region = { for i, r in var.regions : r => {
    index        = i + 1
    netns        = "${var.name}-${r}"
    client_netns = "${var.name}-${r}-c"
    wan_net      = cidrsubnet(var.wan_cidr, 8, i + 1)
    wan_addr     = cidrhost(cidrsubnet(var.wan_cidr, 8, i + 1), 1)
    client_net   = cidrsubnet(var.wan_cidr, 8, 101 + i)
    client_addr  = cidrhost(cidrsubnet(var.wan_cidr, 8, 101 + i), 1)
    private_net  = cidrsubnet(var.private_cidr, 8, i + 1)
    private_addr = cidrhost(cidrsubnet(var.private_cidr, 8, i + 1), 1)
    # The gateways' transit subnet (their interface addresses).
    transit_addr = cidrhost(cidrsubnet(var.private_cidr, 8, 255), i + 1)
  } }

  # RTT of every unordered pair of regions.
  pairs = flatten([for i, a in var.regions : [for j, b in var.regions : {
    a  = a
    b  = b
    ms = lookup(var.rtt_ms, "${a},${b}", lookup(var.rtt_ms, "${b},${a}", var.default_rtt_ms))
  } if i < j]])
  rtt = merge([for p in local.pairs : { "${p.a},${p.b}" = p.ms, "${p.b},${p.a}" = p.ms }]...)

  linkemu_spec = jsonencode({
    endpoints = concat(
      [for r, x in local.region : {
        name = r, netns = x.netns, tun = "wan0", addresses = [x.wan_addr],
        owns = [x.wan_net], routes = [var.wan_cidr]
      }],
      [for r, x in local.region : {
        name = "${r}-client", netns = x.client_netns, tun = "wan0", addresses = [x.client_addr],
        owns = [x.client_net], routes = [var.wan_cidr]
      }],
    )
    rtt_ms = concat(
      [for p in local.pairs : { a = p.a, b = p.b, ms = p.ms }],
      # A client is client_rtt_ms from its region and as far as its region from the others.
      flatten([for c in var.regions : [for r in var.regions : {
        a = "${c}-client", b = r, ms = c == r ? var.client_rtt_ms : local.rtt["${c},${r}"] + var.client_rtt_ms
      }]]),
      flatten([for i, c in var.regions : [for j, d in var.regions : {
        a = "${c}-client", b = "${d}-client", ms = local.rtt["${c},${d}"] + 2 * var.client_rtt_ms
      } if i < j]]),
    )
    default_rtt_ms = var.default_rtt_ms
  })

  tunnel_config = { for r, x in local.region : r => yamlencode({
    interface = {
      name             = "wg0"
      private_key_file = "${var.state_dir}/${r}/tunnel/private.key"
      addresses        = ["${x.transit_addr}/24"]
      listen_port      = 51820
      mtu              = 1420
      control_socket   = "${var.state_dir}/${r}/tunnel/control.sock"
    }
    peers = [for p, y in local.region : {
      name                 = p
      public_key           = "__PUBKEY_${p}__"
      endpoint             = "${y.wan_addr}:51820"
      allowed_ips          = [y.private_net, "${y.transit_addr}/32"]
      persistent_keepalive = 25
    } if p != r]
  }) }

  # Every database server, the primary first: after `hub db promote` in a replica region every
  # hub finds the new primary among them by itself.
  db_url = "postgres://__DB_USERINFO__@${join(",", concat(
    ["${local.region[local.primary].private_addr}:5432"],
    [for r in var.regions : "${local.region[r].private_addr}:5432" if r != local.primary],
  ))}/switchyard"

  hub_config = { for r, x in local.region : r => yamlencode({
    listen     = "${x.wan_addr}:8080"
    public_url = "http://${x.wan_addr}:8080"
    region     = r
    data_dir   = "${var.state_dir}/${r}/hub"
    database = merge(
      { url = local.db_url, max_connections = 8 },
      r == local.primary ? {} : {
        replica_url = "postgres://__DB_USERINFO__@${x.private_addr}:5432/switchyard"
      },
    )
    secrets = { master_key_file = "${var.state_dir}/secrets/master.key" }
    # The lab's S3 servers live on the emulated internet, a private range.
    storage = { allowed_private_endpoints = [var.wan_cidr] }
    network = { quic_listen = "${x.wan_addr}:7443" }
    dns = {
      listen      = "${x.wan_addr}:53"
      zone        = var.zone
      nameservers = [for p in var.regions : "ns-${p}"]
      addresses   = [x.wan_addr]
      records     = [for p, y in local.region : { name = "ns-${p}", type = "A", value = y.wan_addr }]
      # Before any RTT is measured, a client network goes to the region it sits in.
      regions        = [for p, y in local.region : { cidr = y.client_net, region = p }]
      default_region = r
    }
  }) }
}

resource "terraform_data" "network" {
  triggers_replace = {
    scripts      = local.scripts
    state        = var.state_dir
    region_netns = join(" ", [for r, x in local.region : "${x.netns}=${x.private_addr}/24"])
    client_netns = join(" ", [for r, x in local.region : x.client_netns])
    spec         = local.linkemu_spec
  }

  provisioner "local-exec" {
    command = "${local.scripts}/network.sh up"
    environment = {
      STATE        = var.state_dir
      BIN_DIR      = var.bin_dir
      REGION_NETNS = self.triggers_replace.region_netns
      CLIENT_NETNS = self.triggers_replace.client_netns
      LINKEMU_SPEC = local.linkemu_spec
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.triggers_replace.scripts}/network.sh down"
    environment = {
      STATE        = self.triggers_replace.state
      REGION_NETNS = self.triggers_replace.region_netns
      CLIENT_NETNS = self.triggers_replace.client_netns
    }
  }
}

resource "terraform_data" "tunnel_keys" {
  triggers_replace = [terraform_data.network.id]

  provisioner "local-exec" {
    command = "${local.scripts}/tunnel.sh keys"
    environment = {
      STATE   = var.state_dir
      BIN_DIR = var.bin_dir
      REGIONS = join(" ", var.regions)
    }
  }
}

resource "terraform_data" "tunnel" {
  for_each = local.region
  triggers_replace = {
    scripts = local.scripts
    state   = var.state_dir
    keys    = terraform_data.tunnel_keys.id
    config  = local.tunnel_config[each.key]
  }

  provisioner "local-exec" {
    command = "${local.scripts}/tunnel.sh up"
    environment = {
      STATE         = var.state_dir
      BIN_DIR       = var.bin_dir
      REGION        = each.key
      NETNS         = each.value.netns
      TUNNEL_CONFIG = local.tunnel_config[each.key]
      PRIVATE_ADDR  = each.value.private_addr
      PEER_NETS     = join(" ", [for p, y in local.region : y.private_net if p != each.key])
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.triggers_replace.scripts}/tunnel.sh down"
    environment = {
      STATE  = self.triggers_replace.state
      REGION = each.key
    }
  }
}

resource "terraform_data" "postgres_primary" {
  triggers_replace = {
    scripts = local.scripts
    state   = var.state_dir
    region  = local.primary
    network = terraform_data.network.id
  }

  provisioner "local-exec" {
    command = "${local.scripts}/postgres.sh primary"
    environment = {
      STATE       = var.state_dir
      REGION      = local.primary
      NETNS       = local.region[local.primary].netns
      LISTEN_ADDR = local.region[local.primary].private_addr
      ALLOW_NET   = var.private_cidr
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.triggers_replace.scripts}/postgres.sh down"
    environment = {
      STATE  = self.triggers_replace.state
      REGION = self.triggers_replace.region
    }
  }
}

resource "terraform_data" "postgres_replica" {
  for_each = { for r, x in local.region : r => x if r != local.primary }
  triggers_replace = {
    scripts = local.scripts
    state   = var.state_dir
    primary = terraform_data.postgres_primary.id
  }
  # Replication crosses the tunnel: both ends' gateways must be up.
  depends_on = [terraform_data.tunnel]

  provisioner "local-exec" {
    command = "${local.scripts}/postgres.sh replica"
    environment = {
      STATE        = var.state_dir
      REGION       = each.key
      NETNS        = each.value.netns
      LISTEN_ADDR  = each.value.private_addr
      ALLOW_NET    = var.private_cidr
      PRIMARY_ADDR = local.region[local.primary].private_addr
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.triggers_replace.scripts}/postgres.sh down"
    environment = {
      STATE  = self.triggers_replace.state
      REGION = each.key
    }
  }
}

resource "terraform_data" "s3" {
  for_each = local.region
  triggers_replace = {
    scripts = local.scripts
    state   = var.state_dir
    network = terraform_data.network.id
  }

  provisioner "local-exec" {
    command = "${local.scripts}/s3.sh up"
    environment = {
      STATE       = var.state_dir
      REGION      = each.key
      NETNS       = each.value.netns
      ADDR        = each.value.wan_addr
      PORT        = "9000"
      BUCKET      = "switchyard-${each.key}"
      MOTO_SERVER = var.moto_server
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.triggers_replace.scripts}/s3.sh down"
    environment = {
      STATE  = self.triggers_replace.state
      REGION = each.key
    }
  }
}

resource "terraform_data" "schema" {
  triggers_replace = [terraform_data.postgres_primary.id]

  provisioner "local-exec" {
    command = "${local.scripts}/hub.sh schema"
    environment = {
      STATE      = var.state_dir
      BIN_DIR    = var.bin_dir
      REGION     = local.primary
      NETNS      = local.region[local.primary].netns
      HUB_CONFIG = local.hub_config[local.primary]
    }
  }
}

resource "terraform_data" "hub" {
  for_each = local.region
  triggers_replace = {
    scripts = local.scripts
    state   = var.state_dir
    schema  = terraform_data.schema.id
    config  = local.hub_config[each.key]
  }
  depends_on = [terraform_data.postgres_replica, terraform_data.tunnel]

  provisioner "local-exec" {
    command = "${local.scripts}/hub.sh up"
    environment = {
      STATE      = var.state_dir
      BIN_DIR    = var.bin_dir
      REGION     = each.key
      NETNS      = each.value.netns
      HUB_CONFIG = local.hub_config[each.key]
      READY_URL  = "http://${each.value.wan_addr}:8080/readyz"
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.triggers_replace.scripts}/hub.sh down"
    environment = {
      STATE  = self.triggers_replace.state
      REGION = each.key
    }
  }
}

resource "terraform_data" "spokes" {
  for_each = local.region
  triggers_replace = {
    scripts = local.scripts
    state   = var.state_dir
    count   = tostring(var.spokes_per_region)
    hub     = terraform_data.hub[each.key].id
  }
  # A spoke dials every hub it learns of at enrollment.
  depends_on = [terraform_data.hub]

  provisioner "local-exec" {
    command = "${local.scripts}/spokes.sh up"
    environment = {
      STATE      = var.state_dir
      BIN_DIR    = var.bin_dir
      REGION     = each.key
      NETNS      = each.value.netns
      DATA_ADDRS = join(" ", [for k in range(var.spokes_per_region) : "${each.value.wan_addr}:${9443 + k}"])
      HUB_URL    = "http://${each.value.wan_addr}:8080"
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "${self.triggers_replace.scripts}/spokes.sh down"
    environment = {
      STATE       = self.triggers_replace.state
      REGION      = each.key
      SPOKE_COUNT = self.triggers_replace.count
    }
  }
}
