# The region's tunnel gateway: one instance running `tunnel up` (WireGuard on boringtun) that
# links this VPC with every other region's, an Elastic IP its peers dial, its security group,
# and the routes that send every other region's CIDR to its network interface.

locals {
  tags     = merge(var.tags, { "switchyard:region" = var.region, "switchyard:role" = "tunnel" })
  name     = "${var.name}-${var.region}-tunnel"
  peer_ids = { for p in setproduct(keys(var.route_table_ids), keys(var.peer_cidrs)) : "${p[0]}-${p[1]}" => { table = p[0], peer = p[1] } }
}

resource "aws_eip" "this" {
  domain = "vpc"
  tags   = merge(local.tags, { Name = local.name })
}

resource "aws_security_group" "this" {
  name        = local.name
  description = "Switchyard tunnel gateway of ${var.region}: WireGuard from the other gateways, forwarded traffic from the VPC"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = local.name })
}

# WireGuard ingress (only the other gateways' Elastic IPs, /32) is added by the caller on
# security_group_id: those addresses belong to other regions' modules, and a module that took
# them as input would depend on itself through its peers.

# What crosses the tunnel from this VPC: PostgreSQL (replication, hubs to the primary) and the
# spokes' data/relay port (TCP and UDP). The gateway forwards it; a security group checks the
# destination port of forwarded packets like any other.
resource "aws_vpc_security_group_ingress_rule" "forwarded" {
  for_each          = { for r in var.forwarded_ports : "${r.protocol}-${r.port}" => r }
  security_group_id = aws_security_group.this.id
  description       = "Forwarded ${each.value.protocol}/${each.value.port} from ${var.region} to the other regions"
  ip_protocol       = each.value.protocol
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = var.cidr
  tags              = local.tags
}

# Out: WireGuard to the peers, forwarded traffic into the VPC, HTTPS to SSM and bin_url.
resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.this.id
  description       = "Encapsulated traffic to the peers, decapsulated traffic into the VPC, SSM and package downloads"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

resource "aws_iam_role" "this" {
  name = local.name
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "ec2.amazonaws.com" } }]
  })
  tags = local.tags
}

# A gateway publishes its own public key and reads the peer list and its peers' public keys;
# nothing else. Its private key never leaves the instance.
resource "aws_iam_role_policy" "this" {
  name = "switchyard-tunnel"
  role = aws_iam_role.this.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat([
      {
        Sid      = "PublishOwnPublicKey"
        Effect   = "Allow"
        Action   = ["ssm:PutParameter", "ssm:GetParameter"]
        Resource = [var.public_key_parameter_arn]
      },
      {
        Sid      = "ReadPeers"
        Effect   = "Allow"
        Action   = ["ssm:GetParameter"]
        Resource = concat([var.peers_parameter_arn], values(var.peer_public_key_parameter_arns))
      },
    ], var.bin_read_statements)
  })
}

resource "aws_iam_instance_profile" "this" {
  name = local.name
  role = aws_iam_role.this.name
  tags = local.tags
}

resource "aws_instance" "this" {
  ami                    = var.ami
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  private_ip             = var.private_ip
  vpc_security_group_ids = [aws_security_group.this.id]
  iam_instance_profile   = aws_iam_instance_profile.this.name
  # It forwards packets that are neither from nor to itself.
  source_dest_check = false
  ebs_optimized     = true
  monitoring        = var.detailed_monitoring
  user_data = templatefile("${path.module}/../../boot/user-data.sh.tftpl", {
    bin_url  = var.bin_url
    binaries = ["tunnel"]
    script   = "tunnel-boot.sh"
    args     = ["--region", var.region, "--prefix", var.parameter_prefix, "--ssm-region", var.ssm_region, "--port", tostring(var.listen_port)]
  })

  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    http_endpoint               = "enabled"
  }

  root_block_device {
    encrypted   = true
    volume_size = 16
    volume_type = "gp3"
  }

  tags        = merge(local.tags, { Name = local.name })
  volume_tags = local.tags
}

resource "aws_eip_association" "this" {
  allocation_id = aws_eip.this.id
  instance_id   = aws_instance.this.id
}

# Every route table of the region sends each other region's CIDR to the gateway's interface.
resource "aws_route" "to_peer" {
  for_each               = local.peer_ids
  route_table_id         = var.route_table_ids[each.value.table]
  destination_cidr_block = var.peer_cidrs[each.value.peer]
  network_interface_id   = aws_instance.this.primary_network_interface_id
}
