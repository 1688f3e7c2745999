# PostgreSQL on an instance: the primary (role "primary") in one region, a streaming replica
# (role "replica") in every other, replicating over the tunnel from the primary's private
# address. The primary's first boot also bootstraps the network: it makes the database
# passwords, the hubs' master key, the meta token and one reusable join token per region, and
# stores them as SSM SecureStrings. Terraform only creates those parameters with a placeholder.

locals {
  tags = merge(var.tags, { "switchyard:region" = var.region, "switchyard:role" = "db-${var.role}" })
  name = "${var.name}-${var.region}-db"
}

resource "aws_security_group" "this" {
  name        = local.name
  description = "Switchyard PostgreSQL ${var.role} of ${var.region}: port 5432 from the regions' networks"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = local.name })
}

# PostgreSQL from every region's network: this region's hubs, the other regions' hubs (to the
# primary) and replicas (streaming), the latter two arriving through the tunnel.
resource "aws_vpc_security_group_ingress_rule" "postgres" {
  for_each          = var.client_cidrs
  security_group_id = aws_security_group.this.id
  description       = "PostgreSQL from ${each.key}"
  ip_protocol       = "tcp"
  from_port         = 5432
  to_port           = 5432
  cidr_ipv4         = each.value
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.this.id
  description       = "Replication to the primary, SSM, package downloads"
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

# The primary writes (and re-reads, when it is rebuilt) the secrets it makes and reads the
# region list (the peer list); a replica reads the replication password only.
resource "aws_iam_role_policy" "this" {
  name = "switchyard-db-${var.role}"
  role = aws_iam_role.this.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(length(var.read_parameter_arns) == 0 ? [] : [{
      Sid      = "ReadRegions"
      Effect   = "Allow"
      Action   = ["ssm:GetParameter"]
      Resource = var.read_parameter_arns
      }], [
      var.role == "primary" ? {
        Sid      = "BootstrapSecrets"
        Effect   = "Allow"
        Action   = ["ssm:GetParameter", "ssm:PutParameter"]
        Resource = var.secret_parameter_arns
        } : {
        Sid      = "ReplicationPassword"
        Effect   = "Allow"
        Action   = ["ssm:GetParameter"]
        Resource = var.secret_parameter_arns
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
  ebs_optimized          = true
  monitoring             = var.detailed_monitoring
  user_data = templatefile("${path.module}/../../boot/user-data.sh.tftpl", {
    bin_url  = var.bin_url
    binaries = var.role == "primary" ? ["hub"] : []
    script   = "db-boot.sh"
    args = concat(
      ["--role", var.role, "--region", var.region, "--prefix", var.parameter_prefix, "--ssm-region", var.ssm_region, "--allow", join(",", values(var.client_cidrs))],
      var.role == "primary" ? ["--join-uses", tostring(var.join_uses)] : ["--primary", var.primary_address],
    )
  })

  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    http_endpoint               = "enabled"
  }

  root_block_device {
    encrypted   = true
    volume_size = var.volume_size_gb
    volume_type = "gp3"
  }

  tags        = merge(local.tags, { Name = local.name })
  volume_tags = local.tags
}
