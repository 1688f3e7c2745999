# One region's network: a VPC, a public and a private subnet in each of two availability
# zones, an internet gateway, a NAT gateway for the private subnets' way out, and the two route
# tables. Routes towards the other regions are added by the tunnel gateway module, as standalone
# aws_route resources only (inline routes and standalone ones fight forever).

locals {
  # /N region CIDR → /(N+4) subnets: public 0-1, private 8-9 (room for more AZs in between).
  public_cidrs  = { for i, az in var.azs : az => cidrsubnet(var.cidr, 4, i) }
  private_cidrs = { for i, az in var.azs : az => cidrsubnet(var.cidr, 4, 8 + i) }
  tags          = merge(var.tags, { "switchyard:region" = var.region })
}

resource "aws_vpc" "this" {
  cidr_block           = var.cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(local.tags, { Name = "${var.name}-${var.region}" })
}

# The default security group of the VPC is left with no rules: nothing uses it.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id
  tags   = merge(local.tags, { Name = "${var.name}-${var.region}-default-unused" })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
  tags   = merge(local.tags, { Name = "${var.name}-${var.region}" })
}

resource "aws_subnet" "public" {
  for_each          = local.public_cidrs
  vpc_id            = aws_vpc.this.id
  availability_zone = each.key
  cidr_block        = each.value
  # Nothing gets a public address by accident: the gateway and the load balancer get Elastic IPs.
  map_public_ip_on_launch = false
  tags                    = merge(local.tags, { Name = "${var.name}-${var.region}-public-${each.key}" })
}

resource "aws_subnet" "private" {
  for_each          = local.private_cidrs
  vpc_id            = aws_vpc.this.id
  availability_zone = each.key
  cidr_block        = each.value
  tags              = merge(local.tags, { Name = "${var.name}-${var.region}-private-${each.key}" })
}

resource "aws_eip" "nat" {
  domain = "vpc"
  tags   = merge(local.tags, { Name = "${var.name}-${var.region}-nat" })
}

resource "aws_nat_gateway" "this" {
  allocation_id = aws_eip.nat.id
  subnet_id     = aws_subnet.public[var.azs[0]].id
  tags          = merge(local.tags, { Name = "${var.name}-${var.region}" })
  depends_on    = [aws_internet_gateway.this]
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id
  tags   = merge(local.tags, { Name = "${var.name}-${var.region}-public" })
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id
  tags   = merge(local.tags, { Name = "${var.name}-${var.region}-private" })
}

resource "aws_route" "public_default" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this.id
}

resource "aws_route" "private_default" {
  route_table_id         = aws_route_table.private.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this.id
}

resource "aws_route_table_association" "public" {
  for_each       = aws_subnet.public
  subnet_id      = each.value.id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table_association" "private" {
  for_each       = aws_subnet.private
  subnet_id      = each.value.id
  route_table_id = aws_route_table.private.id
}
