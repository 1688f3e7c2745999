# Realistic ids and ARNs for mock_provider "aws": the provider's validators reject random
# strings where it expects an ARN or an id of a given shape. Tests override the values whose
# identity they check (gateway interfaces, Elastic IPs) per region.

mock_data "aws_caller_identity" {
  defaults = {
    account_id = "123456789012"
    arn        = "arn:aws:iam::123456789012:user/terraform"
    user_id    = "AIDAEXAMPLEEXAMPLE123"
  }
}

mock_data "aws_partition" {
  defaults = {
    partition  = "aws"
    dns_suffix = "amazonaws.com"
  }
}

mock_data "aws_route53_zone" {
  defaults = {
    zone_id = "Z0123456789EXAMPLEABC"
    arn     = "arn:aws:route53:::hostedzone/Z0123456789EXAMPLEABC"
  }
}

mock_data "aws_ssm_parameter" {
  defaults = {
    value = "ami-0123456789abcdef0"
    arn   = "arn:aws:ssm:us-east-1:123456789012:parameter/aws/service/debian/release/12/latest/amd64"
  }
}

mock_resource "aws_vpc" {
  defaults = {
    id  = "vpc-0123456789abcdef0"
    arn = "arn:aws:ec2:us-east-1:123456789012:vpc/vpc-0123456789abcdef0"
  }
}

mock_resource "aws_default_security_group" {
  defaults = {
    id  = "sg-0123456789abcdef9"
    arn = "arn:aws:ec2:us-east-1:123456789012:security-group/sg-0123456789abcdef9"
  }
}

mock_resource "aws_subnet" {
  defaults = {
    id  = "subnet-0123456789abcdef0"
    arn = "arn:aws:ec2:us-east-1:123456789012:subnet/subnet-0123456789abcdef0"
  }
}

mock_resource "aws_internet_gateway" {
  defaults = {
    id  = "igw-0123456789abcdef0"
    arn = "arn:aws:ec2:us-east-1:123456789012:internet-gateway/igw-0123456789abcdef0"
  }
}

mock_resource "aws_nat_gateway" {
  defaults = {
    id = "nat-0123456789abcdef0"
  }
}

mock_resource "aws_eip" {
  defaults = {
    id            = "eipalloc-0123456789abcdef0"
    allocation_id = "eipalloc-0123456789abcdef0"
    public_ip     = "198.51.100.1"
  }
}

mock_resource "aws_eip_association" {
  defaults = {
    id = "eipassoc-0123456789abcdef0"
  }
}

mock_resource "aws_route_table" {
  defaults = {
    id  = "rtb-0123456789abcdef0"
    arn = "arn:aws:ec2:us-east-1:123456789012:route-table/rtb-0123456789abcdef0"
  }
}

mock_resource "aws_route" {
  defaults = {
    id = "r-rtb-0123456789abcdef0"
  }
}

mock_resource "aws_route_table_association" {
  defaults = {
    id = "rtbassoc-0123456789abcdef0"
  }
}

mock_resource "aws_security_group" {
  defaults = {
    id  = "sg-0123456789abcdef0"
    arn = "arn:aws:ec2:us-east-1:123456789012:security-group/sg-0123456789abcdef0"
  }
}

mock_resource "aws_vpc_security_group_ingress_rule" {
  defaults = {
    id                     = "sgr-0123456789abcdef0"
    arn                    = "arn:aws:ec2:us-east-1:123456789012:security-group-rule/sgr-0123456789abcdef0"
    security_group_rule_id = "sgr-0123456789abcdef0"
  }
}

mock_resource "aws_vpc_security_group_egress_rule" {
  defaults = {
    id                     = "sgr-0123456789abcdef1"
    arn                    = "arn:aws:ec2:us-east-1:123456789012:security-group-rule/sgr-0123456789abcdef1"
    security_group_rule_id = "sgr-0123456789abcdef1"
  }
}

mock_resource "aws_iam_role" {
  defaults = {
    arn = "arn:aws:iam::123456789012:role/switchyard"
  }
}

mock_resource "aws_iam_instance_profile" {
  defaults = {
    arn = "arn:aws:iam::123456789012:instance-profile/switchyard"
  }
}

mock_resource "aws_instance" {
  defaults = {
    id                           = "i-0123456789abcdef0"
    arn                          = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"
    primary_network_interface_id = "eni-0123456789abcdef0"
  }
}

mock_resource "aws_lb" {
  defaults = {
    id       = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/switchyard/0123456789abcdef"
    arn      = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/switchyard/0123456789abcdef"
    dns_name = "switchyard-0123456789abcdef.elb.us-east-1.amazonaws.com"
    zone_id  = "Z26RNL4JYFTOTI"
  }
}

mock_resource "aws_lb_target_group" {
  defaults = {
    id  = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/switchyard/0123456789abcdef"
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/switchyard/0123456789abcdef"
  }
}

mock_resource "aws_lb_listener" {
  defaults = {
    id  = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/net/switchyard/0123456789abcdef/0123456789abcdef"
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/net/switchyard/0123456789abcdef/0123456789abcdef"
  }
}

mock_resource "aws_launch_template" {
  defaults = {
    id             = "lt-0123456789abcdef0"
    arn            = "arn:aws:ec2:us-east-1:123456789012:launch-template/lt-0123456789abcdef0"
    latest_version = 1
  }
}

mock_resource "aws_autoscaling_group" {
  defaults = {
    arn = "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:01234567-89ab-cdef-0123-456789abcdef:autoScalingGroupName/switchyard"
  }
}

mock_resource "aws_ssm_parameter" {
  defaults = {
    arn = "arn:aws:ssm:us-east-1:123456789012:parameter/switchyard/x"
  }
}

mock_resource "aws_route53_record" {
  defaults = {
    fqdn = "ns.example.com"
  }
}
