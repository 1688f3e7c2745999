# The region's spokes: a launch template and an autoscaling group. Each instance enrolls itself
# at first boot with the region's reusable join token (read from SSM, never in user_data), makes
# its own key pair and gets its own certificate, then runs `spoke run`. Spokes advertise their
# private address: other regions' spokes relay to them through the tunnel.

locals {
  tags = merge(var.tags, { "switchyard:region" = var.region, "switchyard:role" = "spoke" })
  name = "${var.name}-${var.region}-spoke"
}

resource "aws_security_group" "this" {
  name        = local.name
  description = "Switchyard spokes of ${var.region}: data endpoint (TCP) and relay (UDP) from the regions' networks"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = local.name })
}

# The data endpoint (HTTPS) and the relay (QUIC) share one port; hubs and clients inside the
# network use the former, other spokes the latter, arriving through the tunnel.
resource "aws_vpc_security_group_ingress_rule" "this" {
  for_each          = { for p in setproduct(keys(var.client_cidrs), ["tcp", "udp"]) : "${p[0]}-${p[1]}" => { region = p[0], protocol = p[1] } }
  security_group_id = aws_security_group.this.id
  description       = "Spoke ${each.value.protocol == "tcp" ? "data endpoint" : "relay"} from ${each.value.region}"
  ip_protocol       = each.value.protocol
  from_port         = var.data_port
  to_port           = var.data_port
  cidr_ipv4         = var.client_cidrs[each.value.region]
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.this.id
  description       = "Storage providers anywhere, the hubs' QUIC, other spokes, SSM"
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

# A spoke reads its region's join token; nothing else.
resource "aws_iam_role_policy" "this" {
  name = "switchyard-spoke"
  role = aws_iam_role.this.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat([{
      Sid      = "JoinToken"
      Effect   = "Allow"
      Action   = ["ssm:GetParameter"]
      Resource = [var.join_parameter_arn]
    }], var.bin_read_statements)
  })
}

resource "aws_iam_instance_profile" "this" {
  name = local.name
  role = aws_iam_role.this.name
  tags = local.tags
}

resource "aws_launch_template" "this" {
  name                   = local.name
  image_id               = var.ami
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.this.id]
  ebs_optimized          = true
  update_default_version = true
  user_data = base64encode(templatefile("${path.module}/../../boot/user-data.sh.tftpl", {
    bin_url  = var.bin_url
    binaries = ["spoke"]
    script   = "spoke-boot.sh"
    args     = ["--region", var.region, "--prefix", var.parameter_prefix, "--ssm-region", var.ssm_region, "--port", tostring(var.data_port)]
  }))

  iam_instance_profile {
    name = aws_iam_instance_profile.this.name
  }

  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    http_endpoint               = "enabled"
  }

  monitoring {
    enabled = var.detailed_monitoring
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      encrypted   = true
      volume_size = var.volume_size_gb
      volume_type = "gp3"
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = local.name })
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "this" {
  name                = local.name
  vpc_zone_identifier = var.private_subnet_ids
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = var.desired_capacity

  launch_template {
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
  }

  tag {
    key                 = "switchyard:region"
    value               = var.region
    propagate_at_launch = true
  }
}
