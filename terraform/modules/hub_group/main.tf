# The region's hubs: a launch template and an autoscaling group behind a network load balancer
# with one Elastic IP per availability zone (the addresses the steering zone is delegated to).
# The load balancer carries the API (TCP, health-checked on /readyz), QUIC for spokes (UDP) and
# the steering DNS (UDP and TCP 53). Every target group is health-checked on /readyz, so a hub
# that is not ready leaves all three at once.

locals {
  tags = merge(var.tags, { "switchyard:region" = var.region, "switchyard:role" = "hub" })
  name = "${var.name}-${var.region}-hub"
  # The API: plain HTTP on 8080, or HTTPS on 8443 terminated by the hub itself (the load
  # balancer passes TCP through, so the hub's steering measures the client's own RTT).
  https    = var.tls != null
  api_port = local.https ? 8443 : 8080
  scheme   = local.https ? "https" : "http"
  # Each entry: the load balancer's listener, its target group and the hub's own port.
  services = {
    api  = { protocol = "TCP", port = local.https ? 443 : var.api_port, target_port = local.api_port }
    quic = { protocol = "UDP", port = 7443, target_port = 7443 }
    dns  = { protocol = "TCP_UDP", port = 53, target_port = 53 }
  }
  # What the hubs' security group lets in (clients keep their addresses through the NLB).
  ingress = {
    api     = { protocol = "tcp", port = local.api_port }
    quic    = { protocol = "udp", port = 7443 }
    dns-udp = { protocol = "udp", port = 53 }
    dns-tcp = { protocol = "tcp", port = 53 }
  }
}

resource "aws_eip" "lb" {
  for_each = toset(var.azs)
  domain   = "vpc"
  tags     = merge(local.tags, { Name = "${local.name}-${each.key}" })
}

resource "aws_lb" "this" {
  name                             = substr("${var.name}-${var.region}", 0, 32)
  load_balancer_type               = "network"
  internal                         = false
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection

  dynamic "subnet_mapping" {
    for_each = { for i, az in var.azs : az => var.public_subnet_ids[i] }
    content {
      subnet_id     = subnet_mapping.value
      allocation_id = aws_eip.lb[subnet_mapping.key].id
    }
  }

  tags = merge(local.tags, { Name = local.name })
}

resource "aws_lb_target_group" "this" {
  for_each             = local.services
  name                 = substr("${var.name}-${var.region}-${each.key}", 0, 32)
  protocol             = each.value.protocol
  port                 = each.value.target_port
  vpc_id               = var.vpc_id
  target_type          = "instance"
  deregistration_delay = 30

  health_check {
    protocol            = upper(local.scheme)
    port                = tostring(local.api_port)
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = merge(local.tags, { Name = "${local.name}-${each.key}" })
}

resource "aws_lb_listener" "this" {
  for_each          = local.services
  load_balancer_arn = aws_lb.this.arn
  protocol          = each.value.protocol
  port              = each.value.port

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this[each.key].arn
  }

  tags = local.tags
}

resource "aws_security_group" "this" {
  name        = local.name
  description = "Switchyard hubs of ${var.region}: API, QUIC and DNS through the load balancer"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = local.name })
}

# The load balancer keeps the clients' addresses, so the hubs accept these ports from anywhere;
# the instances sit in private subnets and are reachable only through the load balancer.
resource "aws_vpc_security_group_ingress_rule" "this" {
  for_each          = local.ingress
  security_group_id = aws_security_group.this.id
  description       = "Hub ${each.key} through the load balancer"
  ip_protocol       = each.value.protocol
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.this.id
  description       = "Storage providers anywhere, the databases, the other hubs, SSM"
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

# Hubs read the database password, the master key, the DNS facts and, with HTTPS, the
# certificate and its key; nothing else.
resource "aws_iam_role_policy" "this" {
  name = "switchyard-hub"
  role = aws_iam_role.this.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat([{
      Sid      = "HubSecrets"
      Effect   = "Allow"
      Action   = ["ssm:GetParameter"]
      Resource = concat(var.secret_parameter_arns, [var.dns_parameter_arn], local.https ? var.tls.arns : [])
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
    binaries = ["hub"]
    script   = "hub-boot.sh"
    args = concat([
      "--region", var.region,
      "--prefix", var.parameter_prefix,
      "--ssm-region", var.ssm_region,
      "--zone", var.zone,
      "--public-url", local.https || var.api_port == 80 ? "${local.scheme}://${var.region}.api.${var.zone}" : "http://${var.region}.api.${var.zone}:${var.api_port}",
      "--databases", join(",", var.database_hosts),
      "--join-advertise", "${aws_lb.this.dns_name}:7443",
      "--addresses", join(",", [for az in var.azs : aws_eip.lb[az].public_ip]),
      ], var.replica_host == null ? [] : ["--replica", var.replica_host],
      local.https ? ["--tls-cert-parameter", var.tls.cert_parameter, "--tls-key-parameter", var.tls.key_parameter] : [],
    )
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
      volume_size = 16
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
  name                      = local.name
  vpc_zone_identifier       = var.private_subnet_ids
  min_size                  = var.min_size
  max_size                  = var.max_size
  desired_capacity          = var.desired_capacity
  target_group_arns         = [for k in keys(local.services) : aws_lb_target_group.this[k].arn]
  health_check_type         = "ELB"
  health_check_grace_period = 600

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
