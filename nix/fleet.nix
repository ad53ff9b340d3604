# A fleet of hypervisors (flake output `colmena`): each host owns a VM subnet range; the
# ranges must not overlap and every VM address must lie in its host's range (lib.checkFleet).
{
  hv1 = {
    targetHost = "hv1.example.internal";
    subnetRange = "10.1.0.0/16";
    host.uplink = "eth0";
    vms.web = {
      vcpus = 2; memory = 1024;
      network = [ { tap = "vm-web"; mac = "02:00:00:01:00:01"; bridge = "br-web"; address = "10.1.1.2/24"; gateway = "10.1.1.1"; } ];
    };
  };
  hv2 = {
    targetHost = "hv2.example.internal";
    subnetRange = "10.2.0.0/16";
    host.uplink = "eth0";
    vms.db = {
      vcpus = 2; memory = 2048;
      network = [ { tap = "vm-db"; mac = "02:00:00:02:00:01"; bridge = "br-db"; address = "10.2.1.2/24"; gateway = "10.2.1.1"; } ];
    };
  };
}
