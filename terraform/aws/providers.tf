# One provider per supported AWS region: provider configurations cannot be created with
# for_each, so each supported AWS region has its alias here and its module call in regions.tf.
# To support another AWS region, add a provider block and a module block for it (copy a pair),
# add it to local.supported_aws_regions and to the three merges in regions.tf.

provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"
  default_tags { tags = local.default_tags }
}

provider "aws" {
  alias  = "us_west_2"
  region = "us-west-2"
  default_tags { tags = local.default_tags }
}

provider "aws" {
  alias  = "eu_west_1"
  region = "eu-west-1"
  default_tags { tags = local.default_tags }
}

provider "aws" {
  alias  = "eu_central_1"
  region = "eu-central-1"
  default_tags { tags = local.default_tags }
}

provider "aws" {
  alias  = "ap_southeast_1"
  region = "ap-southeast-1"
  default_tags { tags = local.default_tags }
}

provider "aws" {
  alias  = "ap_northeast_1"
  region = "ap-northeast-1"
  default_tags { tags = local.default_tags }
}

# The primary's AWS region: the SSM parameters every instance shares, and Route 53 (global).
provider "aws" {
  alias  = "control"
  region = try(var.regions[var.primary_region].aws_region, "us-east-1")
  default_tags { tags = local.default_tags }
}
