"""Checks terraform/aws's resources through the AWS API (boto3), against whatever endpoint
AWS_ENDPOINT_URL names (the tests: moto on loopback).

  aws_check.py deployed OUTPUTS_JSON   every region's instances, autoscaling groups with their
                                       target groups, load balancers, routes and the delegation
  aws_check.py empty OUTPUTS_JSON      nothing of the deployment is left (after destroy)

OUTPUTS_JSON is `terraform output -json` saved before destroy. Exits 1 naming what is wrong.
"""

import json
import sys

import boto3

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def main():
    mode, outputs_path = sys.argv[1], sys.argv[2]
    with open(outputs_path) as f:
        out = {k: v["value"] for k, v in json.load(f).items()}
    regions = out["region_aws"]
    zone = out["zone"]
    parent = out["parent_zone"]
    ssm_region = out["ssm_region"]
    if mode == "deployed":
        deployed(out, regions, zone, parent, ssm_region)
    elif mode == "empty":
        empty(regions, zone, parent, ssm_region)
    else:
        sys.exit(f"unknown mode {mode}")
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"{mode}: ok")


def parent_zone_id(parent):
    r53 = boto3.client("route53")
    zones = [z for z in r53.list_hosted_zones()["HostedZones"] if z["Name"] == parent + "."]
    check(len(zones) == 1, f"parent zone {parent}: {len(zones)} hosted zones")
    return r53, zones[0]["Id"] if zones else None


def deployed(out, regions, zone, parent, ssm_region):
    for region, aws_region in regions.items():
        ec2 = boto3.client("ec2", region_name=aws_region)
        elb = boto3.client("elbv2", region_name=aws_region)
        asg = boto3.client("autoscaling", region_name=aws_region)
        tagged = ec2.describe_instances(
            Filters=[
                {"Name": "tag:switchyard:region", "Values": [region]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )
        roles = {}
        for res in tagged["Reservations"]:
            for i in res["Instances"]:
                tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
                roles.setdefault(tags.get("switchyard:role"), []).append(i)
        gw = roles.get("tunnel", [])
        check(len(gw) == 1, f"{region}: {len(gw)} tunnel gateways")
        if gw:
            check(gw[0].get("SourceDestCheck") is False, f"{region}: gateway source/dest check is on")
        db_role = "db-primary" if region == out["database_primary"]["region"] else "db-replica"
        check(len(roles.get(db_role, [])) == 1, f"{region}: no {db_role} instance ({sorted(roles)})")
        for kind in ("hub", "spoke"):
            name = f"switchyard-{region}-{kind}"
            groups = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
            check(len(groups) == 1, f"{region}: autoscaling group {name} missing")
            if not groups:
                continue
            g = groups[0]
            check(len(g["Instances"]) == g["DesiredCapacity"] >= 1, f"{name}: {len(g['Instances'])} of {g['DesiredCapacity']} instances")
            if kind == "hub":
                tgs = elb.describe_target_groups(TargetGroupArns=g["TargetGroupARNs"])["TargetGroups"] if g["TargetGroupARNs"] else []
                check(len(tgs) == 3, f"{name}: {len(tgs)} target groups, want api, quic, dns")
                for tg in tgs:
                    check(tg.get("HealthCheckPath") == "/readyz", f"{tg['TargetGroupName']}: health check {tg.get('HealthCheckPath')}")
                    targets = elb.describe_target_health(TargetGroupArn=tg["TargetGroupArn"])["TargetHealthDescriptions"]
                    check(len(targets) == len(g["Instances"]), f"{tg['TargetGroupName']}: {len(targets)} targets for {len(g['Instances'])} hubs")
        lbs = [lb for lb in elb.describe_load_balancers()["LoadBalancers"] if lb["LoadBalancerName"] == f"switchyard-{region}"]
        check(len(lbs) == 1 and lbs[0]["Type"] == "network", f"{region}: network load balancer missing")
        if lbs:
            listeners = elb.describe_listeners(LoadBalancerArn=lbs[0]["LoadBalancerArn"])["Listeners"]
            got = sorted((l["Protocol"], l["Port"]) for l in listeners)
            check(got == [("TCP", 80), ("TCP_UDP", 53), ("UDP", 7443)], f"{region}: listeners {got}")
        # Every route table of the region's VPC sends each other region's CIDR to the gateway.
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:switchyard:region", "Values": [region]}])["Vpcs"]
        check(len(vpcs) == 1, f"{region}: {len(vpcs)} VPCs")
        if vpcs and gw:
            eni = gw[0]["NetworkInterfaces"][0]["NetworkInterfaceId"]
            tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]}, {"Name": "tag:switchyard:region", "Values": [region]}])["RouteTables"]
            check(len(tables) == 2, f"{region}: {len(tables)} route tables")
            for t in tables:
                for other, cidr in out["region_cidrs"].items():
                    if other == region:
                        continue
                    hits = [r for r in t["Routes"] if r.get("DestinationCidrBlock") == cidr]
                    check(len(hits) == 1 and hits[0].get("NetworkInterfaceId") == eni, f"{region}: table {t['RouteTableId']} route to {other} is {hits}")
    r53, zid = parent_zone_id(parent)
    if zid:
        records = r53.list_resource_record_sets(HostedZoneId=zid)["ResourceRecordSets"]
        ns = [r for r in records if r["Type"] == "NS" and r["Name"] == zone + "."]
        want = sorted(f"ns-{r}.{zone}" for r in regions)
        check(len(ns) == 1 and sorted(v["Value"].rstrip(".") for v in ns[0]["ResourceRecords"]) == want, f"delegation NS of {zone}: {ns}")
        for region in regions:
            glue = [r for r in records if r["Type"] == "A" and r["Name"] == f"ns-{region}.{zone}."]
            ips = sorted(v["Value"] for v in glue[0]["ResourceRecords"]) if glue else []
            check(ips == sorted(set(out["hub_addresses"][region])), f"glue ns-{region}: {ips}, hubs at {out['hub_addresses'][region]}")
    ssm = boto3.client("ssm", region_name=ssm_region)
    names = sorted(p["Name"] for p in ssm.get_parameters_by_path(Path="/switchyard", Recursive=True)["Parameters"])
    check(names == ["/switchyard/hub/dns", "/switchyard/tunnel/peers"], f"terraform's SSM parameters: {names}")


def empty(regions, zone, parent, ssm_region):
    for region, aws_region in sorted(set((r, a) for r, a in regions.items())):
        ec2 = boto3.client("ec2", region_name=aws_region)
        left = ec2.describe_instances(
            Filters=[
                {"Name": "tag:switchyard:region", "Values": [region]},
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
            ]
        )["Reservations"]
        check(not left, f"{region}: instances left")
        check(not ec2.describe_vpcs(Filters=[{"Name": "tag:switchyard:region", "Values": [region]}])["Vpcs"], f"{region}: VPC left")
        check(not ec2.describe_addresses(Filters=[{"Name": "tag:switchyard:region", "Values": [region]}])["Addresses"], f"{region}: Elastic IPs left")
        check(not ec2.describe_launch_templates(Filters=[{"Name": "tag:switchyard:region", "Values": [region]}])["LaunchTemplates"], f"{region}: launch templates left")
        asg = boto3.client("autoscaling", region_name=aws_region)
        check(not asg.describe_auto_scaling_groups()["AutoScalingGroups"], f"{aws_region}: autoscaling groups left")
        elb = boto3.client("elbv2", region_name=aws_region)
        check(not elb.describe_load_balancers()["LoadBalancers"], f"{aws_region}: load balancers left")
        check(not elb.describe_target_groups()["TargetGroups"], f"{aws_region}: target groups left")
    iam = boto3.client("iam")
    roles = [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith("switchyard-")]
    check(not roles, f"IAM roles left: {roles}")
    profiles = [p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"] if p["InstanceProfileName"].startswith("switchyard-")]
    check(not profiles, f"instance profiles left: {profiles}")
    r53, zid = parent_zone_id(parent)
    if zid:
        records = r53.list_resource_record_sets(HostedZoneId=zid)["ResourceRecordSets"]
        extra = [r["Name"] for r in records if r["Name"] != parent + "."]
        check(not extra, f"records left in {parent}: {extra}")
    ssm = boto3.client("ssm", region_name=ssm_region)
    params = ssm.get_parameters_by_path(Path="/switchyard", Recursive=True)["Parameters"]
    check(not params, f"SSM parameters left: {[p['Name'] for p in params]}")


if __name__ == "__main__":
    main()
