# Everything of one region, in the AWS region its provider points at: the network, the tunnel
# gateway and its routes, the PostgreSQL server (primary or replica), the hubs and the spokes.
# The root module calls this once per region through that AWS region's provider alias.

locals {
  is_primary = var.region == var.primary_region
  peers      = { for r, v in var.all : r => v if r != var.region }
  cidrs      = { for r, v in var.all : r => v.cidr }
  ami        = coalesce(var.settings.ami, try(data.aws_ssm_parameter.ami[0].value, null))
  # Primary first: database.url lists every server so hubs find a promoted replica by themselves.
  database_hosts = concat([var.all[var.primary_region].db_address], [for r in sort(keys(var.all)) : var.all[r].db_address if r != var.primary_region])
  data_port      = 8443
  tags           = merge(var.tags, { "switchyard:deployment" = var.name })
}

# Debian 12, unless the region names its own AMI.
data "aws_ssm_parameter" "ami" {
  count = var.settings.ami == null ? 1 : 0
  name  = "/aws/service/debian/release/12/latest/amd64"
}

module "network" {
  source = "../network"
  name   = var.name
  region = var.region
  cidr   = var.settings.cidr
  azs    = var.settings.azs
  tags   = local.tags
}

module "gateway" {
  detailed_monitoring = var.detailed_monitoring
  source              = "../tunnel_gateway"
  name                = var.name
  region              = var.region
  cidr                = var.settings.cidr
  vpc_id              = module.network.vpc_id
  subnet_id           = module.network.public_subnet_ids[0]
  private_ip          = var.all[var.region].gateway_address

  route_table_ids                = module.network.route_table_ids
  peer_cidrs                     = { for r, v in local.peers : r => v.cidr }
  listen_port                    = var.tunnel_port
  forwarded_ports                = [{ protocol = "tcp", port = 5432 }, { protocol = "tcp", port = local.data_port }, { protocol = "udp", port = local.data_port }]
  instance_type                  = var.settings.gateway_instance_type
  ami                            = local.ami
  bin_url                        = var.bin_url
  bin_read_statements            = var.bin_read_statements
  parameter_prefix               = var.parameter_prefix
  ssm_region                     = var.ssm_region
  public_key_parameter_arn       = var.parameter_arns.tunnel_public_keys[var.region]
  peer_public_key_parameter_arns = { for r, arn in var.parameter_arns.tunnel_public_keys : r => arn if r != var.region }
  peers_parameter_arn            = var.parameter_arns.tunnel_peers
  tags                           = local.tags
}

module "database" {
  detailed_monitoring = var.detailed_monitoring
  source              = "../database"
  name                = var.name
  region              = var.region
  role                = local.is_primary ? "primary" : "replica"
  vpc_id              = module.network.vpc_id
  subnet_id           = module.network.private_subnet_ids[0]
  private_ip          = var.all[var.region].db_address
  primary_address     = local.is_primary ? null : var.all[var.primary_region].db_address
  client_cidrs        = local.cidrs
  join_uses           = var.join_uses
  instance_type       = var.settings.db_instance_type
  volume_size_gb      = var.settings.db_volume_gb
  ami                 = local.ami
  bin_url             = var.bin_url
  # The primary makes every bootstrap secret; a replica reads the replication password only.
  secret_parameter_arns = local.is_primary ? concat(
    [var.parameter_arns.db_password, var.parameter_arns.replication_password, var.parameter_arns.master_key, var.parameter_arns.meta_token],
    values(var.parameter_arns.join), values(var.parameter_arns.join_expiry),
  ) : [var.parameter_arns.replication_password]
  read_parameter_arns = local.is_primary ? [var.parameter_arns.tunnel_peers] : []
  bin_read_statements = var.bin_read_statements
  parameter_prefix    = var.parameter_prefix
  ssm_region          = var.ssm_region
  tags                = local.tags
}

module "hubs" {
  detailed_monitoring   = var.detailed_monitoring
  source                = "../hub_group"
  name                  = var.name
  region                = var.region
  zone                  = var.zone
  vpc_id                = module.network.vpc_id
  azs                   = var.settings.azs
  public_subnet_ids     = module.network.public_subnet_ids
  private_subnet_ids    = module.network.private_subnet_ids
  database_hosts        = local.database_hosts
  replica_host          = local.is_primary ? null : var.all[var.region].db_address
  instance_type         = var.settings.hub_instance_type
  min_size              = var.settings.hub_count
  max_size              = var.settings.hub_count
  desired_capacity      = var.settings.hub_count
  ami                   = local.ami
  bin_url               = var.bin_url
  bin_read_statements   = var.bin_read_statements
  parameter_prefix      = var.parameter_prefix
  ssm_region            = var.ssm_region
  secret_parameter_arns = [var.parameter_arns.db_password, var.parameter_arns.master_key]
  dns_parameter_arn     = var.parameter_arns.dns
  tls                   = var.api_tls
  tags                  = local.tags
}

module "spokes" {
  detailed_monitoring = var.detailed_monitoring
  source              = "../spokes"
  name                = var.name
  region              = var.region
  vpc_id              = module.network.vpc_id
  private_subnet_ids  = module.network.private_subnet_ids
  client_cidrs        = local.cidrs
  data_port           = local.data_port
  instance_type       = var.settings.spoke_instance_type
  volume_size_gb      = var.settings.spoke_volume_gb
  min_size            = var.settings.spoke_count
  max_size            = var.settings.spoke_count
  desired_capacity    = var.settings.spoke_count
  ami                 = local.ami
  bin_url             = var.bin_url
  bin_read_statements = var.bin_read_statements
  parameter_prefix    = var.parameter_prefix
  ssm_region          = var.ssm_region
  join_parameter_arn  = var.parameter_arns.join[var.region]
  tags                = local.tags
}
