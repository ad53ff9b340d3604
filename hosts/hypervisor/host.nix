# netctl host settings and storage of the hypervisor (services.tinyvmm.host / .storage);
# the same as netctl/examples/host.json.
{
  host = {
    uplink = "eth0";
    tapUser = "tinyvmm";
    tapGroup = "kvm";
    egress = "tcp:80,tcp:443,udp:53";
    tailscaleInterface = "tailscale0";
  };
  storage = {
    backend = "zfs";
    dataset = "rpool/microvms";
    owner = "microvm:kvm";
  };
}
