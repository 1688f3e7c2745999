output "vpc_id" {
  description = "The region's VPC."
  value       = aws_vpc.this.id
}

output "public_subnet_ids" {
  description = "Public subnets, in the order of var.azs."
  value       = [for az in var.azs : aws_subnet.public[az].id]
}

output "private_subnet_ids" {
  description = "Private subnets, in the order of var.azs."
  value       = [for az in var.azs : aws_subnet.private[az].id]
}

output "public_subnet_cidrs" {
  description = "Public subnet CIDRs, in the order of var.azs."
  value       = [for az in var.azs : local.public_cidrs[az]]
}

output "private_subnet_cidrs" {
  description = "Private subnet CIDRs, in the order of var.azs."
  value       = [for az in var.azs : local.private_cidrs[az]]
}

output "route_table_ids" {
  description = "Route tables by role (public, private): every one gets the routes to the other regions."
  value = {
    public  = aws_route_table.public.id
    private = aws_route_table.private.id
  }
}
